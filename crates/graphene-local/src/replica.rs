//! One replica of a Python function: a supervised runner process (the warm
//! parent that imported the handler, and the workers it forked), restarted
//! with backoff when it exits. Its workers join the function's pool as they
//! connect; they leave it when the replica stops or dies.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use crate::function::Shared;
use crate::images::Image;
use crate::pool::{Liveness, WorkerConn};
use crate::protocol::{self, Hello};
use crate::sandbox::{Mounts, Sandbox};

const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A replica that ran this long before exiting restarts without delay growth.
const STABLE: Duration = Duration::from_secs(30);
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_GRACE: Duration = Duration::from_secs(2);

/// What every replica of one version of a function is started from.
pub struct Launch {
    pub image: Image,
    pub env: Vec<(String, String)>,
    pub workers: u64,
    /// The function's timeout: how long a stopping replica may drain.
    pub timeout: Duration,
    pub secrets_dir: PathBuf,
    pub sandbox: Sandbox,
}

/// The secrets folder belongs to one launch: it goes when the last replica
/// or call using it does.
impl Drop for Launch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.secrets_dir);
    }
}

/// The runner parent's control connection.
#[derive(Default)]
pub struct Control(tokio::sync::Mutex<Option<UnixStream>>);

impl Control {
    /// Asks the runner to replace a worker (after a timeout).
    pub async fn kill_worker(&self, pid: u32) {
        if let Some(stream) = self.0.lock().await.as_mut() {
            let _ = protocol::write_frame(stream, &protocol::Control::Kill { pid }, b"").await;
        }
    }
}

pub struct Replica {
    pub id: String,
    /// The image it runs (kept while any replica runs it).
    pub image_digest: String,
    socket: PathBuf,
    stop: watch::Sender<bool>,
    pub pid: AtomicU32,
    pub ready: AtomicBool,
    pub workers: AtomicU64,
    /// Calls on its workers right now.
    pub busy: AtomicU64,
    pub started_at: Mutex<String>,
}

impl Replica {
    pub fn start(
        shared: Arc<Shared>,
        launch: Arc<Launch>,
        id: String,
        socket: PathBuf,
    ) -> Arc<Replica> {
        let (stop, stop_rx) = watch::channel(false);
        let replica = Arc::new(Replica {
            image_digest: launch.image.digest.clone(),
            id,
            socket,
            stop,
            pid: AtomicU32::new(0),
            ready: AtomicBool::new(false),
            workers: AtomicU64::new(0),
            busy: AtomicU64::new(0),
            started_at: Mutex::new(String::new()),
        });
        tokio::spawn(supervise(shared, launch, replica.clone(), stop_rx));
        replica
    }

    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    pub fn is_stopped(&self) -> bool {
        *self.stop.borrow()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

async fn supervise(
    shared: Arc<Shared>,
    launch: Arc<Launch>,
    replica: Arc<Replica>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        if *stop.borrow() {
            break;
        }
        let started = Instant::now();
        let outcome = run_once(&shared, &launch, &replica, &mut stop).await;
        let reason = match outcome {
            Outcome::Stopped => break,
            Outcome::Exited(reason) => reason,
        };
        shared.restarts.fetch_add(1, Ordering::Relaxed);
        if started.elapsed() > STABLE {
            backoff = MIN_BACKOFF;
        }
        shared.logs.write(
            &replica.id,
            &format!("replica {reason}; restarting in {} ms", backoff.as_millis()),
        );
        *shared.last_exit.lock().expect("lock") = Some(format!("replica {} {reason}", replica.id));
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    if let Some(dir) = replica.socket.parent() {
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
    replica: &Arc<Replica>,
    stop: &mut watch::Receiver<bool>,
) -> Outcome {
    let run_dir = replica
        .socket
        .parent()
        .expect("a replica's socket lies in its own folder")
        .to_path_buf();
    let _ = std::fs::remove_dir_all(&run_dir);
    if let Err(e) = std::fs::create_dir_all(&run_dir) {
        return Outcome::Exited(format!("could not create {}: {e}", run_dir.display()));
    }
    let listener = match UnixListener::bind(&replica.socket) {
        Ok(l) => l,
        Err(e) => {
            return Outcome::Exited(format!(
                "could not listen on {}: {e}",
                replica.socket.display()
            ))
        }
    };
    let socket = replica.socket.to_string_lossy().into_owned();
    let token = new_token();
    let mut env = launch.env.clone();
    env.extend([
        ("GRAPHENE_SOCKET".to_string(), socket),
        ("GRAPHENE_RUNNER_TOKEN".to_string(), token.clone()),
        ("GRAPHENE_WORKERS".to_string(), launch.workers.to_string()),
        ("GRAPHENE_LANG".to_string(), launch.image.lang.clone()),
        (
            "GRAPHENE_FUNCTION_ROOT".to_string(),
            launch.image.dir.to_string_lossy().into_owned(),
        ),
        ("HOSTNAME".to_string(), replica.id.clone()),
        ("PYTHONUNBUFFERED".to_string(), "1".to_string()),
        ("PYTHONDONTWRITEBYTECODE".to_string(), "1".to_string()),
    ]);
    let runner = launch.image.dir.join("runner.py");
    let mounts = Mounts {
        image_dir: &launch.image.dir,
        run_dir: Some(&run_dir),
        secrets_dir: &launch.secrets_dir,
    };
    let mut child = match launch
        .sandbox
        .command(
            &launch.image.python(),
            &[&runner.to_string_lossy()],
            &mounts,
            &env,
        )
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return Outcome::Exited(format!("could not start: {e}")),
    };
    let pid = child.id().unwrap_or(0);
    replica.pid.store(pid, Ordering::Relaxed);
    *replica.started_at.lock().expect("lock") = graphene_core::time::now_rfc3339();
    if let Some(out) = child.stdout.take() {
        pipe_to_logs(shared.clone(), replica.id.clone(), out);
    }
    if let Some(err) = child.stderr.take() {
        pipe_to_logs(shared.clone(), replica.id.clone(), err);
    }
    let alive = Liveness::new();
    let control = Arc::new(Control::default());
    let acceptor = tokio::spawn(accept(
        listener,
        shared.clone(),
        replica.clone(),
        alive.clone(),
        control.clone(),
        token,
    ));
    let status = tokio::select! {
        s = child.wait() => Some(s),
        _ = stop.wait_for(|s| *s) => None,
    };
    // No new calls reach this replica from now on.
    alive.end();
    acceptor.abort();
    let _ = acceptor.await;
    if replica.ready.swap(false, Ordering::AcqRel) {
        shared.ready.fetch_sub(1, Ordering::AcqRel);
    }
    shared.changed.notify_waiters();
    if status.is_none() {
        // Stopping (scale-down, update): calls in progress finish first,
        // within the function's timeout.
        let deadline = tokio::time::Instant::now() + launch.timeout;
        while replica.busy.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    replica.workers.store(0, Ordering::Relaxed);
    // Closing the control connection tells the runner to exit.
    control.0.lock().await.take();
    shared.changed.notify_waiters();
    let status = match status {
        Some(s) => s,
        None => match tokio::time::timeout(STOP_GRACE, child.wait()).await {
            Ok(_) => {
                kill_group(pid);
                return Outcome::Stopped;
            }
            Err(_) => {
                kill_group(pid);
                let _ = child.wait().await;
                return Outcome::Stopped;
            }
        },
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
    replica: Arc<Replica>,
    alive: Arc<Liveness>,
    control: Arc<Control>,
    token: String,
) {
    while let Ok((mut stream, _)) = listener.accept().await {
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, protocol::read_frame(&mut stream))
            .await
        {
            Ok(Ok(Some((head, _)))) => match serde_json::from_slice::<protocol::Envelope>(&head) {
                Ok(e) if e.token == token => Ok(e.hello),
                Ok(_) => {
                    shared.logs.write(
                        &replica.id,
                        "refused a runner connection with a wrong token",
                    );
                    continue;
                }
                Err(e) => Err(e),
            },
            _ => continue,
        };
        match hello {
            Ok(Hello::Parent { pid, workers }) => {
                *control.0.lock().await = Some(stream);
                shared.import_error.lock().expect("lock").take();
                shared.logs.write(
                    &replica.id,
                    &format!("the handler imported (runner pid {pid}, {workers} workers)"),
                );
            }
            Ok(Hello::Worker { pid }) => {
                replica.workers.fetch_add(1, Ordering::Relaxed);
                // Ready once the model is loaded and a worker can take calls.
                if !replica.ready.swap(true, Ordering::AcqRel) {
                    shared.ready.fetch_add(1, Ordering::AcqRel);
                    shared.changed.notify_waiters();
                }
                shared.pool.put(WorkerConn {
                    stream,
                    pid,
                    replica: replica.clone(),
                    alive: alive.clone(),
                    control: control.clone(),
                });
            }
            Ok(Hello::ImportError { error, pid }) => {
                shared.logs.write(
                    &replica.id,
                    &format!("runner {pid} could not import the handler: {error}"),
                );
                *shared.import_error.lock().expect("lock") = Some(error);
                shared.changed.notify_waiters();
            }
            Err(e) => shared
                .logs
                .write(&replica.id, &format!("runner sent a bad hello: {e}")),
        }
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
