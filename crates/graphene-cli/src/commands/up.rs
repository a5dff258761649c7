use clap::Args;

use super::build::OciArgs;
use super::deploy::Deploy;

/// `deploy` with a build first: the same options, and how to build.
#[derive(Args)]
pub struct Up {
    #[command(flatten)]
    pub deploy: Deploy,
    #[command(flatten)]
    pub oci: OciArgs,
}

impl Up {
    pub async fn run(self) -> anyhow::Result<()> {
        self.deploy.run_with(Some(&self.oci)).await
    }
}
