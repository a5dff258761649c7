use std::io::Read;

use anyhow::{bail, Context as _};
use clap::Args;
use hyper::Method;

use super::Target;
use crate::client::Client;
use crate::config;

#[derive(Args)]
pub struct Login {
    /// The credential (prefer --password-stdin: arguments show up in `ps`)
    #[arg(short = 'p', long)]
    pub password: Option<String>,
    /// Read the credential from stdin
    #[arg(short = 's', long)]
    pub password_stdin: bool,
    #[command(flatten)]
    pub target: Target,
}

impl Login {
    pub async fn run(self) -> anyhow::Result<()> {
        let token = match (&self.password, self.password_stdin) {
            (Some(p), false) => p.clone(),
            (None, true) => {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .context("reading the credential from stdin")?;
                s
            }
            (Some(_), true) => {
                bail!("give the credential with --password or --password-stdin, not both")
            }
            (None, false) => bail!("give the credential with --password-stdin (or --password)"),
        };
        let token = token.trim().to_string();
        if token.is_empty() {
            bail!("the credential is empty");
        }
        let url = config::gateway(self.target.gateway.as_deref(), None);
        let client = Client::new(&url, Some(token.clone()))?;
        let (status, body) = client
            .call(Method::GET, "/system/whoami", Vec::new())
            .await?;
        if status == hyper::StatusCode::UNAUTHORIZED {
            bail!("the gateway at {url} refused this credential");
        }
        crate::client::check(status, &body)?;
        let path = config::save_token(&url, &token)?;
        println!("Logged in to {url}; credential saved in {}", path.display());
        Ok(())
    }
}
