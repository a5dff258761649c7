//! Where the gateway keeps functions ([`FunctionStore`]), secrets
//! ([`SecretStore`]), tokens, grants and the audit trail
//! ([`AccessStore`]), and which of several gateways leads ([`Leadership`]).
//!
//! The gateway's registry holds every function in memory and writes each
//! change here before it answers. On one machine that is SQLite in the
//! state directory; on Kubernetes it is a `Function` custom resource per
//! function, so that every gateway replica sees the same functions and
//! `kubectl apply` (or a GitOps tool) can declare them. A store that others
//! write too streams their changes ([`FunctionStore::changes`]), and the
//! registry folds them in.
//!
//! A stored function carries the spec it is declared with besides its
//! revisions. The registry's own deploys keep the two in step; a spec that
//! differs from the newest revision's (or a function with no revisions
//! yet) was declared from outside, and the registry makes it a revision.

use futures_core::Stream;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::api::{AuditEntry, FunctionDeployment, RolloutState};
use crate::names::FunctionRef;
use crate::provider::BoxFuture;

/// A function as its store holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredFunction {
    pub id: FunctionRef,
    /// The spec it is declared with: the newest revision's, unless it was
    /// changed outside the registry.
    pub spec: FunctionDeployment,
    /// The replica count last decided (none: the minimum).
    pub replicas: Option<u64>,
    pub created_at: String,
    /// Kept revisions, newest first.
    pub revisions: Vec<StoredRevision>,
    /// Bumped by every write but replica counts: a write names the version
    /// it read, and is refused when the function moved on since.
    pub version: u64,
    /// Which life of the function this is: a function removed and made
    /// again under its name is another incarnation (empty where the store
    /// streams no changes).
    pub incarnation: String,
}

/// What a store says of a revision it took.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    pub created_at: String,
    pub version: u64,
    pub incarnation: String,
}

/// One revision of a function: what was deployed, by whom, and how its
/// rollout went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredRevision {
    pub revision: u64,
    pub spec: FunctionDeployment,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
    pub spec_hash: String,
    pub created_by: String,
    pub created_at: String,
    #[serde(default)]
    pub state: RolloutState,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<u64>,
}

/// A change made to the store by someone else (another gateway, `kubectl`).
#[derive(Debug, Clone)]
pub enum StoreChange {
    /// The function as it now is.
    Changed(Box<StoredFunction>),
    /// An incarnation of the function was removed.
    Removed {
        id: FunctionRef,
        incarnation: String,
    },
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// Someone else changed the function since it was read (409).
    #[error("{0}")]
    Conflict(String),
    /// The store could not be reached or refused the write (503).
    #[error("{0}")]
    Unavailable(String),
    /// The request names something the store does not keep, such as a
    /// namespace it does not manage (400; the message names the field).
    #[error("{0}")]
    Invalid(String),
}

pub type ChangeStream = std::pin::Pin<Box<dyn Stream<Item = StoreChange> + Send>>;

pub trait FunctionStore: Send + Sync + 'static {
    /// Every stored function.
    fn load(&self) -> BoxFuture<'_, Result<Vec<StoredFunction>, StoreError>>;

    /// Stores a new revision and makes its spec the function's, creating
    /// the function when new (`version` 0). Every write names the version
    /// the registry holds and is refused ([`StoreError::Conflict`]) when
    /// the stored function is at another; it answers with the new one.
    fn put_revision<'a>(
        &'a self,
        function: &'a FunctionRef,
        version: u64,
        revision: &'a StoredRevision,
    ) -> BoxFuture<'a, Result<Written, StoreError>>;

    /// Records how a revision's rollout went.
    fn set_rollout<'a>(
        &'a self,
        function: &'a FunctionRef,
        version: u64,
        revision: u64,
        state: RolloutState,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Forgets the revisions not in `keep`.
    fn prune<'a>(
        &'a self,
        function: &'a FunctionRef,
        version: u64,
        keep: &'a [u64],
    ) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Stores the replica count last decided (no version: the count is
    /// this gateway's decision, not part of the function's history).
    fn set_replicas<'a>(
        &'a self,
        function: &'a FunctionRef,
        replicas: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Removes a function and its revisions; false when there was none.
    fn remove<'a>(&'a self, function: &'a FunctionRef) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Changes others make, as they come (the first items may repeat what
    /// [`FunctionStore::load`] returned). `None` for a store only this
    /// gateway writes.
    fn changes(&self) -> Option<ChangeStream>;
}

/// Where secrets' values are kept: the state database on one machine,
/// Kubernetes Secrets in the function namespaces on a cluster (so that every
/// gateway replica resolves the same values).
pub trait SecretStore: Send + Sync + 'static {
    /// The namespaces secrets are or may be kept in.
    fn namespaces(&self) -> BoxFuture<'_, Result<Vec<String>, StoreError>>;

    /// The secrets' names in a namespace, sorted.
    fn names<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>>;

    fn get<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>>;

    /// Creates (`replace` false: false when it exists) or replaces
    /// (`replace` true: false when it does not) a secret; whether it wrote.
    fn put<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        value: &'a [u8],
        replace: bool,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Removes a secret; false when there was none.
    fn delete<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
}

/// An API token as kept: its hash, never the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredToken {
    pub name: String,
    /// SHA-256 of the token, hex.
    pub hash: String,
    pub owner: String,
    pub created_at: String,
    /// Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

/// A grant as kept, its parts as the API writes them (the gateway parses
/// them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredGrant {
    pub id: String,
    pub principal: String,
    pub actions: Vec<String>,
    pub resource: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    pub created_at: String,
    pub created_by: String,
}

/// Ticks each time someone else changes tokens or grants.
pub type AccessChanges = std::pin::Pin<Box<dyn Stream<Item = ()> + Send>>;

/// Where API tokens, grants and the audit trail are kept: the state
/// database on one machine; Secrets and ConfigMaps in the gateway's
/// namespace on a cluster, so that every gateway replica knows every token.
/// Each change is written with its audit line.
pub trait AccessStore: Send + Sync + 'static {
    fn tokens(&self) -> BoxFuture<'_, Result<Vec<StoredToken>, StoreError>>;

    fn grants(&self) -> BoxFuture<'_, Result<Vec<StoredGrant>, StoreError>>;

    /// Stores a token with the grants made to it; false when a token of
    /// that name exists.
    fn create_token<'a>(
        &'a self,
        token: &'a StoredToken,
        grants: &'a [StoredGrant],
        entry: &'a AuditEntry,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Removes a token and the grants made to it; false when there was none.
    fn revoke_token<'a>(
        &'a self,
        name: &'a str,
        entry: &'a AuditEntry,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    fn add_grant<'a>(
        &'a self,
        grant: &'a StoredGrant,
        entry: &'a AuditEntry,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// False when there was no such grant.
    fn remove_grant<'a>(
        &'a self,
        id: &'a str,
        entry: &'a AuditEntry,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Appends a line to the audit trail.
    fn audit<'a>(&'a self, entry: &'a AuditEntry) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The newest `limit` lines, newest first.
    fn audit_trail(&self, limit: usize) -> BoxFuture<'_, Result<Vec<AuditEntry>, StoreError>>;

    /// Changes others make to tokens and grants (`None` where only this
    /// gateway writes).
    fn changes(&self) -> Option<AccessChanges>;
}

/// Which gateway runs the autoscaler where several serve the same
/// functions: one at a time, the others reporting it their load.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leader {
    /// Whether this gateway leads.
    pub this: bool,
    /// Where the leader takes load reports (its API's base URL); none
    /// while nobody leads.
    pub url: Option<String>,
}

pub trait Leadership: Send + Sync + 'static {
    /// This gateway's name among the others.
    fn identity(&self) -> &str;

    /// Who leads now, as last seen.
    fn current(&self) -> Leader;
}

/// The stores a gateway keeps its state in besides its state directory;
/// each one left `None` is kept in the state database. Without a
/// `leadership` the gateway is the only one and always leads.
#[derive(Clone, Default)]
pub struct Stores {
    pub functions: Option<std::sync::Arc<dyn FunctionStore>>,
    pub secrets: Option<std::sync::Arc<dyn SecretStore>>,
    pub access: Option<std::sync::Arc<dyn AccessStore>>,
    pub leadership: Option<std::sync::Arc<dyn Leadership>>,
}
