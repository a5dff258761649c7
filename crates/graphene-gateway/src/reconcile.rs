//! The reconciler: one task per function that makes the provider run what
//! the registry wants, and reports back how the rollout went.
//!
//! It gives the provider the desired revision and replica count whenever
//! the record's generation moves (a deploy, a rollback, a secret change, a
//! failed revision handing back to the serving one, a scale the provider
//! refused), retrying with backoff until the provider accepts; then it
//! watches the provider's status until the revision is ready or failed and
//! records that in the registry. A removed function is removed from the
//! provider, again until it succeeds. `describe` shows its progress
//! (`reconcile`: in sync or not, attempts, the last error).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use graphene_core::api::RolloutState;
use graphene_core::provider::{Deployment, Provider, ProviderError};

use crate::error::{ApiError, ApiResult};
use crate::registry::Record;
use crate::Gateway;

const MIN_BACKOFF: Duration = Duration::from_millis(250);
/// How long a deploy waits for the runtime to be handed it.
const HAND_OVER: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often a rollout's progress is read while it starts.
const WATCH_PROGRESS: Duration = Duration::from_millis(100);
/// How often a failed revision is looked at again (a provider may still
/// bring it up).
const WATCH_FAILED: Duration = Duration::from_secs(2);

impl<P: Provider> Gateway<P> {
    /// The provider's view of what the record wants: its revision, at the
    /// desired count, with secrets resolved when `with_secrets`.
    pub(crate) async fn deployment(&self, r: &Record, with_secrets: bool) -> ApiResult<Deployment> {
        let d = r.desired();
        let secrets = match with_secrets {
            true => self.secrets_of(&r.id.namespace, &d.spec.secrets).await?,
            false => Vec::new(),
        };
        Ok(Deployment {
            function: r.id.clone(),
            revision: d.revision,
            spec: d.spec.clone(),
            settings: d.settings.clone(),
            image_digest: d.digest.clone(),
            secrets,
            replicas: r.scaling.desired(),
        })
    }

    /// The values of the secrets a function names.
    pub(crate) async fn secrets_of(
        &self,
        ns: &str,
        names: &[String],
    ) -> ApiResult<Vec<(String, Vec<u8>)>> {
        let mut secrets = Vec::new();
        for name in names {
            let value = self.secrets.get(ns, name).await?.ok_or_else(|| {
                ApiError::bad_request(format!(
                    "secrets: secret {name:?} does not exist in namespace {ns}; create it with `graphene secret create {name}`"
                ))
            })?;
            secrets.push((name.clone(), value));
        }
        Ok(secrets)
    }

    /// Gives the provider the record's desired state once. Returns whether
    /// it took it; the record's reconcile status says why not.
    pub(crate) async fn apply_once(&self, r: &Record) -> bool {
        let generation = r.generation.load(Ordering::Acquire);
        // A gateway that follows only learns the function: the leader
        // reads its secrets and applies them.
        let leads = self.leads();
        let result = match self.deployment(r, leads).await {
            Ok(d) => {
                let revision = d.revision;
                match leads {
                    true => self.provider.apply(d).await,
                    false => self.provider.follow(d).await,
                }
                .map(|()| revision)
            }
            Err(e) => Err(ProviderError::Invalid(e.message)),
        };
        let mut status = r.reconcile.lock().expect("reconcile lock");
        r.attempted.send_replace(generation);
        match result {
            Ok(revision) => {
                status.applied_revision = revision;
                status.attempts = 0;
                status.last_error = None;
                r.applied.store(generation, Ordering::Release);
                true
            }
            Err(e) => {
                status.attempts += 1;
                tracing::warn!(function = %r.id, attempt = status.attempts, error = %e, "the runtime did not take the function's desired state");
                status.last_error = Some(e.to_string());
                false
            }
        }
    }

    /// Waits (briefly) until the provider was handed the record's current
    /// generation, so that a call right after a deploy finds the function
    /// in the runtime. The deploy is stored either way.
    pub(crate) async fn handed_over(&self, r: &Record) {
        let generation = r.generation.load(Ordering::Acquire);
        let mut rx = r.attempted.subscribe();
        let _ = tokio::time::timeout(HAND_OVER, rx.wait_for(|g| *g >= generation)).await;
    }

    /// Waits (briefly) until a removed function is gone from the runtime.
    pub(crate) async fn removed_from_runtime(&self, r: &Record) {
        let mut rx = r.gone.subscribe();
        let _ = tokio::time::timeout(HAND_OVER, rx.wait_for(|g| *g)).await;
    }

    /// Runs a function's reconciler until it is removed.
    pub(crate) fn start_reconciler(self: &Arc<Self>, r: Arc<Record>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            // A function removed under this name must be gone first, or its
            // removal could undo this one's first apply.
            if let Some(gw) = weak.upgrade() {
                let registry = &gw.registry;
                registry.predecessor_gone(&r.id).await;
            }
            let mut backoff = MIN_BACKOFF;
            loop {
                let Some(gw) = weak.upgrade() else { return };
                let woken = r.wake.notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                if r.removed.load(Ordering::Acquire) {
                    let removed = match gw.leads() {
                        true => gw.provider.remove(&r.id).await,
                        false => gw.provider.forget(&r.id).await,
                    };
                    match removed {
                        Ok(()) | Err(ProviderError::NotFound(_)) => {
                            tracing::info!(function = %r.id, "removed from the runtime");
                            gw.registry.gone(&r);
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(function = %r.id, error = %e, "could not remove from the runtime; trying again");
                        }
                    }
                    drop(gw);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
                let generation = r.generation.load(Ordering::Acquire);
                if r.applied.load(Ordering::Acquire) != generation {
                    if !gw.apply_once(&r).await {
                        drop(gw);
                        let _ = tokio::time::timeout(backoff, woken).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                    backoff = MIN_BACKOFF;
                }
                // Watch the rollout of what runs until it is ready (the
                // leader does, and records it for the others).
                if !gw.leads() {
                    drop(gw);
                    woken.await;
                    continue;
                }
                let d = r.desired();
                let state = d.revision(d.revision).map(|s| s.state);
                let wait = match state {
                    Some(RolloutState::Ready) | None => None,
                    Some(RolloutState::Progressing) => Some(WATCH_PROGRESS),
                    Some(RolloutState::Failed) => Some(WATCH_FAILED),
                };
                if let Some(wait) = wait {
                    if let Ok(status) = gw.provider.status(&r.id).await {
                        if let Some(rollout) = status.rollout {
                            if rollout.revision == d.revision
                                && rollout.state != RolloutState::Progressing
                            {
                                gw.registry
                                    .rollout(&r, rollout.revision, rollout.state, &rollout.reason)
                                    .await;
                            }
                        }
                    }
                    drop(gw);
                    let _ = tokio::time::timeout(wait, woken).await;
                    continue;
                }
                drop(gw);
                woken.await;
            }
        });
    }
}
