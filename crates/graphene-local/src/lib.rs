//! graphene-local: the local runtime. Functions run as supervised processes
//! on this host, no cluster needed.
//!
//! Start with [`LocalProvider`] (the `Provider` implementation), then
//! `function.rs` (how a call reaches a worker), `router.rs` (which worker
//! takes a call, and the queue), `replica.rs` (a group of workers),
//! `runner.rs` (the supervised Python process: the warm parent that forks
//! replicas) and `protocol.rs` (the frames between host and runner).
//! `images.rs` builds function folders into runnable images ([`LocalBuilder`],
//! the `Builder` beside the provider); `sandbox.rs` starts processes inside
//! bubblewrap where available; `settings.rs` reads the labels only this
//! runtime understands (fork, network, upstream, queue).

mod cgroup;
mod function;
mod images;
mod logs;
mod protocol;
mod replica;
mod router;
mod runner;
mod sandbox;
pub mod settings;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

use graphene_core::api::{BuildResult, RuntimeStatus};
use graphene_core::names::FunctionRef;
use graphene_core::provider::{
    BoxFuture, BuildInput, Builder, Deployment, Invocation, InvocationResult, LogQuery, LogStream,
    Progress, Provider, ProviderError,
};

use function::{Call, Current, Function, Limits, Shared, SocketNames, Target};
pub use images::{run_streaming, RUNNER};
use images::{Image, ImageStore};
use runner::Launch;
pub use sandbox::SECRETS_ENV;
use settings::LocalSettings;

pub struct LocalConfig {
    /// Where images, logs, secrets files and sockets live.
    pub dir: PathBuf,
    /// The Python interpreter that creates virtual environments.
    pub python: String,
    /// Run functions inside bubblewrap when it works here.
    pub sandbox: bool,
    /// Folders functions must not see (the server's whole state directory).
    pub hidden: Vec<PathBuf>,
    /// Function output goes to this process's stdout (a container's log)
    /// instead of log files in `dir`.
    pub logs_to_stdout: bool,
    /// Called with the reason when a runner (a warm parent, or a replica's
    /// only process) exits on its own. When set, runners are not restarted
    /// here: the caller decides (`graphene watchdog` ends the container,
    /// whose restart policy starts it afresh).
    pub runner_exit: Option<RunnerExit>,
}

pub type RunnerExit = Arc<dyn Fn(String) + Send + Sync>;

pub struct LocalProvider {
    dir: PathBuf,
    images: Arc<ImageStore>,
    sandbox: sandbox::Sandbox,
    cgroups: Arc<cgroup::Cgroups>,
    sockets: Arc<SocketNames>,
    functions: RwLock<HashMap<FunctionRef, Arc<Function>>>,
    /// Numbers each deployed version's secrets folder.
    versions: AtomicU64,
    /// Serialises deploy/scale/remove so two updates of one function can't
    /// interleave.
    changes: tokio::sync::Mutex<()>,
    logs_to_stdout: bool,
    runner_exit: Option<RunnerExit>,
}

/// Builds function folders into the images [`LocalProvider`] runs: a
/// virtual environment with the requirements, in the state directory.
pub struct LocalBuilder {
    images: Arc<ImageStore>,
}

impl Builder for LocalBuilder {
    fn build<'a>(
        &'a self,
        input: BuildInput,
        progress: Progress,
        keep: std::collections::HashSet<String>,
    ) -> BoxFuture<'a, Result<BuildResult, ProviderError>> {
        Box::pin(async move { self.images.build(input, progress, &keep).await })
    }

    fn resolve(&self, image: &str) -> Option<String> {
        self.images.digest_of(image)
    }
}

impl LocalProvider {
    /// The runtime and the builder of the images it runs.
    pub fn open(config: LocalConfig) -> std::io::Result<(Self, LocalBuilder)> {
        let dir = config.dir;
        // Secrets files of a previous run are stale: functions get theirs
        // again as they are deployed.
        let _ = std::fs::remove_dir_all(dir.join("secrets"));
        for sub in ["images", "logs", "secrets"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        restrict(&dir.join("secrets"))?;
        let sockets = socket_dir(&dir)?;
        let images = Arc::new(ImageStore::open(dir.join("images"), config.python)?);
        let builder = LocalBuilder {
            images: images.clone(),
        };
        let provider = Self {
            images,
            sandbox: sandbox::Sandbox::detect(config.sandbox, config.hidden),
            cgroups: Arc::new(cgroup::Cgroups::detect()),
            sockets: Arc::new(SocketNames {
                dir: sockets,
                next: AtomicU64::new(1),
            }),
            dir,
            functions: RwLock::new(HashMap::new()),
            versions: AtomicU64::new(1),
            changes: tokio::sync::Mutex::new(()),
            logs_to_stdout: config.logs_to_stdout,
            runner_exit: config.runner_exit,
        };
        Ok((provider, builder))
    }

    pub fn sandboxed(&self) -> bool {
        self.sandbox.enabled()
    }

    /// Runs an image built elsewhere where it lies (see
    /// `ImageStore::adopt`); deployments name it by the digest returned.
    pub fn adopt(
        &self,
        dir: PathBuf,
        workdir: Option<PathBuf>,
    ) -> std::io::Result<(String, graphene_core::stack::Lang)> {
        self.images.adopt(dir, workdir)
    }

    fn get(&self, f: &FunctionRef) -> Result<Arc<Function>, ProviderError> {
        self.functions
            .read()
            .expect("lock")
            .get(f)
            .cloned()
            .ok_or_else(|| {
                ProviderError::NotFound(format!(
                    "function {} not found in namespace {}",
                    f.name, f.namespace
                ))
            })
    }

    /// The deployment's local settings, and the image it runs (none for an
    /// upstream).
    fn prepare(&self, d: &Deployment) -> Result<(LocalSettings, Option<Image>), ProviderError> {
        if d.settings.gpus > 0 {
            return Err(ProviderError::Invalid(
                "limits.nvidia.com/gpu: the local runtime does not hand out GPUs; run GPU functions on the Kubernetes provider (its device plugin assigns them)".into(),
            ));
        }
        let local = LocalSettings::from_deployment(&d.spec, d.settings.workers)
            .map_err(|e| ProviderError::Invalid(e.to_string()))?;
        if local.upstream.is_some() {
            return Ok((local, None));
        }
        let image = match d.image_digest.is_empty() {
            true => self.images.resolve(&d.spec.image),
            false => self.images.by_digest(&d.spec.image, &d.image_digest),
        }
        .ok_or_else(|| {
            ProviderError::Invalid(match from_a_registry(&d.spec.image) {
                true => format!(
                    "image {:?} is an image from a registry: the local runtime runs functions built on this server \
                     (`graphene up` without --oci); registry images run on the Kubernetes provider",
                    d.spec.image
                ),
                false => format!(
                    "image {:?} was not built on this server; build it first with `graphene build` (or `graphene up`)",
                    d.spec.image
                ),
            })
        })?;
        if !image.lang().is_python() && d.spec.env_process.trim().is_empty() {
            return Err(ProviderError::Invalid(format!(
                "envProcess: image {:?} is an exec function and needs the command to run (fprocess)",
                d.spec.image
            )));
        }
        Ok((local, Some(image)))
    }

    /// Every deployed function (a snapshot: no lock held afterwards).
    fn all(&self) -> Vec<Arc<Function>> {
        self.functions
            .read()
            .expect("lock")
            .values()
            .cloned()
            .collect()
    }

    /// Writes a deployment's secrets to a folder of its own: replicas of the
    /// version before keep theirs until they stop (the folder goes when its
    /// `Launch` does).
    fn write_secrets(&self, d: &Deployment, n: u64) -> std::io::Result<PathBuf> {
        let dir = self
            .dir
            .join("secrets")
            .join(d.function.to_string())
            .join(format!("v{n}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        restrict(&dir)?;
        for (name, value) in &d.secrets {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(dir.join(name))?;
            f.write_all(value)?;
        }
        Ok(dir)
    }
}

/// What a function's replicas run, hashed: the image, environment, secrets,
/// command and settings.
fn fingerprint(image_digest: &str, d: &Deployment, local: &LocalSettings) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut field = |b: &[u8]| {
        h.update((b.len() as u64).to_be_bytes());
        h.update(b);
    };
    field(image_digest.as_bytes());
    field(d.spec.env_process.as_bytes());
    for (k, v) in &d.spec.env_vars {
        field(k.as_bytes());
        field(v.as_bytes());
    }
    for (name, value) in &d.secrets {
        field(name.as_bytes());
        field(value);
    }
    field(
        format!(
            "{:?} {} {:?} {} {} {:?} {:?}",
            d.settings.timeout,
            d.settings.workers,
            local.upstream,
            local.fork,
            local.network,
            d.settings.memory_limit,
            d.settings.cpu_limit
        )
        .as_bytes(),
    );
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether an image name points into a registry (`host[:port]/...`, or a
/// pinned `@sha256:` digest) rather than naming a local build.
fn from_a_registry(image: &str) -> bool {
    image.contains('@')
        || image.split_once('/').is_some_and(|(host, _)| {
            host.contains('.') || host.contains(':') || host == "localhost"
        })
}

fn restrict(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Sockets live in the state directory unless its path is too long for a
/// Unix socket name.
fn socket_dir(dir: &Path) -> std::io::Result<PathBuf> {
    let preferred = dir.join("run");
    if preferred.as_os_str().len() < 80 {
        let _ = std::fs::remove_dir_all(&preferred);
        std::fs::create_dir_all(&preferred)?;
        restrict(&preferred)?;
        return Ok(preferred);
    }
    // A fresh, unguessable folder that this process creates itself (never
    // one that someone else could have prepared).
    use sha2::{Digest, Sha256};
    let seed = format!(
        "{}{:?}{:?}",
        dir.display(),
        std::time::SystemTime::now(),
        std::thread::current().id()
    );
    let tag: String = Sha256::digest(seed.as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let chosen = std::env::temp_dir().join(format!("graphene-run-{}-{tag}", std::process::id()));
    std::fs::create_dir(&chosen)?;
    restrict(&chosen)?;
    Ok(chosen)
}

impl Provider for LocalProvider {
    fn name(&self) -> &'static str {
        "graphene-local"
    }

    fn orchestration(&self) -> &'static str {
        "local"
    }

    fn check(&self, d: &Deployment) -> Result<(), ProviderError> {
        self.prepare(d).map(|_| ())
    }

    async fn apply(&self, d: Deployment) -> Result<(), ProviderError> {
        let _one = self.changes.lock().await;
        let (local, image) = self.prepare(&d)?;
        let fingerprint = fingerprint(image.as_ref().map_or("", |i| i.digest.as_str()), &d, &local);
        let existing = self
            .functions
            .read()
            .expect("lock")
            .get(&d.function)
            .cloned();
        let limits = Limits {
            max_replicas: d.settings.max_replicas,
            autoscaled: d.settings.scaling.enabled(),
            queue: local.queue,
        };
        if let Some(f) = existing
            .as_ref()
            .filter(|f| f.fingerprint() == fingerprint && !f.failed())
        {
            // The same thing runs: a new revision of it only renumbers it.
            // (One that failed to import is started afresh: a retry.)
            f.set_revision(d.revision);
            f.set_limits(limits);
            f.scale(d.replicas).await;
            return Ok(());
        }
        let serial = self
            .versions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let target = match (image, &local.upstream) {
            (_, Some(url)) => Target::Upstream(graphene_http::forward::Upstream::new(url)),
            (None, None) => return Err(ProviderError::Internal("no image and no upstream".into())),
            (Some(image), None) => {
                let secrets_dir = self
                    .write_secrets(&d, serial)
                    .map_err(|e| ProviderError::Internal(e.to_string()))?;
                let python = image.lang().is_python();
                let launch = Arc::new(Launch {
                    serial,
                    revision: d.revision,
                    image,
                    env: d
                        .spec
                        .env_vars
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    workers: d.settings.workers,
                    secrets_dir,
                    sandbox: self.sandbox.clone(),
                    network: local.network,
                    resources: cgroup::Resources {
                        memory_bytes: d.settings.memory_limit,
                        cpu_millis: d.settings.cpu_limit,
                    },
                    cgroups: self.cgroups.clone(),
                });
                if launch.resources.any() {
                    if let Some(reason) = self.cgroups.unavailable() {
                        tracing::warn!(function = %d.function, "limits.memory / limits.cpu are NOT enforced: {reason}");
                    } else if !python {
                        tracing::warn!(function = %d.function, "limits.memory / limits.cpu are enforced for Python functions only");
                    }
                }
                if !local.network && !self.sandbox.enabled() {
                    tracing::warn!(function = %d.function, "com.graphene.network is none, but without the sandbox (bubblewrap) the function's network cannot be cut off");
                }
                match python {
                    true => Target::Python(launch),
                    false => Target::Exec(launch),
                }
            }
        };
        let current = Current {
            serial,
            fingerprint,
            target,
            timeout: d.settings.timeout,
            fprocess: d.spec.env_process.clone(),
            fork: local.fork,
        };
        match existing {
            Some(f) => {
                f.set_limits(limits);
                f.update(current, d.revision, d.replicas).await;
            }
            None => {
                let logs = match self.logs_to_stdout {
                    true => logs::LogBook::stdout(&d.function.namespace, &d.function.name),
                    false => logs::LogBook::open(
                        self.dir.join("logs"),
                        &d.function.namespace,
                        &d.function.name,
                    ),
                };
                let shared = Shared::new(
                    d.function.name.clone(),
                    logs,
                    self.sockets.clone(),
                    self.runner_exit.clone(),
                );
                let f = Arc::new(Function::new(shared, current, limits, d.revision));
                self.functions
                    .write()
                    .expect("lock")
                    .insert(d.function.clone(), f.clone());
                f.scale(d.replicas).await;
            }
        }
        Ok(())
    }

    async fn remove(&self, function: &FunctionRef) -> Result<(), ProviderError> {
        let _one = self.changes.lock().await;
        let f = self.get(function)?;
        self.functions.write().expect("lock").remove(function);
        f.stop().await;
        f.shared.logs.delete();
        let _ = std::fs::remove_dir_all(self.dir.join("secrets").join(function.to_string()));
        Ok(())
    }

    async fn scale(&self, function: &FunctionRef, replicas: u64) -> Result<(), ProviderError> {
        let _one = self.changes.lock().await;
        self.get(function)?.scale(replicas).await;
        Ok(())
    }

    async fn status(&self, function: &FunctionRef) -> Result<RuntimeStatus, ProviderError> {
        Ok(self.get(function)?.status().await)
    }

    async fn invoke(
        &self,
        function: &FunctionRef,
        call: Invocation,
    ) -> Result<InvocationResult, ProviderError> {
        let f = self.get(function)?;
        // Replicas take a call's body whole.
        let body = call
            .body
            .collect(usize::MAX)
            .await
            .map_err(|e| ProviderError::Invalid(e.to_string()))?;
        f.invoke(Call {
            method: call.method,
            path: call.path,
            query: call.query,
            headers: call.headers,
            body,
            call_id: call.call_id,
        })
        .await
    }

    async fn logs(
        &self,
        function: &FunctionRef,
        query: LogQuery,
    ) -> Result<LogStream, ProviderError> {
        Ok(self.get(function)?.shared.logs.stream(query))
    }

    async fn shutdown(&self) {
        for f in self.all() {
            f.stop().await;
        }
    }
}
