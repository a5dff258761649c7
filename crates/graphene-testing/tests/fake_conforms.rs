//! The fake provider passes the conformance suite, so gateway tests that
//! use it rely on the behaviour every provider has.

use graphene_core::api::FunctionDeployment;
use graphene_core::names::FunctionRef;
use graphene_core::provider::Deployment;
use graphene_core::settings::FunctionSettings;
use graphene_testing::conformance::{self, Harness, Image};
use graphene_testing::fake::FakeProvider;

struct Fake(FakeProvider);

impl Harness for Fake {
    type P = FakeProvider;

    fn provider(&self) -> &FakeProvider {
        &self.0
    }

    fn deployment(
        &self,
        f: &FunctionRef,
        revision: u64,
        image: Image,
        replicas: u64,
    ) -> Deployment {
        let image = match image {
            Image::A => "conf:a",
            Image::B => "conf:b",
            Image::Broken => "conf-broken:a",
            Image::Missing => "missing:a",
        };
        let spec = FunctionDeployment {
            service: f.name.clone(),
            image: image.into(),
            namespace: f.namespace.clone(),
            labels: Some(
                [("com.openfaas.scale.max", "2")]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            annotations: Some(
                [
                    ("com.graphene.workers", "1"),
                    ("com.graphene.timeout", "3s"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ),
            ..Default::default()
        };
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
async fn the_fake_provider_conforms() {
    conformance::run(&Fake(FakeProvider::new())).await;
}
