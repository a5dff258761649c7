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
use graphene_core::settings::FunctionSettings;
use graphene_kubernetes::{KubernetesConfig, KubernetesProvider};
use graphene_testing::conformance::{self, Harness, Image};
use util::registry::{ok, Registry};
use util::{TempDir, BIN};

/// Starts the test cluster (building it the first time); its admin
/// kubeconfig.
fn cluster() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/k8s-cluster.sh");
    let out = ok(
        Command::new(script).arg("start").output().unwrap(),
        "scripts/k8s-cluster.sh start",
    );
    PathBuf::from(out.lines().last().expect("the kubeconfig path").trim())
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> std::process::Output {
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .unwrap()
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
        let spec = conformance::spec(f, &self.images[&image]);
        Deployment {
            function: f.clone(),
            revision,
            settings: FunctionSettings::from_deployment(&spec).unwrap(),
            spec,
            image_digest: String::new(),
            secrets: Vec::new(),
            replicas,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_provider_conforms() {
    let kubeconfig = cluster();
    // The suite's namespace, empty.
    let _ = kubectl(
        &kubeconfig,
        &["delete", "namespace", "conformance", "--wait=true"],
    );
    ok(
        kubectl(&kubeconfig, &["create", "namespace", "conformance"]),
        "kubectl create namespace",
    );
    let reg = Registry::start(false);
    let images = images(&reg);
    std::env::set_var("KUBECONFIG", &kubeconfig);
    let client = KubernetesProvider::client().await.unwrap();
    let kube = Kube {
        provider: KubernetesProvider::new(KubernetesConfig {
            client,
            namespaces: vec!["conformance".into()],
        }),
        images,
    };
    conformance::run(&kube).await;
    let _ = kubectl(
        &kubeconfig,
        &["delete", "namespace", "conformance", "--wait=false"],
    );
}
