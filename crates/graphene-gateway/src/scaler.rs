//! Elastic scaling, for any provider: counts each function's calls as they
//! start and end, wakes a function at zero on its first call, and every
//! [`TICK`] feeds the load to the autoscaler's pure decision
//! (`graphene_core::autoscale`) and applies it. Replica counts are kept in
//! the store, so a function resting at zero stays there after a restart.
//!
//! A call counts before it checks whether the function is at zero, and the
//! autoscaler re-reads the count after lowering the desired count to zero
//! (both sequentially consistent): either the call sees zero and wakes the
//! function, or the autoscaler sees the call and backs off.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use graphene_core::api::{ScaleDecision, ScalingStatus};
use graphene_core::autoscale::{Autoscaler, Policy, Sample, TICK};
use graphene_core::provider::Provider;

use crate::Gateway;

pub struct Scaler {
    functions: Mutex<HashMap<String, Arc<Entry>>>,
    epoch: Instant,
}

impl Default for Scaler {
    fn default() -> Self {
        Self {
            functions: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
        }
    }
}

/// One function's load and scaling state.
pub struct Entry {
    namespace: String,
    name: String,
    in_flight: AtomicU64,
    started: AtomicU64,
    /// The replica count last asked of the provider.
    desired: AtomicU64,
    /// Serialises decisions: ticks, wakes and manual scales.
    state: tokio::sync::Mutex<State>,
    /// A copy of the state for status readers (never awaited on).
    shown: Mutex<Shown>,
}

struct State {
    policy: Policy,
    autoscaler: Autoscaler,
}

#[derive(Clone, Default)]
struct Shown {
    panicking: bool,
    last: Option<ScaleDecision>,
}

/// Counts a call as in flight until dropped.
pub struct Load(Arc<Entry>);

impl Drop for Load {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, SeqCst);
    }
}

fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

impl Scaler {
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    fn entry(&self, namespace: &str, name: &str) -> Option<Arc<Entry>> {
        self.functions
            .lock()
            .expect("lock")
            .get(&key(namespace, name))
            .cloned()
    }

    /// Starts (or updates) tracking a deployed function with `desired`
    /// replicas.
    pub async fn track(&self, namespace: &str, name: &str, policy: Policy, desired: u64) {
        let existing = self.entry(namespace, name);
        match existing {
            Some(e) => {
                let mut state = e.state.lock().await;
                state.policy = policy;
                e.desired.store(desired, SeqCst);
            }
            None => {
                let e = Arc::new(Entry {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    in_flight: AtomicU64::new(0),
                    started: AtomicU64::new(0),
                    desired: AtomicU64::new(desired),
                    state: tokio::sync::Mutex::new(State {
                        policy,
                        autoscaler: Autoscaler::new(self.now()),
                    }),
                    shown: Mutex::new(Shown::default()),
                });
                self.functions
                    .lock()
                    .expect("lock")
                    .insert(key(namespace, name), e);
            }
        }
    }

    pub fn forget(&self, namespace: &str, name: &str) {
        self.functions
            .lock()
            .expect("lock")
            .remove(&key(namespace, name));
    }

    /// Calls in flight (running or waiting) for a function.
    pub fn in_flight(&self, namespace: &str, name: &str) -> u64 {
        self.entry(namespace, name)
            .map_or(0, |e| e.in_flight.load(SeqCst))
    }

    pub async fn status(&self, namespace: &str, name: &str) -> Option<ScalingStatus> {
        let e = self.entry(namespace, name)?;
        let policy = e.state.lock().await.policy.clone();
        let shown = e.shown.lock().expect("lock").clone();
        Some(ScalingStatus {
            enabled: policy.enabled(),
            min: policy.min,
            max: policy.max,
            metric: policy.metric.as_str().to_string(),
            target: policy.target,
            zero_after_seconds: policy.zero_after.map(|d| d.as_secs_f64()),
            window_seconds: policy.window.as_secs_f64(),
            in_flight: e.in_flight.load(SeqCst),
            panicking: shown.panicking,
            last_decision: shown.last,
        })
    }
}

impl Entry {
    fn record(&self, from: u64, to: u64, reason: String, panicking: bool) {
        let mut shown = self.shown.lock().expect("lock");
        shown.panicking = panicking;
        if from != to {
            shown.last = Some(ScaleDecision {
                at: graphene_core::time::now_rfc3339(),
                from,
                to,
                reason,
            });
        }
    }

    fn qualified(&self) -> String {
        format!("{}.{}", self.name, self.namespace)
    }
}

impl<P: Provider> Gateway<P> {
    /// Counts a call and wakes its function when it rests at zero. The
    /// returned guard counts the call until it ends; the flag says whether
    /// the call found the function at zero.
    pub(crate) async fn call_starts(&self, namespace: &str, name: &str) -> (Option<Load>, bool) {
        let Some(e) = self.scaler.entry(namespace, name) else {
            return (None, false);
        };
        e.in_flight.fetch_add(1, SeqCst);
        e.started.fetch_add(1, SeqCst);
        let load = Load(e.clone());
        let at_zero = e.desired.load(SeqCst) == 0;
        if at_zero {
            self.wake(&e).await;
        }
        (Some(load), at_zero)
    }

    /// A manual scale, applied under the function's scaling lock so that
    /// no autoscaler round interleaves; the count is then held for a window.
    pub(crate) async fn scale_by_hand(
        &self,
        namespace: &str,
        name: &str,
        replicas: u64,
    ) -> Result<(), graphene_core::provider::ProviderError> {
        let Some(e) = self.scaler.entry(namespace, name) else {
            self.provider.scale(namespace, name, replicas).await?;
            return Ok(());
        };
        let mut state = e.state.lock().await;
        self.provider.scale(namespace, name, replicas).await?;
        let from = e.desired.swap(replicas, SeqCst);
        if let Err(err) = self.store.set_replicas(namespace, name, replicas) {
            tracing::warn!(function = %name, error = %err, "could not store the replica count");
        }
        let window = state.policy.window;
        state.autoscaler.hold(self.scaler.now(), window);
        e.record(from, replicas, "scaled by hand".into(), false);
        Ok(())
    }

    async fn wake(&self, e: &Entry) {
        let mut state = e.state.lock().await;
        if e.desired.load(SeqCst) != 0 {
            return; // another call woke it first
        }
        let to = state.policy.floor();
        if self.rescale(e, 0, to).await {
            state.autoscaler.changed(self.scaler.now());
            e.record(0, to, "a call arrived while at zero".into(), false);
        }
    }

    /// Asks the provider for `to` replicas and keeps the count.
    async fn rescale(&self, e: &Entry, from: u64, to: u64) -> bool {
        e.desired.store(to, SeqCst);
        if let Err(err) = self.provider.scale(&e.namespace, &e.name, to).await {
            tracing::warn!(function = %e.name, namespace = %e.namespace, error = %err, "could not scale");
            e.desired.store(from, SeqCst);
            return false;
        }
        if let Err(err) = self.store.set_replicas(&e.namespace, &e.name, to) {
            tracing::warn!(function = %e.name, error = %err, "could not store the replica count");
        }
        self.metrics.scaled(&e.qualified(), to > from);
        tracing::info!(function = %e.name, namespace = %e.namespace, from, to, "scaled");
        true
    }

    /// One autoscaler round over every function.
    async fn tick(&self) {
        let entries: Vec<Arc<Entry>> = self
            .scaler
            .functions
            .lock()
            .expect("lock")
            .values()
            .cloned()
            .collect();
        for e in entries {
            let mut state = e.state.lock().await;
            if !state.policy.enabled() {
                continue;
            }
            let Ok(status) = self.provider.status(&e.namespace, &e.name).await else {
                continue;
            };
            let now = self.scaler.now();
            let sample = Sample {
                at: now,
                in_flight: e.in_flight.load(SeqCst),
                started: e.started.load(SeqCst),
            };
            let State { policy, autoscaler } = &mut *state;
            autoscaler.observe(policy, sample);
            let current = e.desired.load(SeqCst);
            let d = autoscaler.decide(policy, now, current, status.ready_replicas);
            if d.desired == current {
                e.record(current, current, d.reason, d.panicking);
                continue;
            }
            if d.desired == 0 {
                // A call that counted itself before this saw a non-zero
                // count and goes ahead: leave the replicas to it.
                e.desired.store(0, SeqCst);
                if e.in_flight.load(SeqCst) > 0 {
                    e.desired.store(current, SeqCst);
                    continue;
                }
            }
            if self.rescale(&e, current, d.desired).await {
                e.record(current, d.desired, d.reason, d.panicking);
            }
        }
    }

    /// Runs the autoscaler until the gateway is dropped.
    pub(crate) fn start_autoscaler(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(TICK);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                every.tick().await;
                let Some(gw) = weak.upgrade() else { break };
                gw.tick().await;
            }
        });
    }
}
