use std::time::Duration;

use anyhow::bail;
use clap::Args;
use graphene_core::api::FunctionStatus;
use hyper::{Method, StatusCode};
use tokio::time::Instant;

use super::{encode, StackArgs, Target};
use crate::client::{self, Client};
use crate::stackfile::StackFile;

#[derive(Args)]
pub struct Deploy {
    #[command(flatten)]
    pub stack: StackArgs,
    /// Seconds to wait for each function's handler to import (0: don't wait)
    #[arg(long, default_value_t = 60)]
    pub wait: u64,
    #[command(flatten)]
    pub target: Target,
}

impl Deploy {
    pub async fn run(self) -> anyhow::Result<()> {
        self.run_with(false).await
    }

    /// Deploys, after building first when `build` is set (`graphene up`).
    pub async fn run_with(self, build: bool) -> anyhow::Result<()> {
        let file = self.stack.load()?;
        let client = self.target.client(Some(&file.stack.provider.gateway))?;
        let filter = self.stack.filter.as_deref();
        if build {
            super::build::build_all(&client, &file, filter)
                .await
                .map_err(|e| e.context("nothing was deployed"))?;
        }
        deploy_all(
            &client,
            &file,
            filter,
            &self.target,
            Duration::from_secs(self.wait),
        )
        .await
    }
}

/// Deploys the selected functions: an update if they exist, else a create
/// (as faas-cli does).
pub async fn deploy_all(
    client: &Client,
    file: &StackFile,
    filter: Option<&str>,
    target: &Target,
    wait: Duration,
) -> anyhow::Result<()> {
    let mut deployed = Vec::new();
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
        deployed.push((name.clone(), spec.namespace.clone()));
    }
    if wait.is_zero() {
        return Ok(());
    }
    wait_until_started(client, deployed, wait).await
}

/// Waits until each function's new version answers (its handler imported),
/// reporting import errors; the previous version keeps serving meanwhile.
async fn wait_until_started(
    client: &Client,
    mut pending: Vec<(String, String)>,
    wait: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + wait;
    let mut failed = 0;
    while !pending.is_empty() {
        let mut still = Vec::new();
        for (name, ns) in pending {
            let query = if ns.is_empty() {
                String::new()
            } else {
                format!("?namespace={}", encode(&ns))
            };
            let body = client
                .expect(
                    Method::GET,
                    &format!("/system/function/{}{query}", encode(&name)),
                    Vec::new(),
                )
                .await?;
            let status: FunctionStatus = serde_json::from_slice(&body)?;
            let runtime = status.graphene.unwrap_or_default();
            if let Some(error) = runtime.import_error {
                eprintln!("error: {name} failed to import its handler: {error}\n  (see `graphene logs {name}`)");
                failed += 1;
            } else if status.replicas == 0 && runtime.parent.as_ref().is_none_or(|p| p.ready) {
                // At zero: ready once the warm parent imported the handler.
                eprintln!("{name} is ready (at zero replicas; the next call wakes it)");
            } else if (runtime.instances.is_empty() && status.available_replicas > 0)
                || runtime.instances.iter().any(|i| i.ready && !i.retiring)
            {
                eprintln!("{name} is ready");
            } else {
                still.push((name, ns));
            }
        }
        pending = still;
        if !pending.is_empty() {
            if Instant::now() >= deadline {
                for (name, _) in &pending {
                    eprintln!(
                        "{name} is still starting after {}s; follow it with `graphene logs {name} --follow`",
                        wait.as_secs()
                    );
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    if failed > 0 {
        bail!("{failed} function(s) failed to start; a previous version, if any, keeps serving");
    }
    Ok(())
}
