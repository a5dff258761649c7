//! OCI images for real: `graphene build --oci --push` with buildah on a
//! Python base image made locally (`scripts/oci-fixtures.sh`, cached outside
//! the repository), pushed to a real registry on loopback (Debian's
//! docker-registry), read back with skopeo, and run with podman.

mod util;

use std::process::Command;
use std::time::Duration;

use util::registry::{ok, Registry};
use util::{eventually, free_port, http, try_http, Server, TempDir, BIN};

const HANDLER: &str = r#"
import os

def handle(req):
    return "hello %s from uid %d (%s)" % (req, os.getuid(), os.environ.get("GRAPHENE_FUNCTION"))
"#;

/// The layers and labels of a pushed image, read back from the registry.
fn inspect(reg: &Registry, image: &str) -> serde_json::Value {
    let out = reg
        .command("skopeo")
        .args(["inspect", &format!("docker://{image}")])
        .output()
        .unwrap();
    serde_json::from_str(&ok(out, "skopeo inspect")).unwrap()
}

/// A registry with the Python base image in it, logged in to (and the
/// login's refusals checked).
fn registry_with_base() -> (Registry, String) {
    let reg = Registry::start(true);
    // A wrong password is refused by the registry, and nothing is stored.
    let refused = reg.login("wrong");
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("refused the credential of alice"), "{err}");
    assert!(!err.contains("wrong"), "the password is never shown: {err}");
    assert!(!reg.home.path().join(".docker/config.json").exists());
    // The right one is stored where buildah, podman and skopeo read it.
    ok(reg.login("s3cret"), "graphene registry login");
    let base = reg.push_base();
    (reg, base)
}

#[test]
fn images_build_push_by_digest_reuse_the_requirements_layer_and_run() {
    let (reg, base) = registry_with_base();
    let work = TempDir::new("oci");
    let w = work.path();
    std::fs::create_dir_all(w.join("hello")).unwrap();
    std::fs::create_dir_all(w.join("shout")).unwrap();
    std::fs::write(w.join("hello/handler.py"), HANDLER).unwrap();
    std::fs::write(w.join("hello/requirements.txt"), "# nothing to install\n").unwrap();
    std::fs::write(w.join("shout/README"), "an exec function\n").unwrap();
    let tag = |n: &str| format!("{}/team/{n}:1.0", reg.host);
    std::fs::write(
        w.join("stack.yml"),
        format!(
            "version: 1.0\nbuild:\n  oci: true\n  base:\n    python3: {base}\n    exec: {base}\nfunctions:\n  hello:\n    lang: python3\n    handler: ./hello\n    image: {}\n  shout:\n    lang: exec\n    handler: ./shout\n    image: {}\n    fprocess: tr a-z A-Z\n",
            tag("hello"),
            tag("shout")
        ),
    )
    .unwrap();
    let build = |what: &str| -> (String, String) {
        let out = reg
            .command(BIN)
            .args(["build", "--push", "--builder", "buildah"])
            .current_dir(w)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (ok(out, what), stderr)
    };
    let (stdout, progress) = build("the first build");
    // The builder's progress is shown as it runs, behind the function's name.
    assert!(progress.contains("[hello] STEP"), "{progress}");
    let pushed = |stdout: &str, name: &str| -> String {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: pushed ")))
            .unwrap_or_else(|| panic!("no pushed digest for {name} in {stdout}"))
            .to_string()
    };
    let hello_v1 = pushed(&stdout, "hello");
    assert!(
        hello_v1.starts_with(&format!("{}@sha256:", tag("hello"))),
        "{hello_v1}"
    );
    let first = inspect(&reg, &tag("hello"));
    // The printed digest is the registry's.
    assert_eq!(
        first["Digest"].as_str().unwrap(),
        hello_v1.split('@').nth(1).unwrap()
    );
    let labels = &first["Labels"];
    assert_eq!(labels["com.graphene.template"], "python3");
    assert!(labels["org.opencontainers.image.revision"]
        .as_str()
        .is_some_and(|r| r.len() == 64));
    assert!(labels["org.opencontainers.image.source"]
        .as_str()
        .is_some_and(|s| s.ends_with("/hello")));

    // A handler-only change rebuilds only the last layer.
    std::fs::write(
        w.join("hello/handler.py"),
        HANDLER.replace("hello %s", "hi %s"),
    )
    .unwrap();
    let (stdout, _) = build("the second build");
    let hello_v2 = pushed(&stdout, "hello");
    assert_ne!(hello_v1, hello_v2, "a new push of the tag has a new digest");
    let second = inspect(&reg, &tag("hello"));
    let layers = |v: &serde_json::Value| -> Vec<String> {
        v["Layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().to_string())
            .collect()
    };
    let (l1, l2) = (layers(&first), layers(&second));
    assert_eq!(l1.len(), l2.len());
    let last = l1.len() - 1;
    assert_eq!(
        l1[..last],
        l2[..last],
        "every layer but the handler's is reused"
    );
    assert_ne!(l1[last], l2[last]);

    // The first revision still runs by its digest, whatever the tag says now.
    let hello = Container::run(&reg, &hello_v1, &[]);
    hello.wait_ready();
    let r = http("POST", &hello.url("/"), b"bob", &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "hello bob from uid 10001 (hello)");
    let shout = Container::run(&reg, &pushed(&stdout, "shout"), &[]);
    shout.wait_ready();
    let r = http("POST", &shout.url("/"), b"quiet", &[]);
    assert_eq!((r.status, r.body.as_str()), (200, "QUIET"));
    // SIGTERM (podman stop) drains and exits 0.
    assert_eq!(hello.stop(), 0);
    assert!(hello.logs().contains("SIGTERM"), "{}", hello.logs());
}

#[test]
fn up_oci_pushes_and_deploys_by_digest_or_deploys_nothing() {
    let (reg, base) = registry_with_base();
    let server = Server::start();
    let work = TempDir::new("ociup");
    let w = work.path();
    std::fs::create_dir_all(w.join("hello")).unwrap();
    std::fs::write(w.join("hello/handler.py"), HANDLER).unwrap();
    let stack = |base: &str| {
        std::fs::write(
            w.join("stack.yml"),
            format!(
                "version: 1.0\nbuild:\n  base:\n    python3: {base}\nfunctions:\n  hello:\n    lang: python3\n    handler: ./hello\n    image: {}/team/up:1\n",
                reg.host
            ),
        )
        .unwrap()
    };
    let up = || {
        reg.command(BIN)
            .args(["up", "--oci", "--wait", "0"])
            .current_dir(w)
            .env("GRAPHENE_URL", &server.url)
            .env("GRAPHENE_TOKEN", server.token())
            .output()
            .unwrap()
    };
    // A base image the registry doesn't have: the builder's error is shown
    // as it said it, and nothing is deployed.
    stack(&format!("{}/base/missing:1", reg.host));
    let failed = up();
    assert!(!failed.status.success());
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(err.contains("[hello] "), "the builder's own output: {err}");
    assert!(
        err.contains("manifest unknown") || err.contains("not found"),
        "{err}"
    );
    assert!(err.contains("nothing was deployed"), "{err}");
    assert!(!String::from_utf8_lossy(&failed.stdout).contains("pushed"));
    assert_eq!(server.admin("GET", "/system/functions", "").body, "[]");
    // A good build is pushed and deployed by its digest; this gateway runs
    // the local runtime, which says plainly that it runs its own builds.
    stack(&base);
    let out = up();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    let pushed = stdout
        .lines()
        .find_map(|l| l.strip_prefix("hello: pushed "))
        .unwrap_or_else(|| panic!("{stdout}\n{err}"));
    assert!(pushed.contains("@sha256:"));
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("image \"{pushed}\" is an image from a registry")),
        "{err}"
    );
}

/// A container run with podman on the host network (the watchdog on ports
/// of its own).
struct Container<'a> {
    reg: &'a Registry,
    name: String,
    port: u16,
}

impl<'a> Container<'a> {
    fn run(reg: &'a Registry, image: &str, env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let name = format!("graphene-test-{}-{port}", std::process::id());
        let mut cmd = reg.command("podman");
        cmd.args(["run", "-d", "--network", "host", "--name", &name])
            .args(["-e", &format!("port={port}")])
            .args(["-e", &format!("metrics_port={}", free_port())])
            .args(["-e", "healthcheck_interval=1s"]);
        for (k, v) in env {
            cmd.args(["-e", &format!("{k}={v}")]);
        }
        ok(cmd.arg(image).output().unwrap(), "podman run");
        Self { reg, name, port }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn wait_ready(&self) {
        eventually("the container to be ready", Duration::from_secs(60), || {
            try_http("GET", &self.url("/_/ready"), b"", &[])
                .ok()
                .filter(|r| r.status == 200)
        });
    }

    /// `podman stop` (SIGTERM, then SIGKILL after 20 s); the exit code.
    fn stop(&self) -> i64 {
        ok(
            self.reg
                .command("podman")
                .args(["stop", "-t", "20", &self.name])
                .output()
                .unwrap(),
            "podman stop",
        );
        let out = self
            .reg
            .command("podman")
            .args(["inspect", "--format", "{{.State.ExitCode}}", &self.name])
            .output()
            .unwrap();
        ok(out, "podman inspect").trim().parse().unwrap()
    }

    fn logs(&self) -> String {
        let out = self
            .reg
            .command("podman")
            .args(["logs", &self.name])
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self
            .reg
            .command("podman")
            .args(["rm", "-f", &self.name])
            .output();
    }
}

#[test]
fn pushing_needs_a_registry_in_the_image_name_and_nothing_is_built_without() {
    let work = TempDir::new("ocinoreg");
    let w = work.path();
    std::fs::create_dir_all(w.join("hello")).unwrap();
    std::fs::write(w.join("hello/handler.py"), HANDLER).unwrap();
    std::fs::write(
        w.join("stack.yml"),
        "version: 1.0\nfunctions:\n  hello:\n    lang: python3\n    handler: ./hello\n    image: hello:latest\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["build", "--oci", "--push", "--builder", "buildah"])
        .current_dir(w)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("functions.hello.image: \"hello:latest\" names no registry"),
        "{err}"
    );
    assert!(!err.contains("STEP"), "nothing was built: {err}");
}
