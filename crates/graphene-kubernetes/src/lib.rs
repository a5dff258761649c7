//! graphene-kubernetes: the Kubernetes provider. A function is a Deployment
//! of its OCI image (run by `graphene watchdog`), a Service and a Secret
//! (`manifest.rs`); the gateway balances calls itself over the function's
//! ready pods, which a watch of each managed namespace keeps (`pods.rs`),
//! with pooled keep-alive connections through the shared forwarder: no
//! kube-proxy hop. Objects are written with server-side apply, so applying
//! the same revision again changes nothing but what changed.

pub mod access;
pub mod functions;
pub mod install;
pub mod lease;
pub mod manifest;
mod pods;
pub mod secrets;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures_util::{AsyncBufReadExt, StreamExt};
use graphene_core::api::{InstanceStatus, LogMessage, Rollout, RolloutState, RuntimeStatus};
use graphene_core::names::FunctionRef;
use graphene_core::provider::{
    Deployment, Invocation, InvocationResult, LogQuery, LogStream, Provider, ProviderError,
};
use k8s_openapi::api::apps::v1 as apps;
use k8s_openapi::api::core::v1 as core;
use kube::api::{DeleteParams, LogParams, Patch, PatchParams};
use kube::Api;

pub use pods::PodState;
use pods::Pods;

/// How long a call waits for a first ready pod (a function waking from
/// zero: the pod is scheduled, its image pulled, its handler imported)
/// before it gets 503, unless the function's timeout is shorter.
const READY_WAIT: Duration = Duration::from_secs(60);
/// Waiting reasons of a container that will not start by itself.
const STUCK: [&str; 6] = [
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
];

pub struct KubernetesConfig {
    pub client: kube::Client,
    /// The namespaces graphene may manage functions in.
    pub namespaces: Vec<String>,
    /// Secrets (in each function namespace) the kubelet pulls images with.
    pub image_pull_secrets: Vec<String>,
}

/// What the provider keeps of a function it was given.
#[derive(Clone, Copy)]
struct Known {
    revision: u64,
    timeout: Duration,
    replicas: u64,
    /// Calls one pod takes at once.
    workers: u64,
    max_replicas: u64,
}

pub struct KubernetesProvider {
    client: kube::Client,
    namespaces: BTreeSet<String>,
    pods: Arc<Pods>,
    functions: RwLock<HashMap<FunctionRef, Known>>,
    image_pull_secrets: Vec<String>,
}

impl KubernetesProvider {
    /// Connects and starts watching the pods of each managed namespace.
    pub fn new(config: KubernetesConfig) -> Self {
        let pods = Arc::new(Pods::default());
        for ns in &config.namespaces {
            pods.watch(config.client.clone(), ns);
        }
        Self {
            client: config.client,
            namespaces: config.namespaces.into_iter().collect(),
            pods,
            functions: RwLock::new(HashMap::new()),
            image_pull_secrets: config.image_pull_secrets,
        }
    }

    /// The client from the environment: a kubeconfig (`KUBECONFIG`,
    /// `~/.kube/config`), or the pod's service account in a cluster.
    pub async fn client() -> Result<kube::Client, String> {
        kube::Client::try_default()
            .await
            .map_err(|e| format!("no usable Kubernetes configuration: {e}"))
    }

    fn managed(&self, f: &FunctionRef) -> Result<(), ProviderError> {
        match self.namespaces.contains(&f.namespace) {
            true => Ok(()),
            false => Err(ProviderError::Invalid(format!(
                "namespace {:?} is not one graphene manages here ({})",
                f.namespace,
                self.namespaces
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    fn deployments(&self, f: &FunctionRef) -> Api<apps::Deployment> {
        Api::namespaced(self.client.clone(), &f.namespace)
    }

    /// Keeps what calls to the function need to know of it.
    fn learn(&self, d: &Deployment) {
        self.functions.write().expect("functions lock").insert(
            d.function.clone(),
            Known {
                revision: d.revision,
                timeout: d.settings.timeout,
                replicas: d.replicas,
                workers: d.settings.workers,
                max_replicas: d.settings.max_replicas,
            },
        );
    }

    fn known(&self, f: &FunctionRef) -> Result<Known, ProviderError> {
        self.functions
            .read()
            .expect("functions lock")
            .get(f)
            .copied()
            .ok_or_else(|| {
                ProviderError::NotFound(format!(
                    "function {} not found in namespace {}",
                    f.name, f.namespace
                ))
            })
    }

    /// Waits for a pod that can take a call, up to `limit`.
    async fn ready_pod(
        &self,
        f: &FunctionRef,
        limit: Duration,
    ) -> Result<pods::Busy, ProviderError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let changed = self.pods.changed.notified();
            if let Some(b) = self.pods.pick(f) {
                return Ok(b);
            }
            // A pod that will not start by itself: no use waiting.
            if let Some(why) = self.pods.of(f).iter().find_map(stuck) {
                return Err(ProviderError::Unavailable(format!(
                    "function {} has no ready pod: {why}",
                    f.name
                )));
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(ProviderError::Unavailable(format!(
                    "function {} has no ready pod after {:?}",
                    f.name, limit
                )));
            }
        }
    }
}

/// Why a pod's container will not start by itself (waiting in
/// `CrashLoopBackOff`, `ImagePullBackOff`, ...), with how it last ended.
fn stuck(p: &PodState) -> Option<String> {
    let (reason, message) = p
        .waiting
        .as_ref()
        .filter(|(reason, _)| STUCK.contains(&reason.as_str()))?;
    let last = p.last_termination.as_deref().unwrap_or("");
    Some(format!("{reason}: {message} {last}").trim().to_string())
}

/// A store's answer when the API server failed it: what it was doing, and
/// why.
pub(crate) fn store_unavailable(
    what: String,
) -> impl Fn(kube::Error) -> graphene_core::store::StoreError {
    move |e| graphene_core::store::StoreError::Unavailable(format!("{what}: {e}"))
}

/// Whether the API server answered with this status code.
pub(crate) fn is_code(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

fn kube_error(e: kube::Error) -> ProviderError {
    match &e {
        kube::Error::Api(s) if s.code == 404 => ProviderError::NotFound(s.message.clone()),
        kube::Error::Api(s) if s.code == 422 || s.code == 400 => {
            ProviderError::Invalid(format!("the cluster refused it: {}", s.message))
        }
        _ => ProviderError::Internal(format!("Kubernetes API: {e}")),
    }
}

impl Provider for KubernetesProvider {
    fn name(&self) -> &'static str {
        "graphene-kubernetes"
    }

    fn orchestration(&self) -> &'static str {
        "kubernetes"
    }

    fn check(&self, d: &Deployment) -> Result<(), ProviderError> {
        self.managed(&d.function)?;
        manifest::image_reference(&d.spec.image)?;
        manifest::deployment(d, fork_of(d), &self.image_pull_secrets).map(drop)
    }

    async fn apply(&self, d: Deployment) -> Result<(), ProviderError> {
        self.check(&d)?;
        let f = d.function.clone();
        let ssa = PatchParams::apply(manifest::MANAGER).force();
        let secrets: Api<core::Secret> = Api::namespaced(self.client.clone(), &f.namespace);
        if d.secrets.is_empty() {
            match secrets
                .delete(&manifest::secret_name(&f), &DeleteParams::default())
                .await
            {
                Ok(_) | Err(kube::Error::Api(_)) => {}
                Err(e) => return Err(kube_error(e)),
            }
        } else {
            secrets
                .patch(
                    &manifest::secret_name(&f),
                    &ssa,
                    &Patch::Apply(manifest::secret(&f, &d.secrets)),
                )
                .await
                .map_err(kube_error)?;
        }
        let deployment = manifest::deployment(&d, fork_of(&d), &self.image_pull_secrets)?;
        self.deployments(&f)
            .patch(&f.name, &ssa, &Patch::Apply(deployment))
            .await
            .map_err(kube_error)?;
        let services: Api<core::Service> = Api::namespaced(self.client.clone(), &f.namespace);
        services
            .patch(&f.name, &ssa, &Patch::Apply(manifest::service(&f)))
            .await
            .map_err(kube_error)?;
        self.learn(&d);
        Ok(())
    }

    /// Another gateway leads and applies: calls are balanced over the pods
    /// the watch finds, and nothing is written.
    async fn follow(&self, d: Deployment) -> Result<(), ProviderError> {
        self.check(&d)?;
        self.learn(&d);
        Ok(())
    }

    async fn forget(&self, f: &FunctionRef) -> Result<(), ProviderError> {
        self.functions.write().expect("functions lock").remove(f);
        Ok(())
    }

    async fn scale(&self, f: &FunctionRef, replicas: u64) -> Result<(), ProviderError> {
        self.known(f)?;
        let patch = serde_json::json!({ "spec": { "replicas": replicas.min(i32::MAX as u64) } });
        self.deployments(f)
            .patch_scale(&f.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(kube_error)?;
        if let Some(k) = self.functions.write().expect("functions lock").get_mut(f) {
            k.replicas = replicas;
        }
        Ok(())
    }

    async fn remove(&self, f: &FunctionRef) -> Result<(), ProviderError> {
        self.managed(f)?;
        let background = DeleteParams::background();
        let deleted = self.deployments(f).delete(&f.name, &background).await;
        let services: Api<core::Service> = Api::namespaced(self.client.clone(), &f.namespace);
        let secrets: Api<core::Secret> = Api::namespaced(self.client.clone(), &f.namespace);
        let _ = services.delete(&f.name, &background).await;
        let _ = secrets.delete(&manifest::secret_name(f), &background).await;
        let was_known = self
            .functions
            .write()
            .expect("functions lock")
            .remove(f)
            .is_some();
        self.pods.forget(f);
        match deleted {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 && was_known => Ok(()),
            Err(e) => Err(kube_error(e)),
        }
    }

    async fn status(&self, f: &FunctionRef) -> Result<RuntimeStatus, ProviderError> {
        let revision = self.known(f)?.revision;
        let deployment = self
            .deployments(f)
            .get_opt(&f.name)
            .await
            .map_err(kube_error)?
            .ok_or_else(|| {
                ProviderError::NotFound(format!("function {} has no Deployment", f.name))
            })?;
        let desired = deployment
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(0)
            .max(0) as u64;
        let pods = self.pods.of(f);
        let live: Vec<&PodState> = pods.iter().filter(|p| !p.terminating).collect();
        // The pods calls go to: those of the newest revision that has ready
        // ones (the others are being replaced).
        let ready = self.pods.ready_count(f) as u64;
        let mine: Vec<&&PodState> = live.iter().filter(|p| p.revision == revision).collect();
        let state = if mine.iter().any(|p| p.ready) || desired == 0 {
            (RolloutState::Ready, String::new())
        } else if let Some(reason) = mine.iter().find_map(|p| stuck(p)) {
            (RolloutState::Failed, reason)
        } else {
            (RolloutState::Progressing, String::new())
        };
        let restarts: i32 = pods.iter().map(|p| p.restarts).sum();
        let mut details = serde_json::Map::new();
        details.insert("namespace".into(), f.namespace.clone().into());
        details.insert("deployment".into(), f.name.clone().into());
        details.insert("restarts".into(), restarts.into());
        Ok(RuntimeStatus {
            desired_replicas: desired,
            ready_replicas: ready,
            rollout: Some(Rollout {
                revision,
                state: state.0,
                reason: state.1,
            }),
            instances: pods
                .iter()
                .map(|p| {
                    let mut d = serde_json::Map::new();
                    d.insert("ip".into(), p.ip.clone().unwrap_or_default().into());
                    d.insert("node".into(), p.node.clone().into());
                    d.insert("restarts".into(), p.restarts.into());
                    d.insert("terminating".into(), p.terminating.into());
                    if let Some(t) = &p.last_termination {
                        d.insert("lastTermination".into(), t.clone().into());
                    }
                    if let Some((reason, message)) = &p.waiting {
                        d.insert("waiting".into(), format!("{reason}: {message}").into());
                    }
                    InstanceStatus {
                        id: p.name.clone(),
                        revision: p.revision,
                        ready: p.ready && !p.terminating,
                        started_at: p.started_at.clone(),
                        details: d,
                    }
                })
                .collect(),
            details,
            ..Default::default()
        })
    }

    async fn invoke(
        &self,
        f: &FunctionRef,
        call: Invocation,
    ) -> Result<InvocationResult, ProviderError> {
        let known = self.known(f)?;
        if known.replicas == 0 {
            return Err(ProviderError::Unavailable(format!(
                "function {} is scaled to zero",
                f.name
            )));
        }
        let started = Instant::now();
        let body = call
            .body
            .collect(usize::MAX)
            .await
            .map_err(|e| ProviderError::Invalid(e.to_string()))?;
        let busy = match self.pods.pick(f) {
            Some(b) => b,
            None => {
                let wait = READY_WAIT.min(known.timeout.max(Duration::from_secs(10)));
                self.ready_pod(f, wait).await?
            }
        };
        // Every pod is busy with all the calls it takes and there can be no
        // more pods: the call waits briefly for one to free up, then is
        // turned away, as on the local runtime.
        let brief =
            tokio::time::Instant::now() + graphene_core::settings::overflow_wait(known.timeout);
        let mut busy = busy;
        while busy.load() as u64 > known.workers
            && self.pods.ready_count(f) as u64 >= known.max_replicas
        {
            let freed = self.pods.freed(f);
            let freed = freed.notified();
            busy.withdraw();
            if tokio::time::timeout_at(brief, freed).await.is_err() {
                return Err(ProviderError::Overloaded(
                    format!(
                        "all {} pods of {} are busy and it is at its maximum of {} replicas; retry later",
                        self.pods.ready_count(f),
                        f.name,
                        known.max_replicas
                    ),
                    graphene_core::settings::overflow_wait(known.timeout)
                        .as_secs_f64()
                        .ceil()
                        .max(1.0) as u64,
                ));
            }
            busy = match self.pods.pick(f) {
                Some(b) => b,
                None => self.ready_pod(f, Duration::from_secs(10)).await?,
            };
        }
        let waited = started.elapsed();
        // The watchdog cuts the call at the timeout itself (and says so);
        // this deadline only covers a pod that stopped answering.
        let deadline = tokio::time::Instant::now() + known.timeout + Duration::from_secs(2);
        let mut result = busy
            .backend
            .upstream
            .call(
                &f.name,
                graphene_http::forward::Call {
                    method: call.method,
                    path: call.path,
                    query: call.query,
                    headers: call.headers,
                    body,
                    call_id: call.call_id,
                },
                deadline,
                known.timeout,
            )
            .await?;
        if let Some(e) = runtime_error(&mut result).await {
            return Err(e);
        }
        if waited > Duration::from_millis(5) {
            result.cold_start = Some(waited);
        }
        Ok(result)
    }

    async fn logs(&self, f: &FunctionRef, query: LogQuery) -> Result<LogStream, ProviderError> {
        self.known(f)?;
        let (tx, rx) = tokio::sync::mpsc::channel::<LogMessage>(1024);
        let api: Api<core::Pod> = Api::namespaced(self.client.clone(), &f.namespace);
        let pods = self.pods.clone();
        let f = f.clone();
        // One reader per pod, merged; when following, pods that start later
        // are read too, until the caller goes away.
        tokio::spawn(async move {
            let mut reading = std::collections::HashSet::new();
            let mut first = true;
            loop {
                let changed = pods.changed.notified();
                for pod in pods.of(&f) {
                    if !reading.insert(pod.name.clone()) {
                        continue;
                    }
                    let params = LogParams {
                        follow: query.follow,
                        // A pod that started after the call sends all it has.
                        tail_lines: query.tail.filter(|_| first).map(|t| t as i64),
                        timestamps: true,
                        ..Default::default()
                    };
                    let reader = PodLog {
                        api: api.clone(),
                        pods: pods.clone(),
                        f: f.clone(),
                        pod: pod.name,
                        params,
                        tx: tx.clone(),
                    };
                    match query.follow {
                        true => drop(tokio::spawn(reader.run())),
                        // Read in turn: the stream ends once each is read.
                        false => reader.run().await,
                    }
                }
                first = false;
                if !query.follow {
                    break;
                }
                tokio::select! {
                    _ = changed => {}
                    _ = tx.closed() => break,
                }
            }
        });
        Ok(futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
        )
        .boxed())
    }

    async fn shutdown(&self) {}
}

/// One pod's log, read into a merged stream.
struct PodLog {
    api: Api<core::Pod>,
    pods: Arc<Pods>,
    f: FunctionRef,
    pod: String,
    params: LogParams,
    tx: tokio::sync::mpsc::Sender<LogMessage>,
}

impl PodLog {
    /// Sends the pod's lines (`<timestamp> <text>`) until the reader goes
    /// away, or (when not following) the log ends. When following, a log
    /// that ends while its pod lives (a container not started yet, or
    /// restarted) is opened again, skipping the lines already sent.
    async fn run(mut self) {
        let mut last = String::new();
        let mut last_at = Instant::now();
        loop {
            if let Ok(reader) = self.api.log_stream(&self.pod, &self.params).await {
                let mut lines = reader.lines();
                while let Some(Ok(line)) = lines.next().await {
                    let (timestamp, text) = line.split_once(' ').unwrap_or(("", &line));
                    // RFC 3339 with nanoseconds: ordered as text.
                    if !last.is_empty() && timestamp <= last.as_str() {
                        continue;
                    }
                    last = timestamp.to_string();
                    last_at = Instant::now();
                    let m = LogMessage {
                        name: self.f.name.clone(),
                        namespace: self.f.namespace.clone(),
                        instance: self.pod.clone(),
                        timestamp: timestamp.to_string(),
                        text: text.to_string(),
                    };
                    if self.tx.send(m).await.is_err() {
                        return;
                    }
                }
            }
            let gone = !self
                .pods
                .of(&self.f)
                .iter()
                .any(|p| p.name == self.pod && !p.terminating);
            if !self.params.follow || self.tx.is_closed() || gone {
                return;
            }
            // Lines since the last one sent (the API counts whole seconds;
            // what comes again is skipped above).
            self.params.tail_lines = None;
            self.params.since_seconds =
                (!last.is_empty()).then(|| last_at.elapsed().as_secs() as i64 + 2);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// A failure the pod's watchdog reported (not the function's own answer),
/// as the error it names.
async fn runtime_error(result: &mut InvocationResult) -> Option<ProviderError> {
    let header = graphene_core::provider::ERROR_CLASS_HEADER;
    let class = result
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(header))?
        .1
        .clone();
    let retry_after = result
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(1);
    let body = std::mem::take(&mut result.body)
        .collect(64 << 10)
        .await
        .unwrap_or_default();
    let message = String::from_utf8_lossy(&body).trim().to_string();
    ProviderError::from_class(&class, message, retry_after)
}

/// The builder beside the Kubernetes provider: images come from a registry,
/// built where the function is (`graphene build --oci --push`), so the
/// gateway builds nothing.
pub struct RegistryImages;

impl graphene_core::provider::Builder for RegistryImages {
    fn build<'a>(
        &'a self,
        _: graphene_core::provider::BuildInput,
        _: graphene_core::provider::Progress,
        _: std::collections::HashSet<String>,
    ) -> graphene_core::provider::BoxFuture<
        'a,
        Result<graphene_core::api::BuildResult, ProviderError>,
    > {
        Box::pin(async {
            Err(ProviderError::Unsupported(
                "this gateway runs functions on Kubernetes from registry images: build and push them \
                 with `graphene build --oci --push`, or build, push and deploy with `graphene up --oci`"
                    .into(),
            ))
        })
    }

    fn resolve(&self, _: &str) -> Option<String> {
        None
    }
}

/// `com.graphene.fork` (default true): workers forked from a warm parent.
fn fork_of(d: &Deployment) -> bool {
    [d.spec.labels.as_ref(), d.spec.annotations.as_ref()]
        .into_iter()
        .flatten()
        .find_map(|m| m.get("com.graphene.fork"))
        .is_none_or(|v| v != "false")
}
