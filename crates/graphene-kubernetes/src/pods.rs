//! The pods of graphene's functions, as a watch of each managed namespace
//! keeps them: where calls can go (ready, not terminating, by least calls
//! in flight), and what `describe` shows of each (restarts, the last
//! termination, why a container waits).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use futures_util::StreamExt;
use graphene_core::names::FunctionRef;
use graphene_http::forward::Upstream;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;
use kube::Api;
use tokio::sync::Notify;

use crate::manifest::{FUNCTION_LABEL, MANAGED_BY, MANAGER, REVISION_LABEL, WATCHDOG_PORT};

/// One pod of a function.
pub struct PodState {
    pub name: String,
    pub ip: Option<String>,
    pub revision: u64,
    pub ready: bool,
    /// Being deleted: never sent a new call.
    pub terminating: bool,
    pub started_at: String,
    pub node: String,
    pub restarts: i32,
    /// Why the container last ended (`OOMKilled`, `Error: exit 1`, ...).
    pub last_termination: Option<String>,
    /// Why the container waits (`CrashLoopBackOff`, `ImagePullBackOff`, ...)
    /// and the message with it.
    pub waiting: Option<(String, String)>,
}

/// A pod that can take calls: its pooled connections and calls in flight.
pub struct Backend {
    pub revision: u64,
    pub upstream: Upstream,
    pub in_flight: AtomicUsize,
    /// Told when a call on one of its function's backends ends.
    freed: Arc<Notify>,
}

/// Counts a call on a backend while it lives.
pub struct Busy {
    pub backend: Arc<Backend>,
    /// Whether its end frees capacity others may wait for (not when the
    /// call only gives its place back to wait itself).
    tell: bool,
}

impl Busy {
    /// Calls on this backend now, this one included.
    pub fn load(&self) -> usize {
        self.backend.in_flight.load(Ordering::Acquire)
    }

    /// Gives the place back without waking the calls that wait for one.
    pub fn withdraw(mut self) {
        self.tell = false;
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.backend.in_flight.fetch_sub(1, Ordering::AcqRel);
        if self.tell {
            // One place freed: one waiter (of this function) takes it,
            // rather than every waiter waking to find it taken.
            self.backend.freed.notify_one();
        }
    }
}

#[derive(Default)]
struct Function {
    pods: HashMap<String, PodState>,
    /// Ready pods by name; kept across updates so connections and counts
    /// survive.
    backends: HashMap<String, Arc<Backend>>,
    /// Woken once per call that ends on one of them.
    freed: Arc<Notify>,
}

#[derive(Default)]
pub struct Pods {
    functions: RwLock<HashMap<FunctionRef, Function>>,
    /// Turns among equally idle pods.
    turn: AtomicUsize,
    /// Woken whenever a pod changes.
    pub changed: Notify,
}

impl Pods {
    /// Watches the managed pods of `namespace` for as long as the process
    /// runs (the watcher reconnects by itself).
    pub fn watch(self: &Arc<Self>, client: kube::Client, namespace: &str) {
        let api: Api<Pod> = Api::namespaced(client, namespace);
        let config = watcher::Config::default().labels(&format!("{MANAGED_BY}={MANAGER}"));
        let pods = self.clone();
        let namespace = namespace.to_string();
        tokio::spawn(async move {
            let mut stream = watcher(api, config).boxed();
            let mut listing: Vec<Pod> = Vec::new();
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::Apply(p)) => pods.apply(&namespace, &p),
                    Ok(watcher::Event::Delete(p)) => pods.delete(&namespace, &p),
                    Ok(watcher::Event::Init) => listing.clear(),
                    Ok(watcher::Event::InitApply(p)) => listing.push(p),
                    Ok(watcher::Event::InitDone) => pods.replace(&namespace, &listing),
                    Err(e) => {
                        tracing::warn!(namespace = %namespace, "watching pods: {e}");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
            }
        });
    }

    fn apply(&self, namespace: &str, pod: &Pod) {
        let Some((f, state)) = read(namespace, pod) else {
            return;
        };
        let mut all = self.functions.write().expect("pods lock");
        let entry = all.entry(f).or_default();
        update_backend(entry, &state);
        entry.pods.insert(state.name.clone(), state);
        drop(all);
        self.changed.notify_waiters();
    }

    fn delete(&self, namespace: &str, pod: &Pod) {
        let Some((f, state)) = read(namespace, pod) else {
            return;
        };
        let mut all = self.functions.write().expect("pods lock");
        if let Some(entry) = all.get_mut(&f) {
            entry.pods.remove(&state.name);
            entry.backends.remove(&state.name);
        }
        drop(all);
        self.changed.notify_waiters();
    }

    /// A fresh listing of a namespace replaces what was known of it.
    fn replace(&self, namespace: &str, listing: &[Pod]) {
        let mut all = self.functions.write().expect("pods lock");
        for (f, entry) in all.iter_mut() {
            if f.namespace == namespace {
                entry.pods.clear();
            }
        }
        for pod in listing {
            if let Some((f, state)) = read(namespace, pod) {
                let entry = all.entry(f).or_default();
                entry.pods.insert(state.name.clone(), state);
            }
        }
        for (f, entry) in all.iter_mut() {
            if f.namespace == namespace {
                let states: Vec<_> = entry.pods.values().map(clone_state).collect();
                entry
                    .backends
                    .retain(|name, _| states.iter().any(|s| &s.name == name));
                for s in &states {
                    update_backend(entry, s);
                }
            }
        }
        drop(all);
        self.changed.notify_waiters();
    }

    /// The backend with the fewest calls in flight, counted as busy. Once
    /// a revision has ready pods, calls go to the newest such revision only
    /// (the pods of earlier ones are being replaced).
    pub fn pick(&self, f: &FunctionRef) -> Option<Busy> {
        let all = self.functions.read().expect("pods lock");
        let backends = &all.get(f)?.backends;
        let newest = backends.values().map(|b| b.revision).max()?;
        // One reading of the counts (other calls change them meanwhile).
        let current: Vec<(&Arc<Backend>, usize)> = backends
            .values()
            .filter(|b| b.revision == newest)
            .map(|b| (b, b.in_flight.load(Ordering::Acquire)))
            .collect();
        let least = current.iter().map(|(_, load)| *load).min()?;
        let idlest: Vec<&Arc<Backend>> = current
            .iter()
            .filter(|(_, load)| *load == least)
            .map(|(b, _)| *b)
            .collect();
        let best = idlest[self.turn.fetch_add(1, Ordering::Relaxed) % idlest.len()].clone();
        best.in_flight.fetch_add(1, Ordering::AcqRel);
        Some(Busy {
            backend: best,
            tell: true,
        })
    }

    /// What is told, once per call, when a call on the function ends.
    pub fn freed(&self, f: &FunctionRef) -> Arc<Notify> {
        let all = self.functions.read().expect("pods lock");
        all.get(f).map(|e| e.freed.clone()).unwrap_or_default()
    }

    /// How many pods of the revision calls go to take calls.
    pub fn ready_count(&self, f: &FunctionRef) -> usize {
        let all = self.functions.read().expect("pods lock");
        let Some(backends) = all.get(f).map(|e| &e.backends) else {
            return 0;
        };
        let newest = backends.values().map(|b| b.revision).max();
        backends
            .values()
            .filter(|b| Some(b.revision) == newest)
            .count()
    }

    /// What is known of a function's pods (a snapshot).
    pub fn of(&self, f: &FunctionRef) -> Vec<PodState> {
        let all = self.functions.read().expect("pods lock");
        let mut out: Vec<PodState> = all
            .get(f)
            .map(|e| e.pods.values().map(clone_state).collect())
            .unwrap_or_default();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub fn forget(&self, f: &FunctionRef) {
        self.functions.write().expect("pods lock").remove(f);
    }
}

/// A ready, live pod with an address takes calls; any other does not.
fn update_backend(entry: &mut Function, s: &PodState) {
    match (&s.ip, s.ready && !s.terminating) {
        (Some(ip), true) => {
            let keep = entry.backends.contains_key(&s.name);
            if !keep {
                entry.backends.insert(
                    s.name.clone(),
                    Arc::new(Backend {
                        revision: s.revision,
                        upstream: Upstream::new(&format!("http://{ip}:{WATCHDOG_PORT}")),
                        in_flight: AtomicUsize::new(0),
                        freed: entry.freed.clone(),
                    }),
                );
            }
        }
        _ => {
            entry.backends.remove(&s.name);
        }
    }
}

fn clone_state(s: &PodState) -> PodState {
    PodState {
        name: s.name.clone(),
        ip: s.ip.clone(),
        revision: s.revision,
        ready: s.ready,
        terminating: s.terminating,
        started_at: s.started_at.clone(),
        node: s.node.clone(),
        restarts: s.restarts,
        last_termination: s.last_termination.clone(),
        waiting: s.waiting.clone(),
    }
}

/// The function a pod belongs to, and what matters of it.
fn read(namespace: &str, pod: &Pod) -> Option<(FunctionRef, PodState)> {
    let labels = pod.metadata.labels.as_ref()?;
    let f = FunctionRef::new(namespace, labels.get(FUNCTION_LABEL)?);
    let status = pod.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let container = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first());
    let last_termination = container
        .and_then(|c| c.last_state.as_ref())
        .and_then(|s| s.terminated.as_ref())
        .map(|t| {
            let reason = t.reason.clone().unwrap_or_else(|| "Terminated".into());
            match t
                .message
                .as_deref()
                .map(str::trim)
                .filter(|m| !m.is_empty())
            {
                Some(m) => format!("{reason} (exit {}): {m}", t.exit_code),
                None => format!("{reason} (exit {})", t.exit_code),
            }
        });
    let waiting = container
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.waiting.as_ref())
        .map(|w| {
            (
                w.reason.clone().unwrap_or_default(),
                w.message.clone().unwrap_or_default(),
            )
        });
    Some((
        f,
        PodState {
            name: pod.metadata.name.clone()?,
            ip: status
                .and_then(|s| s.pod_ip.clone())
                .filter(|ip| !ip.is_empty()),
            revision: labels
                .get(REVISION_LABEL)
                .and_then(|r| r.parse().ok())
                .unwrap_or(0),
            ready,
            terminating: pod.metadata.deletion_timestamp.is_some(),
            started_at: status
                .and_then(|s| s.start_time.as_ref())
                .map(|t| t.0.to_string())
                .unwrap_or_default(),
            node: pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default(),
            restarts: container.map_or(0, |c| c.restart_count),
            last_termination,
            waiting,
        },
    ))
}
