//! A real OCI registry on loopback (Debian's docker-registry), and the
//! Python base image the OCI tests build on.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::{eventually, free_port, try_http, TempDir, BIN};

/// A registry on loopback (with `auth`, one that wants a login: alice /
/// s3cret), and a HOME whose containers configuration trusts it over plain
/// HTTP (as an operator's registries.conf would).
pub struct Registry {
    pub host: String,
    child: Child,
    pub home: TempDir,
}

impl Registry {
    pub fn start(auth: bool) -> Self {
        let home = TempDir::new("ocihome");
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {host}\n",
            home.path().join("blobs").display()
        );
        if auth {
            let htpasswd = home.path().join("htpasswd");
            let hash = Command::new("python3")
                .args([
                    "-W",
                    "ignore",
                    "-c",
                    "import crypt; print('alice:' + crypt.crypt('s3cret', crypt.mksalt(crypt.METHOD_BLOWFISH)))",
                ])
                .output()
                .unwrap();
            std::fs::write(&htpasswd, ok(hash, "making a bcrypt password")).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        std::fs::write(home.path().join("registry.yml"), config).unwrap();
        let conf = home.path().join(".config/containers");
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::write(
            conf.join("registries.conf"),
            format!("[[registry]]\nlocation = \"{host}\"\ninsecure = true\n"),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(home.path().join("registry.yml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry (scripts/oci-fixtures.sh installs it)");
        eventually("the registry to answer", Duration::from_secs(20), || {
            try_http("GET", &format!("http://{host}/v2/"), b"", &[])
                .ok()
                .filter(|r| r.status == if auth { 401 } else { 200 })
        });
        Self { host, child, home }
    }

    /// Pushes the Python base image here; returns its name.
    pub fn push_base(&self) -> String {
        let archive = base_archive();
        let base = format!("{}/base/python:bookworm", self.host);
        ok(
            self.command("skopeo")
                .args(["copy", "--quiet"])
                .arg(format!("oci-archive:{}:bookworm", archive.display()))
                .arg(format!("docker://{base}"))
                .output()
                .unwrap(),
            "skopeo copy of the base image",
        );
        base
    }

    /// `graphene registry login` with a password.
    pub fn login(&self, password: &str) -> Output {
        super::with_stdin(
            self.command(BIN).args([
                "registry",
                "login",
                &self.host,
                "-u",
                "alice",
                "--password-stdin",
            ]),
            format!("{password}\n").as_bytes(),
        )
    }

    /// A command with this registry's HOME.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("HOME", self.home.path());
        c
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The base image archive, built once and cached (installs what is
/// missing).
pub fn base_archive() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/oci-fixtures.sh");
    let out = Command::new(script).output().unwrap();
    assert!(
        out.status.success(),
        "scripts/oci-fixtures.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

pub fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
