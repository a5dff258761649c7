use clap::{Args, Subcommand};
use graphene_core::api::{AuditEntry, GrantInfo, GrantSpec, WhoAmI};
use hyper::Method;

use super::{encode, Target};

#[derive(Args)]
pub struct Grant {
    #[command(subcommand)]
    pub command: GrantCommand,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Subcommand)]
pub enum GrantCommand {
    /// Give a principal actions on a resource.
    Add(Add),
    /// List grants.
    #[command(alias = "ls")]
    List {
        /// Only this principal's
        #[arg(long)]
        principal: Option<String>,
    },
    /// Remove a grant by id.
    #[command(alias = "rm")]
    Remove { id: String },
}

#[derive(Args)]
pub struct Add {
    /// token:<name>, user:<subject>, role:<role>, or anyone
    pub principal: String,
    /// Comma-separated: invoke, read, deploy, manage-secrets, admin
    pub actions: String,
    /// *, namespace:<ns>, <ns>/<name> or <name>[.<ns>]; * is a wildcard in names
    pub resource: String,
    /// Rate limit, e.g. 10/s, 600/m, 10000/d
    #[arg(long)]
    pub rate: Option<String>,
    /// Largest burst above the rate [default: the rate's count]
    #[arg(long, requires = "rate")]
    pub burst: Option<u64>,
}

fn print(list: &[GrantInfo]) {
    println!(
        "{:<14} {:<28} {:<28} {:<24} {:<10} CREATED BY",
        "ID", "PRINCIPAL", "ACTIONS", "RESOURCE", "RATE"
    );
    for g in list {
        println!(
            "{:<14} {:<28} {:<28} {:<24} {:<10} {}",
            g.id,
            g.principal,
            g.actions.join(","),
            g.resource,
            g.rate_limit.as_deref().unwrap_or("-"),
            g.created_by
        );
    }
}

impl Grant {
    pub async fn run(self) -> anyhow::Result<()> {
        let client = self.target.client(None)?;
        match self.command {
            GrantCommand::Add(a) => {
                let spec = GrantSpec {
                    principal: a.principal,
                    actions: a.actions.split(',').map(|s| s.trim().to_string()).collect(),
                    resource: a.resource,
                    rate_limit: a.rate,
                    burst: a.burst,
                };
                let body = client
                    .expect(Method::POST, "/system/grants", serde_json::to_vec(&spec)?)
                    .await?;
                let g: GrantInfo = serde_json::from_slice(&body)?;
                println!(
                    "Granted {} {} on {} (id {})",
                    g.principal,
                    g.actions.join(","),
                    g.resource,
                    g.id
                );
            }
            GrantCommand::List { principal } => {
                let path = match principal {
                    Some(p) => format!("/system/grants?principal={}", encode(&p)),
                    None => "/system/grants".into(),
                };
                let body = client.expect(Method::GET, &path, "").await?;
                print(&serde_json::from_slice::<Vec<GrantInfo>>(&body)?);
            }
            GrantCommand::Remove { id } => {
                client
                    .expect(
                        Method::DELETE,
                        &format!("/system/grants/{}", encode(&id)),
                        "",
                    )
                    .await?;
                println!("Removed grant {id}");
            }
        }
        Ok(())
    }
}

/// `graphene audit`: who changed what, when (newest first).
#[derive(Args)]
pub struct Audit {
    /// How many entries
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    #[command(flatten)]
    pub target: Target,
}

impl Audit {
    pub async fn run(self) -> anyhow::Result<()> {
        let client = self.target.client(None)?;
        let body = client
            .expect(
                Method::GET,
                &format!("/system/audit?limit={}", self.limit),
                "",
            )
            .await?;
        let list: Vec<AuditEntry> = serde_json::from_slice(&body)?;
        println!(
            "{:<21} {:<24} {:<16} {:<28} DETAIL",
            "AT", "WHO", "ACTION", "TARGET"
        );
        for e in list {
            println!(
                "{:<21} {:<24} {:<16} {:<28} {}",
                e.at, e.principal, e.action, e.target, e.detail
            );
        }
        Ok(())
    }
}

/// `graphene whoami`: the principal and roles the gateway sees.
#[derive(Args)]
pub struct Whoami {
    #[command(flatten)]
    pub target: Target,
}

impl Whoami {
    pub async fn run(self) -> anyhow::Result<()> {
        let client = self.target.client(None)?;
        let body = client.expect(Method::GET, "/system/whoami", "").await?;
        let w: WhoAmI = serde_json::from_slice(&body)?;
        println!("{}", w.principal);
        if !w.roles.is_empty() {
            println!("roles: {}", w.roles.join(", "));
        }
        Ok(())
    }
}
