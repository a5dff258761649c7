use std::io::Read;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use graphene_core::api::Secret as Body;
use hyper::Method;

use super::Target;

#[derive(Args)]
pub struct Secret {
    #[command(subcommand)]
    pub command: SecretCommand,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Subcommand)]
pub enum SecretCommand {
    /// Create a secret (value from --from-literal, --from-file, or stdin).
    Create(Value),
    /// Change a secret's value; functions using it get the new value.
    Update(Value),
    /// List secret names (values are never shown).
    #[command(alias = "ls")]
    List,
    /// Remove a secret no function uses.
    #[command(alias = "rm")]
    Remove { name: String },
}

#[derive(Args)]
pub struct Value {
    pub name: String,
    /// The value, given on the command line
    #[arg(long, conflicts_with = "from_file")]
    pub from_literal: Option<String>,
    /// Read the value from a file
    #[arg(long)]
    pub from_file: Option<std::path::PathBuf>,
}

impl Value {
    fn body(&self, namespace: &Option<String>) -> anyhow::Result<Vec<u8>> {
        let bytes = match (&self.from_literal, &self.from_file) {
            (Some(v), _) => v.clone().into_bytes(),
            (None, Some(f)) => {
                std::fs::read(f).with_context(|| format!("--from-file: reading {}", f.display()))?
            }
            (None, None) => {
                let mut b = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut b)
                    .context("reading the value from stdin")?;
                b
            }
        };
        if bytes.is_empty() {
            bail!("the secret's value is empty");
        }
        use base64::Engine;
        Ok(serde_json::to_vec(&Body {
            name: self.name.clone(),
            namespace: namespace.clone().unwrap_or_default(),
            value: String::new(),
            raw_value: base64::engine::general_purpose::STANDARD.encode(bytes),
        })?)
    }
}

impl Secret {
    pub async fn run(self) -> anyhow::Result<()> {
        let client = self.target.client(None)?;
        let ns = &self.target.namespace;
        match &self.command {
            SecretCommand::Create(v) => {
                client
                    .expect(Method::POST, "/system/secrets", v.body(ns)?)
                    .await?;
                println!("Created secret {}", v.name);
            }
            SecretCommand::Update(v) => {
                client
                    .expect(Method::PUT, "/system/secrets", v.body(ns)?)
                    .await?;
                println!("Updated secret {}", v.name);
            }
            SecretCommand::List => {
                let body = client
                    .expect(
                        Method::GET,
                        &format!("/system/secrets{}", self.target.ns_query()),
                        Vec::new(),
                    )
                    .await?;
                let list: Vec<Body> = serde_json::from_slice(&body)?;
                for s in list {
                    println!("{}", s.name);
                }
            }
            SecretCommand::Remove { name } => {
                let body = serde_json::to_vec(&Body {
                    name: name.clone(),
                    namespace: ns.clone().unwrap_or_default(),
                    ..Default::default()
                })?;
                client
                    .expect(Method::DELETE, "/system/secrets", body)
                    .await?;
                println!("Removed secret {name}");
            }
        }
        Ok(())
    }
}
