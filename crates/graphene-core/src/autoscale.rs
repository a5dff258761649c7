//! The autoscaler's decision, as a pure function of observed load (no I/O,
//! no clock: time is passed in), modelled on Knative's KPA.
//!
//! Load is sampled every tick: in-flight calls (waiting ones included) for
//! `capacity` scaling, calls started per second for `rps`. Two averages are
//! kept: over the stable window (60 s by default) and over a panic window
//! (a tenth of it, at least a second).
//!
//! - The desired count is the stable load divided by the target per replica,
//!   rounded up.
//! - When the panic load needs at least twice the replicas that are ready,
//!   the autoscaler panics: it scales to the panic estimate at once and never
//!   scales down until the burst has been over for a whole stable window.
//! - Scale-downs wait a stable window after the last change and then at most
//!   halve the count per decision.
//! - A function with `zero` enabled goes to zero once no call started for its
//!   zero-duration and none is in flight. At zero it stays there until a
//!   call arrives: the gateway wakes it without waiting for a tick.

use std::collections::VecDeque;
use std::time::Duration;

/// How often the gateway samples load and decides.
pub const TICK: Duration = Duration::from_millis(500);
/// Panic when the short-window load needs this many times the ready replicas.
pub const PANIC_THRESHOLD: f64 = 2.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// In-flight calls per replica (waiting calls count too).
    Capacity,
    /// Calls started per second per replica.
    Rps,
}

impl Metric {
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Capacity => "capacity",
            Metric::Rps => "rps",
        }
    }
}

/// A function's scaling policy, from its labels (see `settings.rs`).
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub min: u64,
    pub max: u64,
    pub metric: Metric,
    /// Load per replica the autoscaler aims for (target × proportion).
    pub target: f64,
    /// Idle time before scaling to zero; `None` never scales to zero.
    pub zero_after: Option<Duration>,
    /// The stable window.
    pub window: Duration,
}

impl Policy {
    /// Whether the autoscaler changes this function's replicas at all.
    /// `min == max` without `zero` turns it off (OpenFaaS's convention), and
    /// manual scaling is then unbounded.
    pub fn enabled(&self) -> bool {
        self.min != self.max || self.zero_after.is_some()
    }

    pub fn panic_window(&self) -> Duration {
        (self.window / 10)
            .max(Duration::from_secs(1))
            .min(self.window)
    }

    /// The fewest replicas while there is traffic.
    pub fn floor(&self) -> u64 {
        self.min.max(1)
    }
}

/// One observation of a function's load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Time since an arbitrary fixed origin.
    pub at: Duration,
    /// Calls in flight (running or waiting for a worker).
    pub in_flight: u64,
    /// Calls started so far (a counter).
    pub started: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub desired: u64,
    /// Average load over the stable and the panic window.
    pub stable_load: f64,
    pub panic_load: f64,
    pub panicking: bool,
    /// Why, in words (shown by `graphene describe`).
    pub reason: String,
}

/// The autoscaler's memory for one function: recent samples, panic mode,
/// and when it was last active and last changed.
#[derive(Debug, Clone)]
pub struct Autoscaler {
    samples: VecDeque<Sample>,
    panic_since: Option<Duration>,
    last_started: Duration,
    last_change: Duration,
    /// A manual count is kept until then.
    held_until: Duration,
}

impl Autoscaler {
    pub fn new(now: Duration) -> Self {
        Self {
            samples: VecDeque::new(),
            panic_since: None,
            last_started: now,
            last_change: now,
            held_until: now,
        }
    }

    /// A manual scale: the count is kept, up or down, for a window.
    pub fn hold(&mut self, now: Duration, window: Duration) {
        self.last_change = now;
        self.held_until = now + window;
    }

    /// Records a change of the replica count made elsewhere (a manual scale,
    /// a wake from zero): scale-downs wait a window after it.
    pub fn changed(&mut self, now: Duration) {
        self.last_change = now;
    }

    /// When a call last started (idleness is measured from starts).
    pub fn last_started(&self) -> Duration {
        self.last_started
    }

    pub fn observe(&mut self, policy: &Policy, s: Sample) {
        if self.samples.back().is_some_and(|p| s.started > p.started) {
            self.last_started = s.at;
        }
        self.samples.push_back(s);
        // One sample older than the window stays as the baseline for rates.
        while self.samples.len() > 2 && self.samples[1].at + policy.window <= s.at {
            self.samples.pop_front();
        }
    }

    fn average(&self, policy: &Policy, now: Duration, span: Duration) -> f64 {
        let since = now.saturating_sub(span);
        match policy.metric {
            Metric::Capacity => {
                let (sum, n) = self
                    .samples
                    .iter()
                    .filter(|s| s.at > since)
                    .fold((0u64, 0u64), |(sum, n), s| (sum + s.in_flight, n + 1));
                if n == 0 {
                    0.0
                } else {
                    sum as f64 / n as f64
                }
            }
            Metric::Rps => {
                let (Some(last), Some(first)) = (
                    self.samples.back(),
                    self.samples
                        .iter()
                        .rev()
                        .find(|s| s.at <= since)
                        .or(self.samples.front()),
                ) else {
                    return 0.0;
                };
                let dt = last.at.saturating_sub(first.at).as_secs_f64();
                if dt <= 0.0 {
                    0.0
                } else {
                    last.started.saturating_sub(first.started) as f64 / dt
                }
            }
        }
    }

    /// The replica count the function should have now, given `current`
    /// desired replicas of which `ready` are serving.
    pub fn decide(&mut self, policy: &Policy, now: Duration, current: u64, ready: u64) -> Decision {
        let stable = self.average(policy, now, policy.window);
        let panic = self.average(policy, now, policy.panic_window());
        let in_flight = self.samples.back().map_or(0, |s| s.in_flight);
        let want = |load: f64| (load / policy.target).ceil().max(0.0) as u64;
        let (want_stable, want_panic) = (want(stable), want(panic));

        let capacity = ready.max(1) as f64;
        if want_panic as f64 / capacity >= PANIC_THRESHOLD {
            self.panic_since = Some(now);
        } else if self
            .panic_since
            .is_some_and(|t| now.saturating_sub(t) >= policy.window)
        {
            self.panic_since = None;
        }
        let panicking = self.panic_since.is_some();
        let per = policy.metric.as_str();
        let (mut desired, mut reason) = if panicking {
            (
                want_panic.max(current),
                format!(
                    "panic: {panic:.1} {per} over the last {:?} needs {want_panic} replicas, at least twice the {ready} ready",
                    policy.panic_window()
                ),
            )
        } else {
            (
                want_stable,
                format!(
                    "{stable:.1} {per} over the last {:?} at a target of {:.1} per replica needs {want_stable}",
                    policy.window, policy.target
                ),
            )
        };
        if desired < current {
            if now.saturating_sub(self.last_change) < policy.window {
                desired = current;
                reason.push_str("; holding: the last change was less than a window ago");
            } else if desired < current.div_ceil(2) {
                desired = current.div_ceil(2);
                reason.push_str("; scaling down by at most half per step");
            }
        }
        let bounded = desired.clamp(policy.floor(), policy.max);
        if bounded != desired {
            reason.push_str(&format!(
                "; bounded to [{}, {}]",
                policy.floor(),
                policy.max
            ));
            desired = bounded;
        }
        let idle = in_flight == 0 && stable == 0.0 && panic == 0.0;
        if current == 0 && idle {
            desired = 0;
            reason = "at zero with no calls; the next call wakes it".to_string();
        } else if let Some(after) = policy.zero_after {
            let quiet = now.saturating_sub(self.last_started);
            if in_flight == 0 && quiet >= after {
                desired = 0;
                reason = format!("no call started for {quiet:?} (zero-duration {after:?})");
            }
        }
        if desired != current && now < self.held_until {
            desired = current;
            reason = "holding a manual scale for a window".to_string();
        }
        if desired != current {
            self.last_change = now;
        }
        Decision {
            desired,
            stable_load: stable,
            panic_load: panic,
            panicking,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            min: 1,
            max: 10,
            metric: Metric::Capacity,
            target: 2.0,
            zero_after: None,
            window: Duration::from_secs(10),
        }
    }

    /// Feeds `load(t)` every tick from `from` to `to` seconds, deciding each
    /// tick and applying the decision at once (replicas ready instantly).
    /// Returns the replica count after every tick.
    fn run(
        a: &mut Autoscaler,
        p: &Policy,
        replicas: &mut u64,
        started: &mut u64,
        from: f64,
        to: f64,
        load: impl Fn(f64) -> u64,
    ) -> Vec<u64> {
        let mut out = Vec::new();
        let mut t = from;
        while t < to {
            let now = Duration::from_secs_f64(t);
            let in_flight = load(t);
            *started += in_flight;
            a.observe(
                p,
                Sample {
                    at: now,
                    in_flight,
                    started: *started,
                },
            );
            *replicas = a.decide(p, now, *replicas, *replicas).desired;
            out.push(*replicas);
            t += TICK.as_secs_f64();
        }
        out
    }

    #[test]
    fn steady_load_settles_at_load_over_target() {
        let p = policy();
        let mut a = Autoscaler::new(Duration::ZERO);
        let (mut n, mut started) = (3, 0);
        let series = run(&mut a, &p, &mut n, &mut started, 0.0, 40.0, |_| 6);
        assert_eq!(*series.last().unwrap(), 3, "{series:?}");
        assert!(series.iter().all(|&r| r == 3), "no flapping: {series:?}");
    }

    #[test]
    fn a_burst_panics_and_scales_up_within_a_tick() {
        let p = policy();
        let mut a = Autoscaler::new(Duration::ZERO);
        let (mut n, mut started) = (1, 0);
        run(&mut a, &p, &mut n, &mut started, 0.0, 20.0, |_| 1);
        assert_eq!(n, 1);
        // 16 calls at once: the stable average barely moves, the panic one does.
        let now = Duration::from_secs(20);
        a.observe(
            &p,
            Sample {
                at: now,
                in_flight: 16,
                started: started + 16,
            },
        );
        let d = a.decide(&p, now, 1, 1);
        assert!(d.panicking, "{d:?}");
        assert!(d.desired >= 4, "scales up at once: {d:?}");
        assert!(d.reason.contains("panic"), "{}", d.reason);
    }

    #[test]
    fn no_scale_down_while_panicking_then_gradual() {
        let p = policy();
        let mut a = Autoscaler::new(Duration::ZERO);
        let (mut n, mut started) = (1, 0);
        // A 3 s burst of 16 in flight, then 2 in flight.
        let series = run(&mut a, &p, &mut n, &mut started, 0.0, 60.0, |t| {
            if (5.0..8.0).contains(&t) {
                16
            } else {
                2
            }
        });
        let peak = *series.iter().max().unwrap();
        assert!(peak >= 8, "{series:?}");
        let at = |t: f64| series[(t / TICK.as_secs_f64()) as usize];
        // Panic began at 5 s and holds for a window: nothing goes down
        // before 15 s, though the burst ended at 8 s.
        assert_eq!(at(14.5), peak, "{series:?}");
        // Then down by at most half per step, to load / target = 1.
        let downs: Vec<(u64, u64)> = series
            .windows(2)
            .filter(|w| w[1] < w[0])
            .map(|w| (w[0], w[1]))
            .collect();
        assert!(!downs.is_empty(), "{series:?}");
        assert!(downs.iter().all(|(a, b)| *b >= a.div_ceil(2)), "{downs:?}");
        assert_eq!(*series.last().unwrap(), 1, "{series:?}");
    }

    #[test]
    fn bounded_by_min_and_max() {
        let p = Policy {
            min: 2,
            max: 4,
            ..policy()
        };
        let mut a = Autoscaler::new(Duration::ZERO);
        let (mut n, mut started) = (2, 0);
        let series = run(&mut a, &p, &mut n, &mut started, 0.0, 30.0, |t| {
            if t < 15.0 {
                100
            } else {
                0
            }
        });
        assert_eq!(*series.iter().max().unwrap(), 4, "{series:?}");
        assert_eq!(*series.last().unwrap(), 2, "{series:?}");
        assert!(series.iter().all(|&r| (2..=4).contains(&r)), "{series:?}");
    }

    #[test]
    fn scales_to_zero_only_when_enabled_and_idle_since_the_last_start() {
        let zero = Policy {
            zero_after: Some(Duration::from_secs(5)),
            ..policy()
        };
        for (p, expect_zero) in [(policy(), false), (zero, true)] {
            let mut a = Autoscaler::new(Duration::ZERO);
            let (mut n, mut started) = (1, 0);
            run(&mut a, &p, &mut n, &mut started, 0.0, 2.0, |_| 1);
            // Idle from 2 s on.
            let series = run(&mut a, &p, &mut n, &mut started, 2.0, 10.0, |_| 0);
            let at = |t: f64| series[((t - 2.0) / TICK.as_secs_f64()) as usize];
            assert_eq!(at(6.0), 1, "not before the zero-duration: {series:?}");
            assert_eq!(at(9.5) == 0, expect_zero, "{series:?}");
            // At zero it stays there while nothing comes.
            let later = run(&mut a, &p, &mut n, &mut started, 10.0, 20.0, |_| 0);
            assert_eq!(later.contains(&0), expect_zero, "{later:?}");
        }
    }

    #[test]
    fn a_long_call_in_flight_keeps_the_replica() {
        let p = Policy {
            zero_after: Some(Duration::from_secs(2)),
            ..policy()
        };
        let mut a = Autoscaler::new(Duration::ZERO);
        let mut n = 1;
        // One call started at 0 s and runs until 10 s: no new starts.
        a.observe(
            &p,
            Sample {
                at: Duration::ZERO,
                in_flight: 1,
                started: 1,
            },
        );
        for i in 1..20 {
            let now = Duration::from_millis(500 * i);
            a.observe(
                &p,
                Sample {
                    at: now,
                    in_flight: 1,
                    started: 1,
                },
            );
            n = a.decide(&p, now, n, n).desired;
            assert_eq!(n, 1, "at {now:?}");
        }
        // Finished: idle has been counted from its start, so zero right away.
        let now = Duration::from_secs(10);
        a.observe(
            &p,
            Sample {
                at: now,
                in_flight: 0,
                started: 1,
            },
        );
        assert_eq!(a.decide(&p, now, n, n).desired, 0);
    }

    #[test]
    fn rps_counts_starts_per_second() {
        let p = Policy {
            metric: Metric::Rps,
            target: 10.0,
            ..policy()
        };
        let mut a = Autoscaler::new(Duration::ZERO);
        let (mut n, mut started) = (1, 0);
        // 20 starts per tick of 0.5 s = 40/s, in flight counted as 20.
        let series = run(&mut a, &p, &mut n, &mut started, 0.0, 30.0, |_| 20);
        assert_eq!(*series.last().unwrap(), 4, "{series:?}");
    }

    #[test]
    fn a_manual_scale_holds_both_ways() {
        let p = policy();
        let mut a = Autoscaler::new(Duration::ZERO);
        a.hold(Duration::from_secs(30), p.window);
        let now = Duration::from_secs(31);
        a.observe(
            &p,
            Sample {
                at: now,
                in_flight: 20,
                started: 20,
            },
        );
        assert_eq!(a.decide(&p, now, 1, 1).desired, 1, "held up");
        let later = Duration::from_secs(41);
        a.observe(
            &p,
            Sample {
                at: later,
                in_flight: 20,
                started: 40,
            },
        );
        assert!(a.decide(&p, later, 1, 1).desired > 1, "then free again");
    }

    #[test]
    fn a_manual_change_holds_for_a_window() {
        let p = policy();
        let mut a = Autoscaler::new(Duration::ZERO);
        a.changed(Duration::from_secs(30));
        for s in [31u64, 35, 39] {
            let now = Duration::from_secs(s);
            a.observe(
                &p,
                Sample {
                    at: now,
                    in_flight: 0,
                    started: 0,
                },
            );
            assert_eq!(a.decide(&p, now, 6, 6).desired, 6, "at {s}s");
        }
        let now = Duration::from_secs(41);
        assert_eq!(a.decide(&p, now, 6, 6).desired, 3);
    }
}
