//! The local runtime passes the provider conformance suite, with real
//! Python replicas built by its own builder.

use std::collections::HashMap;

use graphene_core::names::FunctionRef;
use graphene_core::provider::{BuildInput, Builder, Deployment};
use graphene_core::stack::Lang;
use graphene_local::{LocalBuilder, LocalConfig, LocalProvider};
use graphene_testing::conformance::{self, Harness, Image};

struct Local {
    provider: LocalProvider,
    digests: HashMap<&'static str, String>,
}

/// A function folder as the tar a build takes.
fn folder(handler: &str) -> bytes::Bytes {
    let mut b = tar::Builder::new(Vec::new());
    for (name, text) in [("handler.py", handler), ("requirements.txt", "")] {
        let mut h = tar::Header::new_gnu();
        h.set_size(text.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, text.as_bytes()).unwrap();
    }
    b.into_inner().unwrap().into()
}

async fn build(builder: &LocalBuilder, image: &str, handler: &str) -> String {
    let r = builder
        .build(
            BuildInput {
                image: image.into(),
                lang: Lang::Python3,
                archive: folder(handler),
            },
            Box::new(|line| eprintln!("[build] {line}")),
            Default::default(),
        )
        .await
        .unwrap();
    assert!(r.ok, "{}", r.error);
    r.digest
}

impl Harness for Local {
    type P = LocalProvider;

    fn provider(&self) -> &LocalProvider {
        &self.provider
    }

    fn deployment(
        &self,
        f: &FunctionRef,
        revision: u64,
        image: Image,
        replicas: u64,
    ) -> Deployment {
        let name = match image {
            Image::A => "conf-a:latest",
            Image::B => "conf-b:latest",
            Image::Broken => "conf-broken:latest",
            Image::Missing => "missing:latest",
        };
        let digest = self.digests.get(name).cloned().unwrap_or_default();
        conformance::deployment(f, revision, name, &digest, replicas)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_runtime_conforms() {
    let dir = std::env::temp_dir().join(format!("graphene-conformance-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (provider, builder) = LocalProvider::open(LocalConfig {
        dir: dir.join("local"),
        python: "python3".into(),
        // The suite is about the contract; the sandbox has tests of its own.
        sandbox: false,
        hidden: Vec::new(),
        logs_to_stdout: false,
        runner_exit: None,
    })
    .unwrap();
    let mut digests = HashMap::new();
    for (image, handler) in [
        ("conf-a:latest", conformance::handler("a")),
        ("conf-b:latest", conformance::handler("b")),
        ("conf-broken:latest", conformance::broken_handler()),
    ] {
        digests.insert(image, build(&builder, image, &handler).await);
    }
    let local = Local { provider, digests };
    conformance::run(&local).await;
    graphene_core::provider::Provider::shutdown(&local.provider).await;
    let _ = std::fs::remove_dir_all(&dir);
}
