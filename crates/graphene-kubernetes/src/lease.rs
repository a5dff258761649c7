//! One gateway at a time runs the autoscaler: the holder of a
//! `coordination.k8s.io/v1` Lease in the gateway's namespace. Every gateway
//! tries each [`RENEW`]; the holder renews it, and another takes it over
//! once it has not been renewed for [`DURATION`] by that gateway's own
//! clock (the holder's clock is never compared with it). A holder that
//! cannot renew for [`DURATION`] stops leading before anyone may take
//! over. The Lease carries the leader's URL for the others' load reports.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use graphene_core::store::{Leader, Leadership};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::Api;

use crate::manifest::{MANAGED_BY, MANAGER};

/// The Lease's name.
pub const LEASE: &str = "graphene-gateway";
/// The annotation on the Lease that holds the leader's URL.
pub const URL_ANNOTATION: &str = "graphene.dev/url";
const DURATION: Duration = Duration::from_secs(10);
const RENEW: Duration = Duration::from_secs(2);

pub struct LeaseElection {
    identity: String,
    state: RwLock<Leader>,
}

impl Leadership for LeaseElection {
    fn identity(&self) -> &str {
        &self.identity
    }

    fn current(&self) -> Leader {
        self.state.read().expect("lease lock").clone()
    }
}

/// What a gateway saw of the Lease: its record (holder and renewal) and
/// when, by this gateway's clock, that record last changed.
struct Seen {
    record: (Option<String>, Option<String>),
    since: Instant,
}

impl LeaseElection {
    /// Takes part in the election in `namespace` until the process ends;
    /// `url` is where this gateway takes load reports when it leads.
    pub fn start(
        client: kube::Client,
        namespace: &str,
        identity: String,
        url: String,
    ) -> Arc<Self> {
        let me = Arc::new(Self {
            identity,
            state: RwLock::new(Leader::default()),
        });
        let api: Api<Lease> = Api::namespaced(client, namespace);
        let weak = Arc::downgrade(&me);
        let namespace = namespace.to_string();
        tokio::spawn(async move {
            let mut seen: Option<Seen> = None;
            let mut renewed: Option<Instant> = None;
            let mut every = tokio::time::interval(RENEW);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(me) = weak.upgrade() else { return };
                let was = me.current();
                let now = match me.round(&api, &url, &mut seen).await {
                    Ok(leader) => {
                        if leader.this {
                            renewed = Some(Instant::now());
                        }
                        leader
                    }
                    Err(e) => {
                        tracing::warn!(namespace = %namespace, error = %e, "could not read or renew the gateway Lease");
                        // Led until a renewal is overdue, then stepped down
                        // before anyone may take over.
                        let overdue = renewed.is_none_or(|at| at.elapsed() >= DURATION - RENEW);
                        match was.this && !overdue {
                            true => was.clone(),
                            false => Leader::default(),
                        }
                    }
                };
                if now.this != was.this {
                    match now.this {
                        true => {
                            tracing::info!(identity = %me.identity, "this gateway leads: it runs the autoscaler")
                        }
                        false => {
                            tracing::info!(identity = %me.identity, leader = ?now.url, "this gateway no longer leads")
                        }
                    }
                }
                *me.state.write().expect("lease lock") = now;
            }
        });
        me
    }

    /// One look at the Lease: renewed or taken when this gateway may.
    async fn round(
        &self,
        api: &Api<Lease>,
        url: &str,
        seen: &mut Option<Seen>,
    ) -> Result<Leader, kube::Error> {
        let leading = Leader {
            this: true,
            url: Some(url.to_string()),
        };
        let Some(mut lease) = api.get_opt(LEASE).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(LEASE.into()),
                    labels: Some([(MANAGED_BY.to_string(), MANAGER.to_string())].into()),
                    annotations: Some([(URL_ANNOTATION.to_string(), url.to_string())].into()),
                    ..Default::default()
                },
                spec: Some(self.held(None, 0)),
            };
            return match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(leading),
                // Made by another meanwhile: looked at next round.
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Leader::default()),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let record = (
            spec.holder_identity.clone(),
            spec.renew_time.as_ref().map(|t| t.0.to_string()),
        );
        let changed = seen.as_ref().is_none_or(|s| s.record != record);
        if changed {
            *seen = Some(Seen {
                record,
                since: Instant::now(),
            });
        }
        let since = seen.as_ref().map(|s| s.since).unwrap_or_else(Instant::now);
        let holder = spec.holder_identity.as_deref().unwrap_or("");
        let ours = holder == self.identity;
        let expired = holder.is_empty() || (!changed && since.elapsed() >= DURATION);
        if !ours && !expired {
            let url = lease
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(URL_ANNOTATION))
                .cloned();
            return Ok(Leader { this: false, url });
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let acquired = match ours {
            true => spec.acquire_time.clone(),
            false => None,
        };
        lease.spec = Some(self.held(acquired, transitions));
        lease
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(URL_ANNOTATION.into(), url.into());
        match api.replace(LEASE, &PostParams::default(), &lease).await {
            Ok(_) => Ok(leading),
            // Renewed or taken by another meanwhile (the resource version
            // moved): looked at next round.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Leader::default()),
            Err(e) => Err(e),
        }
    }

    /// The Lease's spec as this gateway holds it.
    fn held(&self, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(DURATION.as_secs() as i32),
            acquire_time: Some(acquired.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }
}
