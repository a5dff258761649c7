//! The Kubernetes provider on a real cluster: a single-node Kubernetes 1.20
//! built from Debian's source package and started by
//! `scripts/k8s-cluster.sh` (cached outside the repository), with function
//! images built by `graphene build --oci --push` into a registry on
//! loopback, which the cluster's containerd pulls from.
#![cfg(feature = "kubernetes")]

mod util;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use graphene_core::names::FunctionRef;
use graphene_core::provider::Deployment;
use graphene_kubernetes::{KubernetesConfig, KubernetesProvider};
use graphene_testing::conformance::{self, Harness, Image};
use util::registry::{ok, Registry};
use util::{TempDir, BIN};

/// One test on the cluster at a time: the suite's timings (a call 300 ms
/// after two others) must not compete with another test's pods for the
/// two cores.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts the test cluster (building it the first time) with the Function
/// resource installed; its admin kubeconfig.
fn cluster() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/k8s-cluster.sh");
    let out = ok(
        Command::new(script).arg("start").output().unwrap(),
        "scripts/k8s-cluster.sh start",
    );
    let kubeconfig = PathBuf::from(out.lines().last().expect("the kubeconfig path").trim());
    ok(
        Command::new(BIN)
            .args(["install", "kubernetes", "--resource-only", "--apply"])
            .env("KUBECONFIG", &kubeconfig)
            .output()
            .unwrap(),
        "graphene install kubernetes --resource-only --apply",
    );
    kubeconfig
}

/// `ns`, created afresh (emptied of what an earlier run left).
fn fresh_namespace(kubeconfig: &Path, ns: &str) {
    let _ = kubectl(kubeconfig, &["delete", "namespace", ns, "--wait=true"]);
    ok(
        kubectl(kubeconfig, &["create", "namespace", ns]),
        "kubectl create namespace",
    );
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> std::process::Output {
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .unwrap()
}

/// Waits until the function has no pods.
fn no_pods(kubeconfig: &Path, ns: &str, function: &str) {
    let selector = format!("faas_function={function}");
    util::eventually("no pods", std::time::Duration::from_secs(90), || {
        let out = kubectl(
            kubeconfig,
            &["get", "pods", "-n", ns, "-l", &selector, "-o", "name"],
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .is_empty()
            .then_some(())
    });
}

/// Waits until the function's Deployment is gone.
fn deployment_gone(kubeconfig: &Path, ns: &str, function: &str) {
    util::eventually(
        "the Deployment to go",
        std::time::Duration::from_secs(60),
        || {
            let out = kubectl(kubeconfig, &["get", "deployment", function, "-n", ns]);
            (!out.status.success()).then_some(())
        },
    );
}

/// Which of two gateways leads (says so in its log), and the other.
fn leader_and_follower<'a>(
    a: &'a util::Server,
    b: &'a util::Server,
) -> (&'a util::Server, &'a util::Server) {
    let leads = |s: &util::Server| {
        s.log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("this gateway leads"))
    };
    util::eventually("a leader", std::time::Duration::from_secs(30), || {
        match (leads(a), leads(b)) {
            (true, false) => Some((a, b)),
            (false, true) => Some((b, a)),
            _ => None,
        }
    })
}

/// One field of an object (`kubectl get WHAT -o jsonpath=PATH`).
fn field(kubeconfig: &Path, what: &[&str], path: &str) -> String {
    let mut args = vec!["get"];
    args.extend(what);
    let jsonpath = format!("jsonpath={path}");
    args.extend(["-o", &jsonpath]);
    ok(
        kubectl(kubeconfig, &args),
        &format!("kubectl get {}", what.join(" ")),
    )
}

/// Builds the suite's images with `graphene build --oci --push`; their
/// references by digest.
fn images(reg: &Registry) -> HashMap<Image, String> {
    let base = reg.push_base();
    let work = TempDir::new("k8simg");
    let w = work.path();
    let mut stack =
        format!("version: 1.0\nbuild:\n  oci: true\n  base:\n    python3: {base}\nfunctions:\n");
    for (name, handler) in [
        ("conf-a", conformance::handler("a")),
        ("conf-b", conformance::handler("b")),
        ("conf-broken", conformance::broken_handler()),
    ] {
        std::fs::create_dir_all(w.join(name)).unwrap();
        std::fs::write(w.join(name).join("handler.py"), handler).unwrap();
        stack.push_str(&format!(
            "  {name}:\n    lang: python3\n    handler: ./{name}\n    image: {}/conformance/{name}:1\n",
            reg.host
        ));
    }
    std::fs::write(w.join("stack.yml"), stack).unwrap();
    let out = ok(
        reg.command(BIN)
            .args(["build", "--push", "--builder", "buildah"])
            .current_dir(w)
            .output()
            .unwrap(),
        "graphene build --oci --push",
    );
    let pushed = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: pushed ")))
            .unwrap_or_else(|| panic!("{name} not pushed: {out}"))
            .to_string()
    };
    HashMap::from([
        (Image::A, pushed("conf-a")),
        (Image::B, pushed("conf-b")),
        (Image::Broken, pushed("conf-broken")),
        // A reference the provider refuses before the cluster sees it.
        (Image::Missing, "Not/A Valid:image".to_string()),
    ])
}

struct Kube {
    provider: KubernetesProvider,
    images: HashMap<Image, String>,
}

impl Harness for Kube {
    type P = KubernetesProvider;

    fn provider(&self) -> &KubernetesProvider {
        &self.provider
    }

    fn deployment(
        &self,
        f: &FunctionRef,
        revision: u64,
        image: Image,
        replicas: u64,
    ) -> Deployment {
        conformance::deployment(f, revision, &self.images[&image], "", replicas)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// The lock keeps the other tests (on threads of their own) off the cluster
// for the whole suite: held across its awaits on purpose.
#[allow(clippy::await_holding_lock)]
async fn the_kubernetes_provider_conforms() {
    let _one = one_at_a_time();
    let kubeconfig = cluster();
    fresh_namespace(&kubeconfig, "conformance");
    let reg = Registry::start(false);
    let images = images(&reg);
    std::env::set_var("KUBECONFIG", &kubeconfig);
    let client = KubernetesProvider::client().await.unwrap();
    let kube = Kube {
        provider: KubernetesProvider::new(KubernetesConfig {
            client,
            namespaces: vec!["conformance".into()],
            image_pull_secrets: Vec::new(),
        }),
        images,
    };
    conformance::run(&kube).await;
    let _ = kubectl(
        &kubeconfig,
        &["delete", "namespace", "conformance", "--wait=false"],
    );
}

const HELLO: &str = r#"
import os

def handle(req):
    with open("/var/openfaas/secrets/api-key") as f:
        key = f.read()
    print("hello called with " + req, flush=True)
    return "%s %s %s uid=%d" % (req, key, os.environ.get("GREETING"), os.getuid())
"#;

/// The whole path through the real gateway: `graphene serve --provider
/// kubernetes` outside the cluster with a kubeconfig, `graphene up --oci`,
/// calls, scaling, logs, describe, removal.
#[test]
fn the_gateway_runs_functions_as_pods() {
    let _one = one_at_a_time();
    let kubeconfig = cluster();
    let ns = graphene_core::DEFAULT_NAMESPACE;
    fresh_namespace(&kubeconfig, ns);
    let reg = Registry::start(false);
    let base = reg.push_base();
    std::env::set_var("KUBECONFIG", &kubeconfig);
    let server = util::Server::start_with(&["--provider", "kubernetes"]);
    server.ok(&["secret", "create", "api-key", "--from-literal", "s3cret"]);
    let work = TempDir::new("k8se2e");
    let w = work.path();
    std::fs::create_dir_all(w.join("hello")).unwrap();
    std::fs::write(w.join("hello/handler.py"), HELLO).unwrap();
    std::fs::write(
        w.join("stack.yml"),
        format!(
            "version: 1.0\nbuild:\n  base:\n    python3: {base}\nfunctions:\n  hello:\n    lang: python3\n    handler: ./hello\n    image: {}/e2e/hello:1\n    secrets: [api-key]\n    environment:\n      GREETING: hi\n    labels:\n      com.openfaas.scale.max: \"3\"\n",
            reg.host
        ),
    )
    .unwrap();
    let up = |args: &[&str]| {
        reg.command(BIN)
            .args(args)
            .current_dir(w)
            .env("GRAPHENE_URL", &server.url)
            .env("GRAPHENE_TOKEN", server.token())
            .output()
            .unwrap()
    };
    // Built here, pushed, deployed by digest; the CLI waits for the pod.
    let out = ok(up(&["up", "--oci", "--wait", "120"]), "graphene up --oci");
    assert!(out.contains("hello: pushed "), "{out}");
    let r = server.admin("POST", "/function/hello", "bob");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "bob s3cret hi uid=10001");
    assert!(r.header("x-call-id").is_some());
    // The Deployment runs the image by digest, locked down.
    let image = ok(
        kubectl(
            &kubeconfig,
            &[
                "get",
                "deployment",
                "hello",
                "-n",
                ns,
                "-o",
                "jsonpath={.spec.template.spec.containers[0].image}",
            ],
        ),
        "kubectl get deployment",
    );
    assert!(image.contains("@sha256:"), "{image}");
    // Following the logs from now on, while a second pod starts.
    let mut follow = reg
        .command(BIN)
        .args(["logs", "hello", "--follow"])
        .env("GRAPHENE_URL", &server.url)
        .env("GRAPHENE_TOKEN", server.token())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let followed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    util::collect_lines(follow.stdout.take().unwrap(), "logs -f", followed.clone());
    // Scaled by hand: two pods serve.
    server.ok(&["scale", "hello", "--replicas", "2"]);
    util::eventually("two ready pods", std::time::Duration::from_secs(90), || {
        let d = server.describe("hello");
        (d["availableReplicas"].as_u64() == Some(2)
            || d["graphene"]["readyReplicas"].as_u64() == Some(2))
        .then_some(())
    });
    let d = server.describe("hello");
    let instances = d["graphene"]["instances"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(instances.len(), 2, "{d}");
    assert!(
        instances
            .iter()
            .all(|i| i["ip"].as_str().is_some_and(|ip| ip.starts_with("10.244."))),
        "{d}"
    );
    // Calls are spread over both, and the follower reads the new pod too.
    for i in 0..6 {
        assert_eq!(
            server
                .admin("POST", "/function/hello", &format!("x{i}"))
                .status,
            200
        );
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let lines = followed.lock().unwrap().clone();
        let pods: std::collections::HashSet<String> = lines
            .iter()
            .filter(|l| l.contains("hello called with x"))
            .filter_map(|l| {
                l.split(" (")
                    .nth(1)
                    .and_then(|r| r.split(')').next())
                    .map(str::to_string)
            })
            .collect();
        if pods.len() == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "lines of both pods while following: {lines:#?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = follow.kill();
    let _ = follow.wait();
    // The pods' logs, merged.
    let logs = server.ok(&["logs", "hello"]);
    assert!(logs.contains("hello called with bob"), "{logs}");
    // At zero, a call wakes it and is held until a pod is ready.
    server.ok(&["scale", "hello", "--replicas", "0"]);
    no_pods(&kubeconfig, ns, "hello");
    let woken = server.admin("POST", "/function/hello", "again");
    assert_eq!(
        (woken.status, woken.body.as_str()),
        (200, "again s3cret hi uid=10001"),
        "{woken:?}"
    );
    // A new version, then a rollback to the first: each a new revision.
    std::fs::write(
        w.join("hello/handler.py"),
        HELLO.replace("%s %s %s uid", "v2 %s %s %s uid"),
    )
    .unwrap();
    ok(
        up(&["up", "--oci", "--wait", "120"]),
        "graphene up --oci of v2",
    );
    assert!(server
        .admin("POST", "/function/hello", "y")
        .body
        .starts_with("v2 y"));
    let back = server.ok(&["rollback", "hello"]);
    assert!(back.contains("back to revision 1"), "{back}");
    util::eventually(
        "the first version to answer again",
        std::time::Duration::from_secs(90),
        || {
            let r = server.admin("POST", "/function/hello", "z");
            (r.status == 200 && r.body.starts_with("z ")).then_some(())
        },
    );
    // Removed: the Deployment goes.
    server.ok(&["rm", "hello"]);
    deployment_gone(&kubeconfig, ns, "hello");
    assert_eq!(server.admin("POST", "/function/hello", "x").status, 404);
}

const SLEEPY: &str = r#"
import time

def handle(req):
    time.sleep(float(req.split()[1]))
    return "slept"
"#;

/// Under load the autoscaler adds pods through the scale subresource (two
/// gateways: the one that leads decides on the load the other reports); a
/// pod deleted mid-load is replaced, and only a call it was serving may
/// fail.
#[test]
fn scales_up_under_load_and_a_killed_pod_is_replaced() {
    use std::time::{Duration, Instant};
    let _one = one_at_a_time();
    let kubeconfig = cluster();
    let ns = "graphene-load";
    fresh_namespace(&kubeconfig, ns);
    let reg = Registry::start(false);
    let base = reg.push_base();
    std::env::set_var("KUBECONFIG", &kubeconfig);
    // One installation: the same admin credential.
    let secrets = TempDir::new("k8sadmin");
    let admin = secrets.path().join("admin-token");
    std::fs::write(&admin, "gph_shared_by_both_gateways").unwrap();
    let args = [
        "--provider",
        "kubernetes",
        "--functions-namespace",
        ns,
        "--admin-token-file",
        admin.to_str().unwrap(),
    ];
    let first = util::Server::start_with(&args);
    let second = util::Server::start_with(&args);
    // One of them leads and runs the autoscaler; every call goes through
    // the other, which reports its load to the leader.
    let (_, server) = leader_and_follower(&first, &second);
    let work = TempDir::new("k8sload");
    let w = work.path();
    std::fs::create_dir_all(w.join("busy")).unwrap();
    std::fs::write(w.join("busy/handler.py"), SLEEPY).unwrap();
    std::fs::write(
        w.join("stack.yml"),
        format!(
            "version: 1.0\nbuild:\n  base:\n    python3: {base}\nfunctions:\n  busy:\n    lang: python3\n    handler: ./busy\n    image: {}/load/busy:1\n    namespace: {ns}\n    labels:\n      com.openfaas.scale.max: \"4\"\n      com.openfaas.scale.target: \"1\"\n      com.openfaas.scale.target-proportion: \"1\"\n      com.graphene.scale.window: 2s\n    annotations:\n      com.graphene.workers: \"1\"\n",
            reg.host
        ),
    )
    .unwrap();
    ok(
        reg.command(BIN)
            .args(["up", "--oci", "--wait", "120"])
            .current_dir(w)
            .env("GRAPHENE_URL", &server.url)
            .env("GRAPHENE_TOKEN", server.token())
            .output()
            .unwrap(),
        "graphene up --oci",
    );
    let path = format!("/function/busy.{ns}");
    let ready = || -> u64 {
        let d: serde_json::Value = serde_json::from_str(
            &server
                .admin("GET", &format!("/system/function/busy?namespace={ns}"), "")
                .body,
        )
        .unwrap();
        d["graphene"]["readyReplicas"].as_u64().unwrap_or(0)
    };
    let stop = Instant::now() + Duration::from_secs(20);
    let mut peak = 0;
    let mut killed = None;
    let failures: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..6)
            .map(|_| {
                let (server, path) = (&server, &path);
                scope.spawn(move || {
                    let mut bad = Vec::new();
                    while Instant::now() < stop {
                        let r = server.admin("POST", path, "sleep 0.2");
                        if r.status != 200 {
                            bad.push(format!("{} {}", r.status, r.body));
                        }
                    }
                    bad
                })
            })
            .collect();
        while Instant::now() < stop {
            peak = peak.max(ready());
            // Once it has scaled up, one pod is deleted mid-load.
            if peak >= 3 && killed.is_none() {
                let out = kubectl(&kubeconfig, &["get", "pods", "-n", ns, "-o", "name"]);
                let pod = String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .next()
                    .map(str::to_string);
                if let Some(pod) = pod {
                    ok(
                        kubectl(&kubeconfig, &["delete", "-n", ns, &pod, "--wait=false"]),
                        "kubectl delete pod",
                    );
                    killed = Some(pod);
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    assert!(
        peak >= 3,
        "scaled up by the leader under 6 concurrent calls through the other gateway: peak {peak}"
    );
    assert!(peak <= 4, "bounded by max: peak {peak}");
    assert!(killed.is_some(), "a pod was deleted mid-load");
    // Only a call the deleted pod was serving may fail (one at a time).
    assert!(failures.len() <= 1, "calls failed: {failures:?}");
    let replicas = ok(
        kubectl(
            &kubeconfig,
            &[
                "get",
                "deployment",
                "busy",
                "-n",
                ns,
                "-o",
                "jsonpath={.spec.replicas}",
            ],
        ),
        "kubectl get deployment",
    );
    assert!(replicas.trim().parse::<u64>().unwrap() >= 1, "{replicas}");
    let _ = kubectl(&kubeconfig, &["delete", "namespace", ns, "--wait=false"]);
}

/// Functions are `Function` resources: one declared with `kubectl apply`
/// is deployed (and an edit makes a revision), a second gateway sees and
/// serves what the first deployed, a deploy through either is seen by the
/// other, and `kubectl delete` removes the function.
#[test]
fn functions_are_cluster_resources_shared_by_gateways() {
    let _one = one_at_a_time();
    let kubeconfig = cluster();
    let ns = "graphene-crd";
    fresh_namespace(&kubeconfig, ns);
    let reg = Registry::start(false);
    let images = images(&reg);
    std::env::set_var("KUBECONFIG", &kubeconfig);
    let args = ["--provider", "kubernetes", "--functions-namespace", ns];
    let first = util::Server::start_with(&args);
    let apply = |image: &str, env: &str| {
        let manifest = format!(
            "apiVersion: graphene.dev/v1\nkind: Function\nmetadata:\n  name: declared\n  namespace: {ns}\nspec:\n  image: {image}\n  envVars:\n    WHO: {env}\n  labels:\n    com.openfaas.scale.max: \"2\"\n"
        );
        ok(
            util::with_stdin(
                Command::new("kubectl")
                    .arg("--kubeconfig")
                    .arg(&kubeconfig)
                    .args(["apply", "-f", "-"]),
                manifest.as_bytes(),
            ),
            "kubectl apply",
        );
    };
    let path = format!("/function/declared.{ns}");
    let answers = |server: &util::Server, want: &str| {
        util::eventually(
            &format!("the function to answer {want}"),
            std::time::Duration::from_secs(120),
            || {
                let r = server.admin("POST", &path, "hi");
                (r.status == 200 && r.body == want).then_some(())
            },
        );
    };
    // Declared with kubectl: deployed as revision 1, by "declared".
    apply(&images[&Image::A], "one");
    answers(&first, "a");
    let history: serde_json::Value = serde_json::from_str(
        &first
            .admin(
                "GET",
                &format!("/system/revisions/declared?namespace={ns}"),
                "",
            )
            .body,
    )
    .unwrap();
    assert_eq!(history["revisions"][0]["revision"], 1, "{history}");
    assert_eq!(
        history["revisions"][0]["createdBy"], "declared",
        "{history}"
    );
    let state = || {
        ok(
            kubectl(
                &kubeconfig,
                &[
                    "get",
                    "function",
                    "declared",
                    "-n",
                    ns,
                    "-o",
                    "jsonpath={.status.revisions[0].revision} {.status.revisions[0].state}",
                ],
            ),
            "kubectl get function",
        )
    };
    util::eventually(
        "revision 1 ready in the resource",
        std::time::Duration::from_secs(60),
        || (state().trim() == "1 ready").then_some(()),
    );
    // A second gateway, with a state directory of its own, sees it and
    // serves it.
    let second = util::Server::start_with(&args);
    let listed = second.admin("GET", &format!("/system/functions?namespace={ns}"), "");
    assert!(listed.body.contains("\"declared\""), "{listed:?}");
    answers(&second, "a");
    // A deploy through the second is seen by the first.
    let update = serde_json::json!({
        "service": "declared",
        "namespace": ns,
        "image": images[&Image::B],
        "envVars": { "WHO": "two" },
        "labels": { "com.openfaas.scale.max": "2" },
    });
    let r = second.admin("PUT", "/system/functions", &update.to_string());
    assert!(r.status < 300, "{r:?}");
    answers(&first, "b");
    util::eventually(
        "the first gateway to hold revision 2",
        std::time::Duration::from_secs(30),
        || {
            let h = first.admin(
                "GET",
                &format!("/system/revisions/declared?namespace={ns}"),
                "",
            );
            h.body.contains("\"revision\":2").then_some(())
        },
    );
    // An edit with kubectl is a revision too.
    apply(&images[&Image::A], "three");
    answers(&second, "a");
    util::eventually(
        "revision 3 in the resource",
        std::time::Duration::from_secs(60),
        || state().starts_with("3 ").then_some(()),
    );
    // Scaled to zero through the gateway that follows and woken by a call
    // through the leader: the follower serves again (it takes the leader's
    // count) without waking it a second time.
    let (leader, follower) = leader_and_follower(&first, &second);
    follower.ok(&["scale", "declared", "--replicas", "0", "--namespace", ns]);
    no_pods(&kubeconfig, ns, "declared");
    let woken = leader.admin("POST", &path, "hi");
    assert_eq!((woken.status, woken.body.as_str()), (200, "a"), "{woken:?}");
    answers(follower, "a");
    // Removed with kubectl: gone from both gateways and from the cluster.
    ok(
        kubectl(&kubeconfig, &["delete", "function", "declared", "-n", ns]),
        "kubectl delete function",
    );
    for server in [&first, &second] {
        util::eventually(
            "the function to be gone",
            std::time::Duration::from_secs(30),
            || (server.admin("POST", &path, "hi").status == 404).then_some(()),
        );
    }
    deployment_gone(&kubeconfig, ns, "declared");
    let _ = kubectl(&kubeconfig, &["delete", "namespace", ns, "--wait=false"]);
}

/// What `graphene install kubernetes` makes is taken by the cluster (its
/// API server checks each object against its schemas), and the gateway's
/// service account may manage functions in their namespace and nothing
/// else.
#[test]
fn install_makes_a_least_privileged_gateway() {
    let _one = one_at_a_time();
    let kubeconfig = cluster();
    let (gw_ns, fn_ns) = ("graphene-install", "graphene-install-fn");
    for ns in [gw_ns, fn_ns] {
        let _ = kubectl(&kubeconfig, &["delete", "namespace", ns, "--wait=true"]);
    }
    let install = |extra: &[&str]| {
        Command::new(BIN)
            .args([
                "install",
                "kubernetes",
                "--namespace",
                gw_ns,
                "--functions-namespace",
                fn_ns,
                // Nothing is pulled: no registry serves this name here.
                "--image",
                "127.0.0.1:9/graphene/gateway:test",
                "--replicas",
                "2",
                // Its schemas are checked; its pod waits for a volume.
                "--with-nats",
            ])
            .args(extra)
            .env("KUBECONFIG", &kubeconfig)
            .output()
            .unwrap()
    };
    let printed = ok(install(&[]), "graphene install kubernetes");
    assert!(
        printed.contains("kind: CustomResourceDefinition"),
        "{printed}"
    );
    assert!(!printed.contains("ClusterRole"), "{printed}");
    let applied = install(&["--apply"]);
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    // Applied again, the admin credential stays what the running gateways
    // read.
    let admin = || {
        ok(
            kubectl(
                &kubeconfig,
                &[
                    "get",
                    "secret",
                    "graphene-admin",
                    "-n",
                    gw_ns,
                    "-o",
                    "jsonpath={.data.admin-token}",
                ],
            ),
            "kubectl get secret",
        )
    };
    let first_admin = admin();
    assert!(!first_admin.trim().is_empty());
    let again = install(&["--apply"]);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("graphene-admin (kept: it exists)"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(admin(), first_admin);
    let replicas = ok(
        kubectl(
            &kubeconfig,
            &[
                "get",
                "deployment",
                "graphene-gateway",
                "-n",
                gw_ns,
                "-o",
                "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].readinessProbe.httpGet.path}",
            ],
        ),
        "kubectl get deployment",
    );
    assert_eq!(replicas.trim(), "2 /healthz");
    let queue = field(
        &kubeconfig,
        &["deployment", "graphene-gateway", "-n", gw_ns],
        "{.spec.template.spec.containers[0].env[?(@.name==\"GRAPHENE_QUEUE\")].value}",
    );
    assert_eq!(
        queue.trim(),
        format!("nats://graphene-nats.{gw_ns}.svc:4222")
    );
    ok(
        kubectl(
            &kubeconfig,
            &["get", "statefulset", "graphene-nats", "-n", gw_ns],
        ),
        "the installed NATS",
    );
    let sa = format!("system:serviceaccount:{gw_ns}:graphene");
    let can = |verb: &str, resource: &str, ns: Option<&str>| {
        let mut args = vec!["auth", "can-i", verb, resource, "--as", &sa];
        if let Some(ns) = ns {
            args.extend(["-n", ns]);
        }
        let out = kubectl(&kubeconfig, &args);
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    for (verb, resource) in [
        ("create", "deployments"),
        ("patch", "deployments/scale"),
        ("watch", "pods"),
        ("get", "pods/log"),
        ("create", "secrets"),
        ("update", "functions.graphene.dev"),
        ("list", "secrets"),
    ] {
        assert!(can(verb, resource, Some(fn_ns)), "may {verb} {resource}");
    }
    // Its own objects: tokens, grants, the audit trail.
    for (verb, resource) in [("watch", "secrets"), ("create", "configmaps")] {
        assert!(can(verb, resource, Some(gw_ns)), "may {verb} {resource}");
    }
    assert!(
        can("update", "leases/graphene-gateway", Some(gw_ns)),
        "may update its Lease"
    );
    assert!(
        !can("update", "leases/other", Some(gw_ns)),
        "may update only its Lease"
    );
    for (verb, resource, ns) in [
        ("create", "deployments", Some(gw_ns)),
        ("update", "secrets", Some(gw_ns)),
        ("get", "secrets", Some("default")),
        ("list", "nodes", None),
        ("list", "namespaces", None),
        ("create", "pods/exec", Some(fn_ns)),
    ] {
        assert!(
            !can(verb, resource, ns),
            "may not {verb} {resource} in {ns:?}"
        );
    }
    for ns in [gw_ns, fn_ns] {
        let _ = kubectl(&kubeconfig, &["delete", "namespace", ns, "--wait=false"]);
    }
}

const WORK: &str = r#"
import os, time

def handle(req):
    with open("/var/openfaas/secrets/api-key") as f:
        key = f.read()
    if req.startswith("job "):
        time.sleep(0.2)
    print("work called with " + req, flush=True)
    return "%s %s" % (req, key)
"#;

/// graphene as it runs in production: `graphene install kubernetes
/// --push-image` builds the gateway's image of this binary, pushes it to a
/// registry on loopback and applies two gateway replicas that use NATS for
/// jobs; the CLI then works through the gateway's Service: a secret, `up
/// --oci`, calls, list, a token and its revocation (on every gateway), the
/// audit trail, describe, logs, scale, async jobs while the leading gateway
/// pod is killed (no accepted job is lost, another leads), removal.
#[test]
fn the_installed_gateway_runs_as_pods() {
    let _one = one_at_a_time();
    let kubeconfig = cluster();
    let (gw_ns, fn_ns) = ("graphene-pods", "graphene-pods-fn");
    for ns in [gw_ns, fn_ns] {
        let _ = kubectl(&kubeconfig, &["delete", "namespace", ns, "--wait=true"]);
    }
    let reg = Registry::start(false);
    let base = reg.push_base();
    // Pods reach this machine at the node IP.
    let nats = util::Nats::start_on("10.245.0.1");
    let out = reg
        .command(BIN)
        .args(["install", "kubernetes", "--namespace", gw_ns])
        .args(["--functions-namespace", fn_ns, "--replicas", "2"])
        .args([
            "--push-image",
            &format!("{}/graphene/gateway:test", reg.host),
        ])
        .args(["--base", &base, "--builder", "buildah", "--nats", &nats.url])
        .arg("--apply")
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{said}");
    assert!(said.contains("gateway: pushed "), "{said}");
    ok(
        kubectl(
            &kubeconfig,
            &[
                "rollout",
                "status",
                "deployment/graphene-gateway",
                "-n",
                gw_ns,
                "--timeout=180s",
            ],
        ),
        "the gateway's rollout",
    );
    let image = field(
        &kubeconfig,
        &["deployment", "graphene-gateway", "-n", gw_ns],
        "{.spec.template.spec.containers[0].image}",
    );
    assert!(
        image.contains("/graphene/gateway") && image.contains("@sha256:"),
        "{image}"
    );
    let token = ok(
        kubectl(
            &kubeconfig,
            &[
                "get",
                "secret",
                "graphene-admin",
                "-n",
                gw_ns,
                "-o",
                "go-template={{index .data \"admin-token\" | base64decode}}",
            ],
        ),
        "the admin credential",
    );
    let ip = field(
        &kubeconfig,
        &["service", "gateway", "-n", gw_ns],
        "{.spec.clusterIP}",
    );
    let url = format!("http://{}:8080", ip.trim());
    let work = TempDir::new("k8spods");
    let w = work.path();
    let cli = |args: &[&str]| {
        reg.command(BIN)
            .args(args)
            .current_dir(w)
            .env("GRAPHENE_URL", &url)
            .env("GRAPHENE_TOKEN", token.trim())
            .output()
            .unwrap()
    };
    let call = |method: &str, path: &str, body: &str| {
        util::try_http(
            method,
            &format!("{url}{path}"),
            body.as_bytes(),
            &[("Authorization", &format!("Bearer {}", token.trim()))],
        )
    };
    // A secret made through one gateway is the cluster's: whichever
    // gateway deploys the function finds it.
    ok(
        cli(&[
            "secret",
            "create",
            "api-key",
            "--from-literal",
            "s3cret",
            "--namespace",
            fn_ns,
        ]),
        "graphene secret create",
    );
    let listed = ok(
        cli(&["secret", "list", "--namespace", fn_ns]),
        "graphene secret list",
    );
    assert!(listed.contains("api-key"), "{listed}");
    std::fs::create_dir_all(w.join("work")).unwrap();
    std::fs::write(w.join("work/handler.py"), WORK).unwrap();
    std::fs::write(
        w.join("stack.yml"),
        format!(
            "version: 1.0\nbuild:\n  base:\n    python3: {base}\nfunctions:\n  work:\n    lang: python3\n    handler: ./work\n    namespace: {fn_ns}\n    image: {}/pods/work:1\n    secrets: [api-key]\n    labels:\n      com.openfaas.scale.max: \"3\"\n",
            reg.host
        ),
    )
    .unwrap();
    let up = ok(cli(&["up", "--oci", "--wait", "180"]), "graphene up --oci");
    assert!(up.contains("work: pushed "), "{up}");
    // Calls through the Service reach either gateway; each one serves.
    let path = format!("/function/work.{fn_ns}");
    for i in 0..10 {
        let r = call("POST", &path, &format!("x{i}")).unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, &*format!("x{i} s3cret")));
    }
    let list = ok(cli(&["list", "--namespace", fn_ns]), "graphene list");
    assert!(list.contains("work"), "{list}");
    // A token made through one gateway is every gateway's, and so is its
    // revocation.
    let made = ok(
        cli(&[
            "token",
            "create",
            "caller",
            "--grant",
            &format!("invoke:work.{fn_ns}"),
        ]),
        "graphene token create",
    );
    let api_token = made.trim().to_string();
    let with_token = |token: &str| {
        util::try_http(
            "POST",
            &format!("{url}{path}"),
            b"t",
            &[("Authorization", &format!("Bearer {token}"))],
        )
        .map(|r| r.status)
        .unwrap_or(0)
    };
    util::eventually(
        "the token to work on every gateway",
        std::time::Duration::from_secs(30),
        || (0..10).all(|_| with_token(&api_token) == 200).then_some(()),
    );
    // Only what it was granted: calls; the list shows it nothing.
    let listed = util::try_http(
        "GET",
        &format!("{url}/system/functions?namespace={fn_ns}"),
        b"",
        &[("Authorization", &format!("Bearer {api_token}"))],
    )
    .unwrap();
    assert_eq!((listed.status, listed.body.as_str()), (200, "[]"));
    ok(cli(&["token", "revoke", "caller"]), "graphene token revoke");
    util::eventually(
        "the revoked token to be refused by every gateway",
        std::time::Duration::from_secs(30),
        || (0..10).all(|_| with_token(&api_token) == 401).then_some(()),
    );
    let trail = call("GET", "/system/audit", "").unwrap();
    assert!(
        trail.body.contains("token.create") && trail.body.contains("token.revoke"),
        "{trail:?}"
    );
    ok(
        cli(&["scale", "work", "--replicas", "2", "--namespace", fn_ns]),
        "graphene scale",
    );
    util::eventually(
        "two ready pods",
        std::time::Duration::from_secs(120),
        || {
            let r = call(
                "GET",
                &format!("/system/function/work?namespace={fn_ns}"),
                "",
            )
            .ok()?;
            let d: serde_json::Value = serde_json::from_str(&r.body).ok()?;
            (d["availableReplicas"].as_u64() == Some(2)).then_some(())
        },
    );
    let logs = ok(
        cli(&["logs", "work", "--namespace", fn_ns]),
        "graphene logs",
    );
    assert!(logs.contains("work called with x"), "{logs}");
    // Async jobs kept in NATS; a gateway pod killed while they run.
    let total = 120;
    let ids: Vec<String> = (0..total)
        .map(|i| {
            let r = call(
                "POST",
                &format!("/async-function/work.{fn_ns}"),
                &format!("job {i}"),
            )
            .unwrap();
            assert_eq!(r.status, 202, "{r:?}");
            r.header("x-call-id").unwrap().to_string()
        })
        .collect();
    let succeeded = |id: &str| {
        call("GET", &format!("/async-function/status/{id}"), "")
            .ok()
            .filter(|r| r.status == 200)
            .and_then(|r| serde_json::from_str::<serde_json::Value>(&r.body).ok())
            .is_some_and(|v| v["status"] == "succeeded")
    };
    util::eventually("some jobs done", std::time::Duration::from_secs(60), || {
        (ids.iter().take(40).filter(|id| succeeded(id)).count() >= 5).then_some(())
    });
    // One gateway leads (holds the Lease and runs the autoscaler): the
    // one killed, mid-load.
    let holder = || {
        let out = kubectl(
            &kubeconfig,
            &[
                "get",
                "lease",
                "graphene-gateway",
                "-n",
                gw_ns,
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ],
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let pods = || {
        let out = ok(
            kubectl(
                &kubeconfig,
                &[
                    "get",
                    "pods",
                    "-n",
                    gw_ns,
                    "-l",
                    "app=graphene-gateway",
                    "-o",
                    "jsonpath={.items[*].metadata.name}",
                ],
            ),
            "the gateway's pods",
        );
        out.split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let leader = util::eventually("a leader", std::time::Duration::from_secs(30), || {
        let h = holder();
        pods().into_iter().find(|p| h.starts_with(&format!("{p}-")))
    });
    ok(
        kubectl(
            &kubeconfig,
            &[
                "delete",
                "pod",
                &leader,
                "-n",
                gw_ns,
                "--grace-period=0",
                "--force",
            ],
        ),
        "killing the leading gateway pod",
    );
    let left = ids.iter().filter(|id| !succeeded(id)).count();
    assert!(left > 0, "the kill came too late to test anything");
    // Another gateway takes the lead.
    util::eventually(
        "another gateway to lead",
        std::time::Duration::from_secs(60),
        || {
            let h = holder();
            pods()
                .into_iter()
                .any(|p| p != leader && h.starts_with(&format!("{p}-")))
                .then_some(())
        },
    );
    let mut pending: Vec<&String> = ids.iter().collect();
    util::eventually(
        "every accepted job to succeed",
        std::time::Duration::from_secs(240),
        || {
            pending.retain(|id| !succeeded(id));
            pending.is_empty().then_some(())
        },
    );
    // Removed: gone from the cluster.
    ok(cli(&["rm", "work", "--namespace", fn_ns]), "graphene rm");
    deployment_gone(&kubeconfig, fn_ns, "work");
    for ns in [gw_ns, fn_ns] {
        let _ = kubectl(&kubeconfig, &["delete", "namespace", ns, "--wait=false"]);
    }
}
