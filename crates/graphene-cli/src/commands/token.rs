use anyhow::bail;
use clap::{Args, Subcommand};
use graphene_core::api::{GrantSpec, TokenInfo, TokenRequest};
use hyper::Method;

use super::{encode, Target};

#[derive(Args)]
pub struct Token {
    #[command(subcommand)]
    pub command: TokenCommand,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create an API token; it is printed once, on stdout, and stored only as a hash.
    Create(Create),
    /// List tokens (never their values).
    #[command(alias = "ls")]
    List,
    /// Revoke a token and remove its grants.
    #[command(alias = "rm")]
    Revoke { name: String },
}

#[derive(Args)]
pub struct Create {
    pub name: String,
    /// Who it is for (a person, team or customer) [default: you]
    #[arg(long)]
    pub owner: Option<String>,
    /// Valid for this long, e.g. 30d, 12h [default: until revoked]
    #[arg(long)]
    pub expires: Option<String>,
    /// ACTIONS:RESOURCE, e.g. invoke:sentiment, invoke,read:namespace:team, deploy:*; repeatable
    #[arg(long = "grant", value_name = "ACTIONS:RESOURCE")]
    pub grants: Vec<String>,
    /// Rate limit on every grant given here, e.g. 10/s, 600/m, 10000/d
    #[arg(long)]
    pub rate: Option<String>,
    /// Largest burst above the rate [default: the rate's count]
    #[arg(long, requires = "rate")]
    pub burst: Option<u64>,
}

/// `invoke,read:namespace:team` → actions and resource.
pub fn grant_spec(
    text: &str,
    rate: &Option<String>,
    burst: Option<u64>,
) -> anyhow::Result<GrantSpec> {
    let Some((actions, resource)) = text.split_once(':') else {
        bail!("--grant {text:?}: write ACTIONS:RESOURCE, e.g. invoke:sentiment");
    };
    Ok(GrantSpec {
        principal: String::new(),
        actions: actions.split(',').map(|a| a.trim().to_string()).collect(),
        resource: resource.to_string(),
        rate_limit: rate.clone(),
        burst,
    })
}

pub fn grants_text(info: &TokenInfo) -> String {
    let list: Vec<String> = info
        .grants
        .iter()
        .map(|g| {
            let rate = g
                .rate_limit
                .as_ref()
                .map(|r| format!(" @{r}"))
                .unwrap_or_default();
            format!("{} {}{rate}", g.actions.join(","), g.resource)
        })
        .collect();
    if list.is_empty() {
        "-".into()
    } else {
        list.join("; ")
    }
}

impl Token {
    pub async fn run(self) -> anyhow::Result<()> {
        let client = self.target.client(None)?;
        match self.command {
            TokenCommand::Create(c) => {
                let grants = c
                    .grants
                    .iter()
                    .map(|g| grant_spec(g, &c.rate, c.burst))
                    .collect::<anyhow::Result<_>>()?;
                if c.rate.is_some() && c.grants.is_empty() {
                    bail!("--rate applies to the token's grants; give at least one --grant");
                }
                let req = TokenRequest {
                    name: c.name.clone(),
                    owner: c.owner.unwrap_or_default(),
                    expires_in: c.expires.unwrap_or_default(),
                    grants,
                };
                let body = client
                    .expect(Method::POST, "/system/tokens", serde_json::to_vec(&req)?)
                    .await?;
                let info: TokenInfo = serde_json::from_slice(&body)?;
                eprintln!(
                    "Created token {} for {} (expires {}; grants: {}). It is shown only now:",
                    info.name,
                    info.owner,
                    info.expires_at.as_deref().unwrap_or("never"),
                    grants_text(&info)
                );
                println!("{}", info.token);
            }
            TokenCommand::List => {
                let body = client.expect(Method::GET, "/system/tokens", "").await?;
                let list: Vec<TokenInfo> = serde_json::from_slice(&body)?;
                println!(
                    "{:<20} {:<20} {:<22} {:<22} GRANTS",
                    "NAME", "OWNER", "CREATED", "EXPIRES"
                );
                for t in list {
                    let expires = match (&t.expires_at, t.expired) {
                        (Some(at), true) => format!("{at} (expired)"),
                        (Some(at), false) => at.clone(),
                        (None, _) => "never".into(),
                    };
                    println!(
                        "{:<20} {:<20} {:<22} {:<22} {}",
                        t.name,
                        t.owner,
                        t.created_at,
                        expires,
                        grants_text(&t)
                    );
                }
            }
            TokenCommand::Revoke { name } => {
                client
                    .expect(
                        Method::DELETE,
                        &format!("/system/tokens/{}", encode(&name)),
                        "",
                    )
                    .await?;
                println!("Revoked token {name}");
            }
        }
        Ok(())
    }
}
