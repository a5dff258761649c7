//! `graphene registry login|logout`: credentials for an OCI registry, where
//! buildah, podman and docker read them (`REGISTRY_AUTH_FILE`, else
//! `~/.docker/config.json`), checked against the registry first.

use std::io::Read as _;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use base64::Engine as _;
use bytes::Bytes;
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};

#[derive(Args)]
pub struct Registry {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a credential against a registry and store it for the builders.
    Login(Login),
    /// Forget the stored credential of a registry.
    Logout {
        /// The registry (host[:port])
        server: String,
    },
}

#[derive(Args)]
struct Login {
    /// The registry (host[:port], e.g. registry.example.com)
    server: String,
    #[arg(short, long)]
    username: String,
    /// Read the password (or token) from stdin
    #[arg(long)]
    password_stdin: bool,
    /// The password (visible to other users of this machine: prefer
    /// --password-stdin)
    #[arg(short, long)]
    password: Option<String>,
}

impl Registry {
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Login(l) => l.run().await,
            Command::Logout { server } => {
                let path = auth_file()?;
                let mut config = read_config(&path)?;
                let removed = config
                    .get_mut("auths")
                    .and_then(|a| a.as_object_mut())
                    .and_then(|a| a.remove(&server))
                    .is_some();
                if !removed {
                    bail!("no credential for {server} in {}", path.display());
                }
                write_config(&path, &config)?;
                eprintln!(
                    "Removed the credential for {server} from {}",
                    path.display()
                );
                Ok(())
            }
        }
    }
}

impl Login {
    async fn run(self) -> anyhow::Result<()> {
        let server = self
            .server
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let password = match (self.password_stdin, self.password) {
            (true, _) => {
                let mut text = String::new();
                std::io::stdin().read_to_string(&mut text)?;
                text.trim_end_matches(['\n', '\r']).to_string()
            }
            (false, Some(p)) => p,
            (false, None) => bail!("give the password with --password-stdin (or -p)"),
        };
        if password.is_empty() {
            bail!("the password is empty");
        }
        check(&server, &self.username, &password).await?;
        let path = auth_file()?;
        let mut config = read_config(&path)?;
        let auth = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{password}", self.username));
        let auths = config
            .as_object_mut()
            .context("the auth file is not a JSON object")?
            .entry("auths")
            .or_insert_with(|| serde_json::json!({}));
        auths
            .as_object_mut()
            .context("auths in the auth file is not a JSON object")?
            .insert(server.clone(), serde_json::json!({ "auth": auth }));
        write_config(&path, &config)?;
        eprintln!(
            "Logged in to {server} as {}; stored in {}",
            self.username,
            path.display()
        );
        Ok(())
    }
}

/// Where builders read registry credentials: `REGISTRY_AUTH_FILE`, else
/// docker's config.
fn auth_file() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".docker/config.json"))
}

fn read_config(path: &PathBuf) -> anyhow::Result<serde_json::Value> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not valid JSON", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(serde_json::json!({})),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes the file readable by its owner only (it holds credentials).
fn write_config(path: &PathBuf, config: &serde_json::Value) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(&serde_json::to_vec_pretty(config)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Checks the credential with the registry API's login handshake: `/v2/`,
/// then basic auth there or at the token service it names.
async fn check(server: &str, user: &str, password: &str) -> anyhow::Result<()> {
    let http = graphene_http::client::<Full<Bytes>>(None)?;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    );
    let get = |url: String, auth: Option<String>| {
        let http = &http;
        async move {
            let mut req = Request::get(&url);
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let resp = http
                .request(req.body(Full::new(Bytes::new()))?)
                .await
                .map_err(|e| anyhow::anyhow!("could not reach {url}: {}", root_cause(&e)))?;
            let status = resp.status();
            let challenge = resp
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let _ = resp.into_body().collect().await;
            anyhow::Ok((status, challenge))
        }
    };
    // HTTPS; plain HTTP only for a registry on this machine.
    let loopback = ["localhost", "127.", "[::1]"]
        .iter()
        .any(|p| server.starts_with(p));
    let mut base = format!("https://{server}");
    let (status, challenge) = match get(format!("{base}/v2/"), None).await {
        Ok(r) => r,
        Err(_) if loopback => {
            base = format!("http://{server}");
            get(format!("{base}/v2/"), None).await?
        }
        Err(e) => return Err(e),
    };
    let answer = match status {
        StatusCode::OK => {
            eprintln!("note: {server} asks for no credential");
            return Ok(());
        }
        StatusCode::UNAUTHORIZED if challenge.starts_with("Basic") => {
            get(format!("{base}/v2/"), Some(basic)).await?.0
        }
        StatusCode::UNAUTHORIZED if challenge.starts_with("Bearer") => {
            let field = |name: &str| {
                challenge
                    .split(&format!("{name}=\""))
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .map(str::to_string)
            };
            let realm = field("realm").context("the registry's challenge names no realm")?;
            let service = field("service").unwrap_or_default();
            let url = match service.is_empty() {
                true => realm,
                false => format!("{realm}?service={}", super::encode(&service)),
            };
            get(url, Some(basic)).await?.0
        }
        other => bail!("{server}/v2/ answered {other}, not a registry's login challenge"),
    };
    match answer {
        StatusCode::OK => Ok(()),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            bail!("{server} refused the credential of {user} ({answer})")
        }
        other => bail!("{server} answered {other} to the login"),
    }
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
