//! graphene's version lifecycle routes:
//!
//! - `GET /system/revisions/<name>[?namespace=]`: the kept revisions, newest
//!   first, with their rollout state and which one serves (`read`);
//! - `POST /system/rollback/<name>` with `{"revision": N}` (or `{}` for the
//!   one that served before the serving one): a new revision that runs
//!   revision N's spec and build (`deploy`); answers 202 with
//!   `X-Graphene-Revision`;
//! - `GET /system/events[?namespace=&name=]`: the registry's changes as
//!   NDJSON, beginning with each function's current state; what
//!   `graphene deploy --wait` follows.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures_util::StreamExt;
use graphene_core::api::{EventKind, History, RollbackRequest, RolloutState};
use graphene_core::provider::Provider;
use serde::Deserialize;

use crate::access::{Action, Identity};
use crate::error::{ApiError, ApiResult};
use crate::system::{accepted_revision, namespace, parse, target, NamespaceQuery};
use crate::Gateway;

pub async fn history<P: Provider>(
    State(gw): State<Arc<Gateway<P>>>,
    Extension(who): Extension<Identity>,
    Path(name): Path<String>,
    Query(q): Query<NamespaceQuery>,
) -> ApiResult<Response> {
    let (id, r) = target(&gw, &who, Action::Read, &name, "", &q)?;
    Ok(Json(History {
        name: id.name,
        namespace: id.namespace,
        serving: r.desired().serving(),
        revisions: r.revision_infos(),
    })
    .into_response())
}

pub async fn rollback<P: Provider>(
    State(gw): State<Arc<Gateway<P>>>,
    Extension(who): Extension<Identity>,
    Path(name): Path<String>,
    Query(q): Query<NamespaceQuery>,
    body: Bytes,
) -> ApiResult<Response> {
    gw.signed_in(&who)?;
    let req: RollbackRequest = match body.is_empty() {
        true => RollbackRequest::default(),
        false => parse(&body)?,
    };
    let (id, r) = target(&gw, &who, Action::Deploy, &name, &req.namespace, &q)?;
    let d = r.desired();
    let serving = d.serving();
    let to = match req.revision {
        Some(n) => n,
        // The newest ready revision older than the serving one.
        None => d
            .revisions
            .iter()
            .filter(|s| s.state == RolloutState::Ready && Some(s.revision) < serving)
            .map(|s| s.revision)
            .next()
            .ok_or_else(|| {
                ApiError::conflict(format!(
                    "{id} has no earlier revision that became ready; name one with --to (see `graphene history {}`)",
                    id.name
                ))
            })?,
    };
    let Some(old) = d.revision(to) else {
        let kept: Vec<String> = d.revisions.iter().map(|s| s.revision.to_string()).collect();
        return Err(ApiError::not_found(format!(
            "revision: {id} has no revision {to}; kept revisions are {}",
            kept.join(", ")
        )));
    };
    let revision = gw.apply(&who, &id, old.spec.clone(), Some(to)).await?;
    let mut answer = accepted_revision(revision);
    answer.headers_mut().insert(
        graphene_core::api::ROLLBACK_OF_HEADER,
        axum::http::HeaderValue::from(to),
    );
    Ok(answer)
}

#[derive(Debug, Default, Deserialize)]
pub struct EventQuery {
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

pub async fn events<P: Provider>(
    State(gw): State<Arc<Gateway<P>>>,
    Extension(who): Extension<Identity>,
    Query(q): Query<EventQuery>,
) -> ApiResult<Response> {
    gw.signed_in(&who)?;
    let ns = match q.namespace.as_deref() {
        Some(ns) if !ns.is_empty() => Some(namespace(ns, &NamespaceQuery::default())?),
        _ => None,
    };
    let name = q.name.filter(|n| !n.is_empty());
    // Subscribed before the snapshot, so no change falls between.
    let live = gw.registry.subscribe();
    let wanted = {
        let gw = gw.clone();
        move |e_ns: &str, e_name: &str| {
            ns.as_deref().is_none_or(|n| n == e_ns)
                && name.as_deref().is_none_or(|n| n == e_name)
                && gw.policy().permit(&who, Action::Read, e_ns, e_name)
                    != crate::access::Permit::Denied
        }
    };
    let snapshot: Vec<_> = gw
        .registry
        .list(None)
        .iter()
        .filter(|r| wanted(&r.id.namespace, &r.id.name))
        .map(|r| gw.registry.event(r, EventKind::Function))
        .collect();
    let live = futures_util::stream::unfold(live, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(e) => return Some((e, rx)),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .filter(move |e| std::future::ready(wanted(&e.namespace, &e.name)));
    let body = futures_util::stream::iter(snapshot).chain(live).map(|e| {
        let mut b = serde_json::to_vec(&e).unwrap_or_default();
        b.push(b'\n');
        Ok::<_, Infallible>(Bytes::from(b))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response())
}
