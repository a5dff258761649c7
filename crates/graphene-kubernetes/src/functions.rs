//! The registry's store in the cluster: one `Function` custom resource
//! (`graphene.dev/v1`, namespaced) per function, so that every gateway
//! replica sees the same functions and `kubectl apply` or a GitOps tool can
//! declare them.
//!
//! ```yaml
//! apiVersion: graphene.dev/v1
//! kind: Function
//! metadata: { name: echo, namespace: openfaas-fn }
//! spec:                 # the body of POST /system/functions
//!   image: registry.example/echo@sha256:...
//!   labels: { com.openfaas.scale.max: "4" }
//! status:               # the registry's, not to be edited
//!   version: 3          # bumped by every registry write
//!   replicas: 1         # the count last decided
//!   revisions: [ { revision: 2, spec: ..., state: ready, ... }, ... ]
//! ```
//!
//! The resource has no status subresource on purpose: a registry write
//! replaces spec and status in one request, guarded by the resource
//! version, so a revision and the spec it runs never part. `kubectl apply`
//! leaves `status` alone (it is not in the applied manifest).

use std::borrow::Cow;
use std::collections::HashMap;

use futures_util::StreamExt;
use graphene_core::api::{FunctionDeployment, RolloutState};
use graphene_core::names::FunctionRef;
use graphene_core::provider::BoxFuture;
use graphene_core::store::{
    ChangeStream, FunctionStore, StoreChange, StoreError, StoredFunction, StoredRevision, Written,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use serde::{Deserialize, Serialize};

use crate::is_code;

pub const GROUP: &str = "graphene.dev";
pub const VERSION: &str = "v1";
pub const KIND: &str = "Function";
pub const PLURAL: &str = "functions";

/// A `Function` resource as stored.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Function {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// A deployment body; `service` and `namespace` default to the
    /// resource's own.
    #[serde(default)]
    pub spec: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<FunctionStatus>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionStatus {
    #[serde(default)]
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u64>,
    #[serde(default)]
    pub revisions: Vec<StoredRevision>,
}

impl kube::Resource for Function {
    type DynamicType = ();
    type Scope = kube::core::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        KIND.into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        VERSION.into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        PLURAL.into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl Function {
    fn new(id: &FunctionRef) -> Self {
        Self {
            api_version: format!("{GROUP}/{VERSION}"),
            kind: KIND.into(),
            metadata: ObjectMeta {
                name: Some(id.name.clone()),
                namespace: Some(id.namespace.clone()),
                labels: Some(
                    [(
                        crate::manifest::MANAGED_BY.to_string(),
                        crate::manifest::MANAGER.to_string(),
                    )]
                    .into(),
                ),
                ..Default::default()
            },
            spec: serde_json::Value::Object(Default::default()),
            status: None,
        }
    }

    fn id(&self) -> Option<FunctionRef> {
        Some(FunctionRef::new(
            self.metadata.namespace.as_deref()?,
            self.metadata.name.as_deref()?,
        ))
    }

    fn version(&self) -> u64 {
        self.status.as_ref().map_or(0, |s| s.version)
    }

    fn created_at(&self) -> String {
        self.metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default()
    }

    /// Which life of the function this is: its uid.
    fn incarnation(&self) -> String {
        self.metadata.uid.clone().unwrap_or_default()
    }

    /// The function as the registry reads it; an error names what is
    /// wrong with a resource someone wrote by hand.
    pub fn stored(&self) -> Result<StoredFunction, String> {
        let id = self.id().ok_or("a Function without a name or namespace")?;
        let mut spec = match &self.spec {
            serde_json::Value::Object(m) => m.clone(),
            serde_json::Value::Null => Default::default(),
            _ => return Err(format!("Function {id}: spec: expected an object")),
        };
        spec.entry("service")
            .or_insert_with(|| id.name.clone().into());
        spec.entry("namespace")
            .or_insert_with(|| id.namespace.clone().into());
        let spec: FunctionDeployment = serde_json::from_value(serde_json::Value::Object(spec))
            .map_err(|e| {
                format!(
                    "Function {id}: spec: {}",
                    graphene_core::humanize_serde_error(&e.to_string())
                )
            })?;
        if spec.service != id.name || spec.namespace != id.namespace {
            return Err(format!(
                "Function {id}: spec.service and spec.namespace must be the resource's own name and namespace"
            ));
        }
        let status = self.status.clone().unwrap_or_default();
        Ok(StoredFunction {
            id,
            spec,
            replicas: status.replicas,
            created_at: self.created_at(),
            revisions: status.revisions,
            version: status.version,
            incarnation: self.incarnation(),
        })
    }
}

/// How often a write is tried again when the resource changed between
/// reading and writing it (a `kubectl apply` meanwhile).
const WRITE_TRIES: usize = 5;

pub struct ClusterFunctions {
    client: kube::Client,
    namespaces: Vec<String>,
}

fn unavailable(what: &str, id: &FunctionRef) -> impl Fn(kube::Error) -> StoreError {
    crate::store_unavailable(format!("{what} Function {id} in the cluster"))
}

impl ClusterFunctions {
    pub fn new(client: kube::Client, namespaces: Vec<String>) -> Self {
        Self { client, namespaces }
    }

    fn api(&self, namespace: &str) -> Api<Function> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Reads the function, checks that it is at `version`, changes it with
    /// `f` and writes it back with the next version, retrying when someone
    /// else wrote it in between. A missing function is made when `create`.
    async fn change(
        &self,
        id: &FunctionRef,
        version: u64,
        create: bool,
        f: impl Fn(&mut Function),
    ) -> Result<Function, StoreError> {
        let api = self.api(&id.namespace);
        for _ in 0..WRITE_TRIES {
            let current = match api.get_opt(&id.name).await {
                Ok(c) => c,
                Err(e) => return Err(unavailable("reading", id)(e)),
            };
            let exists = current.is_some();
            let mut next = match current {
                Some(c) => c,
                None if create => Function::new(id),
                None => {
                    return Err(StoreError::Conflict(format!(
                        "function {id} was removed meanwhile"
                    )))
                }
            };
            if next.version() != version {
                return Err(StoreError::Conflict(format!(
                    "function {id} was changed by someone else meanwhile (now at version {}, this gateway had {version}); try again",
                    next.version()
                )));
            }
            f(&mut next);
            next.status.get_or_insert_with(Default::default).version = version + 1;
            let written = match exists {
                true => api.replace(&id.name, &PostParams::default(), &next).await,
                false => api.create(&PostParams::default(), &next).await,
            };
            match written {
                Ok(w) => return Ok(w),
                // Changed (409) or made (409 AlreadyExists) meanwhile.
                Err(e) if is_code(&e, 409) => continue,
                Err(e) => return Err(unavailable("writing", id)(e)),
            }
        }
        Err(StoreError::Conflict(format!(
            "function {id} kept changing while this gateway wrote it; try again"
        )))
    }
}

impl FunctionStore for ClusterFunctions {
    fn load(&self) -> BoxFuture<'_, Result<Vec<StoredFunction>, StoreError>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for ns in &self.namespaces {
                let list = self
                    .api(ns)
                    .list(&Default::default())
                    .await
                    .map_err(|e| {
                        StoreError::Unavailable(format!(
                            "listing Functions in namespace {ns}: {e} (is the Function resource installed? `graphene install kubernetes --resource-only --apply` installs it)"
                        ))
                    })?;
                for f in list.items {
                    match f.stored() {
                        Ok(s) => out.push(s),
                        Err(e) => tracing::warn!("{e}; left alone"),
                    }
                }
            }
            Ok(out)
        })
    }

    fn put_revision<'a>(
        &'a self,
        function: &'a FunctionRef,
        version: u64,
        revision: &'a StoredRevision,
    ) -> BoxFuture<'a, Result<Written, StoreError>> {
        Box::pin(async move {
            let spec = serde_json::to_value(&revision.spec).expect("a deployment serialises");
            let w = self
                .change(function, version, version == 0, |f| {
                    f.spec = spec.clone();
                    let status = f.status.get_or_insert_with(Default::default);
                    status.revisions.retain(|r| r.revision != revision.revision);
                    status.revisions.insert(0, revision.clone());
                })
                .await?;
            Ok(Written {
                created_at: w.created_at(),
                version: w.version(),
                incarnation: w.incarnation(),
            })
        })
    }

    fn set_rollout<'a>(
        &'a self,
        function: &'a FunctionRef,
        version: u64,
        revision: u64,
        state: RolloutState,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let w = self
                .change(function, version, false, |f| {
                    let status = f.status.get_or_insert_with(Default::default);
                    for r in status
                        .revisions
                        .iter_mut()
                        .filter(|r| r.revision == revision)
                    {
                        r.state = state;
                        r.reason = reason.to_string();
                    }
                })
                .await?;
            Ok(w.version())
        })
    }

    fn prune<'a>(
        &'a self,
        function: &'a FunctionRef,
        version: u64,
        keep: &'a [u64],
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let w = self
                .change(function, version, false, |f| {
                    let status = f.status.get_or_insert_with(Default::default);
                    status.revisions.retain(|r| keep.contains(&r.revision));
                })
                .await?;
            Ok(w.version())
        })
    }

    fn set_replicas<'a>(
        &'a self,
        function: &'a FunctionRef,
        replicas: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let patch = serde_json::json!({ "status": { "replicas": replicas } });
            match self
                .api(&function.namespace)
                .patch(
                    &function.name,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(_) => Ok(()),
                Err(e) if is_code(&e, 404) => Ok(()),
                Err(e) => Err(unavailable("writing the replicas of", function)(e)),
            }
        })
    }

    fn remove<'a>(&'a self, function: &'a FunctionRef) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            match self
                .api(&function.namespace)
                .delete(&function.name, &DeleteParams::default())
                .await
            {
                Ok(_) => Ok(true),
                Err(e) if is_code(&e, 404) => Ok(false),
                Err(e) => Err(unavailable("removing", function)(e)),
            }
        })
    }

    fn changes(&self) -> Option<ChangeStream> {
        let streams = self.namespaces.iter().map(|ns| {
            let api = self.api(ns);
            let ns = ns.clone();
            // Functions known from the last listing, so that one removed
            // while the watch was down is reported when it comes back.
            let mut known: HashMap<FunctionRef, String> = HashMap::new();
            let mut listing: HashMap<FunctionRef, String> = HashMap::new();
            watcher(api, watcher::Config::default())
                .default_backoff()
                .flat_map(move |event| {
                    let mut out = Vec::new();
                    let changed = |f: &Function, out: &mut Vec<StoreChange>| match f.stored() {
                        Ok(s) => out.push(StoreChange::Changed(Box::new(s))),
                        Err(e) => tracing::warn!("{e}; left alone"),
                    };
                    match event {
                        Ok(watcher::Event::Apply(f)) => {
                            if let Some(id) = f.id() {
                                known.insert(id, f.incarnation());
                            }
                            changed(&f, &mut out);
                        }
                        Ok(watcher::Event::Delete(f)) => {
                            if let Some(id) = f.id() {
                                known.remove(&id);
                                out.push(StoreChange::Removed {
                                    id,
                                    incarnation: f.incarnation(),
                                });
                            }
                        }
                        Ok(watcher::Event::Init) => listing.clear(),
                        Ok(watcher::Event::InitApply(f)) => {
                            if let Some(id) = f.id() {
                                listing.insert(id, f.incarnation());
                            }
                            changed(&f, &mut out);
                        }
                        Ok(watcher::Event::InitDone) => {
                            for (id, incarnation) in known.drain() {
                                if !listing.contains_key(&id) {
                                    out.push(StoreChange::Removed { id, incarnation });
                                }
                            }
                            known = std::mem::take(&mut listing);
                        }
                        Err(e) => tracing::warn!(namespace = %ns, "watching Functions: {e}"),
                    }
                    futures_util::stream::iter(out)
                })
                .boxed()
        });
        Some(futures_util::stream::select_all(streams).boxed())
    }
}
