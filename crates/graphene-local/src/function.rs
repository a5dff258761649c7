//! One deployed function on this host: its warm parent and replicas, and
//! how a call reaches a worker (Python), a fresh process (exec) or an HTTP
//! service (upstream).

use std::collections::VecDeque;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use graphene_core::api::{InstanceStatus, Rollout, RolloutState, RuntimeStatus};
use graphene_core::provider::{InvocationResult, ProviderError};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;
use tokio::time::Instant;

pub use graphene_http::forward::Call;

use crate::logs::LogBook;
use crate::protocol::{self, RequestHeader, ResponseHeader};
use crate::replica::Replica;
use crate::router::{Router, Take, WorkerConn};
use crate::runner::{Launch, Mode, Runner};
use crate::sandbox::Mounts;

/// How long a crashed worker's exit report may take to arrive.
const EXIT_REPORT_WAIT: Duration = Duration::from_millis(300);

/// State shared by a function's runners, replicas and callers.
pub struct Shared {
    pub name: String,
    pub router: Router,
    pub desired: AtomicU64,
    pub restarts: AtomicU64,
    pub last_exit: Mutex<Option<String>>,
    /// The last import failure and the serial of the launch it belongs to.
    pub import_error: Mutex<Option<(u64, String)>>,
    /// Woken when readiness, a worker, a replica's calls or an import error
    /// change.
    pub changed: Notify,
    /// Replicas of the previous version, serving until a new one is ready.
    pub retiring: Mutex<Vec<Arc<Replica>>>,
    /// Counts updates, so an update's clean-up knows a newer one took over.
    pub generation: AtomicU64,
    pub logs: LogBook,
    pub sockets: Arc<SocketNames>,
    /// Told when a runner exits on its own; when set, runners are not
    /// restarted.
    pub runner_exit: Option<crate::RunnerExit>,
    /// Recent worker exits (runner, pid, how), to name the cause of a crash
    /// (pids are per runner: each sandbox has its own PID namespace).
    exits: Mutex<VecDeque<(String, u32, String)>>,
}

impl Shared {
    pub fn new(
        name: String,
        logs: LogBook,
        sockets: Arc<SocketNames>,
        runner_exit: Option<crate::RunnerExit>,
    ) -> Self {
        Self {
            name,
            router: Router::default(),
            desired: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            last_exit: Mutex::new(None),
            import_error: Mutex::new(None),
            changed: Notify::new(),
            retiring: Mutex::new(Vec::new()),
            generation: AtomicU64::new(0),
            logs,
            sockets,
            runner_exit,
            exits: Mutex::new(VecDeque::new()),
        }
    }

    /// A runner of launch `serial` imported the handler: that launch's
    /// import error is over (another's is not).
    pub fn imported(&self, serial: u64) {
        let mut e = self.import_error.lock().expect("lock");
        if e.as_ref().is_some_and(|(s, _)| *s == serial) {
            *e = None;
        }
    }

    /// The import error of launch `serial`, if its last import failed.
    pub fn import_error_of(&self, serial: u64) -> Option<String> {
        match &*self.import_error.lock().expect("lock") {
            Some((s, e)) if *s == serial => Some(e.clone()),
            _ => None,
        }
    }

    pub fn exited(&self, runner: &str, pid: u32, how: String) {
        let mut exits = self.exits.lock().expect("lock");
        if exits.len() >= 64 {
            exits.pop_front();
        }
        exits.push_back((runner.to_string(), pid, how));
        drop(exits);
        self.changed.notify_waiters();
    }

    fn exit_of(&self, runner: &str, pid: u32) -> Option<String> {
        self.exits
            .lock()
            .expect("lock")
            .iter()
            .rev()
            .find(|(r, p, _)| *p == pid && r == runner)
            .map(|(_, _, how)| how.clone())
    }
}

/// What serves a function's calls.
pub enum Target {
    /// Python replicas: workers forked from a warm parent, or (without
    /// fork) a process per replica.
    Python(Arc<Launch>),
    /// A process per call (`fprocess`).
    Exec(Arc<Launch>),
    /// An HTTP service that runs elsewhere; calls are proxied to it.
    Upstream(graphene_http::forward::Upstream),
}

/// What a call needs to know, swapped whole on update.
pub struct Current {
    /// Its launch's serial (0 for an upstream).
    pub serial: u64,
    /// Identifies what the replicas run: a deploy with the same fingerprint
    /// leaves running replicas alone.
    pub fingerprint: String,
    pub target: Target,
    pub timeout: Duration,
    pub fprocess: String,
    /// Replicas are forked from a warm parent.
    pub fork: bool,
}

/// Settings that change without touching running replicas.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_replicas: u64,
    /// The autoscaler may add replicas (else a full function answers 429
    /// right after a short wait).
    pub autoscaled: bool,
    /// Calls that may wait for a worker.
    pub queue: u64,
}

pub struct Function {
    pub shared: Arc<Shared>,
    /// The registry revision it runs (renumbered when a new revision runs
    /// the same thing).
    revision: AtomicU64,
    current: RwLock<Arc<Current>>,
    limits: Mutex<Limits>,
    replicas: tokio::sync::Mutex<Vec<Arc<Replica>>>,
    /// The current version's warm parent (Python with fork).
    parent: Mutex<Option<Arc<Runner>>>,
    next_replica: AtomicU64,
    /// Exec calls running now.
    exec_running: AtomicU64,
}

/// Unix socket paths are short (108 bytes): runners get numbered names.
pub struct SocketNames {
    pub dir: PathBuf,
    pub next: AtomicU64,
}

impl Function {
    pub fn new(shared: Shared, current: Current, limits: Limits, revision: u64) -> Self {
        let shared = Arc::new(shared);
        let parent = start_parent(&shared, &current);
        Self {
            shared,
            revision: AtomicU64::new(revision),
            current: RwLock::new(Arc::new(current)),
            limits: Mutex::new(limits),
            replicas: tokio::sync::Mutex::new(Vec::new()),
            parent: Mutex::new(parent),
            next_replica: AtomicU64::new(1),
            exec_running: AtomicU64::new(0),
        }
    }

    /// Makes `current` the version new replicas run, starting its warm
    /// parent; returns the previous version's parent.
    fn install(&self, current: Current) -> Option<Arc<Runner>> {
        let parent = start_parent(&self.shared, &current);
        *self.current.write().expect("lock") = Arc::new(current);
        std::mem::replace(&mut *self.parent.lock().expect("lock"), parent)
    }

    pub fn set_revision(&self, revision: u64) {
        self.revision.store(revision, Ordering::Release);
        self.shared.changed.notify_waiters();
    }

    /// The current launch failed to import its handler.
    pub fn failed(&self) -> bool {
        self.shared.import_error_of(self.current().serial).is_some()
    }

    pub fn set_limits(&self, limits: Limits) {
        *self.limits.lock().expect("lock") = limits;
        self.shared.changed.notify_waiters();
    }

    fn limits(&self) -> Limits {
        *self.limits.lock().expect("lock")
    }

    pub fn fingerprint(&self) -> String {
        self.current().fingerprint.clone()
    }

    fn current(&self) -> Arc<Current> {
        self.current.read().expect("lock").clone()
    }

    /// Replaces the version of the function; running replicas are replaced by
    /// new ones, the old draining once a new one is ready.
    pub async fn update(&self, current: Current, revision: u64, replicas: u64) {
        self.revision.store(revision, Ordering::Release);
        let old_timeout = self.current().timeout;
        let generation = self.shared.generation.fetch_add(1, Ordering::AcqRel) + 1;
        // The previous warm parent ends once its last replica has drained.
        if let Some(p) = self.install(current) {
            p.retire();
        }
        // Replicas that never became ready stop now: a superseded revision
        // that failed is not retried any more. Ready ones serve until a
        // replica of the new revision is ready.
        let (ready, never_ready): (Vec<_>, Vec<_>) =
            std::mem::take(&mut *self.replicas.lock().await)
                .into_iter()
                .partition(|r| r.is_ready());
        for r in never_ready {
            r.stop(old_timeout);
        }
        let old: Vec<Arc<Replica>> = {
            let mut retiring = self.shared.retiring.lock().expect("lock");
            retiring.extend(ready);
            retiring.clone()
        };
        self.scale(replicas).await;
        let fresh: Vec<Arc<Replica>> = self.replicas.lock().await.clone();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            // The old revision serves until a new replica is ready, or until
            // the new ones are themselves stopped (a scale to zero, removal).
            // When a newer update stopped them, that update owns the old
            // replicas now.
            loop {
                let changed = shared.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if fresh.iter().any(|r| r.is_ready()) {
                    break;
                }
                if fresh.is_empty() || fresh.iter().all(|r| !r.routable()) {
                    if shared.generation.load(Ordering::Acquire) != generation {
                        return;
                    }
                    break;
                }
                let _ = tokio::time::timeout(Duration::from_millis(500), changed).await;
            }
            shared
                .retiring
                .lock()
                .expect("lock")
                .retain(|r| !old.iter().any(|o| Arc::ptr_eq(o, r)));
            for r in old {
                r.stop(old_timeout);
            }
        });
    }

    pub async fn scale(&self, replicas: u64) {
        self.shared.desired.store(replicas, Ordering::Release);
        let current = self.current();
        let Target::Python(launch) = &current.target else {
            self.shared.changed.notify_waiters();
            return;
        };
        let parent = self.parent.lock().expect("lock").clone();
        let mut running = self.replicas.lock().await;
        while (running.len() as u64) < replicas {
            let n = self.next_replica.fetch_add(1, Ordering::Relaxed);
            let id = format!("{}-{n}", self.shared.name);
            let runner = match &parent {
                Some(p) => p.clone(),
                None => Runner::start(
                    self.shared.clone(),
                    launch.clone(),
                    id.clone(),
                    Mode::Direct {
                        replica: id.clone(),
                    },
                ),
            };
            let workers = if current.fork { launch.workers } else { 1 };
            // Forked workers leave the parent's group for their replica's.
            let group = match parent {
                Some(_) => launch.cgroups.group(&id, launch.resources),
                None => None,
            };
            running.push(Replica::start(self.shared.clone(), runner, id, workers, group).await);
        }
        // Scale-downs take the replicas with the fewest calls in flight.
        running.sort_by_key(|r| std::cmp::Reverse(r.busy()));
        while (running.len() as u64) > replicas {
            if let Some(r) = running.pop() {
                r.stop(current.timeout);
            }
        }
        self.shared.changed.notify_waiters();
    }

    pub async fn stop(&self) {
        self.shared.desired.store(0, Ordering::Release);
        let timeout = self.current().timeout;
        for r in self.replicas.lock().await.drain(..) {
            r.stop(timeout);
        }
        for r in self.shared.retiring.lock().expect("lock").drain(..) {
            r.stop(timeout);
        }
        if let Some(p) = self.parent.lock().expect("lock").take() {
            p.retire();
        }
        self.shared.router.close();
        self.shared.changed.notify_waiters();
    }

    /// Current and retiring replicas.
    async fn all_replicas(&self) -> Vec<(Arc<Replica>, bool)> {
        let mut all: Vec<(Arc<Replica>, bool)> = self
            .replicas
            .lock()
            .await
            .iter()
            .map(|r| (r.clone(), false))
            .collect();
        all.extend(
            self.shared
                .retiring
                .lock()
                .expect("lock")
                .iter()
                .map(|r| (r.clone(), true)),
        );
        all
    }

    async fn ready_replicas(&self) -> u64 {
        self.all_replicas()
            .await
            .iter()
            .filter(|(r, _)| r.is_ready())
            .count() as u64
    }

    /// The neutral status, with what only this runtime knows (the warm
    /// parent, workers, restarts, the import error) in its details.
    pub async fn status(&self) -> RuntimeStatus {
        let current = self.current();
        let desired = self.shared.desired.load(Ordering::Acquire);
        let python = match &current.target {
            Target::Python(launch) => Some(if current.fork { launch.workers } else { 1 }),
            _ => None,
        };
        let all = self.all_replicas().await;
        let parent = self.parent.lock().expect("lock").clone();
        let import_error = self.shared.import_error_of(current.serial);
        let revision = self.revision.load(Ordering::Acquire);
        let fresh_ready = all.iter().any(|(r, retiring)| !retiring && r.is_ready());
        let state = match (&python, import_error.is_some()) {
            (None, _) => RolloutState::Ready,
            (Some(_), true) => RolloutState::Failed,
            (Some(_), false) if fresh_ready => RolloutState::Ready,
            // At zero: ready to wake once the warm parent imported (without
            // fork nothing runs until a call comes).
            (Some(_), false) if desired == 0 => match &parent {
                Some(p) if !p.is_imported() => RolloutState::Progressing,
                _ => RolloutState::Ready,
            },
            _ => RolloutState::Progressing,
        };
        let mut details = serde_json::Map::new();
        details.insert(
            "restarts".into(),
            self.shared.restarts.load(Ordering::Relaxed).into(),
        );
        if let Some(e) = self.shared.last_exit.lock().expect("lock").clone() {
            details.insert("lastExit".into(), e.into());
        }
        if let Some(e) = &import_error {
            details.insert("importError".into(), e.clone().into());
        }
        details.insert("workersPerReplica".into(), python.unwrap_or(0).into());
        details.insert(
            "timeoutSeconds".into(),
            current.timeout.as_secs_f64().into(),
        );
        details.insert("queued".into(), self.shared.router.queued().into());
        if let Some(p) = parent {
            details.insert(
                "parent".into(),
                json!({
                    "pid": p.pid.load(Ordering::Relaxed),
                    "ready": p.is_imported(),
                    "startedAt": p.started_at.lock().expect("lock").clone(),
                }),
            );
        }
        RuntimeStatus {
            desired_replicas: desired,
            ready_replicas: if python.is_some() {
                all.iter().filter(|(r, _)| r.is_ready()).count() as u64
            } else {
                desired
            },
            rollout: Some(Rollout {
                revision,
                state,
                reason: import_error
                    .map(|e| format!("the handler failed to import: {e}"))
                    .unwrap_or_default(),
            }),
            instances: all
                .iter()
                .filter(|(r, _)| !r.is_stopped())
                .map(|(r, retiring)| {
                    let pids = r.pids();
                    let mut details = serde_json::Map::new();
                    details.insert("pid".into(), pids.first().copied().unwrap_or(0).into());
                    details.insert("workers".into(), (pids.len() as u64).into());
                    details.insert("inFlight".into(), r.busy().into());
                    if r.is_draining() {
                        details.insert("draining".into(), true.into());
                    }
                    if *retiring {
                        details.insert("retiring".into(), true.into());
                    }
                    details.insert("pids".into(), pids.into());
                    InstanceStatus {
                        id: r.id.clone(),
                        revision: match r.runner.serial == current.serial {
                            true => revision,
                            false => r.runner.revision,
                        },
                        ready: r.is_ready(),
                        started_at: r.started_at.clone(),
                        details,
                    }
                })
                .collect(),
            details,
            ..Default::default()
        }
    }

    pub async fn invoke(&self, call: Call) -> Result<InvocationResult, ProviderError> {
        let arrived = Instant::now();
        let current = self.current();
        let deadline = arrived + current.timeout;
        let mut result = match &current.target {
            Target::Python(_) => self.invoke_worker(&current, call, arrived).await,
            Target::Exec(launch) => self.invoke_exec(&current, launch, call, deadline).await,
            Target::Upstream(u) => {
                if self.shared.desired.load(Ordering::Acquire) == 0 {
                    return Err(self.no_replicas());
                }
                u.call(&self.shared.name, call, deadline, current.timeout)
                    .await
            }
        }?;
        if !result
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            result
                .headers
                .push(("Content-Type".into(), "text/plain; charset=utf-8".into()));
        }
        Ok(result)
    }

    async fn exec_slot(
        &self,
        workers: u64,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<ExecSlot<'_>, ProviderError> {
        loop {
            let freed = self.shared.changed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let limit = workers * self.shared.desired.load(Ordering::Acquire).max(1);
            let running = self.exec_running.load(Ordering::Acquire);
            if running < limit {
                if self
                    .exec_running
                    .compare_exchange(running, running + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return Ok(ExecSlot(self));
                }
                continue;
            }
            tokio::select! {
                _ = freed => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(ProviderError::Unavailable(format!(
                        "all {limit} process slots of {} stayed busy for its timeout ({timeout:?})",
                        self.shared.name
                    )))
                }
            }
        }
    }

    fn no_replicas(&self) -> ProviderError {
        ProviderError::Unavailable(format!(
            "function {0} has 0 replicas; scale it up with `graphene scale {0} --replicas 1`",
            self.shared.name
        ))
    }

    /// Whether every replica the function may have is running: then calls
    /// that find no idle worker wait only briefly and get 429.
    async fn at_capacity(&self, limits: Limits) -> bool {
        let desired = self.shared.desired.load(Ordering::Acquire);
        (!limits.autoscaled || desired >= limits.max_replicas)
            && desired > 0
            && self.ready_replicas().await >= desired
    }

    /// Held calls fail fast when no replica can come: the handler does not
    /// import and nothing else serves.
    async fn failing(&self) -> Option<ProviderError> {
        let error = self.shared.import_error_of(self.current().serial)?;
        (self.ready_replicas().await == 0).then(|| {
            ProviderError::Unavailable(format!(
                "function {} failed to import its handler: {error}",
                self.shared.name
            ))
        })
    }

    /// An idle worker now, or after waiting in the queue: up to the
    /// function's timeout while replicas start, briefly when it is at its
    /// maximum. Also returns the wait when no replica was ready (cold).
    async fn acquire(
        &self,
        current: &Current,
        arrived: Instant,
    ) -> Result<(WorkerConn, Option<Duration>), ProviderError> {
        let s = &self.shared;
        let limits = self.limits();
        let brief = graphene_core::settings::overflow_wait(current.timeout);
        let overloaded = |ready: u64| {
            let bound = if limits.autoscaled {
                format!("it is at its maximum of {} replicas", limits.max_replicas)
            } else {
                format!(
                    "autoscaling is off ({} == {})",
                    graphene_core::settings::LABEL_SCALE_MIN,
                    graphene_core::settings::LABEL_SCALE_MAX
                )
            };
            ProviderError::Overloaded(
                format!(
                    "all {ready} replicas of {} are busy and {bound}; retry later",
                    s.name
                ),
                brief.as_secs_f64().ceil().max(1.0) as u64,
            )
        };
        let mut waiter = match s.router.take(limits.queue as usize) {
            Take::Now(conn) => return Ok((conn, None)),
            Take::Full => {
                if self.at_capacity(limits).await {
                    return Err(overloaded(self.ready_replicas().await));
                }
                return Err(ProviderError::Unavailable(format!(
                    "function {} already holds {} calls waiting for a replica (its queue limit, {})",
                    s.name,
                    limits.queue,
                    crate::settings::ANNOTATION_QUEUE
                )));
            }
            Take::Queued(w) => w,
        };
        // No replica ready: a cold start (calls that found the function at
        // zero are also counted by the gateway, which woke it).
        let cold = self.ready_replicas().await == 0;
        let full = !cold && self.at_capacity(limits).await;
        let deadline = arrived + if full { brief } else { current.timeout };
        loop {
            let changed = s.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(e) = self.failing().await {
                return Err(e);
            }
            tokio::select! {
                conn = waiter.recv() => {
                    return match conn {
                        Some(c) => Ok((c, cold.then(|| arrived.elapsed()))),
                        None => Err(ProviderError::NotFound(format!("function {} was removed", s.name))),
                    };
                }
                _ = changed => continue,
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(if full {
                        overloaded(self.ready_replicas().await)
                    } else if s.desired.load(Ordering::Acquire) == 0 {
                        self.no_replicas()
                    } else if cold {
                        ProviderError::Unavailable(format!(
                            "no replica of {} was ready within its timeout ({:?})",
                            s.name, current.timeout
                        ))
                    } else {
                        ProviderError::Unavailable(format!(
                            "every worker of {} stayed busy for its timeout ({:?}) and no new replica came",
                            s.name, current.timeout
                        ))
                    });
                }
            }
        }
    }

    /// Sends a call to an idle worker. The wait for a worker and the call
    /// itself each get the function's timeout.
    async fn invoke_worker(
        &self,
        current: &Current,
        call: Call,
        arrived: Instant,
    ) -> Result<InvocationResult, ProviderError> {
        let header = RequestHeader {
            method: &call.method,
            path: &call.path,
            query: &call.query,
            headers: &call.headers,
            call_id: &call.call_id,
        };
        loop {
            let (conn, cold_start) = self.acquire(current, arrived).await?;
            let deadline = Instant::now() + current.timeout;
            // Until disarmed, dropping this (the caller went away, or the
            // timeout) has the worker replaced: it may still be running the
            // call, and must not take another.
            let mut in_flight = InFlight::new(conn);
            let conn = in_flight.conn.as_mut().expect("armed");
            let sent = tokio::time::timeout_at(
                deadline,
                protocol::write_frame(&mut conn.stream, &header, &call.body),
            )
            .await;
            match sent {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    // The worker was gone before it got the call (it died
                    // while idle): try another one.
                    in_flight.disarm();
                    continue;
                }
                Err(_) => return Err(self.timed_out(in_flight, current, &call)),
            }
            let answer = async {
                let (head, body) = protocol::read_frame(&mut conn.stream)
                    .await?
                    .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
                let head: ResponseHeader =
                    serde_json::from_slice(&head).map_err(std::io::Error::other)?;
                Ok::<_, std::io::Error>((head, body))
            };
            return match tokio::time::timeout_at(deadline, answer).await {
                Ok(Ok((head, body))) => {
                    let mut headers = head.headers;
                    if let Some(error) = &head.error {
                        tracing::debug!(function = %self.shared.name, call_id = %call.call_id, %error, "handler raised");
                        headers.push(("x-graphene-layer".into(), "function".into()));
                    }
                    self.shared.router.put(in_flight.disarm());
                    Ok(InvocationResult {
                        status: head.status,
                        headers,
                        body: Bytes::from(body).into(),
                        cold_start,
                    })
                }
                Ok(Err(e)) => {
                    let conn = in_flight.disarm();
                    let (pid, replica) = (conn.pid, conn.replica.clone());
                    drop(conn);
                    let reason = match e.kind() {
                        std::io::ErrorKind::UnexpectedEof
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::BrokenPipe => {
                            let how = self
                                .exit_report(&replica.runner.id, pid)
                                .await
                                .unwrap_or_else(|| "crashed or was killed".to_string());
                            format!("exited during the call ({how})")
                        }
                        _ => format!("broke the protocol: {e}"),
                    };
                    Err(ProviderError::Upstream(format!(
                        "worker {pid} of replica {} {reason}; see `graphene logs {}`",
                        replica.id, self.shared.name
                    )))
                }
                Err(_) => Err(self.timed_out(in_flight, current, &call)),
            };
        }
    }

    /// How a worker ended, as its warm parent reports it (briefly awaited).
    async fn exit_report(&self, runner: &str, pid: u32) -> Option<String> {
        let deadline = Instant::now() + EXIT_REPORT_WAIT;
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(how) = self.shared.exit_of(runner, pid) {
                return Some(how);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return None;
            }
        }
    }

    fn timed_out(&self, in_flight: InFlight, current: &Current, call: &Call) -> ProviderError {
        if let Some(conn) = &in_flight.conn {
            self.shared.logs.write(
                &conn.replica.id,
                &format!(
                    "call {} ran past the function's timeout ({:?}); worker {} replaced",
                    call.call_id, current.timeout, conn.pid
                ),
            );
        }
        drop(in_flight); // replaces the worker
        ProviderError::Timeout(format!(
            "function {} did not answer within its timeout ({:?}); the worker was replaced",
            self.shared.name, current.timeout
        ))
    }

    /// OpenFaaS classic watchdog behaviour: a process per call, the body on
    /// stdin, stdout as the response, request details as `Http_*` variables.
    async fn invoke_exec(
        &self,
        current: &Current,
        launch: &Launch,
        call: Call,
        deadline: Instant,
    ) -> Result<InvocationResult, ProviderError> {
        if self.shared.desired.load(Ordering::Acquire) == 0 {
            return Err(self.no_replicas());
        }
        // At most `workers` processes per replica run at once; others wait.
        let _slot = self
            .exec_slot(launch.workers, deadline, current.timeout)
            .await?;
        let mut env = launch.env.clone();
        env.push(("fprocess".into(), current.fprocess.clone()));
        env.push(("Http_Method".into(), call.method.clone()));
        env.push(("Http_Path".into(), call.path.clone()));
        if !call.query.is_empty() {
            env.push(("Http_Query".into(), call.query.clone()));
        }
        for (k, v) in &call.headers {
            env.push((format!("Http_{}", canonical_env(k)), v.clone()));
        }
        let mounts = Mounts {
            image_dir: &launch.image.dir,
            workdir: &launch.image.function_dir(),
            run_dir: None,
            secrets_dir: &launch.secrets_dir,
            network: launch.network,
            join: &[],
        };
        let mut cmd = launch.sandbox.command(
            Path::new("/bin/sh"),
            &["-c", &current.fprocess],
            &mounts,
            &env,
        );
        cmd.stdin(std::process::Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| {
            ProviderError::Unavailable(format!("could not start {:?}: {e}", current.fprocess))
        })?;
        // Whatever the call started dies with it: on timeout, when the caller
        // goes away, or when it leaves background processes behind.
        let group = GroupKiller(child.id().unwrap_or(0));
        let mut stdin = child.stdin.take().expect("piped stdin");
        let body = call.body.clone();
        tokio::spawn(async move {
            let _ = stdin.write_all(&body).await;
        });
        // Output is read while the command runs; once it exits, whatever it
        // left in the background is killed, so the pipes end.
        let read_all = |pipe: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>| async move {
            let mut out = Vec::new();
            if let Some(mut p) = pipe {
                let _ = tokio::io::AsyncReadExt::read_to_end(&mut p, &mut out).await;
            }
            out
        };
        let stdout = tokio::spawn(read_all(child.stdout.take().map(|p| Box::new(p) as _)));
        let stderr = tokio::spawn(read_all(child.stderr.take().map(|p| Box::new(p) as _)));
        let status = match tokio::time::timeout_at(deadline, child.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => {
                return Err(ProviderError::Upstream(format!(
                    "{:?} failed: {e}",
                    current.fprocess
                )))
            }
            Err(_) => {
                return Err(ProviderError::Timeout(format!(
                    "function {} did not finish within its timeout ({:?}); the process was killed",
                    self.shared.name, current.timeout
                )))
            }
        };
        drop(group);
        let stdout = stdout.await.unwrap_or_default();
        let stderr = stderr.await.unwrap_or_default();
        let stderr = String::from_utf8_lossy(&stderr);
        for line in stderr.lines() {
            self.shared.logs.write(&self.shared.name, line);
        }
        if status.success() {
            Ok(InvocationResult {
                status: 200,
                headers: Vec::new(),
                body: Bytes::from(stdout).into(),
                cold_start: None,
            })
        } else {
            let mut body = format!("{status}\n").into_bytes();
            body.extend_from_slice(&stdout);
            body.extend_from_slice(stderr.as_bytes());
            Ok(InvocationResult {
                status: 500,
                headers: vec![("x-graphene-layer".into(), "function".into())],
                body: Bytes::from(body).into(),
                cold_start: None,
            })
        }
    }
}

/// The warm parent of a Python version that forks its replicas.
fn start_parent(shared: &Arc<Shared>, current: &Current) -> Option<Arc<Runner>> {
    match &current.target {
        Target::Python(launch) if current.fork => Some(Runner::start(
            shared.clone(),
            launch.clone(),
            format!("{}-parent", shared.name),
            Mode::Fork,
        )),
        _ => None,
    }
}

/// A running exec call; frees its slot when dropped.
struct ExecSlot<'a>(&'a Function);

impl Drop for ExecSlot<'_> {
    fn drop(&mut self) {
        self.0.exec_running.fetch_sub(1, Ordering::AcqRel);
        self.0.shared.changed.notify_waiters();
    }
}

struct GroupKiller(u32);

impl Drop for GroupKiller {
    fn drop(&mut self) {
        crate::runner::kill_group(self.0);
    }
}

/// A worker connection with a call on it. Dropped while armed, it asks the
/// runner to replace the worker.
struct InFlight {
    conn: Option<WorkerConn>,
    /// Counts the call as busy on its replica (a stopping replica drains).
    replica: Arc<Replica>,
}

impl InFlight {
    /// `conn` was counted busy when the router handed it out.
    fn new(conn: WorkerConn) -> Self {
        let replica = conn.replica.clone();
        Self {
            conn: Some(conn),
            replica,
        }
    }

    fn disarm(&mut self) -> WorkerConn {
        self.conn.take().expect("disarmed once")
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { conn.replica.runner.kill_worker(conn.pid).await });
            }
        }
        self.replica.call_ended();
    }
}

/// `content-type` → `Content_Type`, as Go's canonical header form.
fn canonical_env(header: &str) -> String {
    header
        .split('-')
        .map(|part| {
            let mut c = part.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + &c.as_str().to_ascii_lowercase(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("_")
}

#[cfg(test)]
mod tests {
    #[test]
    fn canonical_env_names() {
        assert_eq!(super::canonical_env("content-type"), "Content_Type");
        assert_eq!(super::canonical_env("x-call-id"), "X_Call_Id");
    }
}
