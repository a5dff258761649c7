//! Bearer JWTs from configured OpenID Connect issuers (a Keycloak realm, and
//! through it any provider Keycloak brokers). For each issuer the gateway
//! reads the discovery document, fetches the JWKS and caches it: a token
//! signed with a key it does not know makes it fetch the keys again (at most
//! once per [`REFETCH_INTERVAL`]), which is how rotation is followed. Only
//! asymmetric algorithms are accepted, so neither `alg: none` nor an HMAC
//! token keyed with the public key can pass. Issuer, audience, expiry and
//! not-before are checked with a clock-skew leeway; roles come from the
//! configured claim paths (Keycloak's `realm_access.roles`,
//! `resource_access.<client>.roles`, `groups`, `scope`, ...).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

/// The least time between two fetches of an issuer's keys.
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(5);
/// Keys older than this are fetched again on the next token.
const MAX_KEY_AGE: Duration = Duration::from_secs(3600);
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_DOCUMENT: usize = 1 << 20;

const ASYMMETRIC: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// `--auth-config`: the issuers whose tokens the gateway accepts.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub oidc: Vec<IssuerConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Exactly the `iss` of its tokens, e.g. `https://sso.example.com/realms/ml`.
    pub issuer: String,
    /// Accepted `aud` values; a token must name one of them.
    pub audience: OneOrMany,
    /// Claim paths whose values become roles.
    #[serde(default = "default_role_claims")]
    pub roles: Vec<String>,
    /// Put before subjects and roles, to keep issuers apart (`azure:`).
    #[serde(default)]
    pub prefix: String,
    /// Clock skew allowed on `exp` and `nbf`, e.g. `30s` (default 60s).
    #[serde(default)]
    pub leeway: Option<String>,
    /// A PEM file of CA certificates to trust for this issuer's HTTPS.
    #[serde(default)]
    pub ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn list(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

fn default_role_claims() -> Vec<String> {
    vec!["realm_access.roles".into(), "groups".into(), "roles".into()]
}

impl AuthConfig {
    pub fn load(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--auth-config: reading {}", path.display()))?;
        let c: AuthConfig = serde_yaml::from_str(&text)
            .map_err(|e| anyhow!("--auth-config {}: {e}", path.display()))?;
        if c.oidc.len() > 1 {
            let mut seen = std::collections::HashSet::new();
            for (i, o) in c.oidc.iter().enumerate() {
                if o.prefix.is_empty() || !seen.insert(o.prefix.as_str()) {
                    bail!(
                        "--auth-config {}: oidc[{i}].prefix: with several issuers each needs its own prefix (e.g. \"azure:\"), or one issuer's subjects and roles would pass for another's",
                        path.display()
                    );
                }
            }
        }
        for (i, o) in c.oidc.iter().enumerate() {
            let at = format!("--auth-config {}: oidc[{i}]", path.display());
            if !o.issuer.starts_with("https://") && !o.issuer.starts_with("http://") {
                bail!("{at}.issuer: {:?} must be an http(s) URL", o.issuer);
            }
            if o.audience.list().iter().all(|a| a.is_empty()) {
                bail!("{at}.audience: name at least one audience (the client id tokens are issued for)");
            }
            if let Some(l) = &o.leeway {
                graphene_core::duration::parse(l).map_err(|e| anyhow!("{at}.leeway: {e}"))?;
            }
        }
        Ok(c)
    }
}

/// Why a bearer token was not accepted.
#[derive(Debug)]
pub enum Rejection {
    /// 401: the token is bad.
    Invalid(String),
    /// 503: the issuer's keys could not be had.
    Unavailable(String),
}

/// A verified token: the subject and the roles its claims carry.
pub struct Verified {
    pub principal: String,
    pub roles: Vec<String>,
}

type Http = Client<graphene_http::HttpsConnector, Empty<Bytes>>;

struct Issuer {
    config: IssuerConfig,
    audience: Vec<String>,
    leeway: u64,
    http: Http,
    /// The cached keys; read without waiting on a fetch.
    keys: std::sync::RwLock<Keys>,
    /// Held while fetching: one fetch at a time.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Keys {
    set: Option<Arc<JwkSet>>,
    fetched: Option<Instant>,
    tried: Option<Instant>,
}

pub struct Oidc {
    issuers: Vec<Arc<Issuer>>,
}

impl Oidc {
    pub fn new(config: &AuthConfig) -> anyhow::Result<Self> {
        let mut issuers = Vec::new();
        for c in &config.oidc {
            let leeway = c
                .leeway
                .as_deref()
                .map(graphene_core::duration::parse)
                .transpose()
                .map_err(|e| anyhow!("leeway: {e}"))?
                .map_or(60, |d| d.as_secs());
            issuers.push(Arc::new(Issuer {
                audience: c.audience.list(),
                leeway,
                http: graphene_http::client(c.ca.as_deref())?,
                config: c.clone(),
                keys: Default::default(),
                fetching: Default::default(),
            }));
        }
        Ok(Self { issuers })
    }

    pub fn enabled(&self) -> bool {
        !self.issuers.is_empty()
    }

    /// Fetches every issuer's keys in the background, so the first token
    /// does not wait for them.
    pub fn warm_up(&self) {
        for i in &self.issuers {
            let i = i.clone();
            tokio::spawn(async move {
                i.refresh(true).await;
            });
        }
    }

    pub async fn verify(&self, token: &str) -> Result<Verified, Rejection> {
        let bad = |m: &str| Rejection::Invalid(m.to_string());
        let claims = unverified_claims(token).ok_or_else(|| bad("malformed token"))?;
        let iss = claims.get("iss").and_then(Value::as_str).unwrap_or("");
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.config.issuer == iss)
            .ok_or_else(|| bad("the token's issuer is not one this gateway trusts"))?;
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| bad("malformed token header, or an algorithm graphene does not accept"))?;
        if !ASYMMETRIC.contains(&header.alg) {
            return Err(bad(
                "the token's algorithm is not accepted (only asymmetric signatures are)",
            ));
        }
        let jwk = issuer.key(header.kid.as_deref(), header.alg).await?;
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| bad("the issuer's key is unusable"))?;
        let mut v = Validation::new(header.alg);
        v.set_issuer(&[&issuer.config.issuer]);
        v.set_audience(&issuer.audience);
        v.leeway = issuer.leeway;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Value>(token, &key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            bad(match e.kind() {
                K::ExpiredSignature => "the token has expired",
                K::ImmatureSignature => "the token is not valid yet (nbf)",
                K::InvalidAudience => "the token was not issued for this gateway (audience)",
                K::InvalidIssuer => "the token's issuer is not one this gateway trusts",
                K::InvalidSignature => "the token's signature does not verify",
                K::MissingRequiredClaim(_) => {
                    "the token lacks a required claim (exp, iss, aud, sub)"
                }
                K::InvalidAlgorithm => "the token's algorithm does not match its key",
                _ => "malformed token",
            })
        })?;
        let c = data.claims;
        let sub = c.get("sub").and_then(Value::as_str).unwrap_or("");
        if sub.is_empty() {
            return Err(bad("the token has no subject"));
        }
        let prefix = &issuer.config.prefix;
        let mut roles = Vec::new();
        for path in &issuer.config.roles {
            for r in claim_values(&c, path) {
                let r = format!("{prefix}{r}");
                if !roles.contains(&r) {
                    roles.push(r);
                }
            }
        }
        Ok(Verified {
            principal: format!("user:{prefix}{sub}"),
            roles,
        })
    }
}

impl Issuer {
    /// The key a token names, fetching the set again when it is unknown.
    /// Tokens never queue behind a fetch while keys are cached: a fetch
    /// under way elsewhere just means the cached set is used.
    async fn key(&self, kid: Option<&str>, alg: Algorithm) -> Result<Jwk, Rejection> {
        let cached = |this: &Self| this.keys.read().expect("keys lock").set.clone();
        let mut set = cached(self);
        let stale = self
            .keys
            .read()
            .expect("keys lock")
            .fetched
            .is_none_or(|t| t.elapsed() > MAX_KEY_AGE);
        if set.is_none() || stale || set.as_ref().and_then(|s| pick(s, kid, alg)).is_none() {
            // With nothing cached there is nothing better to do than wait.
            self.refresh(set.is_none()).await;
            set = cached(self);
        }
        match set {
            Some(s) => pick(&s, kid, alg).ok_or_else(|| {
                Rejection::Invalid("the token's signing key is not one the issuer publishes".into())
            }),
            None => Err(Rejection::Unavailable(format!(
                "the signing keys of {} could not be fetched; try again shortly",
                self.config.issuer
            ))),
        }
    }

    /// Fetches the keys again, at most once per [`REFETCH_INTERVAL`];
    /// `wait` waits for a fetch under way instead of skipping.
    async fn refresh(&self, wait: bool) {
        let _one = match wait {
            true => self.fetching.lock().await,
            false => match self.fetching.try_lock() {
                Ok(g) => g,
                Err(_) => return,
            },
        };
        {
            let mut k = self.keys.write().expect("keys lock");
            if k.tried.is_some_and(|t| t.elapsed() < REFETCH_INTERVAL) {
                return;
            }
            k.tried = Some(Instant::now());
        }
        match self.fetch().await {
            Ok(set) => {
                let mut k = self.keys.write().expect("keys lock");
                k.set = Some(Arc::new(set));
                k.fetched = Some(Instant::now());
            }
            Err(e) => {
                tracing::warn!(issuer = %self.config.issuer, error = %e, "could not fetch the issuer's signing keys")
            }
        }
    }

    async fn fetch(&self) -> anyhow::Result<JwkSet> {
        let discovery = format!(
            "{}/.well-known/openid-configuration",
            self.config.issuer.trim_end_matches('/')
        );
        let doc = self.get(&discovery).await?;
        if doc.get("issuer").and_then(Value::as_str) != Some(self.config.issuer.as_str()) {
            bail!("{discovery} names a different issuer");
        }
        let uri = doc
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("{discovery} has no jwks_uri"))?;
        if self.config.issuer.starts_with("https://") && !uri.starts_with("https://") {
            bail!("{discovery}: the jwks_uri {uri} is not https");
        }
        let set: JwkSet = serde_json::from_value(self.get(uri).await?)
            .map_err(|e| anyhow!("{uri}: not a JWK set: {e}"))?;
        tracing::info!(issuer = %self.config.issuer, keys = set.keys.len(), "fetched signing keys");
        Ok(set)
    }

    async fn get(&self, url: &str) -> anyhow::Result<Value> {
        let uri: hyper::Uri = url.parse().map_err(|_| anyhow!("{url}: not a URL"))?;
        let fetch = async {
            let resp = self
                .http
                .get(uri)
                .await
                .map_err(|e| anyhow!("{url}: {e}"))?;
            if !resp.status().is_success() {
                bail!("{url}: answered {}", resp.status());
            }
            let body = Limited::new(resp.into_body(), MAX_DOCUMENT)
                .collect()
                .await
                .map_err(|e| anyhow!("{url}: {e}"))?
                .to_bytes();
            serde_json::from_slice(&body).map_err(|e| anyhow!("{url}: not JSON: {e}"))
        };
        tokio::time::timeout(FETCH_TIMEOUT, fetch)
            .await
            .map_err(|_| anyhow!("{url}: no answer in {FETCH_TIMEOUT:?}"))?
    }
}

/// The key for `kid` (or the only suitable one when the token names none),
/// never a symmetric key, and only for the algorithm the key declares.
fn pick(set: &JwkSet, kid: Option<&str>, alg: Algorithm) -> Option<Jwk> {
    let usable = |k: &&Jwk| {
        !matches!(k.algorithm, AlgorithmParameters::OctetKey(_))
            && k.common
                .key_algorithm
                .is_none_or(|ka| format!("{ka:?}") == format!("{alg:?}"))
    };
    let mut found = set.keys.iter().filter(usable).filter(|k| match kid {
        Some(kid) => k.common.key_id.as_deref() == Some(kid),
        None => true,
    });
    let first = found.next()?;
    (kid.is_some() || found.next().is_none()).then(|| first.clone())
}

fn unverified_claims(token: &str) -> Option<Value> {
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The strings at a dotted claim path: an array of strings, or one string
/// (split on spaces, as `scope` is).
fn claim_values(claims: &Value, path: &str) -> Vec<String> {
    let mut at = claims;
    for part in path.split('.') {
        match at.get(part) {
            Some(v) => at = v,
            None => return Vec::new(),
        }
    }
    match at {
        Value::String(s) => s.split_whitespace().map(str::to_string).collect(),
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_paths() {
        let c: Value = serde_json::json!({
            "realm_access": {"roles": ["analyst", "offline_access"]},
            "resource_access": {"graphene": {"roles": ["deployer"]}},
            "scope": "openid invoke:fraud",
            "groups": "not-a-list-but-a-string"
        });
        assert_eq!(
            claim_values(&c, "realm_access.roles"),
            ["analyst", "offline_access"]
        );
        assert_eq!(
            claim_values(&c, "resource_access.graphene.roles"),
            ["deployer"]
        );
        assert_eq!(claim_values(&c, "scope"), ["openid", "invoke:fraud"]);
        assert!(claim_values(&c, "missing.path").is_empty());
    }

    #[test]
    fn config_is_checked() {
        let dir = std::env::temp_dir().join(format!("graphene-oidc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("auth.yaml");
        std::fs::write(
            &f,
            "oidc:\n  - issuer: https://sso/realms/ml\n    audience: graphene\n",
        )
        .unwrap();
        let c = AuthConfig::load(&f).unwrap();
        assert_eq!(c.oidc[0].roles, default_role_claims());
        std::fs::write(&f, "oidc:\n  - issuer: sso\n    audience: graphene\n").unwrap();
        assert!(AuthConfig::load(&f)
            .unwrap_err()
            .to_string()
            .contains("oidc[0].issuer"));
        std::fs::write(&f, "oidc:\n  - issuer: https://sso\n    audiense: x\n").unwrap();
        assert!(AuthConfig::load(&f)
            .unwrap_err()
            .to_string()
            .contains("audiense"));
        std::fs::write(
            &f,
            "oidc:\n  - issuer: https://a\n    audience: g\n  - issuer: https://b\n    audience: g\n    prefix: \"b:\"\n",
        )
        .unwrap();
        assert!(AuthConfig::load(&f)
            .unwrap_err()
            .to_string()
            .contains("oidc[0].prefix"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
