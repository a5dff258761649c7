use anyhow::bail;
use clap::Args;
use hyper::{Method, StatusCode};

use super::{StackArgs, Target};
use crate::client::{self, Client};
use crate::stackfile::StackFile;

#[derive(Args)]
pub struct Deploy {
    #[command(flatten)]
    pub stack: StackArgs,
    #[command(flatten)]
    pub target: Target,
}

impl Deploy {
    pub async fn run(self) -> anyhow::Result<()> {
        let file = self.stack.load()?;
        let client = self.target.client(Some(&file.stack.provider.gateway))?;
        deploy_all(&client, &file, self.stack.filter.as_deref(), &self.target).await
    }
}

/// Deploys the selected functions: an update if they exist, else a create
/// (as faas-cli does).
pub async fn deploy_all(
    client: &Client,
    file: &StackFile,
    filter: Option<&str>,
    target: &Target,
) -> anyhow::Result<()> {
    for (name, f) in file.select(filter)? {
        if f.lang.is_some() {
            file.handler_dir(name, f)?;
        }
        let mut spec = f.deployment(name);
        if let Some(ns) = &target.namespace {
            spec.namespace = ns.clone();
        }
        let body = serde_json::to_vec(&spec)?;
        let (mut status, mut answer) = client
            .call(Method::PUT, "/system/functions", body.clone())
            .await?;
        if status == StatusCode::NOT_FOUND {
            (status, answer) = client.call(Method::POST, "/system/functions", body).await?;
        }
        if let Err(e) = client::check(status, &answer) {
            bail!("deploying {name}: {e}");
        }
        let ns = if spec.namespace.is_empty() {
            String::new()
        } else {
            format!(".{}", spec.namespace)
        };
        println!("Deployed {name}: {}/function/{name}{ns}", client.base);
    }
    Ok(())
}
