//! Where the CLI finds the gateway and its credential. Environment variables
//! are read here and nowhere else.
//!
//! Gateway: `--gateway`, else `GRAPHENE_URL`, else the stack file's
//! `provider.gateway`, else `http://127.0.0.1:8080`.
//! Credential: `GRAPHENE_TOKEN`, else what `graphene login` stored for that
//! gateway, else the `admin-token` file of the local state directory.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

pub const DEFAULT_GATEWAY: &str = "http://127.0.0.1:8080";

pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The server's state directory: `--state-dir`, `GRAPHENE_STATE_DIR`, or
/// `~/.local/share/graphene`.
pub fn state_dir(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| env("GRAPHENE_STATE_DIR").map(PathBuf::from))
        .unwrap_or_else(|| {
            let home = env("HOME").unwrap_or_else(|| "/tmp".into());
            PathBuf::from(home).join(".local/share/graphene")
        })
}

pub fn gateway(flag: Option<&str>, from_stack: Option<&str>) -> String {
    flag.map(str::to_string)
        .or_else(|| env("GRAPHENE_URL"))
        .or_else(|| from_stack.filter(|s| !s.is_empty()).map(str::to_string))
        .unwrap_or_else(|| DEFAULT_GATEWAY.to_string())
        .trim_end_matches('/')
        .to_string()
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Saved {
    #[serde(default)]
    pub tokens: BTreeMap<String, String>,
}

fn saved_path() -> PathBuf {
    let base = env("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env("HOME").unwrap_or_else(|| "/tmp".into())).join(".config")
        });
    base.join("graphene/config.json")
}

pub fn load_saved() -> Saved {
    std::fs::read(saved_path())
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Stores a token for a gateway, readable only by the user.
pub fn save_token(gateway: &str, token: &str) -> anyhow::Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut saved = load_saved();
    saved.tokens.insert(gateway.to_string(), token.to_string());
    let path = saved_path();
    std::fs::create_dir_all(path.parent().expect("config path has a parent"))?;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(&serde_json::to_vec_pretty(&saved)?)?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

pub fn token(gateway: &str) -> Option<String> {
    env("GRAPHENE_TOKEN")
        .or_else(|| load_saved().tokens.get(gateway).cloned())
        .or_else(|| {
            // The local server's credential is only ever sent to a local
            // gateway, never to one a stack file names elsewhere.
            if !is_loopback(gateway) {
                return None;
            }
            let file = state_dir(None).join(graphene_gateway::TOKEN_FILE);
            std::fs::read_to_string(file)
                .ok()
                .map(|t| t.trim().to_string())
        })
}

/// What to do about a refused credential, given where this one came from.
pub fn credential_hint() -> String {
    if env("GRAPHENE_TOKEN").is_some() {
        return "hint: GRAPHENE_TOKEN is set, and the gateway refused it".to_string();
    }
    let file = state_dir(None).join(graphene_gateway::TOKEN_FILE);
    format!(
        "hint: give the server's admin credential: `graphene login --password-stdin < STATE_DIR/{}`, \
         or GRAPHENE_TOKEN; for a local server started with --state-dir, set GRAPHENE_STATE_DIR \
         to that folder (looked in {})",
        graphene_gateway::TOKEN_FILE,
        file.display()
    )
}

fn is_loopback(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return false;
    }
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if !h.ends_with(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_only() {
        assert!(super::is_loopback("http://127.0.0.1:8080"));
        assert!(super::is_loopback("http://localhost:8080/"));
        assert!(super::is_loopback("https://127.0.0.1:8443"));
        assert!(super::is_loopback("http://[::1]:8080"));
        assert!(!super::is_loopback("http://gateway.example.com:8080"));
        assert!(!super::is_loopback("http://127.0.0.1.evil.com"));
        assert!(!super::is_loopback("http://user@evil.com"));
    }
}
