//! One deployed function on this host: its replicas, its worker pool, and how
//! a call reaches a worker (Python) or a fresh process (exec).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use graphene_core::api::{InstanceStatus, RuntimeStatus};
use graphene_core::provider::{Invocation, InvocationResult, ProviderError};
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::logs::LogBook;
use crate::pool::{WorkerConn, WorkerPool};
use crate::protocol::{self, RequestHeader, ResponseHeader};
use crate::replica::{Launch, Replica};
use crate::sandbox::Mounts;

/// State shared by a function's replicas and its callers.
pub struct Shared {
    pub name: String,
    pub pool: WorkerPool,
    pub desired: AtomicU64,
    pub ready: AtomicU64,
    pub restarts: AtomicU64,
    pub last_exit: Mutex<Option<String>>,
    pub import_error: Mutex<Option<String>>,
    /// Woken when readiness or an import error changes.
    pub changed: Notify,
    /// Replicas of the previous version, serving until a new one is ready.
    pub retiring: Mutex<Vec<Arc<Replica>>>,
    pub logs: LogBook,
}

/// What serves a function's calls.
pub enum Target {
    /// Replicas of the Python runner, each with forked workers.
    Python(Arc<Launch>),
    /// A process per call (`fprocess`).
    Exec(Arc<Launch>),
    /// An HTTP service that runs elsewhere; calls are proxied to it.
    Upstream(crate::upstream::Upstream),
}

impl Target {
    pub fn launch(&self) -> Option<&Arc<Launch>> {
        match self {
            Target::Python(l) | Target::Exec(l) => Some(l),
            Target::Upstream(_) => None,
        }
    }
}

/// What a call needs to know, swapped whole on update.
pub struct Current {
    /// Identifies what the replicas run: a deploy with the same fingerprint
    /// leaves running replicas alone.
    pub fingerprint: String,
    pub target: Target,
    pub timeout: Duration,
    pub fprocess: String,
}

pub struct Function {
    pub shared: Arc<Shared>,
    current: RwLock<Arc<Current>>,
    replicas: tokio::sync::Mutex<Vec<Arc<Replica>>>,
    next_replica: AtomicU64,
    sockets: Arc<SocketNames>,
    /// Exec calls running now.
    exec_running: AtomicU64,
}

/// Unix socket paths are short (108 bytes): replicas get numbered names.
pub struct SocketNames {
    pub dir: PathBuf,
    pub next: AtomicU64,
}

impl Function {
    pub fn new(shared: Shared, current: Current, sockets: Arc<SocketNames>) -> Self {
        Self {
            shared: Arc::new(shared),
            current: RwLock::new(Arc::new(current)),
            replicas: tokio::sync::Mutex::new(Vec::new()),
            next_replica: AtomicU64::new(1),
            sockets,
            exec_running: AtomicU64::new(0),
        }
    }

    /// Images this function's processes run now, including retiring ones.
    pub async fn images_in_use(&self) -> Vec<String> {
        let mut used: Vec<String> = self
            .current()
            .target
            .launch()
            .map(|l| l.image.digest.clone())
            .into_iter()
            .collect();
        used.extend(
            self.replicas
                .lock()
                .await
                .iter()
                .map(|r| r.image_digest.clone()),
        );
        used.extend(
            self.shared
                .retiring
                .lock()
                .expect("lock")
                .iter()
                .map(|r| r.image_digest.clone()),
        );
        used
    }

    pub fn fingerprint(&self) -> String {
        self.current().fingerprint.clone()
    }

    fn current(&self) -> Arc<Current> {
        self.current.read().expect("lock").clone()
    }

    /// Replaces the version of the function; running replicas are replaced by
    /// new ones, the old stopping once a new one is ready.
    pub async fn update(&self, current: Current, replicas: u64) {
        *self.current.write().expect("lock") = Arc::new(current);
        self.shared.import_error.lock().expect("lock").take();
        let old = std::mem::take(&mut *self.replicas.lock().await);
        self.shared
            .retiring
            .lock()
            .expect("lock")
            .extend(old.iter().cloned());
        self.scale(replicas).await;
        let fresh: Vec<Arc<Replica>> = self.replicas.lock().await.clone();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            // The old version serves until a new replica is ready, or until
            // the new ones are themselves stopped (another update, a scale
            // to zero, removal).
            loop {
                let changed = shared.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if fresh.is_empty()
                    || fresh.iter().any(|r| r.is_ready())
                    || fresh.iter().all(|r| r.is_stopped())
                {
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
                r.stop();
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
        let mut running = self.replicas.lock().await;
        while (running.len() as u64) < replicas {
            let n = self.next_replica.fetch_add(1, Ordering::Relaxed);
            let id = format!("{}-{n}", self.shared.name);
            // A folder per replica: only its own socket is mounted into its
            // sandbox, so no function can reach another's socket.
            let socket = self
                .sockets
                .dir
                .join(format!(
                    "r{}",
                    self.sockets.next.fetch_add(1, Ordering::Relaxed)
                ))
                .join("runner.sock");
            running.push(Replica::start(
                self.shared.clone(),
                launch.clone(),
                id,
                socket,
            ));
        }
        while (running.len() as u64) > replicas {
            if let Some(r) = running.pop() {
                r.stop();
            }
        }
        self.shared.changed.notify_waiters();
    }

    pub async fn stop(&self) {
        self.shared.desired.store(0, Ordering::Release);
        for r in self.replicas.lock().await.drain(..) {
            r.stop();
        }
        for r in self.shared.retiring.lock().expect("lock").drain(..) {
            r.stop();
        }
        self.shared.changed.notify_waiters();
    }

    pub async fn status(&self) -> RuntimeStatus {
        let current = self.current();
        let desired = self.shared.desired.load(Ordering::Acquire);
        let python = match &current.target {
            Target::Python(launch) => Some(launch.workers),
            _ => None,
        };
        let replicas = self.replicas.lock().await;
        let retiring = self.shared.retiring.lock().expect("lock").clone();
        let all = replicas
            .iter()
            .map(|r| (r, false))
            .chain(retiring.iter().map(|r| (r, true)));
        RuntimeStatus {
            desired_replicas: desired,
            ready_replicas: if python.is_some() {
                all.clone().filter(|(r, _)| r.is_ready()).count() as u64
            } else {
                desired
            },
            restarts: self.shared.restarts.load(Ordering::Relaxed),
            last_exit: self.shared.last_exit.lock().expect("lock").clone(),
            import_error: self.shared.import_error.lock().expect("lock").clone(),
            workers_per_replica: python.unwrap_or(0),
            timeout_seconds: current.timeout.as_secs_f64(),
            instances: all
                .map(|(r, retiring)| InstanceStatus {
                    id: r.id.clone(),
                    pid: r.pid.load(Ordering::Relaxed),
                    ready: r.is_ready(),
                    workers: r.workers.load(Ordering::Relaxed),
                    started_at: r.started_at.lock().expect("lock").clone(),
                    retiring,
                })
                .collect(),
        }
    }

    pub async fn invoke(&self, call: Invocation) -> Result<InvocationResult, ProviderError> {
        let current = self.current();
        let deadline = Instant::now() + current.timeout;
        let mut result = match &current.target {
            Target::Python(_) => self.invoke_worker(&current, call, deadline).await,
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

    /// Waits for an idle worker, failing fast when none can come.
    async fn acquire(
        &self,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<WorkerConn, ProviderError> {
        let s = &self.shared;
        loop {
            let changed = s.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if s.desired.load(Ordering::Acquire) == 0 {
                return Err(self.no_replicas());
            }
            if s.ready.load(Ordering::Acquire) == 0 {
                if let Some(err) = s.import_error.lock().expect("lock").clone() {
                    return Err(ProviderError::Unavailable(format!(
                        "function {} failed to import its handler: {err}",
                        s.name
                    )));
                }
            }
            tokio::select! {
                conn = s.pool.take() => return Ok(conn),
                _ = changed => continue,
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(ProviderError::Unavailable(format!(
                        "no replica of {} was ready within its timeout ({:?})", s.name, timeout
                    )))
                }
            }
        }
    }

    /// Sends a call to an idle worker. The wait for a worker and the call
    /// itself each get the function's timeout.
    async fn invoke_worker(
        &self,
        current: &Current,
        call: Invocation,
        wait_deadline: Instant,
    ) -> Result<InvocationResult, ProviderError> {
        let header = RequestHeader {
            method: &call.method,
            path: &call.path,
            query: &call.query,
            headers: &call.headers,
            call_id: &call.call_id,
        };
        loop {
            let conn = self.acquire(wait_deadline, current.timeout).await?;
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
                    self.shared.pool.put(in_flight.disarm());
                    Ok(InvocationResult {
                        status: head.status,
                        headers,
                        body: Bytes::from(body),
                    })
                }
                Ok(Err(e)) => {
                    let conn = in_flight.disarm();
                    let reason = match e.kind() {
                        std::io::ErrorKind::UnexpectedEof
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::BrokenPipe => {
                            "exited during the call (crashed or was killed)".to_string()
                        }
                        _ => format!("broke the protocol: {e}"),
                    };
                    Err(ProviderError::Upstream(format!(
                        "worker {} of replica {} {reason}; see `graphene logs {}`",
                        conn.pid, conn.replica.id, self.shared.name
                    )))
                }
                Err(_) => Err(self.timed_out(in_flight, current, &call)),
            };
        }
    }

    fn timed_out(
        &self,
        in_flight: InFlight,
        current: &Current,
        call: &Invocation,
    ) -> ProviderError {
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
        call: Invocation,
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
            run_dir: None,
            secrets_dir: &launch.secrets_dir,
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
                body: Bytes::from(stdout),
            })
        } else {
            let mut body = format!("{status}\n").into_bytes();
            body.extend_from_slice(&stdout);
            body.extend_from_slice(stderr.as_bytes());
            Ok(InvocationResult {
                status: 500,
                headers: vec![("x-graphene-layer".into(), "function".into())],
                body: Bytes::from(body),
            })
        }
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
        crate::replica::kill_group(self.0);
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
    fn new(conn: WorkerConn) -> Self {
        let replica = conn.replica.clone();
        replica.busy.fetch_add(1, Ordering::AcqRel);
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
                rt.spawn(async move { conn.control.kill_worker(conn.pid).await });
            }
        }
        self.replica.busy.fetch_sub(1, Ordering::AcqRel);
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
