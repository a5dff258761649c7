//! `graphene watchdog`: the entrypoint of a function's container (see the
//! graphene-watchdog crate). Configured by environment variables, as
//! OpenFaaS's watchdogs are.

use anyhow::{bail, Result};
use clap::Args;

#[derive(Args)]
pub struct Watchdog {
    /// Exit 0 when the function is ready (the lock file exists), 1 when
    /// not: an exec health check for runtimes without HTTP probes.
    #[arg(long)]
    run_healthcheck: bool,
}

impl Watchdog {
    pub async fn run(self) -> Result<()> {
        if self.run_healthcheck {
            let lock = graphene_watchdog::lock_file();
            if lock.exists() {
                return Ok(());
            }
            bail!("not ready: {} does not exist", lock.display());
        }
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("GRAPHENE_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_writer(std::io::stderr)
            .init();
        let config = graphene_watchdog::Config::from_env(std::env::vars())?;
        graphene_watchdog::run(config).await?;
        Ok(())
    }
}
