use clap::Args;

use super::{StackArgs, Target};

#[derive(Args)]
pub struct Up {
    #[command(flatten)]
    pub stack: StackArgs,
    #[command(flatten)]
    pub target: Target,
}

impl Up {
    pub async fn run(self) -> anyhow::Result<()> {
        let file = self.stack.load()?;
        let client = self.target.client(Some(&file.stack.provider.gateway))?;
        super::build::build_all(&client, &file, self.stack.filter.as_deref()).await?;
        super::deploy::deploy_all(&client, &file, self.stack.filter.as_deref(), &self.target).await
    }
}
