//! The fake provider passes the conformance suite, so gateway tests that
//! use it rely on the behaviour every provider has.

use graphene_core::names::FunctionRef;
use graphene_core::provider::Deployment;
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
        conformance::deployment(f, revision, image, "", replicas)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_provider_conforms() {
    conformance::run(&Fake(FakeProvider::new())).await;
}
