use clap::Args;
use graphene_core::api::ScaleServiceRequest;
use hyper::Method;

use super::{encode, Target};

#[derive(Args)]
pub struct Scale {
    pub name: String,
    /// Replica count
    #[arg(short = 'r', long)]
    pub replicas: u64,
    #[command(flatten)]
    pub target: Target,
}

impl Scale {
    pub async fn run(self) -> anyhow::Result<()> {
        let client = self.target.client(None)?;
        let body = serde_json::to_vec(&ScaleServiceRequest {
            service_name: self.name.clone(),
            replicas: self.replicas,
            namespace: self.target.namespace.clone().unwrap_or_default(),
        })?;
        client
            .expect(
                Method::POST,
                &format!("/system/scale-function/{}", encode(&self.name)),
                body,
            )
            .await?;
        println!("Scaled {} to {} replicas", self.name, self.replicas);
        Ok(())
    }
}
