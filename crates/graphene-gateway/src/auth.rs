//! The admin credential: created on first start, written once to
//! `admin-token` in the state directory (owner-only), stored in the database
//! only as a SHA-256 hash. Management routes accept it as HTTP basic auth
//! (user `admin`, as faas-cli login sends) or as a bearer token.

use std::path::Path;

use axum::http::HeaderMap;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::store::Store;

pub const ADMIN: &str = "admin";
pub const TOKEN_FILE: &str = "admin-token";

pub fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Makes the admin credential if the database has none. Returns the path of
/// the file holding it when it was just created.
pub fn ensure_admin(store: &Store, state_dir: &Path) -> anyhow::Result<Option<std::path::PathBuf>> {
    if store.credential_hash(ADMIN)?.is_some() {
        return Ok(None);
    }
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    let token = format!(
        "gph_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let path = state_dir.join(TOKEN_FILE);
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::remove_file(&path);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        writeln!(f, "{token}")?;
        f.sync_all()?;
    }
    store.put_credential(ADMIN, &hash(&token))?;
    Ok(Some(path))
}

/// The credential a request presents, from `Authorization: Bearer` or basic
/// auth (any user name is refused except `admin`).
pub fn presented(headers: &HeaderMap) -> Option<String> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (user, pass) = text.split_once(':')?;
        return (user == ADMIN).then(|| pass.to_string());
    }
    None
}

/// Compares in constant time.
pub fn matches(presented: &str, stored_hash: &str) -> bool {
    let a = hash(presented);
    a.len() == stored_hash.len()
        && a.bytes()
            .zip(stored_hash.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn reads_basic_and_bearer() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer abc"));
        assert_eq!(presented(&h).as_deref(), Some("abc"));
        let basic = base64::engine::general_purpose::STANDARD.encode("admin:s3cret");
        h.insert(
            "authorization",
            HeaderValue::from_str(&format!("Basic {basic}")).unwrap(),
        );
        assert_eq!(presented(&h).as_deref(), Some("s3cret"));
        let other = base64::engine::general_purpose::STANDARD.encode("bob:s3cret");
        h.insert(
            "authorization",
            HeaderValue::from_str(&format!("Basic {other}")).unwrap(),
        );
        assert_eq!(presented(&h), None);
        assert!(matches("abc", &hash("abc")));
        assert!(!matches("abd", &hash("abc")));
    }
}
