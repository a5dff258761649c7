use anyhow::bail;
use clap::Args;
use graphene_core::api::DeleteFunctionRequest;
use hyper::Method;

use super::{StackArgs, Target};
use crate::stackfile::{self, StackFile};

#[derive(Args)]
pub struct Rm {
    /// Functions to remove [default: those of the stack file]
    pub names: Vec<String>,
    #[command(flatten)]
    pub stack: StackArgs,
    #[command(flatten)]
    pub target: Target,
}

impl Rm {
    pub async fn run(self) -> anyhow::Result<()> {
        let (names, gateway) = if self.names.is_empty() {
            let file = StackFile::load(&stackfile::default_path(self.stack.file.clone()))?;
            let names = file
                .select(self.stack.filter.as_deref())?
                .into_iter()
                .map(|(n, _)| n.clone())
                .collect();
            (names, Some(file.stack.provider.gateway.clone()))
        } else {
            (self.names.clone(), None)
        };
        let client = self.target.client(gateway.as_deref())?;
        let mut failed = 0;
        for name in names {
            let body = serde_json::to_vec(&DeleteFunctionRequest {
                function_name: name.clone(),
                namespace: self.target.namespace.clone().unwrap_or_default(),
            })?;
            match client
                .expect(Method::DELETE, "/system/functions", body)
                .await
            {
                Ok(_) => println!("Removed {name}"),
                Err(e) => {
                    eprintln!("error: removing {name}: {e:#}");
                    failed += 1;
                }
            }
        }
        if failed > 0 {
            bail!("{failed} function(s) could not be removed");
        }
        Ok(())
    }
}
