use clap::Args;

use super::{StackArgs, Target};

#[derive(Args)]
pub struct Up {
    #[command(flatten)]
    pub stack: StackArgs,
    /// Seconds to wait for each function's handler to import (0: don't wait)
    #[arg(long, default_value_t = 60)]
    pub wait: u64,
    #[command(flatten)]
    pub target: Target,
}

impl Up {
    pub async fn run(self) -> anyhow::Result<()> {
        let file = self.stack.load()?;
        let client = self.target.client(Some(&file.stack.provider.gateway))?;
        super::build::build_all(&client, &file, self.stack.filter.as_deref())
            .await
            .map_err(|e| e.context("nothing was deployed"))?;
        super::deploy::deploy_all(
            &client,
            &file,
            self.stack.filter.as_deref(),
            &self.target,
            std::time::Duration::from_secs(self.wait),
        )
        .await
    }
}
