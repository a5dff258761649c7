use clap::Args;
use graphene_core::api::History as Revisions;
use hyper::Method;

use super::{encode, Target};

#[derive(Args)]
pub struct History {
    pub name: String,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: Target,
}

impl History {
    pub async fn run(self) -> anyhow::Result<()> {
        let client = self.target.client(None)?;
        let path = format!(
            "/system/revisions/{}{}",
            encode(&self.name),
            self.target.ns_query()
        );
        let body = client.expect(Method::GET, &path, Vec::new()).await?;
        if self.json {
            println!("{}", String::from_utf8_lossy(&body));
            return Ok(());
        }
        let h: Revisions = serde_json::from_slice(&body)?;
        println!(
            "{:<9} {:<12} {:<24} {:<16} {:<21} NOTE",
            "REVISION", "STATE", "IMAGE", "BY", "CREATED"
        );
        for r in &h.revisions {
            let mut note = Vec::new();
            if r.serving {
                note.push("serving".to_string());
            }
            if let Some(n) = r.rollback_of {
                note.push(format!("rollback to {n}"));
            }
            if !r.reason.is_empty() {
                note.push(r.reason.clone());
            }
            println!(
                "{:<9} {:<12} {:<24} {:<16} {:<21} {}",
                r.revision,
                r.state.as_str(),
                r.image,
                r.created_by,
                r.created_at,
                note.join("; ")
            );
        }
        Ok(())
    }
}
