//! The function registry: the gateway's one home for "a function".
//!
//! Each function is a [`Record`] under its [`FunctionRef`]: the revisions
//! kept (newest first, with their rollout state), the revision the provider
//! should run, the settings derived once from it, its scaling state and its
//! asynchronous-call count. The scaler, the job dispatcher, metrics, access
//! and the management API all read records from here; nothing else keeps a
//! map of functions.
//!
//! Desired state is written first (to the [`FunctionStore`]: SQLite on one
//! machine, `Function` resources on Kubernetes; then to the record); the
//! reconciler (`reconcile.rs`) makes the provider match. Every change is
//! also an [`Event`] on a broadcast channel, which `GET /system/events`
//! streams to the CLI (and later the dashboard). Changes others make to a
//! shared store (another gateway, `kubectl apply`) are folded in by
//! [`Registry::absorb`].
//!
//! Which revision runs: the newest, unless it failed, in which case the one
//! that serves (the newest that became ready) runs instead. So a failed
//! deploy never takes a serving function down, neither now nor after a
//! restart.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use graphene_core::api::{
    Event, EventKind, FunctionDeployment, ReconcileStatus, RevisionInfo, Rollout, RolloutState,
};
use graphene_core::names::FunctionRef;
use graphene_core::settings::FunctionSettings;
use tokio::sync::{broadcast, Notify};

use graphene_core::store::{FunctionStore, StoreError, StoredFunction, StoredRevision};

use crate::scaling::Scaling;

/// Revisions kept per function when not configured: the serving one is
/// always kept besides.
pub const DEFAULT_KEEP_REVISIONS: usize = 10;

/// What the provider should run for a function, swapped whole on change.
#[derive(Debug, Clone)]
pub struct Desired {
    /// The revision the provider should run.
    pub revision: u64,
    /// That revision's spec, with settings derived once.
    pub spec: FunctionDeployment,
    pub settings: FunctionSettings,
    pub digest: String,
    /// Kept revisions, newest first.
    pub revisions: Vec<StoredRevision>,
}

impl Desired {
    pub fn latest(&self) -> &StoredRevision {
        &self.revisions[0]
    }

    /// The newest revision that became ready: the one serving calls.
    pub fn serving(&self) -> Option<u64> {
        self.revisions
            .iter()
            .find(|r| r.state == RolloutState::Ready)
            .map(|r| r.revision)
    }

    pub fn revision(&self, n: u64) -> Option<&StoredRevision> {
        self.revisions.iter().find(|r| r.revision == n)
    }

    fn latest_rollout(&self) -> Rollout {
        let l = self.latest();
        Rollout {
            revision: l.revision,
            state: l.state,
            reason: l.reason.clone(),
        }
    }
}

/// One function.
pub struct Record {
    pub id: FunctionRef,
    pub created_at: String,
    /// The store's version of the function this record holds.
    version: AtomicU64,
    /// Which life of the function in the store this record is.
    incarnation: String,
    desired: RwLock<Arc<Desired>>,
    /// Load and the autoscaler's state.
    pub scaling: Scaling,
    /// Its asynchronous calls running now.
    pub jobs_running: Arc<AtomicU64>,
    /// Bumped by every change the provider must be given again.
    pub generation: AtomicU64,
    /// The generation the provider last took (0: none yet).
    pub applied: AtomicU64,
    /// The generation last handed to the provider, taken or not: what a
    /// deploy waits for before it answers.
    pub attempted: tokio::sync::watch::Sender<u64>,
    /// Wakes its reconciler.
    pub wake: Notify,
    pub removed: AtomicBool,
    /// Set once the runtime no longer runs it (after removal).
    pub gone: tokio::sync::watch::Sender<bool>,
    pub reconcile: Mutex<ReconcileStatus>,
}

impl Record {
    pub fn desired(&self) -> Arc<Desired> {
        self.desired.read().expect("record lock").clone()
    }

    /// Changes the desired state: `f` edits a copy, which then replaces it.
    /// Callers hold the registry's write lock, so no two changes interleave
    /// (and store writes happen before, on the blocking pool).
    fn update<T>(&self, f: impl FnOnce(&mut Desired) -> T) -> T {
        let mut next = (*self.desired()).clone();
        let out = f(&mut next);
        *self.desired.write().expect("record lock") = Arc::new(next);
        out
    }

    /// Asks the reconciler to give the provider the desired state again.
    pub fn touch(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.wake.notify_one();
    }

    /// Async calls that may run at once: never more than the function can
    /// take (its maximum replicas times the calls each serves).
    pub fn async_concurrency(&self) -> u64 {
        let d = self.desired();
        let capacity = (d.settings.max_replicas * d.settings.workers).max(1);
        d.settings.async_concurrency.min(capacity)
    }

    /// Whether the provider runs what the registry wants.
    pub fn reconcile_status(&self) -> ReconcileStatus {
        let mut s = self.reconcile.lock().expect("reconcile lock").clone();
        s.in_sync = self.applied.load(Ordering::Acquire) == self.generation.load(Ordering::Acquire);
        s
    }

    /// The registry's view of its revisions, for the API.
    pub fn revision_infos(&self) -> Vec<RevisionInfo> {
        let d = self.desired();
        let serving = d.serving();
        d.revisions
            .iter()
            .map(|r| RevisionInfo {
                revision: r.revision,
                image: r.spec.image.clone(),
                digest: r.digest.clone(),
                spec_hash: r.spec_hash.clone(),
                created_by: r.created_by.clone(),
                created_at: r.created_at.clone(),
                state: r.state,
                reason: r.reason.clone(),
                serving: Some(r.revision) == serving,
                rollback_of: r.rollback_of,
            })
            .collect()
    }
}

/// A deploy as the registry records it.
pub struct Change {
    pub spec: FunctionDeployment,
    /// Derived from `spec` (and checked) by the caller.
    pub settings: FunctionSettings,
    /// The build it runs, when a builder made it.
    pub digest: String,
    /// The principal deploying it.
    pub by: String,
    /// The earlier revision a rollback runs again.
    pub rollback_of: Option<u64>,
}

/// Held while the registry changes (deploys, rollbacks, rollouts,
/// removals): control-plane writes happen one at a time.
pub type Writing<'a> = tokio::sync::MutexGuard<'a, ()>;

pub struct Registry {
    store: Arc<dyn FunctionStore>,
    /// Removed functions the runtime may still run: a function deployed
    /// again under the same name waits until its predecessor is gone.
    removing: std::sync::Mutex<HashMap<FunctionRef, Arc<Record>>>,
    writes: tokio::sync::Mutex<()>,
    records: RwLock<HashMap<FunctionRef, Arc<Record>>>,
    events: broadcast::Sender<Event>,
    keep: usize,
    epoch: std::time::Instant,
}

/// The hash that decides whether a deploy changes a function.
fn spec_hash(spec: &FunctionDeployment, digest: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(spec).expect("a deployment serialises"));
    h.update([0]);
    h.update(digest.as_bytes());
    h.finalize()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The revision the provider should run: the newest, unless it failed and
/// another serves.
fn target(revisions: &[StoredRevision]) -> u64 {
    let newest = &revisions[0];
    match newest.state {
        RolloutState::Failed => {
            revisions
                .iter()
                .find(|r| r.state == RolloutState::Ready)
                .unwrap_or(newest)
                .revision
        }
        _ => newest.revision,
    }
}

/// Points `d` at the revision the provider should run (after a rollout's
/// state or the revisions changed); true when that is another revision.
fn retarget(id: &FunctionRef, d: &mut Desired) -> bool {
    let run = target(&d.revisions);
    if run == d.revision && d.revision(run).is_some_and(|r| r.digest == d.digest) {
        return false;
    }
    let Some(next) = d.revision(run).cloned() else {
        return false;
    };
    match FunctionSettings::from_deployment(&next.spec) {
        Ok(settings) => {
            d.revision = run;
            d.spec = next.spec;
            d.digest = next.digest;
            d.settings = settings;
            true
        }
        Err(e) => {
            tracing::warn!(function = %id, error = %e, "the serving revision no longer validates");
            false
        }
    }
}

/// What [`Registry::absorb`] made of a change from the store.
pub enum Absorbed {
    /// Nothing this registry did not know (or a stale change).
    Known,
    /// A function this registry did not hold: its reconciler must start.
    Added(Arc<Record>),
    /// The record took the stored revisions.
    Updated,
    /// The stored spec is not a revision yet (declared with `kubectl
    /// apply`, or edited): the caller checks it and deploys it.
    Declared(Box<FunctionDeployment>),
    /// Removed from the store by someone else: the reconciler removes it
    /// from the runtime.
    Removed,
}

/// A stored spec as a deploy would record it (the store may leave out the
/// name and namespace).
fn declared_spec(f: &StoredFunction) -> FunctionDeployment {
    let mut spec = f.spec.clone();
    spec.service = f.id.name.clone();
    spec.namespace = f.id.namespace.clone();
    spec
}

/// Whether a stored function's spec is one its revisions do not hold yet.
fn is_declared(f: &StoredFunction) -> bool {
    f.revisions
        .first()
        .is_none_or(|newest| newest.spec != declared_spec(f))
}

impl Registry {
    /// Loads every stored function. Returns with it the specs stored
    /// without a revision of their own (declared outside the registry), for
    /// the caller to check and deploy.
    pub async fn open(
        store: Arc<dyn FunctionStore>,
        keep: usize,
    ) -> Result<(Self, Vec<(FunctionRef, FunctionDeployment)>), StoreError> {
        let (events, _) = broadcast::channel(1024);
        let registry = Self {
            store,
            removing: Default::default(),
            writes: tokio::sync::Mutex::new(()),
            records: RwLock::new(HashMap::new()),
            events,
            keep: keep.max(1),
            epoch: std::time::Instant::now(),
        };
        let mut declared = Vec::new();
        for f in registry.store.load().await? {
            if is_declared(&f) {
                declared.push((f.id.clone(), declared_spec(&f)));
            }
            if let Some(record) = registry.restored(f) {
                registry.insert(record);
            }
        }
        Ok((registry, declared))
    }

    /// A record of a stored function, at the revision it should run; none
    /// when it has no revision yet or that revision no longer validates.
    fn restored(&self, f: StoredFunction) -> Option<Arc<Record>> {
        let desired = self.desired_of(&f)?;
        let replicas = clamp(f.replicas, &desired.settings);
        Some(self.record(
            f.id,
            f.created_at,
            f.version,
            f.incarnation,
            desired,
            replicas,
        ))
    }

    fn desired_of(&self, f: &StoredFunction) -> Option<Desired> {
        if f.revisions.is_empty() {
            return None;
        }
        let revision = target(&f.revisions);
        let run = f
            .revisions
            .iter()
            .find(|r| r.revision == revision)
            .expect("the target is a kept revision")
            .clone();
        match FunctionSettings::from_deployment(&run.spec) {
            Ok(settings) => Some(Desired {
                revision,
                spec: run.spec,
                settings,
                digest: run.digest,
                revisions: f.revisions.clone(),
            }),
            Err(e) => {
                tracing::warn!(function = %f.id, revision, error = %e, "a stored revision no longer validates; the function is not restored");
                None
            }
        }
    }

    fn record(
        &self,
        id: FunctionRef,
        created_at: String,
        version: u64,
        incarnation: String,
        desired: Desired,
        replicas: u64,
    ) -> Arc<Record> {
        let scaling = Scaling::new(
            desired.settings.scaling.clone(),
            replicas,
            self.epoch.elapsed(),
        );
        Arc::new(Record {
            id,
            created_at,
            version: AtomicU64::new(version),
            incarnation,
            desired: RwLock::new(Arc::new(desired)),
            scaling,
            jobs_running: Default::default(),
            generation: AtomicU64::new(1),
            applied: AtomicU64::new(0),
            attempted: tokio::sync::watch::channel(0).0,
            wake: Notify::new(),
            removed: AtomicBool::new(false),
            gone: tokio::sync::watch::channel(false).0,
            reconcile: Mutex::new(ReconcileStatus::default()),
        })
    }

    fn insert(&self, r: Arc<Record>) {
        self.records
            .write()
            .expect("registry lock")
            .insert(r.id.clone(), r);
    }

    /// Time since the registry opened: the autoscaler's clock.
    pub fn now(&self) -> std::time::Duration {
        self.epoch.elapsed()
    }

    /// The write lock every change holds.
    pub async fn writing(&self) -> Writing<'_> {
        self.writes.lock().await
    }

    pub fn get(&self, f: &FunctionRef) -> Option<Arc<Record>> {
        self.records.read().expect("registry lock").get(f).cloned()
    }

    /// Every function, ordered by namespace and name (or one namespace's).
    pub fn list(&self, namespace: Option<&str>) -> Vec<Arc<Record>> {
        let mut all: Vec<Arc<Record>> = self
            .records
            .read()
            .expect("registry lock")
            .values()
            .filter(|r| namespace.is_none_or(|ns| r.id.namespace == ns))
            .cloned()
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    fn emit(&self, r: &Record, kind: EventKind) {
        let _ = self.events.send(self.event(r, kind));
    }

    /// The state of a function as an event (a subscriber's first lines are
    /// `function` events of every function).
    pub fn event(&self, r: &Record, kind: EventKind) -> Event {
        let d = r.desired();
        Event {
            kind,
            name: r.id.name.clone(),
            namespace: r.id.namespace.clone(),
            revision: (kind != EventKind::Removed).then(|| d.latest_rollout()),
            serving: d.serving(),
            replicas: Some(r.scaling.desired()),
            at: graphene_core::time::now_rfc3339(),
        }
    }

    /// Records a deploy: a new revision when it changes the function (or
    /// when the newest failed: deploying it again is a retry), else the
    /// newest revision as it is. Returns the record, the revision and
    /// whether it is new.
    pub async fn deploy(
        &self,
        _writing: &Writing<'_>,
        id: &FunctionRef,
        change: Change,
    ) -> Result<(Arc<Record>, u64, bool), StoreError> {
        let Change {
            spec,
            settings,
            digest,
            by: who,
            rollback_of,
        } = change;
        let hash = spec_hash(&spec, &digest);
        let revision = |number: u64| StoredRevision {
            revision: number,
            spec: spec.clone(),
            digest: digest.clone(),
            spec_hash: hash.clone(),
            created_by: who.clone(),
            created_at: graphene_core::time::now_rfc3339(),
            state: RolloutState::Progressing,
            reason: String::new(),
            rollback_of,
        };
        let record = match self.get(id) {
            None => {
                let first = revision(1);
                let written = self.store.put_revision(id, 0, &first).await?;
                let replicas = settings.min_replicas;
                let desired = Desired {
                    revision: 1,
                    spec: spec.clone(),
                    settings,
                    digest: digest.clone(),
                    revisions: vec![first],
                };
                let r = self.record(
                    id.clone(),
                    written.created_at,
                    written.version,
                    written.incarnation,
                    desired,
                    replicas,
                );
                self.insert(r.clone());
                r
            }
            Some(r) => {
                let newest = r.desired().latest().clone();
                if newest.spec_hash == hash
                    && newest.state != RolloutState::Failed
                    && rollback_of.is_none()
                {
                    return Ok((r, newest.revision, false));
                }
                let next = revision(newest.revision + 1);
                let written = self
                    .store
                    .put_revision(id, r.version.load(Ordering::Acquire), &next)
                    .await?;
                r.version.store(written.version, Ordering::Release);
                r.update(|d| {
                    d.revision = next.revision;
                    d.spec = spec.clone();
                    d.digest = digest.clone();
                    d.settings = settings.clone();
                    d.revisions.insert(0, next);
                });
                let replicas = clamp(Some(r.scaling.desired()), &settings);
                r.scaling.set_policy(settings.scaling.clone(), replicas);
                r
            }
        };
        self.prune(&record).await;
        self.emit(&record, EventKind::Function);
        record.touch();
        let number = record.desired().latest().revision;
        Ok((record, number, true))
    }

    /// Records how a revision's rollout went. A failed newest revision
    /// hands the provider back to the serving one.
    pub async fn rollout(&self, r: &Record, revision: u64, state: RolloutState, reason: &str) {
        let _writing = self.writing().await;
        let Some(stored) = r.desired().revision(revision).cloned() else {
            return; // pruned meanwhile
        };
        if stored.state == state && stored.reason == reason {
            return;
        }
        match self
            .store
            .set_rollout(
                &r.id,
                r.version.load(Ordering::Acquire),
                revision,
                state,
                reason,
            )
            .await
        {
            Ok(version) => r.version.store(version, Ordering::Release),
            // Someone else moved the function on: their change comes in
            // through `absorb`, and the reconciler reports again.
            Err(e) => {
                tracing::warn!(function = %r.id, error = %e, "could not store a rollout's state");
                return;
            }
        }
        let switched = r.update(|d| {
            for s in d.revisions.iter_mut().filter(|s| s.revision == revision) {
                s.state = state;
                s.reason = reason.to_string();
            }
            retarget(&r.id, d)
        });
        match state {
            RolloutState::Failed => {
                tracing::warn!(function = %r.id, revision, reason, "revision failed; the serving revision, if any, keeps serving")
            }
            _ => tracing::info!(function = %r.id, revision, state = state.as_str(), "rollout"),
        }
        self.prune(r).await;
        self.emit(r, EventKind::Revision);
        if switched {
            r.touch();
        }
    }

    /// Keeps the newest revisions and the serving one; forgets the rest.
    async fn prune(&self, r: &Record) {
        let d = r.desired();
        if d.revisions.len() <= self.keep {
            return;
        }
        let serving = d.serving();
        let keep: Vec<u64> = d
            .revisions
            .iter()
            .enumerate()
            .filter(|(i, s)| {
                *i < self.keep || Some(s.revision) == serving || s.revision == d.revision
            })
            .map(|(_, s)| s.revision)
            .collect();
        match self
            .store
            .prune(&r.id, r.version.load(Ordering::Acquire), &keep)
            .await
        {
            Ok(version) => r.version.store(version, Ordering::Release),
            Err(e) => {
                tracing::warn!(function = %r.id, error = %e, "could not forget old revisions");
                return;
            }
        }
        r.update(|d| d.revisions.retain(|s| keep.contains(&s.revision)));
    }

    /// Stores a new desired replica count (on the call path: a wake from
    /// zero; and the autoscaler's).
    pub async fn set_replicas(&self, r: &Record, replicas: u64) {
        if let Err(e) = self.store.set_replicas(&r.id, replicas).await {
            tracing::warn!(function = %r.id, error = %e, "could not store the replica count");
        }
        self.emit(r, EventKind::Replicas);
    }

    /// Removes a function from the registry (the store first); its
    /// reconciler then removes it from the provider.
    pub async fn remove(
        &self,
        _writing: &Writing<'_>,
        id: &FunctionRef,
    ) -> Result<Option<Arc<Record>>, StoreError> {
        if !self.store.remove(id).await? {
            return Ok(None);
        }
        Ok(self.forget(id))
    }

    /// Takes a removed function out of the registry and wakes its
    /// reconciler to remove it from the runtime.
    fn forget(&self, id: &FunctionRef) -> Option<Arc<Record>> {
        let removed = self.records.write().expect("registry lock").remove(id);
        if let Some(r) = &removed {
            r.removed.store(true, Ordering::Release);
            self.removing
                .lock()
                .expect("registry lock")
                .insert(id.clone(), r.clone());
            self.emit(r, EventKind::Removed);
            r.wake.notify_one();
        }
        removed
    }

    /// Folds in a change someone else made to the store. A change older
    /// than what the record holds (or of an earlier incarnation) is
    /// ignored; a newer one replaces the record's revisions. With
    /// `replicas`, the stored replica count (the leader's decision) is
    /// taken too.
    pub fn absorb(
        &self,
        _writing: &Writing<'_>,
        change: graphene_core::store::StoreChange,
        replicas: bool,
    ) -> Absorbed {
        use graphene_core::store::StoreChange;
        let f = match change {
            StoreChange::Removed { id, incarnation } => {
                return match self.get(&id) {
                    Some(r) if r.incarnation == incarnation => {
                        self.forget(&id);
                        tracing::info!(function = %id, "removed from the store by someone else");
                        Absorbed::Removed
                    }
                    _ => Absorbed::Known,
                };
            }
            StoreChange::Changed(f) => *f,
        };
        let declared = is_declared(&f).then(|| Box::new(declared_spec(&f)));
        let Some(r) = self.get(&f.id) else {
            return match (self.restored(f), declared) {
                (_, Some(spec)) => Absorbed::Declared(spec),
                (Some(r), None) => {
                    self.insert(r.clone());
                    self.emit(&r, EventKind::Function);
                    Absorbed::Added(r)
                }
                (None, None) => Absorbed::Known,
            };
        };
        if r.incarnation != f.incarnation {
            return Absorbed::Known;
        }
        if let (true, Some(n)) = (replicas, f.replicas) {
            r.scaling.desired.store(n, Ordering::SeqCst);
        }
        if f.version < r.version.load(Ordering::Acquire) {
            return Absorbed::Known;
        }
        if let Some(spec) = declared {
            return Absorbed::Declared(spec);
        }
        if f.version == r.version.load(Ordering::Acquire) {
            return Absorbed::Known;
        }
        r.version.store(f.version, Ordering::Release);
        let switched = r.update(|d| {
            d.revisions = f.revisions.clone();
            retarget(&r.id, d)
        });
        let settings = r.desired().settings.clone();
        let replicas = clamp(Some(r.scaling.desired()), &settings);
        r.scaling.set_policy(settings.scaling, replicas);
        self.emit(&r, EventKind::Revision);
        if switched {
            r.touch();
        }
        Absorbed::Updated
    }

    /// The changes others make to the store, when it is shared.
    pub fn changes(&self) -> Option<graphene_core::store::ChangeStream> {
        self.store.changes()
    }

    /// The runtime no longer runs a removed function.
    pub fn gone(&self, r: &Record) {
        r.gone.send_replace(true);
        let mut removing = self.removing.lock().expect("registry lock");
        if removing.get(&r.id).is_some_and(|o| std::ptr::eq(&**o, r)) {
            removing.remove(&r.id);
        }
    }

    /// Waits until an earlier function of this name, removed, is gone from
    /// the runtime.
    pub async fn predecessor_gone(&self, id: &FunctionRef) {
        let old = self
            .removing
            .lock()
            .expect("registry lock")
            .get(id)
            .cloned();
        if let Some(old) = old {
            let _ = old.gone.subscribe().wait_for(|g| *g).await;
        }
    }

    /// Digests of every kept revision: images a build must not remove.
    pub fn kept_digests(&self) -> HashSet<String> {
        self.list(None)
            .iter()
            .flat_map(|r| {
                r.desired()
                    .revisions
                    .iter()
                    .map(|s| s.digest.clone())
                    .collect::<Vec<_>>()
            })
            .filter(|d| !d.is_empty())
            .collect()
    }
}

/// A stored count is brought within the function's bounds; zero stays zero
/// (the next call wakes it); none means the minimum.
fn clamp(stored: Option<u64>, settings: &FunctionSettings) -> u64 {
    match stored {
        None => settings.min_replicas,
        Some(0) if settings.scaling.enabled() => 0,
        Some(n) if settings.scaling.enabled() => {
            n.clamp(settings.min_replicas.max(1), settings.max_replicas)
        }
        Some(n) => n.min(graphene_core::settings::MAX_REPLICAS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(image: &str) -> FunctionDeployment {
        FunctionDeployment {
            service: "f".into(),
            image: image.into(),
            namespace: "ns".into(),
            ..Default::default()
        }
    }

    async fn registry(dir: &std::path::Path, keep: usize) -> Registry {
        let store = Arc::new(crate::store::Store::open(&dir.join("state.db")).unwrap());
        let (registry, declared) =
            Registry::open(Arc::new(crate::store::SqliteFunctions(store)), keep)
                .await
                .unwrap();
        assert!(declared.is_empty());
        registry
    }

    async fn deploy(reg: &Registry, image: &str) -> (u64, bool) {
        let s = spec(image);
        let settings = FunctionSettings::from_deployment(&s).unwrap();
        let w = reg.writing().await;
        let change = Change {
            spec: s,
            settings,
            digest: format!("digest-{image}"),
            by: "admin".into(),
            rollback_of: None,
        };
        let (_, n, new) = reg
            .deploy(&w, &FunctionRef::new("ns", "f"), change)
            .await
            .unwrap();
        (n, new)
    }

    #[tokio::test]
    async fn a_failed_revision_never_replaces_the_serving_one_even_after_a_restart() {
        let dir = std::env::temp_dir().join(format!("graphene-registry-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let id = FunctionRef::new("ns", "f");
        {
            let reg = registry(&dir, 10).await;
            assert_eq!(deploy(&reg, "good").await, (1, true));
            assert_eq!(
                deploy(&reg, "good").await,
                (1, false),
                "unchanged: no revision"
            );
            let r = reg.get(&id).unwrap();
            reg.rollout(&r, 1, RolloutState::Ready, "").await;
            assert_eq!(deploy(&reg, "bad").await, (2, true));
            assert_eq!(
                r.desired().revision,
                2,
                "the newest runs while it rolls out"
            );
            let mut events = reg.subscribe();
            reg.rollout(&r, 2, RolloutState::Failed, "import error")
                .await;
            let d = r.desired();
            assert_eq!(
                (d.revision, d.serving()),
                (1, Some(1)),
                "back to the serving one"
            );
            assert_eq!(d.spec.image, "good");
            let e = events.try_recv().unwrap();
            assert_eq!(e.revision.unwrap().state, RolloutState::Failed);
            assert_eq!(
                deploy(&reg, "bad").await,
                (3, true),
                "a failed newest is retried"
            );
            reg.rollout(&r, 3, RolloutState::Failed, "import error")
                .await;
        }
        let reg = registry(&dir, 10).await;
        let d = reg.get(&id).unwrap().desired();
        assert_eq!(
            (d.revision, d.serving(), d.latest().revision),
            (1, Some(1), 3)
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn keeps_the_newest_revisions_and_the_serving_one() {
        let dir =
            std::env::temp_dir().join(format!("graphene-registry-keep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let reg = registry(&dir, 2).await;
        let id = FunctionRef::new("ns", "f");
        deploy(&reg, "v1").await;
        let r = reg.get(&id).unwrap();
        reg.rollout(&r, 1, RolloutState::Ready, "").await;
        for v in ["v2", "v3", "v4"] {
            let (n, _) = deploy(&reg, v).await;
            reg.rollout(&r, n, RolloutState::Failed, "no").await;
        }
        let kept: Vec<u64> = r.desired().revisions.iter().map(|s| s.revision).collect();
        assert_eq!(kept, [4, 3, 1]);
        assert_eq!(
            reg.kept_digests(),
            ["digest-v4", "digest-v3", "digest-v1"]
                .into_iter()
                .map(String::from)
                .collect()
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn absorbs_newer_changes_and_ignores_stale_ones() {
        use graphene_core::store::StoreChange;
        let dir =
            std::env::temp_dir().join(format!("graphene-registry-absorb-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let reg = registry(&dir, 10).await;
        let id = FunctionRef::new("ns", "f");
        deploy(&reg, "v1").await;
        let r = reg.get(&id).unwrap();
        let stored = |version: u64, incarnation: &str, images: &[&str]| {
            let revisions: Vec<StoredRevision> = images
                .iter()
                .enumerate()
                .rev()
                .map(|(i, image)| StoredRevision {
                    revision: i as u64 + 1,
                    spec: spec(image),
                    digest: format!("digest-{image}"),
                    spec_hash: format!("h{i}"),
                    created_by: "other".into(),
                    created_at: String::new(),
                    state: RolloutState::Ready,
                    reason: String::new(),
                    rollback_of: None,
                })
                .collect();
            StoreChange::Changed(Box::new(StoredFunction {
                id: id.clone(),
                spec: revisions[0].spec.clone(),
                replicas: None,
                created_at: String::new(),
                revisions,
                version,
                incarnation: incarnation.into(),
            }))
        };
        let w = reg.writing().await;
        // Another gateway deployed v2 (version 1 after this one's 0).
        assert!(matches!(
            reg.absorb(&w, stored(1, "", &["v1", "v2"]), false),
            Absorbed::Updated
        ));
        assert_eq!(r.desired().spec.image, "v2");
        // An older change, or one of another life of the function: ignored.
        assert!(matches!(
            reg.absorb(&w, stored(0, "", &["v1"]), false),
            Absorbed::Known
        ));
        assert!(matches!(
            reg.absorb(&w, stored(5, "earlier", &["old"]), false),
            Absorbed::Known
        ));
        assert_eq!(r.desired().spec.image, "v2");
        // The leader's replica count, taken by a gateway that follows,
        // even in a change it holds already.
        let StoreChange::Changed(mut scaled) = stored(1, "", &["v1", "v2"]) else {
            unreachable!()
        };
        scaled.replicas = Some(3);
        let again = StoreChange::Changed(scaled);
        assert!(matches!(
            reg.absorb(&w, again.clone(), false),
            Absorbed::Known
        ));
        assert_ne!(r.scaling.desired(), 3);
        assert!(matches!(reg.absorb(&w, again, true), Absorbed::Known));
        assert_eq!(r.scaling.desired(), 3);
        // A spec edited in the store, not yet a revision: the caller's.
        let StoreChange::Changed(mut edited) = stored(1, "", &["v1", "v2"]) else {
            unreachable!()
        };
        edited.spec.image = "v3".into();
        match reg.absorb(&w, StoreChange::Changed(edited), false) {
            Absorbed::Declared(spec) => assert_eq!(spec.image, "v3"),
            _ => panic!("an edited spec is declared"),
        }
        // Removed: only this life of it.
        let removed = |incarnation: &str| StoreChange::Removed {
            id: id.clone(),
            incarnation: incarnation.into(),
        };
        assert!(matches!(
            reg.absorb(&w, removed("earlier"), false),
            Absorbed::Known
        ));
        assert!(reg.get(&id).is_some());
        assert!(matches!(
            reg.absorb(&w, removed(""), false),
            Absorbed::Removed
        ));
        assert!(reg.get(&id).is_none() && r.removed.load(Ordering::Acquire));
        // A function this registry never held arrives whole.
        assert!(matches!(
            reg.absorb(&w, stored(3, "", &["v1"]), false),
            Absorbed::Added(_)
        ));
        drop(w);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
