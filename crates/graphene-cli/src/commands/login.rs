//! `graphene login`: stores a credential for a gateway after checking it
//! there. The credential is an API token or the admin credential
//! (`--password-stdin`), or an access token from an OIDC issuer: with a
//! client secret by the client-credentials grant (services, CI), without one
//! by the device authorization grant (a person, in a browser).

use std::io::Read;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use clap::Args;
use hyper::{Method, StatusCode};
use serde_json::Value;

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
    /// Sign in at this OIDC issuer instead (e.g. https://sso.example.com/realms/ml)
    #[arg(long, value_name = "URL", conflicts_with_all = ["password", "password_stdin"])]
    pub oidc_issuer: Option<String>,
    /// The OIDC client to sign in as
    #[arg(long, requires = "oidc_issuer")]
    pub client_id: Option<String>,
    /// Read the client's secret from stdin: the client-credentials grant
    /// (without it: the device authorization grant, in a browser)
    #[arg(long, requires = "oidc_issuer")]
    pub client_secret_stdin: bool,
    /// Scopes to ask for
    #[arg(long, requires = "oidc_issuer")]
    pub scope: Option<String>,
    /// The audience to ask the issuer for (RFC 8707 `resource`), when it needs one
    #[arg(long, requires = "oidc_issuer")]
    pub resource: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

fn read_stdin(what: &str) -> anyhow::Result<String> {
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .with_context(|| format!("reading {what} from stdin"))?;
    let s = s.trim().to_string();
    if s.is_empty() {
        bail!("{what} is empty");
    }
    Ok(s)
}

impl Login {
    pub async fn run(self) -> anyhow::Result<()> {
        let url = config::gateway(self.target.gateway.as_deref(), None);
        let token = match &self.oidc_issuer {
            Some(issuer) => self.oidc(issuer).await?,
            None => match (&self.password, self.password_stdin) {
                (Some(p), false) => p.trim().to_string(),
                (None, true) => read_stdin("the credential")?,
                (Some(_), true) => {
                    bail!("give the credential with --password or --password-stdin, not both")
                }
                (None, false) => bail!(
                    "give the credential with --password-stdin (or --password), or sign in with --oidc-issuer"
                ),
            },
        };
        if token.is_empty() {
            bail!("the credential is empty");
        }
        let client = Client::new(&url, Some(token.clone()))?;
        let (status, body) = client
            .call(Method::GET, "/system/whoami", Vec::new())
            .await?;
        if status == StatusCode::UNAUTHORIZED {
            bail!(
                "the gateway at {url} refused this credential: {}",
                String::from_utf8_lossy(&body).trim()
            );
        }
        crate::client::check(status, &body)?;
        let who: graphene_core::api::WhoAmI = serde_json::from_slice(&body)?;
        let path = config::save_token(&url, &token)?;
        println!(
            "Logged in to {url} as {}; credential saved in {}",
            who.principal,
            path.display()
        );
        Ok(())
    }

    /// An access token from the issuer.
    async fn oidc(&self, issuer: &str) -> anyhow::Result<String> {
        let client_id = self
            .client_id
            .as_deref()
            .ok_or_else(|| anyhow!("--client-id: name the OIDC client to sign in as"))?;
        let http = Client::new(issuer, None)?;
        let discovery = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let doc = json(
            http.fetch(Method::GET, &discovery, None, None).await?,
            &discovery,
        )?;
        let endpoint = |key: &str| {
            doc.get(key)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| anyhow!("{discovery} has no {key}"))
        };
        let token_endpoint = endpoint("token_endpoint")?;
        let mut extra: Vec<(&str, &str)> = Vec::new();
        if let Some(s) = &self.scope {
            extra.push(("scope", s));
        }
        if let Some(r) = &self.resource {
            extra.push(("resource", r));
        }
        if self.client_secret_stdin {
            let secret = read_stdin("the client secret")?;
            let mut form = vec![("grant_type", "client_credentials")];
            form.extend(&extra);
            let reply = http
                .fetch(
                    Method::POST,
                    &token_endpoint,
                    Some(&form),
                    Some((client_id, &secret)),
                )
                .await?;
            return access_token(json(reply, &token_endpoint)?);
        }
        let device_endpoint = endpoint("device_authorization_endpoint").map_err(|_| {
            anyhow!(
                "{issuer} does not offer the device authorization grant; use --client-secret-stdin"
            )
        })?;
        let mut form = vec![("client_id", client_id)];
        form.extend(&extra);
        let start = json(
            http.fetch(Method::POST, &device_endpoint, Some(&form), None)
                .await?,
            &device_endpoint,
        )?;
        let field = |k: &str| {
            start
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let device_code = field("device_code");
        if device_code.is_empty() {
            bail!("{device_endpoint} answered without a device_code");
        }
        let complete = field("verification_uri_complete");
        eprintln!(
            "To sign in, open {} and enter the code {}",
            field("verification_uri"),
            field("user_code")
        );
        if !complete.is_empty() {
            eprintln!("(or open {complete})");
        }
        let mut interval =
            Duration::from_secs(start.get("interval").and_then(Value::as_u64).unwrap_or(5));
        let expires = start
            .get("expires_in")
            .and_then(Value::as_u64)
            .unwrap_or(600);
        let deadline = Instant::now() + Duration::from_secs(expires);
        let mut form = vec![
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("device_code", device_code.as_str()),
            ("client_id", client_id),
        ];
        if let Some(r) = &self.resource {
            form.push(("resource", r));
        }
        while Instant::now() < deadline {
            tokio::time::sleep(interval).await;
            let (status, body) = http
                .fetch(Method::POST, &token_endpoint, Some(&form), None)
                .await?;
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            if status.is_success() {
                return access_token(v);
            }
            match v.get("error").and_then(Value::as_str) {
                Some("authorization_pending") => {}
                Some("slow_down") => interval += Duration::from_secs(5),
                Some("access_denied") => bail!("the sign-in was refused"),
                Some("expired_token") => break,
                _ => bail!(
                    "{token_endpoint} answered {status}: {}",
                    String::from_utf8_lossy(&body).trim()
                ),
            }
        }
        bail!("the sign-in code expired before it was used; run `graphene login` again")
    }
}

fn json((status, body): (StatusCode, bytes::Bytes), url: &str) -> anyhow::Result<Value> {
    let v: Value = serde_json::from_slice(&body)
        .map_err(|_| anyhow!("{url} answered {status} with something that is not JSON"))?;
    if !status.is_success() {
        let why = v
            .get("error_description")
            .or_else(|| v.get("error"))
            .and_then(Value::as_str)
            .unwrap_or("");
        bail!("{url} answered {status}: {why}");
    }
    Ok(v)
}

fn access_token(v: Value) -> anyhow::Result<String> {
    v.get("access_token")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| anyhow!("the issuer's answer has no access_token"))
}
