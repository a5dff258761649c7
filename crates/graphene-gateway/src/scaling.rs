//! One function's scaling state, held by its registry record: calls in
//! flight and started, the replica count last asked for, the policy and the
//! autoscaler's memory, and what `describe` shows of its last decision.
//! `scaler.rs` drives it.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Mutex;
use std::time::Duration;

use graphene_core::api::{ScaleDecision, ScalingStatus};
use graphene_core::autoscale::{Autoscaler, Policy};

/// One function's load and scaling state, held by its registry record.
pub struct Scaling {
    pub(crate) in_flight: AtomicU64,
    pub(crate) started: AtomicU64,
    /// The replica count last asked for.
    pub(crate) desired: AtomicU64,
    policy: Mutex<Policy>,
    /// Serialises decisions: ticks, wakes and manual scales.
    pub(crate) autoscaler: tokio::sync::Mutex<Autoscaler>,
    /// A copy of the state for status readers (never awaited on).
    shown: Mutex<Shown>,
}

#[derive(Clone, Default)]
struct Shown {
    panicking: bool,
    last: Option<ScaleDecision>,
}

impl Scaling {
    pub fn new(policy: Policy, desired: u64, now: Duration) -> Self {
        Self {
            in_flight: AtomicU64::new(0),
            started: AtomicU64::new(0),
            desired: AtomicU64::new(desired),
            policy: Mutex::new(policy),
            autoscaler: tokio::sync::Mutex::new(Autoscaler::new(now)),
            shown: Mutex::new(Shown::default()),
        }
    }

    pub fn desired(&self) -> u64 {
        self.desired.load(SeqCst)
    }

    /// A deploy changed the policy (and maybe brought the count within it).
    pub fn set_policy(&self, policy: Policy, desired: u64) {
        *self.policy.lock().expect("lock") = policy;
        self.desired.store(desired, SeqCst);
    }

    pub(crate) fn policy(&self) -> Policy {
        self.policy.lock().expect("lock").clone()
    }

    /// Calls in flight (running or waiting).
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(SeqCst)
    }

    pub fn status(&self) -> ScalingStatus {
        let policy = self.policy();
        let shown = self.shown.lock().expect("lock").clone();
        ScalingStatus {
            enabled: policy.enabled(),
            min: policy.min,
            max: policy.max,
            metric: policy.metric.as_str().to_string(),
            target: policy.target,
            zero_after_seconds: policy.zero_after.map(|d| d.as_secs_f64()),
            window_seconds: policy.window.as_secs_f64(),
            in_flight: self.in_flight(),
            panicking: shown.panicking,
            last_decision: shown.last,
        }
    }

    pub(crate) fn record(&self, from: u64, to: u64, reason: String, panicking: bool) {
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
}
