//! Credentials. The admin credential is created on first start, written once
//! to `admin-token` in the state directory (owner-only) and stored only as a
//! SHA-256 hash; it may do everything. API tokens (`gph_...`) are shown once
//! and stored as hashes too. Bearer JWTs go to `oidc.rs`. Every request gets
//! an [`Identity`] (anonymous when it sends no credential); a credential that
//! does not check out is a 401, whatever the route.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use graphene_core::provider::Provider;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::access::{Action, Grant, Identity, Permit, Policy, TokenRecord};
use crate::error::{ApiError, ApiResult};
use crate::oidc::Rejection;
use crate::store::Store;
use crate::Gateway;

pub const ADMIN: &str = "admin";
pub const TOKEN_FILE: &str = "admin-token";

pub fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Makes the admin credential if the database has none. Returns the path of
/// the file holding it when it was just created. With `given` (a Secret
/// mounted into every gateway replica, so that all accept the same one),
/// the credential is the one in that file, read at every start.
pub fn ensure_admin(
    store: &Store,
    state_dir: &Path,
    given: Option<&Path>,
) -> anyhow::Result<Option<std::path::PathBuf>> {
    if let Some(file) = given {
        let token = std::fs::read_to_string(file).map_err(|e| {
            anyhow::anyhow!("--admin-token-file: cannot read {}: {e}", file.display())
        })?;
        let token = token.trim();
        if token.is_empty() {
            anyhow::bail!("--admin-token-file: {} is empty", file.display());
        }
        store.put_credential(ADMIN, &hash(token))?;
        return Ok(None);
    }
    if store.credential_hash(ADMIN)?.is_some() {
        return Ok(None);
    }
    let path = state_dir.join(TOKEN_FILE);
    let token = new_token();
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

/// The credential a request presents: `Authorization: Bearer <token>`, or
/// basic auth with user `admin` (as faas-cli sends). `Ok(None)` when there is
/// no `Authorization` header.
pub fn presented(headers: &HeaderMap) -> Result<Option<String>, &'static str> {
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let malformed = "Authorization: use `Bearer <token>`, or basic auth with user admin";
    let value = value.to_str().map_err(|_| malformed)?;
    let (scheme, rest) = value.split_once(' ').ok_or(malformed)?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
        return Ok(Some(rest.to_string()));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .map_err(|_| malformed)?;
        let text = String::from_utf8(decoded).map_err(|_| malformed)?;
        return match text.split_once(':') {
            Some((ADMIN, pass)) => Ok(Some(pass.to_string())),
            _ => Err("Authorization: basic auth is for user admin; send other tokens as `Bearer <token>`"),
        };
    }
    Err(malformed)
}

/// A new API token: `gph_` and 32 random bytes.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!(
        "gph_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
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

/// The connection's peer address, put on each request by the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

pub fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, message)
}

pub(crate) fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

const NEEDS_CREDENTIAL: &str = "this needs a credential: send `Authorization: Bearer <token>` with an API token, an OIDC access token or the admin credential";

impl<P: Provider> Gateway<P> {
    pub(crate) fn policy(&self) -> Arc<Policy> {
        self.policy.read().expect("policy lock").clone()
    }

    /// Reads tokens and grants from their store again (after a change to
    /// them, here or by another gateway) and rebuilds the policy.
    pub(crate) async fn refresh_access(&self) -> ApiResult<()> {
        // One at a time, so an older read never replaces a newer.
        let _one = self.refreshing.lock().await;
        let tokens = self.access.tokens().await?;
        let grants = self.access.grants().await?;
        let mut set = crate::access::Policy {
            tokens: tokens
                .iter()
                .map(|t| (t.hash.clone(), TokenRecord::from_stored(t)))
                .collect(),
            ..Default::default()
        };
        for g in &grants {
            match Grant::from_stored(g) {
                Ok(g) => set.grants.push(g),
                Err(e) => tracing::warn!("{e}; the grant is left out"),
            }
        }
        *self.access_set.write().expect("access lock") = Arc::new(set);
        self.reload_access()
    }

    /// Rebuilds the in-memory policy from the tokens and grants last read
    /// and the functions (after any change to them).
    pub(crate) fn reload_access(&self) -> ApiResult<()> {
        // One reload at a time, so an older snapshot never replaces a newer.
        let _one = self.reloading.lock().expect("reload lock");
        let set = self.access_set.read().expect("access lock").clone();
        let mut p = Policy {
            tokens: set.tokens.clone(),
            grants: set.grants.clone(),
            ..Default::default()
        };
        for r in self.registry.list(None) {
            if r.desired().settings.public {
                p.public.insert(r.id.clone());
            }
        }
        *self.policy.write().expect("policy lock") = Arc::new(p);
        Ok(())
    }

    /// Who presents this request's credential.
    pub(crate) async fn authenticate(
        &self,
        headers: &HeaderMap,
        client: Option<IpAddr>,
    ) -> ApiResult<Identity> {
        let token = match presented(headers) {
            Ok(None) => return Ok(Identity::anonymous(client)),
            Ok(Some(t)) => t,
            Err(m) => return Err(unauthorized(m)),
        };
        let identity = |principal: String, roles: Vec<String>| Identity {
            principal,
            roles,
            client,
        };
        if matches(&token, &self.admin_hash) {
            return Ok(identity(ADMIN.into(), Vec::new()));
        }
        if token.starts_with("gph_") {
            return match self.policy().tokens.get(&hash(&token)) {
                Some(t) if t.expires_at.is_some_and(|at| at <= now_unix()) => Err(unauthorized(
                    format!("API token {} has expired; ask for a new one", t.name),
                )),
                Some(t) => Ok(identity(format!("token:{}", t.name), Vec::new())),
                None => Err(unauthorized("unknown or revoked API token")),
            };
        }
        if self.oidc.enabled() && token.matches('.').count() == 2 {
            return match self.oidc.verify(&token).await {
                Ok(v) => Ok(identity(v.principal, v.roles)),
                Err(Rejection::Invalid(m)) => Err(unauthorized(m)),
                Err(Rejection::Unavailable(m)) => {
                    Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, m))
                }
            };
        }
        Err(unauthorized(if self.oidc.enabled() {
            "unknown credential: neither an API token nor a JWT"
        } else {
            "unknown credential (this gateway has no OIDC issuer configured, so JWTs are not accepted)"
        }))
    }

    /// May `who` do `action` on the function or secret `name` in `namespace`
    /// (`*`, `*` for the whole gateway)? Takes from the rate limit of the
    /// grant that allows it. Anonymous callers get 401, others 403.
    pub(crate) fn authorize(
        &self,
        who: &Identity,
        action: Action,
        namespace: &str,
        name: &str,
    ) -> ApiResult<()> {
        let result = match self.policy().permit(who, action, namespace, name) {
            Permit::Unlimited => Ok(()),
            Permit::Limited(grant, rate) => self.limiter.take(&grant, who, rate).map_err(|wait| {
                let mut e = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "rate limit of {rate} (burst {}) reached for {}; retry in {wait}s",
                        rate.burst, who.principal
                    ),
                );
                e.retry_after = Some(wait);
                e
            }),
            Permit::Denied if who.is_anonymous() => Err(unauthorized(NEEDS_CREDENTIAL)),
            Permit::Denied => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                match (namespace, name) {
                    ("*", "*") => format!(
                        "{} may not do this: it needs {} on everything (*)",
                        who.principal,
                        action.name()
                    ),
                    _ => format!(
                        "{} may not {} {name}.{namespace}: no grant allows it",
                        who.principal,
                        action.name()
                    ),
                },
            )),
        };
        let outcome = match &result {
            Ok(()) => "allowed",
            Err(e) if e.status == StatusCode::TOO_MANY_REQUESTS => "limited",
            Err(_) => "denied",
        };
        self.metrics.access(&who.principal, outcome);
        result
    }

    /// Any credential will do (routes that reveal nothing per function).
    pub(crate) fn signed_in(&self, who: &Identity) -> ApiResult<()> {
        if who.is_anonymous() {
            self.metrics.access(&who.principal, "denied");
            return Err(unauthorized(NEEDS_CREDENTIAL));
        }
        Ok(())
    }
}

/// Puts the caller's [`Identity`] on every request; a credential that does
/// not check out ends the request with 401 here.
pub async fn identify<P: Provider>(
    State(gw): State<Arc<Gateway<P>>>,
    mut req: Request,
    next: Next,
) -> Response {
    let client = req
        .extensions()
        .get::<Peer>()
        .map(|p| crate::proxy::client(p.0.ip(), req.headers(), &gw.config.trusted_proxies));
    match gw.authenticate(req.headers(), client).await {
        Ok(who) => {
            req.extensions_mut().insert(who);
            next.run(req).await
        }
        Err(e) => {
            gw.metrics.access("unauthenticated", "denied");
            e.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn reads_basic_and_bearer() {
        let mut h = HeaderMap::new();
        assert_eq!(presented(&h), Ok(None));
        h.insert("authorization", HeaderValue::from_static("Bearer abc"));
        assert_eq!(presented(&h), Ok(Some("abc".into())));
        h.insert("authorization", HeaderValue::from_static("Token abc"));
        assert!(presented(&h).is_err());
        let basic = base64::engine::general_purpose::STANDARD.encode("admin:s3cret");
        h.insert(
            "authorization",
            HeaderValue::from_str(&format!("Basic {basic}")).unwrap(),
        );
        assert_eq!(presented(&h), Ok(Some("s3cret".into())));
        let other = base64::engine::general_purpose::STANDARD.encode("bob:s3cret");
        h.insert(
            "authorization",
            HeaderValue::from_str(&format!("Basic {other}")).unwrap(),
        );
        assert!(presented(&h).is_err());
        assert!(matches("abc", &hash("abc")));
        assert!(!matches("abd", &hash("abc")));
    }
}
