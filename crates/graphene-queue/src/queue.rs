//! The [`JobQueue`] trait: what the gateway's one dispatcher needs of a
//! backend. The embedded SQLite queue ([`crate::Jobs`]) and NATS JetStream
//! (`nats.rs`) implement it; [`open`] picks one from the `--queue` URL.
//!
//! A backend hands out [`Delivery`]s (a job with its attempt number, leased
//! to this gateway), keeps them alive while they run ([`JobQueue::keep`]),
//! and settles them ([`JobQueue::retry`], [`JobQueue::finish`]); a settle
//! that answers `false` was fenced (a newer attempt owns the job). Callbacks
//! work the same way. Errors are the backend's words, for logs; the
//! gateway answers 503 for them.

use std::any::Any;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::{Callback, Cancel, JobStatus, Jobs, NewJob, Outcome, State};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
pub type QueueError = String;
type QueueResult<T> = Result<T, QueueError>;

/// One function's share of a claim.
#[derive(Debug, Clone)]
pub struct Room {
    pub namespace: String,
    pub function: String,
    /// Jobs of the function that may run at once (across gateways, where
    /// the backend is shared).
    pub concurrency: u64,
    /// Jobs this gateway may start now.
    pub free: usize,
}

/// A job handed to this gateway to run.
pub struct Delivery {
    pub job: NewJob,
    pub attempt: u32,
    /// What the backend needs to settle it.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) token: Arc<dyn Any + Send + Sync>,
}

/// A callback to send.
pub struct CallbackDelivery {
    pub callback: Callback,
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) token: Arc<dyn Any + Send + Sync>,
}

pub trait JobQueue: Send + Sync + 'static {
    /// The largest request body a job can carry, when the backend sets one.
    fn max_body(&self) -> Option<usize> {
        None
    }

    /// Stores a job (durably, before the caller's 202). `None` when stored;
    /// the first caller's principal when the call id was taken.
    fn enqueue<'a>(&'a self, job: NewJob, now: u64) -> BoxFuture<'a, QueueResult<Option<String>>>;

    fn status<'a>(&'a self, id: &'a str) -> BoxFuture<'a, QueueResult<Option<JobStatus>>>;

    fn cancel<'a>(&'a self, id: &'a str, now: u64) -> BoxFuture<'a, QueueResult<Cancel>>;

    /// Cancels a removed function's queued jobs; how many.
    fn cancel_function<'a>(
        &'a self,
        namespace: &'a str,
        function: &'a str,
        now: u64,
    ) -> BoxFuture<'a, QueueResult<usize>>;

    /// Newest first.
    fn list<'a>(
        &'a self,
        namespace: &'a str,
        function: Option<&'a str>,
        state: Option<State>,
        limit: usize,
    ) -> BoxFuture<'a, QueueResult<Vec<JobStatus>>>;

    /// At start-up: queues again the jobs this gateway ran when it stopped;
    /// how many.
    fn recover(&self, now: u64) -> BoxFuture<'_, QueueResult<usize>>;

    /// Upkeep, called often: expired leases back to the queue, finished
    /// jobs older than the retention forgotten.
    fn maintain(&self, now: u64, retention: Duration) -> BoxFuture<'_, QueueResult<()>>;

    /// Due jobs, oldest first within each function, at most `free` of each.
    fn claim<'a>(
        &'a self,
        room: &'a [Room],
        now: u64,
        lease: Duration,
    ) -> BoxFuture<'a, QueueResult<Vec<Delivery>>>;

    /// Keeps a running job's lease for another `lease`.
    fn keep<'a>(
        &'a self,
        d: &'a Delivery,
        now: u64,
        lease: Duration,
    ) -> BoxFuture<'a, QueueResult<()>>;

    /// Queues the attempt again after `wait`; false when fenced.
    fn retry<'a>(
        &'a self,
        d: &'a Delivery,
        wait: Duration,
        error: &'a str,
        now: u64,
    ) -> BoxFuture<'a, QueueResult<bool>>;

    /// Stores the outcome (and queues its callback); false when fenced.
    fn finish<'a>(
        &'a self,
        d: &'a Delivery,
        succeeded: bool,
        outcome: &'a Outcome,
        now: u64,
    ) -> BoxFuture<'a, QueueResult<bool>>;

    /// Callbacks due now, at most `max`.
    fn callbacks(&self, now: u64, max: usize) -> BoxFuture<'_, QueueResult<Vec<CallbackDelivery>>>;

    /// Records a delivery, or schedules another try, or gives up after
    /// [`crate::CALLBACK_ATTEMPTS`].
    fn callback_done<'a>(
        &'a self,
        c: &'a CallbackDelivery,
        error: Option<&'a str>,
        now: u64,
    ) -> BoxFuture<'a, QueueResult<()>>;
}

/// The wait before a callback's next try.
pub fn callback_backoff(attempts: u32) -> Duration {
    Duration::from_secs((1u64 << attempts.min(8)).min(300))
}

/// The embedded backend: [`Jobs`] in SQLite, every write fsynced. Calls run
/// on the blocking pool, never on the async runtime's workers.
pub struct Embedded {
    jobs: Arc<Jobs>,
    last_purge: AtomicU64,
}

/// How often finished jobs past their retention are forgotten.
const PURGE_EVERY_MS: u64 = 60_000;

impl Embedded {
    pub fn open(path: &Path, result_limit: usize) -> Result<Self, String> {
        Ok(Self {
            jobs: Arc::new(Jobs::open(path, result_limit).map_err(|e| e.to_string())?),
            last_purge: AtomicU64::new(0),
        })
    }

    fn run<'a, T: Send + 'static>(
        &self,
        f: impl FnOnce(&Jobs) -> rusqlite::Result<T> + Send + 'static,
    ) -> BoxFuture<'a, QueueResult<T>> {
        let jobs = self.jobs.clone();
        Box::pin(async move {
            match tokio::task::spawn_blocking(move || f(&jobs)).await {
                Ok(r) => r.map_err(|e| format!("the job store: {e}")),
                Err(e) => Err(format!("the job store: {e}")),
            }
        })
    }
}

/// The embedded backend's token: the attempt is the job's lease.
struct Lease;

impl JobQueue for Embedded {
    fn enqueue<'a>(&'a self, job: NewJob, now: u64) -> BoxFuture<'a, QueueResult<Option<String>>> {
        self.run(move |j| j.enqueue(&job, now))
    }

    fn status<'a>(&'a self, id: &'a str) -> BoxFuture<'a, QueueResult<Option<JobStatus>>> {
        let id = id.to_string();
        self.run(move |j| j.status(&id))
    }

    fn cancel<'a>(&'a self, id: &'a str, now: u64) -> BoxFuture<'a, QueueResult<Cancel>> {
        let id = id.to_string();
        self.run(move |j| j.cancel(&id, now))
    }

    fn cancel_function<'a>(
        &'a self,
        namespace: &'a str,
        function: &'a str,
        now: u64,
    ) -> BoxFuture<'a, QueueResult<usize>> {
        let (ns, f) = (namespace.to_string(), function.to_string());
        self.run(move |j| j.cancel_function(&ns, &f, now))
    }

    fn list<'a>(
        &'a self,
        namespace: &'a str,
        function: Option<&'a str>,
        state: Option<State>,
        limit: usize,
    ) -> BoxFuture<'a, QueueResult<Vec<JobStatus>>> {
        let (ns, f) = (namespace.to_string(), function.map(str::to_string));
        self.run(move |j| j.list(&ns, f.as_deref(), state, limit))
    }

    fn recover(&self, now: u64) -> BoxFuture<'_, QueueResult<usize>> {
        self.run(move |j| j.requeue_running(now))
    }

    fn maintain(&self, now: u64, retention: Duration) -> BoxFuture<'_, QueueResult<()>> {
        let purge = now.saturating_sub(self.last_purge.load(Ordering::Relaxed)) >= PURGE_EVERY_MS;
        if purge {
            self.last_purge.store(now, Ordering::Relaxed);
        }
        self.run(move |j| {
            j.requeue_expired(now)?;
            if purge {
                j.purge(now.saturating_sub(retention.as_millis() as u64))?;
            }
            Ok(())
        })
    }

    fn claim<'a>(
        &'a self,
        room: &'a [Room],
        now: u64,
        lease: Duration,
    ) -> BoxFuture<'a, QueueResult<Vec<Delivery>>> {
        let room: Vec<((String, String), usize)> = room
            .iter()
            .map(|r| ((r.namespace.clone(), r.function.clone()), r.free))
            .collect();
        let until = now + lease.as_millis() as u64;
        let claimed = self.run(move |j| j.claim(now, until, &room));
        Box::pin(async move {
            Ok(claimed
                .await?
                .into_iter()
                .map(|j| Delivery {
                    job: j.new,
                    attempt: j.attempt,
                    token: Arc::new(Lease),
                })
                .collect())
        })
    }

    fn keep<'a>(
        &'a self,
        d: &'a Delivery,
        now: u64,
        lease: Duration,
    ) -> BoxFuture<'a, QueueResult<()>> {
        let ids = [(d.job.id.clone(), d.attempt)];
        self.run(move |j| j.extend(&ids, now + lease.as_millis() as u64))
    }

    fn retry<'a>(
        &'a self,
        d: &'a Delivery,
        wait: Duration,
        error: &'a str,
        now: u64,
    ) -> BoxFuture<'a, QueueResult<bool>> {
        let (id, attempt, error) = (d.job.id.clone(), d.attempt, error.to_string());
        let next = now + wait.as_millis() as u64;
        self.run(move |j| j.retry(&id, attempt, next, &error))
    }

    fn finish<'a>(
        &'a self,
        d: &'a Delivery,
        succeeded: bool,
        outcome: &'a Outcome,
        now: u64,
    ) -> BoxFuture<'a, QueueResult<bool>> {
        let (id, attempt, outcome) = (d.job.id.clone(), d.attempt, outcome.clone());
        self.run(move |j| j.finish(&id, attempt, succeeded, &outcome, now))
    }

    fn callbacks(&self, now: u64, max: usize) -> BoxFuture<'_, QueueResult<Vec<CallbackDelivery>>> {
        let due = self.run(move |j| j.callbacks_due(now, max));
        Box::pin(async move {
            Ok(due
                .await?
                .into_iter()
                .map(|callback| CallbackDelivery {
                    callback,
                    token: Arc::new(Lease),
                })
                .collect())
        })
    }

    fn callback_done<'a>(
        &'a self,
        c: &'a CallbackDelivery,
        error: Option<&'a str>,
        now: u64,
    ) -> BoxFuture<'a, QueueResult<()>> {
        let next = now + callback_backoff(c.callback.attempts).as_millis() as u64;
        let (id, error) = (c.callback.id.clone(), error.map(str::to_string));
        self.run(move |j| j.callback_done(&id, error.as_deref(), next))
    }
}
