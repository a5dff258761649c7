//! A runner process of a Python function, supervised and restarted with
//! backoff when it exits. In fork mode it is the function's warm parent: it
//! imported the handler once and forks each replica's workers on request, in
//! milliseconds. In direct mode (`com.graphene.fork: false`) it is one
//! replica's only worker and imports the handler itself.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixListener;
use tokio::sync::watch;

use crate::function::Shared;
use crate::images::Image;
use crate::protocol::{self, Control, Event, Hello};
use crate::replica::Replica;
use crate::router::{Liveness, WorkerConn};
use crate::sandbox::{Mounts, Sandbox};

const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A runner that ran this long before exiting restarts without delay growth.
const STABLE: Duration = Duration::from_secs(30);
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_GRACE: Duration = Duration::from_secs(2);

/// What every runner of one version of a function is started from.
pub struct Launch {
    /// Numbers launches: import errors belong to one.
    pub serial: u64,
    /// The registry revision it was launched as.
    pub revision: u64,
    pub image: Image,
    pub env: Vec<(String, String)>,
    pub workers: u64,
    pub secrets_dir: PathBuf,
    pub sandbox: Sandbox,
    /// Whether its processes may use the network.
    pub network: bool,
    /// Memory and CPU per replica (and for the warm parent).
    pub resources: crate::cgroup::Resources,
    pub cgroups: Arc<crate::cgroup::Cgroups>,
}

/// The secrets folder belongs to one launch: it goes when the last runner
/// or call using it does.
impl Drop for Launch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.secrets_dir);
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// The warm parent of every replica of a function version.
    Fork,
    /// The only process of one replica.
    Direct { replica: String },
}

pub struct Runner {
    pub id: String,
    pub mode: Mode,
    /// Its launch's serial: its import errors are that launch's.
    pub serial: u64,
    /// The registry revision it was launched as.
    pub revision: u64,
    socket: PathBuf,
    stop: watch::Sender<bool>,
    pub pid: AtomicU32,
    /// The handler imported in the running process.
    imported: AtomicBool,
    pub started_at: Mutex<String>,
    control: tokio::sync::Mutex<Option<OwnedWriteHalf>>,
    /// Replicas whose workers this runner forks.
    replicas: Mutex<Vec<Arc<Replica>>>,
    /// Stop once no replica is left (a newer version took over).
    retiring: AtomicBool,
    /// Not restarted when it exits (a direct runner whose replica drains).
    finishing: AtomicBool,
}

impl Runner {
    pub fn start(shared: Arc<Shared>, launch: Arc<Launch>, id: String, mode: Mode) -> Arc<Runner> {
        let (stop, stop_rx) = watch::channel(false);
        // Unix socket paths are short (108 bytes): runners get numbered
        // folders, and only its own folder is mounted into a sandbox.
        let socket = shared
            .sockets
            .dir
            .join(format!(
                "r{}",
                shared.sockets.next.fetch_add(1, Ordering::Relaxed)
            ))
            .join("runner.sock");
        let runner = Arc::new(Runner {
            serial: launch.serial,
            revision: launch.revision,
            id,
            mode,
            socket,
            stop,
            pid: AtomicU32::new(0),
            imported: AtomicBool::new(false),
            started_at: Mutex::new(String::new()),
            control: tokio::sync::Mutex::new(None),
            replicas: Mutex::new(Vec::new()),
            retiring: AtomicBool::new(false),
            finishing: AtomicBool::new(false),
        });
        tokio::spawn(supervise(shared, launch, runner.clone(), stop_rx));
        runner
    }

    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    pub fn is_imported(&self) -> bool {
        self.imported.load(Ordering::Acquire)
    }

    fn replica(&self, id: &str) -> Option<Arc<Replica>> {
        self.replicas
            .lock()
            .expect("lock")
            .iter()
            .find(|r| r.id == id)
            .cloned()
    }

    /// Adds a replica: the warm parent forks its workers now (or as soon
    /// as it has imported the handler). Attach, detach and the parent's
    /// hello hold the control lock, so a replica is never spawned after it
    /// was detached.
    pub async fn attach(&self, replica: &Arc<Replica>) {
        let mut control = self.control.lock().await;
        self.replicas.lock().expect("lock").push(replica.clone());
        if self.mode == Mode::Fork {
            send(
                &mut control,
                &Control::Spawn {
                    replica: &replica.id,
                    workers: replica.workers,
                },
            )
            .await;
        }
    }

    /// A replica starts draining: its workers are not replaced any more.
    pub async fn drain(&self, replica: &str) {
        match self.mode {
            Mode::Fork => send(&mut *self.control.lock().await, &Control::Drain { replica }).await,
            Mode::Direct { .. } => self.finishing.store(true, Ordering::Release),
        }
    }

    /// Removes a drained replica and ends its workers.
    pub async fn detach(&self, replica: &Replica) {
        let mut control = self.control.lock().await;
        let empty = {
            let mut all = self.replicas.lock().expect("lock");
            all.retain(|r| r.id != replica.id);
            all.is_empty()
        };
        match self.mode {
            Mode::Fork => {
                send(
                    &mut control,
                    &Control::Retire {
                        replica: &replica.id,
                    },
                )
                .await
            }
            Mode::Direct { .. } => self.stop(),
        }
        if empty && self.retiring.load(Ordering::Acquire) {
            self.stop();
        }
    }

    /// A newer version took over: stop once the last replica has drained.
    pub fn retire(&self) {
        self.retiring.store(true, Ordering::Release);
        if self.replicas.lock().expect("lock").is_empty() {
            self.stop();
        }
    }

    /// Replaces a worker that may still run a call (timeout, caller gone).
    pub async fn kill_worker(&self, pid: u32) {
        match self.mode {
            Mode::Fork => send(&mut *self.control.lock().await, &Control::Kill { pid }).await,
            // The process is the worker: it restarts (and imports again).
            Mode::Direct { .. } => kill_group(self.pid.load(Ordering::Relaxed)),
        }
    }
}

async fn send(control: &mut Option<OwnedWriteHalf>, message: &Control<'_>) {
    if let Some(stream) = control.as_mut() {
        let _ = protocol::write_frame(stream, message, b"").await;
    }
}

async fn supervise(
    shared: Arc<Shared>,
    launch: Arc<Launch>,
    runner: Arc<Runner>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        if *stop.borrow() {
            break;
        }
        let started = Instant::now();
        let reason = match run_once(&shared, &launch, &runner, &mut stop).await {
            Outcome::Stopped => break,
            Outcome::Exited(_) if runner.finishing.load(Ordering::Acquire) => break,
            Outcome::Exited(reason) => reason,
        };
        let what = match runner.mode {
            Mode::Fork => "warm parent",
            Mode::Direct { .. } => "replica",
        };
        if let Some(exit) = &shared.runner_exit {
            shared.logs.write(&runner.id, &format!("{what} {reason}"));
            exit(format!("the {what} of {} {reason}", shared.name));
            break;
        }
        shared.restarts.fetch_add(1, Ordering::Relaxed);
        if started.elapsed() > STABLE {
            backoff = MIN_BACKOFF;
        }
        shared.logs.write(
            &runner.id,
            &format!("{what} {reason}; restarting in {} ms", backoff.as_millis()),
        );
        *shared.last_exit.lock().expect("lock") = Some(format!("{what} {} {reason}", runner.id));
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    if let Some(dir) = runner.socket.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

enum Outcome {
    Stopped,
    Exited(String),
}

async fn run_once(
    shared: &Arc<Shared>,
    launch: &Launch,
    runner: &Arc<Runner>,
    stop: &mut watch::Receiver<bool>,
) -> Outcome {
    let run_dir = runner
        .socket
        .parent()
        .expect("a runner's socket lies in its own folder")
        .to_path_buf();
    let _ = std::fs::remove_dir_all(&run_dir);
    if let Err(e) = std::fs::create_dir_all(&run_dir) {
        return Outcome::Exited(format!("could not create {}: {e}", run_dir.display()));
    }
    let listener = match UnixListener::bind(&runner.socket) {
        Ok(l) => l,
        Err(e) => {
            return Outcome::Exited(format!(
                "could not listen on {}: {e}",
                runner.socket.display()
            ))
        }
    };
    let socket = runner.socket.to_string_lossy().into_owned();
    let token = new_token();
    let mut env = launch.env.clone();
    let (mode, replica) = match &runner.mode {
        Mode::Fork => ("fork", ""),
        Mode::Direct { replica } => ("direct", replica.as_str()),
    };
    env.extend([
        ("GRAPHENE_SOCKET".to_string(), socket),
        ("GRAPHENE_RUNNER_TOKEN".to_string(), token.clone()),
        ("GRAPHENE_MODE".to_string(), mode.to_string()),
        ("GRAPHENE_REPLICA".to_string(), replica.to_string()),
        ("GRAPHENE_LANG".to_string(), launch.image.lang.clone()),
        (
            "GRAPHENE_FUNCTION_ROOT".to_string(),
            launch.image.dir.to_string_lossy().into_owned(),
        ),
        ("PYTHONUNBUFFERED".to_string(), "1".to_string()),
        ("PYTHONDONTWRITEBYTECODE".to_string(), "1".to_string()),
    ]);
    if !env.iter().any(|(k, _)| k == "HOSTNAME") {
        env.push(("HOSTNAME".to_string(), runner.id.clone()));
    }
    let script = launch.image.dir.join("runner.py");
    // The warm parent, or a replica's only process, in a group of its own.
    let group = launch.cgroups.group(&runner.id, launch.resources);
    let join = group.as_ref().map(|g| g.procs_files()).unwrap_or_default();
    let mounts = Mounts {
        image_dir: &launch.image.dir,
        workdir: &launch.image.function_dir(),
        run_dir: Some(&run_dir),
        secrets_dir: &launch.secrets_dir,
        network: launch.network,
        join: &join,
    };
    let mut child = match launch
        .sandbox
        .command(
            &launch.image.python(),
            &[&script.to_string_lossy()],
            &mounts,
            &env,
        )
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return Outcome::Exited(format!("could not start: {e}")),
    };
    let pid = child.id().unwrap_or(0);
    runner.pid.store(pid, Ordering::Relaxed);
    *runner.started_at.lock().expect("lock") = graphene_core::time::now_rfc3339();
    if let Some(out) = child.stdout.take() {
        pipe_to_logs(shared.clone(), runner.id.clone(), out);
    }
    if let Some(err) = child.stderr.take() {
        pipe_to_logs(shared.clone(), runner.id.clone(), err);
    }
    let alive = Liveness::new();
    let acceptor = tokio::spawn(accept(
        listener,
        shared.clone(),
        runner.clone(),
        alive.clone(),
        token,
    ));
    let status = tokio::select! {
        s = child.wait() => Some(s),
        _ = stop.wait_for(|s| *s) => None,
    };
    // No new calls reach its workers from now on.
    alive.end();
    acceptor.abort();
    let _ = acceptor.await;
    runner.imported.store(false, Ordering::Release);
    shared.router.purge();
    // Closing the control connection tells the runner to exit.
    runner.control.lock().await.take();
    shared.changed.notify_waiters();
    let status = match status {
        Some(s) => s,
        None => {
            if tokio::time::timeout(STOP_GRACE, child.wait())
                .await
                .is_err()
            {
                kill_group(pid);
                let _ = child.wait().await;
            }
            kill_group(pid);
            return Outcome::Stopped;
        }
    };
    kill_group(pid);
    Outcome::Exited(describe_exit(status))
}

/// 128 random bits, hex.
fn new_token() -> String {
    use std::io::Read;
    let mut b = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(crate) fn kill_group(pid: u32) {
    if pid > 0 {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

fn describe_exit(status: std::io::Result<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(3), _) => "exited with code 3 (the handler failed to import)".to_string(),
            // A sandboxed process reports its signal as 128 + N through bwrap.
            (Some(c), _) if (129..=192).contains(&c) => {
                format!("was killed by signal {} (exit code {c})", c - 128)
            }
            (Some(c), _) => format!("exited with code {c}"),
            (_, Some(sig)) => format!("was killed by signal {sig}"),
            _ => "exited".to_string(),
        },
        Err(e) => format!("could not be waited for: {e}"),
    }
}

async fn accept(
    listener: UnixListener,
    shared: Arc<Shared>,
    runner: Arc<Runner>,
    alive: Arc<Liveness>,
    token: String,
) {
    while let Ok((mut stream, _)) = listener.accept().await {
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, protocol::read_frame(&mut stream))
            .await
        {
            Ok(Ok(Some((head, _)))) => match serde_json::from_slice::<protocol::Envelope>(&head) {
                Ok(e) if e.token == token => Ok(e.hello),
                Ok(_) => {
                    shared
                        .logs
                        .write(&runner.id, "refused a runner connection with a wrong token");
                    continue;
                }
                Err(e) => Err(e),
            },
            _ => continue,
        };
        match hello {
            Ok(Hello::Parent { pid }) => {
                let (events, write) = stream.into_split();
                let mut control = runner.control.lock().await;
                *control = Some(write);
                runner.imported.store(true, Ordering::Release);
                shared.imported(runner.serial);
                shared.logs.write(
                    &runner.id,
                    &format!("the handler imported (warm parent pid {pid})"),
                );
                tokio::spawn(read_events(shared.clone(), runner.id.clone(), events));
                // Replicas attached before the import finished, or before
                // this restart.
                let waiting: Vec<Arc<Replica>> = runner.replicas.lock().expect("lock").clone();
                for r in waiting.iter().filter(|r| r.routable()) {
                    send(
                        &mut control,
                        &Control::Spawn {
                            replica: &r.id,
                            workers: r.workers,
                        },
                    )
                    .await;
                }
                drop(control);
                shared.changed.notify_waiters();
            }
            Ok(Hello::Worker { pid, replica }) => {
                // A draining replica's late worker is kept (never routed) until
                // the replica ends: refusing it would look like a crash.
                let Some(replica) = runner.replica(&replica).filter(|r| !r.is_stopped()) else {
                    continue; // a replica that is gone: closing ends the worker
                };
                if matches!(runner.mode, Mode::Direct { .. }) {
                    runner.imported.store(true, Ordering::Release);
                    shared.imported(runner.serial);
                }
                // The kernel names the peer in this host's PID namespace.
                let host_pid = stream
                    .peer_cred()
                    .ok()
                    .and_then(|c| c.pid())
                    .map_or(pid, |p| p as u32);
                replica.worker_joined(pid, host_pid);
                shared.router.put(WorkerConn {
                    stream,
                    pid,
                    replica,
                    alive: alive.clone(),
                });
            }
            Ok(Hello::ImportError { error, pid }) => {
                shared.logs.write(
                    &runner.id,
                    &format!("runner {pid} could not import the handler: {error}"),
                );
                *shared.import_error.lock().expect("lock") = Some((runner.serial, error));
                shared.changed.notify_waiters();
            }
            Err(e) => shared
                .logs
                .write(&runner.id, &format!("runner sent a bad hello: {e}")),
        }
    }
}

/// Worker exits reported by the warm parent: crashes count as restarts and
/// name the cause for the call that was running.
async fn read_events(
    shared: Arc<Shared>,
    runner: String,
    mut events: tokio::net::unix::OwnedReadHalf,
) {
    while let Ok(Some((head, _))) = protocol::read_frame(&mut events).await {
        let Ok(Event::Exit {
            pid,
            replica,
            status,
            expected,
        }) = serde_json::from_slice::<Event>(&head)
        else {
            continue;
        };
        if !expected {
            shared.restarts.fetch_add(1, Ordering::Relaxed);
            *shared.last_exit.lock().expect("lock") =
                Some(format!("worker {pid} of replica {replica} {status}"));
        }
        shared.exited(&runner, pid, status);
    }
}

fn pipe_to_logs(
    shared: Arc<Shared>,
    instance: String,
    pipe: impl AsyncRead + Unpin + Send + 'static,
) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            shared.logs.write(&instance, &line);
        }
    });
}
