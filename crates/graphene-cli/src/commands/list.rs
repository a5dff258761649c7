use clap::Args;
use graphene_core::api::FunctionStatus;
use hyper::Method;

use super::Target;

#[derive(Args)]
pub struct List {
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: Target,
}

impl List {
    pub async fn run(self) -> anyhow::Result<()> {
        let client = self.target.client(None)?;
        let body = client
            .expect(
                Method::GET,
                &format!("/system/functions{}", self.target.ns_query()),
                Vec::new(),
            )
            .await?;
        if self.json {
            println!("{}", String::from_utf8_lossy(&body));
            return Ok(());
        }
        let list: Vec<FunctionStatus> = serde_json::from_slice(&body)?;
        println!(
            "{:<24} {:<28} {:>11} {:>9} {:>6}",
            "Function", "Image", "Invocations", "Replicas", "Ready"
        );
        for f in list {
            println!(
                "{:<24} {:<28} {:>11} {:>9} {:>6}",
                f.name, f.image, f.invocation_count, f.replicas, f.available_replicas
            );
        }
        Ok(())
    }
}
