//! graphene-local: the local runtime. Functions run as supervised processes
//! on this host, no cluster needed.
//!
//! Start with [`LocalProvider`] (the `Provider` implementation), then
//! `function.rs` (how a call reaches a worker), `router.rs` (which worker
//! takes a call, and the queue), `replica.rs` (a group of workers),
//! `runner.rs` (the supervised Python process: the warm parent that forks
//! replicas) and `protocol.rs` (the frames between host and runner).
//! `images.rs` builds function folders into runnable images; `sandbox.rs`
//! starts processes inside bubblewrap where available.

mod cgroup;
mod function;
mod images;
mod logs;
mod protocol;
mod replica;
mod router;
mod runner;
mod sandbox;
mod upstream;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

use graphene_core::api::{BuildResult, RuntimeStatus};
use graphene_core::provider::{
    BuildInput, Deployment, Invocation, InvocationResult, LogFeed, Progress, Provider,
    ProviderError,
};

use function::{Current, Function, Limits, Shared, SocketNames, Target};
use images::ImageStore;
use runner::Launch;
pub use sandbox::SECRETS_ENV;

pub struct LocalConfig {
    /// Where images, logs, secrets files and sockets live.
    pub dir: PathBuf,
    /// The Python interpreter that creates virtual environments.
    pub python: String,
    /// Run functions inside bubblewrap when it works here.
    pub sandbox: bool,
    /// Folders functions must not see (the server's whole state directory).
    pub hidden: Vec<PathBuf>,
}

pub struct LocalProvider {
    dir: PathBuf,
    images: ImageStore,
    sandbox: sandbox::Sandbox,
    cgroups: Arc<cgroup::Cgroups>,
    sockets: Arc<SocketNames>,
    functions: RwLock<HashMap<String, Arc<Function>>>,
    /// Numbers each deployed version's secrets folder.
    versions: AtomicU64,
    /// Serialises deploy/scale/remove so two updates of one function can't
    /// interleave.
    changes: tokio::sync::Mutex<()>,
}

fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

impl LocalProvider {
    pub fn open(config: LocalConfig) -> std::io::Result<Self> {
        let dir = config.dir;
        // Secrets files of a previous run are stale: functions get theirs
        // again as they are deployed.
        let _ = std::fs::remove_dir_all(dir.join("secrets"));
        for sub in ["images", "logs", "secrets"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        restrict(&dir.join("secrets"))?;
        let sockets = socket_dir(&dir)?;
        Ok(Self {
            images: ImageStore::open(dir.join("images"), config.python)?,
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
        })
    }

    pub fn sandboxed(&self) -> bool {
        self.sandbox.enabled()
    }

    fn get(&self, namespace: &str, name: &str) -> Result<Arc<Function>, ProviderError> {
        self.functions
            .read()
            .expect("lock")
            .get(&key(namespace, name))
            .cloned()
            .ok_or_else(|| {
                ProviderError::NotFound(format!(
                    "function {name} not found in namespace {namespace}"
                ))
            })
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
    fn write_secrets(&self, d: &Deployment) -> std::io::Result<PathBuf> {
        let n = self
            .versions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = self
            .dir
            .join("secrets")
            .join(format!("{}.{}", d.namespace, d.spec.service))
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
fn fingerprint(image_digest: &str, d: &Deployment) -> String {
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
            d.settings.upstream,
            d.settings.fork,
            d.settings.network,
            d.settings.memory_limit,
            d.settings.cpu_limit
        )
        .as_bytes(),
    );
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
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

    async fn deploy(&self, d: Deployment) -> Result<(), ProviderError> {
        let _one = self.changes.lock().await;
        let image = match &d.settings.upstream {
            Some(_) => None,
            None => Some(self.images.resolve(&d.spec.image).ok_or_else(|| {
                ProviderError::Invalid(format!(
                    "image {:?} was not built on this server; build it first with `graphene build` (or `graphene up`)",
                    d.spec.image
                ))
            })?),
        };
        if image.as_ref().is_some_and(|i| !i.lang().is_python())
            && d.spec.env_process.trim().is_empty()
        {
            return Err(ProviderError::Invalid(format!(
                "envProcess: image {:?} is an exec function and needs the command to run (fprocess)",
                d.spec.image
            )));
        }
        let fingerprint = fingerprint(image.as_ref().map_or("", |i| i.digest.as_str()), &d);
        let k = key(&d.namespace, &d.spec.service);
        let existing = self.functions.read().expect("lock").get(&k).cloned();
        let limits = Limits {
            max_replicas: d.settings.max_replicas,
            autoscaled: d.settings.scaling.enabled(),
            queue: d.settings.queue,
        };
        if let Some(f) = existing.as_ref().filter(|f| f.fingerprint() == fingerprint) {
            f.set_limits(limits);
            if let Some(n) = d.replicas {
                f.scale(n).await;
            }
            return Ok(());
        }
        let target = match (image, &d.settings.upstream) {
            (_, Some(url)) => Target::Upstream(upstream::Upstream::new(url)),
            (None, None) => return Err(ProviderError::Internal("no image and no upstream".into())),
            (Some(image), None) => {
                let secrets_dir = self
                    .write_secrets(&d)
                    .map_err(|e| ProviderError::Internal(e.to_string()))?;
                let python = image.lang().is_python();
                let launch = Arc::new(Launch {
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
                    network: d.settings.network,
                    resources: cgroup::Resources {
                        memory_bytes: d.settings.memory_limit,
                        cpu_millis: d.settings.cpu_limit,
                    },
                    cgroups: self.cgroups.clone(),
                });
                if launch.resources.any() {
                    if let Some(reason) = self.cgroups.unavailable() {
                        tracing::warn!(function = %d.spec.service, "limits.memory / limits.cpu are NOT enforced: {reason}");
                    } else if !python {
                        tracing::warn!(function = %d.spec.service, "limits.memory / limits.cpu are enforced for Python functions only");
                    }
                }
                if !d.settings.network && !self.sandbox.enabled() {
                    tracing::warn!(function = %d.spec.service, "com.graphene.network is none, but without the sandbox (bubblewrap) the function's network cannot be cut off");
                }
                if python {
                    Target::Python(launch)
                } else {
                    Target::Exec(launch)
                }
            }
        };
        let current = Current {
            fingerprint,
            target,
            timeout: d.settings.timeout,
            fprocess: d.spec.env_process.clone(),
            fork: d.settings.fork,
        };
        match existing {
            Some(f) => {
                let replicas = d
                    .replicas
                    .unwrap_or_else(|| f.shared.desired.load(std::sync::atomic::Ordering::Acquire));
                f.set_limits(limits);
                f.update(current, replicas).await;
            }
            None => {
                let shared = Shared::new(
                    d.spec.service.clone(),
                    logs::LogBook::open(self.dir.join("logs"), &d.namespace, &d.spec.service),
                    self.sockets.clone(),
                );
                let f = Arc::new(Function::new(shared, current, limits));
                self.functions.write().expect("lock").insert(k, f.clone());
                f.scale(d.replicas.unwrap_or(d.settings.min_replicas)).await;
            }
        }
        Ok(())
    }

    async fn remove(&self, namespace: &str, name: &str) -> Result<(), ProviderError> {
        let _one = self.changes.lock().await;
        let f = self.get(namespace, name)?;
        self.functions
            .write()
            .expect("lock")
            .remove(&key(namespace, name));
        f.stop().await;
        f.shared.logs.delete();
        let _ =
            std::fs::remove_dir_all(self.dir.join("secrets").join(format!("{namespace}.{name}")));
        Ok(())
    }

    async fn scale(&self, namespace: &str, name: &str, replicas: u64) -> Result<(), ProviderError> {
        let _one = self.changes.lock().await;
        self.get(namespace, name)?.scale(replicas).await;
        Ok(())
    }

    fn has(&self, namespace: &str, name: &str) -> bool {
        self.functions
            .read()
            .expect("lock")
            .contains_key(&key(namespace, name))
    }

    async fn status(&self, namespace: &str, name: &str) -> Result<RuntimeStatus, ProviderError> {
        Ok(self.get(namespace, name)?.status().await)
    }

    async fn invoke(
        &self,
        namespace: &str,
        name: &str,
        call: Invocation,
    ) -> Result<InvocationResult, ProviderError> {
        self.get(namespace, name)?.invoke(call).await
    }

    fn logs(
        &self,
        namespace: &str,
        name: &str,
        tail: Option<usize>,
        follow: bool,
    ) -> Result<LogFeed, ProviderError> {
        let f = self.get(namespace, name)?;
        let (backlog, live) = f.shared.logs.read(tail, follow);
        Ok(LogFeed { backlog, live })
    }

    async fn build(
        &self,
        input: BuildInput,
        progress: Progress,
    ) -> Result<BuildResult, ProviderError> {
        let builds = self.images.lock_builds().await;
        // Builds replace images: first drop those nothing refers to any more.
        let mut in_use = std::collections::HashSet::new();
        for f in self.all() {
            in_use.extend(f.images_in_use().await);
        }
        self.images.build(&builds, input, progress, &in_use).await
    }

    async fn shutdown(&self) {
        for f in self.all() {
            f.stop().await;
        }
    }
}
