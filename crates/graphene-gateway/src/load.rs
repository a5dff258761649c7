//! Load across gateways. Where several gateways serve the same functions
//! one of them leads ([`graphene_core::store::Leadership`]) and runs the
//! autoscaler; each of the others sends it, every autoscaler tick, the
//! calls in flight and started of each function it serves
//! (`POST /system/load`), and the leader decides on the sum.
//!
//! A report is signed with a key made from the admin credential's hash,
//! which every gateway of one installation shares and nobody else holds.
//! Counters of calls started are summed by their growth, so a gateway that
//! restarts (its counters back at zero) or goes never lowers the total.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use graphene_core::names::FunctionRef;
use graphene_core::provider::Provider;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ApiResult};
use crate::Gateway;

/// The header a load report is signed in.
const KEY_HEADER: &str = "x-graphene-gateway-key";
/// A gateway whose report is older than this counts no calls in flight.
const FRESH: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub gateway: String,
    pub loads: Vec<FunctionLoad>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionLoad {
    pub namespace: String,
    pub name: String,
    pub in_flight: u64,
    pub started: u64,
}

/// What the leader holds of the other gateways' load.
#[derive(Default)]
pub(crate) struct Loads(Mutex<Inner>);

#[derive(Default)]
struct Inner {
    gateways: HashMap<String, Seen>,
    /// Calls started on other gateways, by function: the sum of each
    /// one's counter's growth.
    started: HashMap<FunctionRef, u64>,
}

struct Seen {
    at: Instant,
    in_flight: HashMap<FunctionRef, u64>,
    started: HashMap<FunctionRef, u64>,
}

impl Loads {
    pub(crate) fn take(&self, report: Report, now: Instant) {
        let mut inner = self.0.lock().expect("loads lock");
        let Inner { gateways, started } = &mut *inner;
        let seen = gateways.entry(report.gateway).or_insert_with(|| Seen {
            at: now,
            in_flight: HashMap::new(),
            started: HashMap::new(),
        });
        seen.at = now;
        seen.in_flight.clear();
        for l in report.loads {
            let id = FunctionRef::new(l.namespace, l.name);
            let before = seen.started.insert(id.clone(), l.started).unwrap_or(0);
            // A counter below its last value started again from zero.
            let grown = match l.started >= before {
                true => l.started - before,
                false => l.started,
            };
            *started.entry(id.clone()).or_default() += grown;
            seen.in_flight.insert(id, l.in_flight);
        }
        gateways.retain(|_, s| now.duration_since(s.at) < FRESH * 20);
    }

    /// Calls in flight and started on the other gateways.
    pub(crate) fn of(&self, id: &FunctionRef, now: Instant) -> (u64, u64) {
        let inner = self.0.lock().expect("loads lock");
        let in_flight = inner
            .gateways
            .values()
            .filter(|s| now.duration_since(s.at) < FRESH)
            .filter_map(|s| s.in_flight.get(id))
            .sum();
        (in_flight, inner.started.get(id).copied().unwrap_or(0))
    }
}

/// The key a load report is signed with.
pub(crate) fn key(admin_hash: &str) -> String {
    let digest = Sha256::digest(format!("graphene load report\n{admin_hash}"));
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl<P: Provider> Gateway<P> {
    /// Sends this gateway's load to the leader at `url`.
    pub(crate) async fn report_load(&self, url: &str) {
        let loads = self
            .registry
            .list(None)
            .into_iter()
            .map(|r| FunctionLoad {
                namespace: r.id.namespace.clone(),
                name: r.id.name.clone(),
                in_flight: r
                    .scaling
                    .in_flight
                    .load(std::sync::atomic::Ordering::SeqCst),
                started: r.scaling.started.load(std::sync::atomic::Ordering::SeqCst),
            })
            .collect();
        let Some(identity) = self.leadership.as_ref().map(|l| l.identity().to_string()) else {
            return;
        };
        let body = serde_json::to_vec(&Report {
            gateway: identity,
            loads,
        })
        .expect("a report serialises");
        let request = hyper::Request::post(format!("{}/system/load", url.trim_end_matches('/')))
            .header(KEY_HEADER, &self.load_key)
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(Bytes::from(body)));
        let Ok(request) = request else {
            tracing::warn!(url, "the leader's URL is not one a report can be sent to");
            return;
        };
        match tokio::time::timeout(Duration::from_secs(2), self.reporter.request(request)).await {
            Ok(Ok(r)) if r.status().is_success() => {}
            Ok(Ok(r)) => {
                tracing::warn!(url, status = %r.status(), "the leader refused this gateway's load report")
            }
            Ok(Err(e)) => {
                tracing::debug!(url, error = %e, "could not send the leader this gateway's load")
            }
            Err(_) => tracing::debug!(url, "the leader did not take this gateway's load in time"),
        }
    }
}

/// `POST /system/load`: another gateway's load, for the leader.
pub async fn take<P: Provider>(
    State(gw): State<std::sync::Arc<Gateway<P>>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let signed = headers
        .get(KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|k| crate::auth::matches(k, &crate::auth::hash(&gw.load_key)));
    if !signed {
        return Err(crate::auth::unauthorized(
            "load reports come from the installation's other gateways",
        ));
    }
    let report: Report = crate::system::parse(&body)?;
    if report.gateway.is_empty() {
        return Err(ApiError::bad_request("gateway: must not be empty"));
    }
    gw.loads.take(report, Instant::now());
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(gateway: &str, in_flight: u64, started: u64) -> Report {
        Report {
            gateway: gateway.into(),
            loads: vec![FunctionLoad {
                namespace: "fn".into(),
                name: "echo".into(),
                in_flight,
                started,
            }],
        }
    }

    #[test]
    fn loads_sum_over_gateways_and_counters_only_grow() {
        let id = FunctionRef::new("fn", "echo");
        let loads = Loads::default();
        let t0 = Instant::now();
        loads.take(report("a", 3, 10), t0);
        loads.take(report("b", 2, 5), t0);
        assert_eq!(loads.of(&id, t0), (5, 15));
        // a grows by 4; b restarted (its counter back at 1).
        loads.take(report("a", 1, 14), t0);
        loads.take(report("b", 0, 1), t0);
        assert_eq!(loads.of(&id, t0), (1, 20));
        // A gateway that stopped reporting counts no calls in flight, and
        // what it started stays counted.
        let later = t0 + FRESH + Duration::from_millis(1);
        loads.take(report("a", 2, 14), later);
        assert_eq!(loads.of(&id, later), (2, 20));
        assert_eq!(loads.of(&FunctionRef::new("fn", "other"), later), (0, 0));
    }

    #[test]
    fn the_key_depends_on_the_admin_credential() {
        assert_eq!(key("h1"), key("h1"));
        assert_ne!(key("h1"), key("h2"));
        assert_eq!(key("h1").len(), 64);
    }
}
