use clap::Args;
use graphene_core::api::LogMessage;
use hyper::Method;

use super::{encode, Target};
use crate::client;

#[derive(Args)]
pub struct Logs {
    pub name: String,
    /// Keep streaming new lines
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only the last N lines
    #[arg(long)]
    pub tail: Option<u64>,
    /// Only lines since this RFC 3339 time
    #[arg(long)]
    pub since: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

impl Logs {
    pub async fn run(self) -> anyhow::Result<()> {
        let client = self.target.client(None)?;
        let mut path = format!(
            "/system/logs?name={}&follow={}",
            encode(&self.name),
            self.follow
        );
        if let Some(t) = self.tail {
            path.push_str(&format!("&tail={t}"));
        }
        if let Some(s) = &self.since {
            path.push_str(&format!("&since={}", encode(s)));
        }
        if let Some(ns) = &self.target.namespace {
            path.push_str(&format!("&namespace={}", encode(ns)));
        }
        let resp = client.send(Method::GET, &path, Vec::new(), &[]).await?;
        let resp = client::success(resp).await?;
        client::for_each_line(resp, |line| {
            match serde_json::from_str::<LogMessage>(line) {
                Ok(m) => println!("{} {} ({}) {}", m.timestamp, m.name, m.instance, m.text),
                Err(_) => println!("{line}"),
            }
            Ok(())
        })
        .await
    }
}
