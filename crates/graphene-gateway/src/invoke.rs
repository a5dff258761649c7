//! `/function/<name>[.<namespace>][/<path>]`: hands the request to the
//! provider and the function's answer back, with OpenFaaS's headers
//! (`X-Call-Id`, `X-Start-Time`, `X-Duration-Seconds`) and metrics.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use graphene_core::names::FunctionRef;
use graphene_core::provider::{is_hop_by_hop, Invocation, Provider};
use graphene_core::{names, DEFAULT_NAMESPACE};

use crate::access::{Action, Identity};
use crate::calls;
use crate::error::ApiError;
use crate::Gateway;

/// Checks the caller's grant before anything else, so a caller without one
/// learns nothing about whether the function exists.
pub async fn invoke<P: Provider>(
    State(gw): State<Arc<Gateway<P>>>,
    Extension(who): Extension<Identity>,
    req: Request,
) -> Response {
    let started = Instant::now();
    let start_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let (parts, body) = req.into_parts();
    let (name, ns, path) = route(parts.uri.path(), "/function/");
    if let Err(e) = gw.authorize(&who, Action::Invoke, ns, name) {
        return e.into_response();
    }
    let call_id = match calls::call_id(&parts.headers) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let id = FunctionRef::new(ns, name);
    let record = id.validate().ok().and_then(|()| gw.registry.get(&id));
    let known = record.is_some();
    let target = Target {
        id,
        path,
        call_id: &call_id,
    };
    let result = match record {
        Some(r) => call(&gw, &parts, body, &target, &r).await,
        None => Err(ApiError::no_function(name, ns)),
    };
    let mut response = result.unwrap_or_else(IntoResponse::into_response);
    let code = response.status().as_u16();
    let seconds = started.elapsed().as_secs_f64();
    if known {
        // Only deployed functions get series: unknown names can't grow them.
        gw.metrics.finished(&target.id, code, seconds);
    }
    let function = target.id;
    let h = response.headers_mut();
    for (k, v) in [
        ("x-call-id", call_id),
        ("x-start-time", start_ns.to_string()),
        ("x-duration-seconds", format!("{seconds:.6}")),
    ] {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    }
    tracing::debug!(function = %function, code, seconds, "invoked");
    response
}

/// Which function a call is for.
struct Target<'a> {
    id: FunctionRef,
    path: &'a str,
    call_id: &'a str,
}

async fn call<P: Provider>(
    gw: &Gateway<P>,
    parts: &axum::http::request::Parts,
    body: Body,
    t: &Target<'_>,
    record: &Arc<crate::registry::Record>,
) -> Result<Response, ApiError> {
    let body = calls::read_body(&parts.headers, body, gw.config.max_body).await?;
    let headers = calls::forwarded(&parts.headers, &[], t.call_id);
    gw.metrics.started(&t.id);
    let waking = std::time::Instant::now();
    let (_load, at_zero) = gw.call_starts(record).await;
    let wake = waking.elapsed();
    let result = gw
        .provider
        .invoke(
            &t.id,
            Invocation {
                method: parts.method.as_str().to_string(),
                path: t.path.to_string(),
                query: parts.uri.query().unwrap_or("").to_string(),
                headers,
                body: body.into(),
                call_id: t.call_id.to_string(),
            },
        )
        .await
        .map_err(|e| match e {
            // Registered, but the runtime has not been given it yet.
            graphene_core::provider::ProviderError::NotFound(_) => not_running(&t.id),
            other => ApiError::from(other),
        })?;
    // A cold start: the call found the function at zero (its wait includes
    // the wake), or found no replica ready.
    let cold = match (at_zero, result.cold_start) {
        (true, waited) => Some(wake + waited.unwrap_or_default()),
        (false, waited) => waited,
    };
    if let Some(waited) = cold {
        gw.metrics.cold_start(&t.id, waited.as_secs_f64());
    }
    let status = StatusCode::from_u16(result.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = Response::new(body_of(result.body));
    *response.status_mut() = status;
    for (k, v) in result.headers {
        if is_hop_by_hop(&k) {
            continue;
        }
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(&v),
        ) {
            response.headers_mut().append(k, v);
        }
    }
    Ok(response)
}

/// A body from the provider contract as the HTTP answer's (streams stay
/// streams).
pub(crate) fn body_of(b: graphene_core::provider::Body) -> Body {
    match b {
        graphene_core::provider::Body::Full(b) => Body::from(b),
        graphene_core::provider::Body::Stream(s) => Body::from_stream(s),
    }
}

/// A function the registry has but the runtime does not run yet.
pub(crate) fn not_running(id: &FunctionRef) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "function {} is not running yet; the runtime is being given it (see `graphene describe {}`)",
            id.name, id.name
        ),
    )
}

/// `<prefix><name>[.<namespace>][/<path>]` → name, namespace, path.
pub(crate) fn route<'a>(uri_path: &'a str, prefix: &str) -> (&'a str, &'a str, &'a str) {
    let rest = uri_path.strip_prefix(prefix).unwrap_or("");
    let (qualified, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (name, ns) = names::split_qualified(qualified);
    (name, ns.unwrap_or(DEFAULT_NAMESPACE), path)
}
