//! An in-memory provider and builder: what gateway tests use when they need
//! a runtime but no Python, and the reference the conformance suite is
//! checked against.
//!
//! Images are names. `<anything>:<tag>` is "built" by [`FakeBuilder`]
//! and answers calls with its tag; an image whose name contains `broken`
//! never becomes ready (its rollout fails, as a handler that does not
//! import); one whose name starts with `missing` is refused by `check`.
//! Call bodies steer the replica: `hang` runs past the timeout, `slow`
//! takes 1.5 s, `crash` kills the replica mid-call; anything else is
//! answered with the tag and logged.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use graphene_core::api::{
    BuildResult, InstanceStatus, LogMessage, Rollout, RolloutState, RuntimeStatus,
};
use graphene_core::names::FunctionRef;
use graphene_core::provider::{
    BoxFuture, BuildInput, Builder, Deployment, Invocation, InvocationResult, LogQuery, LogStream,
    Progress, Provider, ProviderError,
};
use tokio::sync::broadcast;

/// How long a rollout takes in the fake (long enough to be seen
/// progressing).
pub const ROLLOUT: Duration = Duration::from_millis(50);

#[derive(Clone)]
struct Version {
    revision: u64,
    tag: String,
    broken: bool,
}

struct Function {
    /// The revision last applied, and how its rollout went.
    current: Version,
    state: RolloutState,
    /// What answers calls: the newest revision that became ready.
    serving: Option<Version>,
    replicas: u64,
    timeout: Duration,
    capacity: u64,
    in_flight: u64,
    logs: Vec<LogMessage>,
    live: broadcast::Sender<LogMessage>,
}

impl Function {
    fn log(&mut self, f: &FunctionRef, text: &str) {
        let m = LogMessage {
            name: f.name.clone(),
            namespace: f.namespace.clone(),
            instance: format!("{}-{}", f.name, self.current.revision),
            timestamp: graphene_core::time::now_rfc3339(),
            text: text.to_string(),
        };
        self.logs.push(m.clone());
        let _ = self.live.send(m);
    }
}

/// The in-memory provider.
#[derive(Default, Clone)]
pub struct FakeProvider {
    functions: Arc<Mutex<HashMap<FunctionRef, Function>>>,
    /// Applies still to refuse (a runtime that is down for a while).
    refuse: Arc<std::sync::atomic::AtomicU32>,
}

fn version_of(d: &Deployment) -> Version {
    let tag = d
        .spec
        .image
        .rsplit_once(':')
        .map_or("latest", |(_, t)| t)
        .to_string();
    Version {
        revision: d.revision,
        tag,
        broken: d.spec.image.contains("broken"),
    }
}

fn not_found(f: &FunctionRef) -> ProviderError {
    ProviderError::NotFound(format!(
        "function {} not found in namespace {}",
        f.name, f.namespace
    ))
}

impl FakeProvider {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(
        &self,
        f: &FunctionRef,
        op: impl FnOnce(&mut Function) -> Result<T, ProviderError>,
    ) -> Result<T, ProviderError> {
        let mut all = self.functions.lock().expect("fake lock");
        op(all.get_mut(f).ok_or_else(|| not_found(f))?)
    }

    /// Refuses the next `n` applies as unavailable, as a runtime that is
    /// down for a while.
    pub fn refuse_applies(&self, n: u32) {
        self.refuse.store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// Functions it runs now.
    pub fn running(&self) -> HashSet<FunctionRef> {
        self.functions
            .lock()
            .expect("fake lock")
            .keys()
            .cloned()
            .collect()
    }
}

impl Provider for FakeProvider {
    fn name(&self) -> &'static str {
        "graphene-fake"
    }

    fn orchestration(&self) -> &'static str {
        "memory"
    }

    fn check(&self, d: &Deployment) -> Result<(), ProviderError> {
        if d.spec.image.starts_with("missing") {
            return Err(ProviderError::Invalid(format!(
                "image {:?} does not exist",
                d.spec.image
            )));
        }
        Ok(())
    }

    async fn apply(&self, d: Deployment) -> Result<(), ProviderError> {
        self.check(&d)?;
        use std::sync::atomic::Ordering::SeqCst;
        if self
            .refuse
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(ProviderError::Unavailable("the runtime is down".into()));
        }
        let version = version_of(&d);
        {
            let mut all = self.functions.lock().expect("fake lock");
            let f = all.entry(d.function.clone()).or_insert_with(|| Function {
                current: version.clone(),
                state: RolloutState::Progressing,
                serving: None,
                replicas: 0,
                timeout: d.settings.timeout,
                capacity: 0,
                in_flight: 0,
                logs: Vec::new(),
                live: broadcast::channel(256).0,
            });
            f.replicas = d.replicas;
            f.timeout = d.settings.timeout;
            f.capacity = d.settings.workers;
            let same = f.serving.as_ref().is_some_and(|s| {
                s.tag == version.tag && !version.broken && f.current.tag == version.tag
            });
            f.current = version.clone();
            if same {
                // The same thing runs: only renumbered.
                f.serving = Some(version);
                f.state = RolloutState::Ready;
                return Ok(());
            }
            f.state = RolloutState::Progressing;
            f.log(&d.function, &format!("starting revision {}", d.revision));
        }
        let (functions, id) = (self.functions.clone(), d.function.clone());
        tokio::spawn(async move {
            tokio::time::sleep(ROLLOUT).await;
            let mut all = functions.lock().expect("fake lock");
            let Some(f) = all.get_mut(&id) else { return };
            if f.current.revision != version.revision {
                return; // superseded meanwhile
            }
            if version.broken {
                f.state = RolloutState::Failed;
                f.log(&id, "revision failed: the handler does not import");
            } else {
                f.state = RolloutState::Ready;
                f.serving = Some(version);
                f.log(&id, "revision ready");
            }
        });
        Ok(())
    }

    async fn scale(&self, function: &FunctionRef, replicas: u64) -> Result<(), ProviderError> {
        self.with(function, |f| {
            f.replicas = replicas;
            Ok(())
        })
    }

    async fn remove(&self, function: &FunctionRef) -> Result<(), ProviderError> {
        self.functions
            .lock()
            .expect("fake lock")
            .remove(function)
            .map(|_| ())
            .ok_or_else(|| not_found(function))
    }

    async fn status(&self, function: &FunctionRef) -> Result<RuntimeStatus, ProviderError> {
        self.with(function, |f| {
            let ready = match &f.serving {
                Some(_) => f.replicas,
                None => 0,
            };
            let mut details = serde_json::Map::new();
            details.insert("inFlight".into(), f.in_flight.into());
            Ok(RuntimeStatus {
                desired_replicas: f.replicas,
                ready_replicas: ready,
                rollout: Some(Rollout {
                    revision: f.current.revision,
                    state: f.state,
                    reason: match f.state {
                        RolloutState::Failed => "the handler does not import".into(),
                        _ => String::new(),
                    },
                }),
                instances: f
                    .serving
                    .iter()
                    .flat_map(|s| {
                        (0..f.replicas).map(move |i| InstanceStatus {
                            id: format!("{}-{}", s.revision, i + 1),
                            revision: s.revision,
                            ready: true,
                            started_at: String::new(),
                            details: Default::default(),
                        })
                    })
                    .collect(),
                details,
                ..Default::default()
            })
        })
    }

    async fn invoke(
        &self,
        function: &FunctionRef,
        call: Invocation,
    ) -> Result<InvocationResult, ProviderError> {
        let body = call
            .body
            .collect(32 << 20)
            .await
            .map_err(|e| ProviderError::Invalid(e.to_string()))?;
        let (tag, timeout) = self.with(function, |f| {
            let serving = match (&f.serving, f.state) {
                (Some(s), _) => s.clone(),
                (None, RolloutState::Failed) => {
                    return Err(ProviderError::Unavailable(format!(
                        "function {} failed to start: the handler does not import",
                        function.name
                    )))
                }
                (None, _) => {
                    return Err(ProviderError::Unavailable(format!(
                        "function {} is still starting",
                        function.name
                    )))
                }
            };
            if f.replicas == 0 {
                return Err(ProviderError::Unavailable(format!(
                    "function {} has 0 replicas",
                    function.name
                )));
            }
            if f.in_flight >= f.replicas * f.capacity.max(1) {
                return Err(ProviderError::Overloaded(
                    format!("function {} is at its maximum", function.name),
                    1,
                ));
            }
            f.in_flight += 1;
            Ok((serving.tag, f.timeout))
        })?;
        let done = |p: &Self| {
            let _ = p.with(function, |f| {
                f.in_flight -= 1;
                Ok(())
            });
        };
        let result = match &body[..] {
            b"hang" => {
                tokio::time::sleep(timeout).await;
                Err(ProviderError::Timeout(format!(
                    "function {} ran past its timeout ({timeout:?})",
                    function.name
                )))
            }
            b"crash" => Err(ProviderError::Upstream(format!(
                "function {}: the replica exited with code 3",
                function.name
            ))),
            other => {
                if other == b"slow" {
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                }
                let text = format!("called with {}", String::from_utf8_lossy(other));
                let _ = self.with(function, |f| {
                    f.log(function, &text);
                    Ok(())
                });
                Ok(InvocationResult {
                    status: 200,
                    headers: vec![("Content-Type".into(), "text/plain".into())],
                    body: Bytes::from(tag).into(),
                    cold_start: None,
                })
            }
        };
        done(self);
        result
    }

    async fn logs(
        &self,
        function: &FunctionRef,
        query: LogQuery,
    ) -> Result<LogStream, ProviderError> {
        let (backlog, live) = self.with(function, |f| {
            let skip = query.tail.map_or(0, |t| f.logs.len().saturating_sub(t));
            Ok((
                f.logs[skip..].to_vec(),
                query.follow.then(|| f.live.subscribe()),
            ))
        })?;
        let head = futures_util::stream::iter(backlog);
        Ok(match live {
            None => head.boxed(),
            Some(rx) => head
                .chain(futures_util::stream::unfold(rx, |mut rx| async move {
                    loop {
                        match rx.recv().await {
                            Ok(m) => return Some((m, rx)),
                            Err(broadcast::error::RecvError::Lagged(_)) => continue,
                            Err(broadcast::error::RecvError::Closed) => return None,
                        }
                    }
                }))
                .boxed(),
        })
    }

    async fn shutdown(&self) {
        self.functions.lock().expect("fake lock").clear();
    }
}

/// "Builds" images by name: the digest is a hash of the name.
#[derive(Default)]
pub struct FakeBuilder {
    built: Mutex<HashMap<String, String>>,
}

impl FakeBuilder {
    /// Marks an image as built, as a build would.
    pub fn add(&self, image: &str) -> String {
        let digest = format!("{:016x}", fnv(image));
        self.built
            .lock()
            .expect("fake lock")
            .insert(image.to_string(), digest.clone());
        digest
    }
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

impl Builder for FakeBuilder {
    fn build<'a>(
        &'a self,
        input: BuildInput,
        mut progress: Progress,
        _keep: HashSet<String>,
    ) -> BoxFuture<'a, Result<BuildResult, ProviderError>> {
        Box::pin(async move {
            progress(&format!("{}: built in memory", input.image));
            let digest = self.add(&input.image);
            Ok(BuildResult {
                ok: true,
                image: input.image,
                digest,
                cached: false,
                error: String::new(),
            })
        })
    }

    fn resolve(&self, image: &str) -> Option<String> {
        self.built.lock().expect("fake lock").get(image).cloned()
    }
}
