use std::time::Duration;

use anyhow::bail;
use clap::Args;
use graphene_core::api::{RollbackRequest, REVISION_HEADER, ROLLBACK_OF_HEADER};
use http_body_util::BodyExt;
use hyper::Method;

use super::deploy::{wait_for_rollout, Deployed};
use super::{encode, Target};
use crate::client;

#[derive(Args)]
pub struct Rollback {
    pub name: String,
    /// The revision to go back to [default: the one that served before the serving one]
    #[arg(long)]
    pub to: Option<u64>,
    /// Seconds to wait until the rollback serves (0: don't wait)
    #[arg(long, default_value_t = 60)]
    pub wait: u64,
    #[command(flatten)]
    pub target: Target,
}

impl Rollback {
    pub async fn run(self) -> anyhow::Result<()> {
        let client = self.target.client(None)?;
        let body = serde_json::to_vec(&RollbackRequest {
            revision: self.to,
            namespace: self.target.namespace.clone().unwrap_or_default(),
        })?;
        let path = format!("/system/rollback/{}", encode(&self.name));
        let json = [("content-type".to_string(), "application/json".to_string())];
        let resp = client.send(Method::POST, &path, body, &json).await?;
        let header = |name: &str| -> Option<u64> {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
        };
        let revision = header(REVISION_HEADER);
        let to = header(ROLLBACK_OF_HEADER).or(self.to);
        let status = resp.status();
        let answer = resp.into_body().collect().await?.to_bytes();
        client::check(status, &answer)?;
        let made = revision.map_or(String::new(), |r| format!(" as revision {r}"));
        match to {
            Some(n) => println!("Rolled {} back to revision {n}{made}", self.name),
            None => println!("Rolled {} back{made}", self.name),
        }
        if self.wait == 0 {
            return Ok(());
        }
        let d = Deployed {
            name: self.name.clone(),
            namespace: self.target.namespace.clone().unwrap_or_default(),
            revision,
        };
        if !wait_for_rollout(&client, &d, Duration::from_secs(self.wait)).await? {
            bail!("the rollback of {} failed to start", self.name);
        }
        Ok(())
    }
}
