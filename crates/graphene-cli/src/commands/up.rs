use clap::Args;

use super::deploy::Deploy;

/// `deploy` with a build first: the same options.
#[derive(Args)]
pub struct Up {
    #[command(flatten)]
    pub deploy: Deploy,
}

impl Up {
    pub async fn run(self) -> anyhow::Result<()> {
        self.deploy.run_with(true).await
    }
}
