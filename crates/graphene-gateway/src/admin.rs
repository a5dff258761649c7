//! graphene's own management routes: API tokens (`/system/tokens`), grants
//! (`/system/grants`), the audit trail (`/system/audit`) and
//! `/system/whoami`. Tokens and grants need `admin` on everything; every
//! change is written to the audit trail in the same transaction.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use graphene_core::api::{GrantInfo, GrantSpec, TokenInfo, TokenRequest, WhoAmI};
use graphene_core::provider::Provider;
use serde::Deserialize;

use crate::access::{validate_principal, Action, Grant, Identity, Rate, Resource, TokenRecord};
use crate::auth::now_unix;
use crate::error::{ApiError, ApiResult};
use crate::store::AuditEntry;
use crate::system::parse;
use crate::Gateway;

type Gw<P> = State<Arc<Gateway<P>>>;

impl<P: Provider> Gateway<P> {
    /// Writes an audit line for a change `who` made (the store writes the
    /// ones that go with token and grant changes itself).
    pub(crate) async fn audited(&self, who: &Identity, action: &str, target: &str, detail: String) {
        if let Err(e) = self.access.audit(&entry(who, action, target, detail)).await {
            tracing::error!(error = %e, action, target, "could not write the audit trail");
        }
    }

    fn manage(&self, who: &Identity) -> ApiResult<()> {
        self.authorize(who, Action::Admin, "*", "*")
    }
}

fn entry(who: &Identity, action: &str, target: &str, detail: String) -> AuditEntry {
    AuditEntry {
        at: graphene_core::time::now_rfc3339(),
        principal: who.principal.clone(),
        action: action.into(),
        target: target.into(),
        detail,
    }
}

fn new_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 6];
    rand::thread_rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A checked grant from its API form; `field` names where it came from.
fn grant(spec: &GrantSpec, principal: &str, who: &Identity, field: &str) -> ApiResult<Grant> {
    let bad =
        |what: &str, reason: String| ApiError::bad_request(format!("{field}{what}: {reason}"));
    validate_principal(principal).map_err(|e| bad("principal", e))?;
    if spec.actions.is_empty() {
        return Err(bad("actions", "name at least one action".into()));
    }
    let mut actions = Vec::new();
    for a in &spec.actions {
        let a = Action::parse(a).map_err(|e| bad("actions", e))?;
        if !actions.contains(&a) {
            actions.push(a);
        }
    }
    if principal == "anyone" && actions.iter().any(|a| *a != Action::Invoke) {
        return Err(bad(
            "actions",
            "only invoke may be granted to anyone (callers without a credential)".into(),
        ));
    }
    let resource = Resource::parse(&spec.resource).map_err(|e| bad("resource", e))?;
    let rate = match &spec.rate_limit {
        None => {
            if spec.burst.is_some() {
                return Err(bad("burst", "needs a rateLimit".into()));
            }
            None
        }
        Some(r) => Some(Rate::parse(r, spec.burst).map_err(|e| bad("rateLimit", e))?),
    };
    Ok(Grant {
        id: new_id(),
        principal: principal.into(),
        actions,
        resource,
        rate,
        created_at: graphene_core::time::now_rfc3339(),
        created_by: who.principal.clone(),
    })
}

fn grant_info(g: &Grant) -> GrantInfo {
    GrantInfo {
        id: g.id.clone(),
        principal: g.principal.clone(),
        actions: g.actions.iter().map(|a| a.name().to_string()).collect(),
        resource: g.resource.to_string(),
        rate_limit: g.rate.map(|r| r.to_string()),
        burst: g.rate.map(|r| r.burst),
        created_at: g.created_at.clone(),
        created_by: g.created_by.clone(),
    }
}

fn describe(g: &Grant) -> String {
    let actions: Vec<&str> = g.actions.iter().map(|a| a.name()).collect();
    let rate = g
        .rate
        .map(|r| format!(" at {r} (burst {})", r.burst))
        .unwrap_or_default();
    format!("{} on {}{rate}", actions.join(","), g.resource)
}

fn token_info(t: &TokenRecord, grants: &[Grant], now: u64) -> TokenInfo {
    let principal = format!("token:{}", t.name);
    TokenInfo {
        name: t.name.clone(),
        owner: t.owner.clone(),
        created_at: t.created_at.clone(),
        expires_at: t.expires_at.map(|at| {
            graphene_core::time::rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_secs(at))
        }),
        expired: t.expires_at.is_some_and(|at| at <= now),
        token: String::new(),
        grants: grants
            .iter()
            .filter(|g| g.principal == principal)
            .map(grant_info)
            .collect(),
    }
}

pub async fn tokens<P: Provider>(
    State(gw): Gw<P>,
    Extension(who): Extension<Identity>,
) -> ApiResult<Response> {
    gw.manage(&who)?;
    let policy = gw.policy();
    let now = now_unix();
    let mut list: Vec<TokenInfo> = policy
        .tokens
        .values()
        .map(|t| token_info(t, &policy.grants, now))
        .collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(list).into_response())
}

pub async fn token_create<P: Provider>(
    State(gw): Gw<P>,
    Extension(who): Extension<Identity>,
    body: Bytes,
) -> ApiResult<Response> {
    gw.manage(&who)?;
    let req: TokenRequest = parse(&body)?;
    graphene_core::names::validate("token", &req.name)
        .map_err(|e| ApiError::bad_request(format!("name: {e}")))?;
    let owner = match req.owner.trim() {
        "" => who.principal.clone(),
        o if o.len() > 256 || o.chars().any(char::is_control) => {
            return Err(ApiError::bad_request(
                "owner: at most 256 characters, no control characters",
            ))
        }
        o => o.to_string(),
    };
    let expires_at = match req.expires_in.trim() {
        "" => None,
        text => {
            let d = graphene_core::duration::parse(text)
                .map_err(|e| ApiError::bad_request(format!("expiresIn: {e}")))?;
            if d.as_secs() == 0 {
                return Err(ApiError::bad_request("expiresIn: must be at least 1s"));
            }
            Some(now_unix() + d.as_secs())
        }
    };
    let principal = format!("token:{}", req.name);
    let mut grants = Vec::new();
    for (i, spec) in req.grants.iter().enumerate() {
        if !spec.principal.is_empty() && spec.principal != principal {
            return Err(ApiError::bad_request(format!(
                "grants[{i}].principal: a token's grants are for the token; leave it out"
            )));
        }
        grants.push(grant(spec, &principal, &who, &format!("grants[{i}]."))?);
    }
    let record = TokenRecord {
        name: req.name.clone(),
        owner,
        created_at: graphene_core::time::now_rfc3339(),
        expires_at,
    };
    let secret = crate::auth::new_token();
    let detail = match grants.is_empty() {
        true => format!("owner {}, no grants", record.owner),
        false => format!(
            "owner {}; {}",
            record.owner,
            grants.iter().map(describe).collect::<Vec<_>>().join("; ")
        ),
    };
    let audit = entry(&who, "token.create", &principal, detail);
    let stored: Vec<_> = grants.iter().map(Grant::stored).collect();
    if !gw
        .access
        .create_token(&record.stored(crate::auth::hash(&secret)), &stored, &audit)
        .await?
    {
        return Err(ApiError::conflict(format!(
            "a token named {} exists; revoke it first or pick another name",
            req.name
        )));
    }
    gw.refresh_access().await?;
    tracing::info!(token = %req.name, by = %who.principal, "API token created");
    let mut info = token_info(&record, &grants, now_unix());
    info.token = secret;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

pub async fn token_revoke<P: Provider>(
    State(gw): Gw<P>,
    Extension(who): Extension<Identity>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    gw.manage(&who)?;
    let audit = entry(
        &who,
        "token.revoke",
        &format!("token:{name}"),
        String::new(),
    );
    if !gw.access.revoke_token(&name, &audit).await? {
        return Err(ApiError::not_found(format!("no token named {name}")));
    }
    gw.refresh_access().await?;
    tracing::info!(token = %name, by = %who.principal, "API token revoked");
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Default, Deserialize)]
pub struct GrantQuery {
    #[serde(default)]
    principal: Option<String>,
}

pub async fn grants<P: Provider>(
    State(gw): Gw<P>,
    Extension(who): Extension<Identity>,
    Query(q): Query<GrantQuery>,
) -> ApiResult<Response> {
    gw.manage(&who)?;
    let list: Vec<GrantInfo> = gw
        .policy()
        .grants
        .iter()
        .filter(|g| q.principal.as_deref().is_none_or(|p| g.principal == p))
        .map(grant_info)
        .collect();
    Ok(Json(list).into_response())
}

pub async fn grant_add<P: Provider>(
    State(gw): Gw<P>,
    Extension(who): Extension<Identity>,
    body: Bytes,
) -> ApiResult<Response> {
    gw.manage(&who)?;
    let spec: GrantSpec = parse(&body)?;
    let g = grant(&spec, spec.principal.trim(), &who, "")?;
    if let Some(name) = g.principal.strip_prefix("token:") {
        if !gw.policy().tokens.values().any(|t| t.name == name) {
            return Err(ApiError::bad_request(format!(
                "principal: there is no token named {name}"
            )));
        }
    }
    gw.access
        .add_grant(
            &g.stored(),
            &entry(&who, "grant.add", &g.principal, describe(&g)),
        )
        .await?;
    gw.refresh_access().await?;
    tracing::info!(principal = %g.principal, grant = %describe(&g), by = %who.principal, "grant added");
    Ok((StatusCode::CREATED, Json(grant_info(&g))).into_response())
}

pub async fn grant_remove<P: Provider>(
    State(gw): Gw<P>,
    Extension(who): Extension<Identity>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    gw.manage(&who)?;
    let Some(g) = gw.policy().grants.iter().find(|g| g.id == id).cloned() else {
        return Err(ApiError::not_found(format!("no grant with id {id}")));
    };
    let audit = entry(&who, "grant.remove", &g.principal, describe(&g));
    if !gw.access.remove_grant(&id, &audit).await? {
        return Err(ApiError::not_found(format!("no grant with id {id}")));
    }
    gw.refresh_access().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Default, Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    limit: Option<String>,
}

pub async fn audit<P: Provider>(
    State(gw): Gw<P>,
    Extension(who): Extension<Identity>,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Response> {
    gw.manage(&who)?;
    let limit = match q.limit.as_deref() {
        None | Some("") => 100,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=10_000).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "limit: {l:?} must be a whole number from 1 to 10000"
                )))
            }
        },
    };
    Ok(Json(gw.access.audit_trail(limit).await?).into_response())
}

pub async fn whoami<P: Provider>(
    State(gw): Gw<P>,
    Extension(who): Extension<Identity>,
) -> ApiResult<Response> {
    gw.signed_in(&who)?;
    Ok(Json(WhoAmI {
        principal: who.principal,
        roles: who.roles,
    })
    .into_response())
}
