//! Who may do what. A [`Grant`] gives a principal actions on a resource,
//! optionally under a rate limit; grants live apart from functions. The
//! gateway keeps one [`Policy`] snapshot in memory (tokens by hash, grants,
//! public functions), rebuilt from the store after every change, so checking
//! a call costs a hash and a few comparisons.
//!
//! Principals: `token:<name>` (an API token), `user:<subject>` (an OIDC
//! subject), `role:<name>` (a role from an OIDC token's claims), and `anyone`
//! (every caller, signed in or not; only `invoke` may be granted to it).
//! Resources: `*` (everything), `namespace:<ns>`, `<ns>/<name>`, or
//! `<name>[.<ns>]`; names may hold `*` wildcards (`fraud-*`).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use graphene_core::store::{StoredGrant, StoredToken};
use graphene_core::DEFAULT_NAMESPACE;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Invoke,
    Read,
    Deploy,
    ManageSecrets,
    Admin,
}

impl Action {
    pub const ALL: [Action; 5] = [
        Action::Invoke,
        Action::Read,
        Action::Deploy,
        Action::ManageSecrets,
        Action::Admin,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Action::Invoke => "invoke",
            Action::Read => "read",
            Action::Deploy => "deploy",
            Action::ManageSecrets => "manage-secrets",
            Action::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|a| a.name() == text.trim())
            .ok_or_else(|| {
                format!(
                    "{text:?} is not an action (use invoke, read, deploy, manage-secrets or admin)"
                )
            })
    }

    /// `admin` covers everything; `deploy` covers `read`.
    fn covers(self, wanted: Action) -> bool {
        self == wanted
            || self == Action::Admin
            || (self == Action::Deploy && wanted == Action::Read)
    }
}

/// Functions (and secrets) whose namespace and name match two patterns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    pub namespace: String,
    pub name: String,
}

impl Resource {
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '*');
        let (namespace, name) = if t == "*" {
            ("*", "*")
        } else if let Some(ns) = t.strip_prefix("namespace:") {
            (ns, "*")
        } else if let Some((ns, name)) = t.split_once('/') {
            (ns, name)
        } else if let Some((name, ns)) = t.split_once('.') {
            (ns, name)
        } else {
            (DEFAULT_NAMESPACE, t)
        };
        if namespace.is_empty()
            || name.is_empty()
            || !namespace.chars().all(ok)
            || !name.chars().all(ok)
        {
            return Err(format!(
                "{text:?} is not a resource (use *, namespace:<ns>, <ns>/<name> or <name>[.<ns>]; names hold letters, digits, - and _, and * as a wildcard)"
            ));
        }
        Ok(Self {
            namespace: namespace.into(),
            name: name.into(),
        })
    }

    pub fn matches(&self, namespace: &str, name: &str) -> bool {
        glob(&self.namespace, namespace) && glob(&self.name, name)
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// `*` matches any run of characters; everything else matches itself.
/// Linear in practice: on a mismatch it only retries from the last star.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < t.len() {
        if i < p.len() && p[i] == b'*' {
            star = Some((i, j));
            i += 1;
        } else if i < p.len() && p[i] == t[j] {
            i += 1;
            j += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == b'*')
}

/// A token bucket: `count` calls per `per`, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub count: u64,
    pub per: Duration,
    pub burst: u64,
}

impl Rate {
    /// `100/s`, `600/m`, `10000/h` or `50000/d`; the burst defaults to the
    /// count, so `10000/d` is also a daily quota.
    pub fn parse(text: &str, burst: Option<u64>) -> Result<Self, String> {
        let bad = || format!("{text:?} is not a rate (use e.g. 10/s, 600/m, 10000/d)");
        let (count, unit) = text.trim().split_once('/').ok_or_else(bad)?;
        let count: u64 = count.trim().parse().map_err(|_| bad())?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => 1,
            "m" | "min" | "minute" => 60,
            "h" | "hour" => 3600,
            "d" | "day" => 86_400,
            _ => return Err(bad()),
        };
        if count == 0 || count > 1_000_000_000 {
            return Err(format!("{text:?}: the count must be between 1 and 10^9"));
        }
        let burst = burst.unwrap_or(count);
        if burst == 0 || burst > 1_000_000_000 {
            return Err(format!("burst: {burst} must be between 1 and 10^9"));
        }
        Ok(Self {
            count,
            per: Duration::from_secs(per),
            burst,
        })
    }

    fn per_second(&self) -> f64 {
        self.count as f64 / self.per.as_secs_f64()
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "m",
            3600 => "h",
            _ => "d",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

#[derive(Debug, Clone)]
pub struct Grant {
    pub id: String,
    pub principal: String,
    pub actions: Vec<Action>,
    pub resource: Resource,
    pub rate: Option<Rate>,
    pub created_at: String,
    pub created_by: String,
}

/// Checks a principal as written in a grant.
pub fn validate_principal(p: &str) -> Result<(), String> {
    if p == "anyone" {
        return Ok(());
    }
    let rest = ["token:", "user:", "role:"]
        .iter()
        .find_map(|prefix| p.strip_prefix(prefix));
    match rest {
        Some(r) if !r.is_empty() && r.len() <= 256 && !r.chars().any(char::is_control) => Ok(()),
        _ => Err(format!(
            "{p:?} is not a principal (use token:<name>, user:<subject>, role:<role> or anyone)"
        )),
    }
}

/// Who is calling, once their credential checked out.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `anonymous`, `admin`, `token:<name>` or `user:<subject>`.
    pub principal: String,
    /// Roles from an OIDC token's claims.
    pub roles: Vec<String>,
    /// The client's address (after trusted proxies), for anonymous limits.
    pub client: Option<IpAddr>,
}

impl Identity {
    pub fn anonymous(client: Option<IpAddr>) -> Self {
        Self {
            principal: "anonymous".into(),
            roles: Vec::new(),
            client,
        }
    }

    pub fn is_anonymous(&self) -> bool {
        self.principal == "anonymous"
    }

    fn is_admin(&self) -> bool {
        self.principal == crate::auth::ADMIN
    }

    fn is(&self, principal: &str) -> bool {
        principal == "anyone"
            || (principal == self.principal && !principal.starts_with("role:"))
            || principal
                .strip_prefix("role:")
                .is_some_and(|r| !self.is_anonymous() && self.roles.iter().any(|x| x == r))
    }

    /// The key its rate-limit buckets are kept under: anonymous callers by
    /// address (an IPv6 caller by its /64, which one host usually holds).
    fn bucket_key(&self) -> String {
        match (self.is_anonymous(), self.client) {
            (true, Some(IpAddr::V6(v6))) => {
                let s = v6.segments();
                format!("ip:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
            (true, Some(ip)) => format!("ip:{ip}"),
            _ => self.principal.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct TokenRecord {
    pub name: String,
    pub owner: String,
    pub created_at: String,
    /// Unix seconds.
    pub expires_at: Option<u64>,
}

impl TokenRecord {
    pub fn stored(&self, hash: String) -> StoredToken {
        StoredToken {
            name: self.name.clone(),
            hash,
            owner: self.owner.clone(),
            created_at: self.created_at.clone(),
            expires_at: self.expires_at,
        }
    }

    pub fn from_stored(t: &StoredToken) -> Self {
        Self {
            name: t.name.clone(),
            owner: t.owner.clone(),
            created_at: t.created_at.clone(),
            expires_at: t.expires_at,
        }
    }
}

impl Grant {
    pub fn stored(&self) -> StoredGrant {
        StoredGrant {
            id: self.id.clone(),
            principal: self.principal.clone(),
            actions: self.actions.iter().map(|a| a.name().to_string()).collect(),
            resource: self.resource.to_string(),
            rate: self.rate.map(|r| r.to_string()),
            burst: self.rate.map(|r| r.burst),
            created_at: self.created_at.clone(),
            created_by: self.created_by.clone(),
        }
    }

    /// A stored grant, parsed (an error names the part that does not).
    pub fn from_stored(g: &StoredGrant) -> Result<Self, String> {
        Ok(Self {
            id: g.id.clone(),
            principal: g.principal.clone(),
            actions: g
                .actions
                .iter()
                .map(|a| Action::parse(a))
                .collect::<Result<_, _>>()
                .map_err(|e| format!("grant {}: actions: {e}", g.id))?,
            resource: Resource::parse(&g.resource)
                .map_err(|e| format!("grant {}: resource: {e}", g.id))?,
            rate: g
                .rate
                .as_deref()
                .map(|r| Rate::parse(r, g.burst))
                .transpose()
                .map_err(|e| format!("grant {}: rateLimit: {e}", g.id))?,
            created_at: g.created_at.clone(),
            created_by: g.created_by.clone(),
        })
    }
}

/// What a check decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Permit {
    Denied,
    Unlimited,
    /// Allowed under the rate of the grant with this id.
    Limited(String, Rate),
}

#[derive(Debug, Default)]
pub struct Policy {
    pub tokens: HashMap<String, TokenRecord>,
    pub grants: Vec<Grant>,
    /// (namespace, name) of functions anyone may invoke.
    pub public: HashSet<graphene_core::names::FunctionRef>,
}

impl Policy {
    pub fn permit(&self, who: &Identity, action: Action, namespace: &str, name: &str) -> Permit {
        if who.is_admin()
            || (action == Action::Invoke
                && self
                    .public
                    .contains(&graphene_core::names::FunctionRef::new(namespace, name)))
        {
            return Permit::Unlimited;
        }
        let mut best: Option<&Grant> = None;
        for g in self.grants.iter().filter(|g| {
            who.is(&g.principal)
                && g.actions.iter().any(|a| a.covers(action))
                && g.resource.matches(namespace, name)
        }) {
            let Some(rate) = g.rate else {
                return Permit::Unlimited;
            };
            if best.is_none_or(|b| b.rate.is_some_and(|r| rate.per_second() > r.per_second())) {
                best = Some(g);
            }
        }
        match best {
            Some(g) => Permit::Limited(g.id.clone(), g.rate.expect("only limited grants are kept")),
            None => Permit::Denied,
        }
    }

    /// Whether the identity may do anything at all in a namespace.
    pub fn sees_namespace(&self, who: &Identity, namespace: &str) -> bool {
        who.is_admin()
            || self
                .grants
                .iter()
                .any(|g| who.is(&g.principal) && glob(&g.resource.namespace, namespace))
    }
}

/// Token buckets per (grant, caller).
#[derive(Default)]
pub struct Limiter {
    buckets: Mutex<HashMap<(String, String), Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
    rate: Rate,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let gained = now.duration_since(self.at).as_secs_f64() * self.rate.per_second();
        self.tokens = (self.tokens + gained).min(self.rate.burst as f64);
        self.at = now;
    }

    fn full(&self) -> bool {
        self.tokens >= self.rate.burst as f64
    }
}

/// How many buckets to keep: beyond it, full ones (no different from new
/// ones) are forgotten, then the least recently used.
const MAX_BUCKETS: usize = 100_000;

impl Limiter {
    /// Takes one call from the bucket, or says how many seconds until one
    /// is available.
    pub fn take(&self, grant: &str, who: &Identity, rate: Rate) -> Result<(), u64> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("limiter lock");
        let key = (grant.to_string(), who.bucket_key());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(&key) {
            buckets.retain(|_, b| {
                b.refill(now);
                !b.full()
            });
            if buckets.len() >= MAX_BUCKETS * 9 / 10 {
                let mut ages: Vec<Instant> = buckets.values().map(|b| b.at).collect();
                ages.sort_unstable();
                let cut = ages[ages.len() / 5];
                buckets.retain(|_, b| b.at > cut);
            }
        }
        let b = buckets.entry(key).or_insert(Bucket {
            tokens: rate.burst as f64,
            at: now,
            rate,
        });
        b.rate = rate;
        b.refill(now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - b.tokens) / rate.per_second();
        Err(wait.ceil().max(1.0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(principal: &str, actions: &[Action], resource: &str, rate: Option<&str>) -> Grant {
        Grant {
            id: principal.into(),
            principal: principal.into(),
            actions: actions.to_vec(),
            resource: Resource::parse(resource).unwrap(),
            rate: rate.map(|r| Rate::parse(r, None).unwrap()),
            created_at: String::new(),
            created_by: String::new(),
        }
    }

    fn who(principal: &str, roles: &[&str]) -> Identity {
        Identity {
            principal: principal.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            client: None,
        }
    }

    #[test]
    fn resources_parse_and_match() {
        let r = Resource::parse("fraud-*").unwrap();
        assert!(r.matches("openfaas-fn", "fraud-v2"));
        assert!(!r.matches("team", "fraud-v2"));
        assert!(Resource::parse("echo.team")
            .unwrap()
            .matches("team", "echo"));
        assert!(Resource::parse("team/*").unwrap().matches("team", "x"));
        assert!(Resource::parse("namespace:team")
            .unwrap()
            .matches("team", "y"));
        assert!(Resource::parse("*").unwrap().matches("*", "*"));
        assert!(!Resource::parse("team/*").unwrap().matches("*", "*"));
        for bad in ["", "a b", "ns/", "/x", "x/y/z", "a;b"] {
            assert!(Resource::parse(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(glob("a*b*c", "aXXbYc") && !glob("a*b*c", "aXXbY"));
        assert!(glob("*", "") && glob("a*", "a") && !glob("a", "ab") && glob("*b", "ab"));
        let long = "a".repeat(60_000);
        assert!(!glob("*a*a*a*a*b", &long), "fast on a hostile mismatch");
    }

    #[test]
    fn rates_parse() {
        let r = Rate::parse("600/m", None).unwrap();
        assert_eq!((r.count, r.per.as_secs(), r.burst), (600, 60, 600));
        assert_eq!(r.to_string(), "600/m");
        assert_eq!(Rate::parse("5/s", Some(1)).unwrap().burst, 1);
        for bad in ["5", "x/s", "5/week", "0/s"] {
            assert!(Rate::parse(bad, None).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn permits_follow_grants() {
        let mut p = Policy {
            grants: vec![
                grant("token:ci", &[Action::Deploy], "namespace:team", None),
                grant("role:analyst", &[Action::Invoke], "fraud-*", Some("10/s")),
                grant("user:bob", &[Action::Invoke], "fraud-*", Some("100/s")),
                grant("anyone", &[Action::Invoke], "demo", Some("1/s")),
            ],
            ..Default::default()
        };
        p.public.insert(graphene_core::names::FunctionRef::new(
            "openfaas-fn",
            "hello",
        ));
        let ns = "openfaas-fn";
        assert_eq!(
            p.permit(&who("token:ci", &[]), Action::Read, "team", "x"),
            Permit::Unlimited
        );
        assert_eq!(
            p.permit(&who("token:ci", &[]), Action::Invoke, "team", "x"),
            Permit::Denied
        );
        assert_eq!(
            p.permit(&who("token:ci", &[]), Action::Deploy, ns, "x"),
            Permit::Denied
        );
        let analyst = who("user:amy", &["analyst"]);
        assert!(
            matches!(p.permit(&analyst, Action::Invoke, ns, "fraud-v1"), Permit::Limited(_, r) if r.count == 10)
        );
        assert_eq!(
            p.permit(&analyst, Action::Read, ns, "fraud-v1"),
            Permit::Denied
        );
        let bob = who("user:bob", &["analyst"]);
        assert!(
            matches!(p.permit(&bob, Action::Invoke, ns, "fraud-v1"), Permit::Limited(_, r) if r.count == 100)
        );
        let anon = Identity::anonymous(None);
        assert_eq!(
            p.permit(&anon, Action::Invoke, ns, "hello"),
            Permit::Unlimited
        );
        assert_eq!(p.permit(&anon, Action::Read, ns, "hello"), Permit::Denied);
        assert!(matches!(
            p.permit(&anon, Action::Invoke, ns, "demo"),
            Permit::Limited(..)
        ));
        assert_eq!(
            p.permit(&anon, Action::Invoke, ns, "fraud-v1"),
            Permit::Denied
        );
        assert_eq!(
            p.permit(&who("role:analyst", &[]), Action::Invoke, ns, "fraud-v1"),
            Permit::Denied,
            "a principal string is not a role"
        );
        assert_eq!(
            p.permit(&who("admin", &[]), Action::Admin, "*", "*"),
            Permit::Unlimited
        );
        assert!(p.sees_namespace(&who("token:ci", &[]), "team"));
        assert!(!p.sees_namespace(&who("token:ci", &[]), "other"));
    }

    #[test]
    fn buckets_refill() {
        let l = Limiter::default();
        let rate = Rate::parse("1/h", Some(2)).unwrap();
        let w = who("token:a", &[]);
        assert!(l.take("g", &w, rate).is_ok());
        assert!(l.take("g", &w, rate).is_ok());
        let wait = l.take("g", &w, rate).unwrap_err();
        assert!(wait > 3000 && wait <= 3600, "{wait}");
        assert!(
            l.take("g", &who("token:b", &[]), rate).is_ok(),
            "buckets are per caller"
        );
        assert!(l.take("other", &w, rate).is_ok(), "and per grant");
    }

    #[test]
    fn principals_are_checked() {
        for ok in ["anyone", "token:ci", "user:abc-123", "role:realm-admin"] {
            assert!(validate_principal(ok).is_ok(), "{ok}");
        }
        for bad in ["", "token:", "bob", "group:x", "user:a\nb"] {
            assert!(validate_principal(bad).is_err(), "{bad:?}");
        }
    }
}
