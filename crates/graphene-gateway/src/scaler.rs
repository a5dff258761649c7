//! Elastic scaling, for any provider: counts each function's calls as they
//! start and end, wakes a function at zero on its first call, and every
//! [`TICK`] feeds the load to the autoscaler's pure decision
//! (`graphene_core::autoscale`) and applies it. Replica counts are kept in
//! the store, so a function resting at zero stays there after a restart.
//!
//! Where several gateways serve the same functions, only the leader decides
//! (`load.rs`): the others report it their load each tick. Any gateway
//! wakes a function at zero on a call, and takes manual scales.
//!
//! A call counts before it checks whether the function is at zero, and the
//! autoscaler re-reads the count after lowering the desired count to zero
//! (both sequentially consistent): either the call sees zero and wakes the
//! function, or the autoscaler sees the call and backs off.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;

use graphene_core::autoscale::{Sample, TICK};
use graphene_core::provider::Provider;

use crate::registry::Record;
use crate::Gateway;

/// Counts a call as in flight until dropped.
pub struct Load(Arc<Record>);

impl Drop for Load {
    fn drop(&mut self) {
        self.0.scaling.in_flight.fetch_sub(1, SeqCst);
    }
}

impl<P: Provider> Gateway<P> {
    /// Counts a call and wakes its function when it rests at zero. The
    /// returned guard counts the call until it ends; the flag says whether
    /// the call found the function at zero.
    pub(crate) async fn call_starts(&self, r: &Arc<Record>) -> (Load, bool) {
        r.scaling.in_flight.fetch_add(1, SeqCst);
        r.scaling.started.fetch_add(1, SeqCst);
        let load = Load(r.clone());
        let at_zero = r.scaling.desired.load(SeqCst) == 0;
        if at_zero {
            self.wake(r).await;
        }
        (load, at_zero)
    }

    /// A manual scale, applied under the function's scaling lock so that
    /// no autoscaler round interleaves; the count is then held for a window.
    pub(crate) async fn scale_by_hand(
        &self,
        r: &Arc<Record>,
        replicas: u64,
    ) -> Result<(), graphene_core::provider::ProviderError> {
        let mut autoscaler = r.scaling.autoscaler.lock().await;
        let from = r.scaling.desired.swap(replicas, SeqCst);
        self.registry.set_replicas(r, replicas).await;
        if let Err(e) = self.provider.scale(&r.id, replicas).await {
            // The count is stored: the reconciler keeps trying.
            r.touch();
            return Err(e);
        }
        let window = r.scaling.policy().window;
        autoscaler.hold(self.registry.now(), window);
        r.scaling
            .record(from, replicas, "scaled by hand".into(), false);
        Ok(())
    }

    async fn wake(&self, r: &Arc<Record>) {
        let mut autoscaler = r.scaling.autoscaler.lock().await;
        if r.scaling.desired.load(SeqCst) != 0 {
            return; // another call woke it first
        }
        let to = r.scaling.policy().floor();
        self.rescale(r, 0, to).await;
        autoscaler.changed(self.registry.now());
        r.scaling
            .record(0, to, "a call arrived while at zero".into(), false);
    }

    /// Writes the new count, then asks the provider for it; a provider that
    /// fails is left to the reconciler.
    async fn rescale(&self, r: &Arc<Record>, from: u64, to: u64) {
        r.scaling.desired.store(to, SeqCst);
        self.registry.set_replicas(r, to).await;
        if let Err(err) = self.provider.scale(&r.id, to).await {
            tracing::warn!(function = %r.id, error = %err, "could not scale; the reconciler tries again");
            r.touch();
        }
        self.metrics.scaled(&r.id, to > from);
        tracing::info!(function = %r.id, from, to, "scaled");
    }

    /// Whether this gateway leads: runs the autoscaler, applies functions
    /// to the runtime and records their rollouts (alone, it always does).
    pub(crate) fn leads(&self) -> bool {
        self.leadership.as_ref().is_none_or(|l| l.current().this)
    }

    /// One autoscaler round over every function, on the leader; the others
    /// report their load to it.
    async fn tick(&self) {
        let leader = match &self.leadership {
            Some(l) => l.current(),
            None => graphene_core::store::Leader {
                this: true,
                url: None,
            },
        };
        if !leader.this {
            self.leading.store(false, SeqCst);
            if let Some(url) = leader.url {
                self.report_load(&url).await;
            }
            return;
        }
        let shared = self.leadership.is_some();
        if !self.leading.swap(true, SeqCst) && shared {
            // Taken over: this gateway now applies every function.
            for r in self.registry.list(None) {
                r.touch();
            }
        }
        for r in self.registry.list(None) {
            let policy = r.scaling.policy();
            if !policy.enabled() {
                continue;
            }
            let mut autoscaler = r.scaling.autoscaler.lock().await;
            let Ok(status) = self.provider.status(&r.id).await else {
                continue;
            };
            let now = self.registry.now();
            let e = &r.scaling;
            let runtime = status.desired_replicas;
            if shared && runtime != e.desired.load(SeqCst) {
                // Another gateway woke the function (from zero) or scaled it
                // by hand: the runtime's count is the one to decide from,
                // left alone for a window as this gateway's own would be.
                match e.desired.load(SeqCst) == 0 {
                    true => autoscaler.changed(now),
                    false => autoscaler.hold(now, policy.window),
                }
                e.desired.store(runtime, SeqCst);
            }
            let (in_flight, started) = self.loads.of(&r.id, std::time::Instant::now());
            let sample = Sample {
                at: now,
                in_flight: e.in_flight.load(SeqCst) + in_flight,
                started: e.started.load(SeqCst) + started,
            };
            autoscaler.observe(&policy, sample);
            let current = e.desired.load(SeqCst);
            let d = autoscaler.decide(&policy, now, current, status.ready_replicas);
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
            self.rescale(&r, current, d.desired).await;
            e.record(current, d.desired, d.reason, d.panicking);
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
