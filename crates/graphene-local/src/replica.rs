//! A replica of a Python function: a group of worker processes with a
//! concurrency limit (one call per worker), forked from the function's warm
//! parent, or, with `com.graphene.fork: false`, one process of its own that
//! imported the handler. It is ready while at least one worker is connected;
//! stopping drains it: no new calls, and it ends only after the calls it has
//! finished (within the function's timeout).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::function::Shared;
use crate::runner::Runner;

pub struct Replica {
    pub id: String,
    pub runner: Arc<Runner>,
    pub workers: u64,
    shared: Arc<Shared>,
    /// Workers connected now: their pid as the runner knows it (inside a
    /// sandbox's PID namespace) and as this host knows it.
    pids: Mutex<Vec<(u32, u32)>>,
    /// Calls on its workers right now.
    busy: AtomicU64,
    draining: AtomicBool,
    stopped: AtomicBool,
    pub started_at: String,
    /// Where its forked workers go, for its memory and cpu limits.
    cgroup: Option<crate::cgroup::Group>,
}

impl Replica {
    pub async fn start(
        shared: Arc<Shared>,
        runner: Arc<Runner>,
        id: String,
        workers: u64,
        cgroup: Option<crate::cgroup::Group>,
    ) -> Arc<Replica> {
        let replica = Arc::new(Replica {
            id,
            runner: runner.clone(),
            workers,
            shared,
            pids: Mutex::new(Vec::new()),
            busy: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            started_at: graphene_core::time::now_rfc3339(),
            cgroup,
        });
        runner.attach(&replica).await;
        replica
    }

    pub fn worker_joined(&self, pid: u32, host_pid: u32) {
        if let Some(g) = &self.cgroup {
            g.add(host_pid);
        }
        self.pids.lock().expect("lock").push((pid, host_pid));
        self.shared.changed.notify_waiters();
    }

    pub fn worker_left(&self, pid: u32) {
        self.pids.lock().expect("lock").retain(|(p, _)| *p != pid);
        self.shared.changed.notify_waiters();
    }

    /// Host pids of its workers.
    pub fn pids(&self) -> Vec<u32> {
        self.pids
            .lock()
            .expect("lock")
            .iter()
            .map(|(_, h)| *h)
            .collect()
    }

    pub fn busy(&self) -> u64 {
        self.busy.load(Ordering::Acquire)
    }

    pub fn call_started(&self) {
        self.busy.fetch_add(1, Ordering::AcqRel);
    }

    pub fn call_ended(&self) {
        self.busy.fetch_sub(1, Ordering::AcqRel);
        self.shared.changed.notify_waiters();
    }

    /// Takes calls: not draining or stopped.
    pub fn routable(&self) -> bool {
        !self.draining.load(Ordering::Acquire)
    }

    /// Counts as capacity: a worker is connected and it takes calls.
    pub fn is_ready(&self) -> bool {
        self.routable() && !self.pids.lock().expect("lock").is_empty()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire) && !self.is_stopped()
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Drains, then ends the replica's workers.
    pub fn stop(self: &Arc<Self>, timeout: Duration) {
        let mut first = false;
        self.shared
            .router
            .while_locked(|| first = !self.draining.swap(true, Ordering::AcqRel));
        if !first {
            return;
        }
        self.shared.changed.notify_waiters();
        let me = self.clone();
        tokio::spawn(async move {
            // Its workers are no longer replaced as they finish.
            me.runner.drain(&me.id).await;
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                let changed = me.shared.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if me.busy() == 0 || tokio::time::Instant::now() >= deadline {
                    break;
                }
                let _ = tokio::time::timeout_at(deadline, changed).await;
            }
            me.stopped.store(true, Ordering::Release);
            me.runner.detach(&me).await;
            me.shared.router.purge();
            me.shared.changed.notify_waiters();
        });
    }
}
