//! The management API's wire shapes, field for field those of OpenFaaS's
//! faas-provider, so that faas-cli and existing scripts work unchanged.
//! graphene's own additions ride in optional fields that OpenFaaS clients
//! ignore.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub type Map = BTreeMap<String, String>;

/// Response header naming the revision a deploy or rollback made (or found
/// unchanged): what `graphene deploy --wait` waits on.
pub const REVISION_HEADER: &str = "x-graphene-revision";
/// On a rollback's answer: the earlier revision it runs again.
pub const ROLLBACK_OF_HEADER: &str = "x-graphene-rollback-of";

/// Body of `POST`/`PUT /system/functions`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionDeployment {
    pub service: String,
    #[serde(default)]
    pub image: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub env_process: String,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub env_vars: Map,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Map>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Map>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<FunctionResources>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<FunctionResources>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only_root_filesystem: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionResources {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub memory: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cpu: String,
    /// Whole GPUs (Kubernetes' and OpenFaaS' name for them).
    #[serde(
        rename = "nvidia.com/gpu",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub gpu: String,
}

/// An item of `GET /system/functions` and the body of
/// `GET /system/function/<name>`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionStatus {
    pub name: String,
    #[serde(default)]
    pub image: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub env_process: String,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub env_vars: Map,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Map>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Map>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<FunctionResources>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<FunctionResources>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only_root_filesystem: bool,
    #[serde(default)]
    pub invocation_count: f64,
    #[serde(default)]
    pub replicas: u64,
    #[serde(default)]
    pub available_replicas: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub created_at: String,
    /// graphene's runtime view of the function: readiness, restarts, the
    /// last exit and import error. Absent in OpenFaaS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graphene: Option<RuntimeStatus>,
}

/// What the runtime knows about a function, in terms every provider can
/// fill: replica counts, the rollout of the revision it was last given, and
/// its instances. What only one provider knows (a local warm parent, a pod's
/// node) is in `details`, which is flattened into this object in JSON.
/// The gateway adds the registry's view: revisions, scaling, reconcile.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeStatus {
    pub desired_replicas: u64,
    pub ready_replicas: u64,
    /// The revision the provider runs (or rolls out) and how that goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<InstanceStatus>,
    /// Provider-specific facts, shown as they are.
    #[serde(flatten)]
    pub details: serde_json::Map<String, serde_json::Value>,
    /// The revision that serves calls, added by the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving_revision: Option<u64>,
    /// The newest revision and its rollout state, added by the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest: Option<Rollout>,
    /// Whether the runtime matches the registry, added by the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconcile: Option<ReconcileStatus>,
    /// The autoscaler's view, added by the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<ScalingStatus>,
}

/// How a revision's rollout goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RolloutState {
    /// Starting: not ready yet, not failed.
    #[default]
    Progressing,
    /// At least one instance became ready (or it rests at zero, ready to
    /// wake).
    Ready,
    /// It can't become ready (the reason says why); the previous revision
    /// keeps serving.
    Failed,
}

impl RolloutState {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Progressing => "progressing",
            RolloutState::Ready => "ready",
            RolloutState::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    pub revision: u64,
    pub state: RolloutState,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// Whether the provider runs what the registry wants.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReconcileStatus {
    /// The provider was given the registry's revision and replica count.
    pub in_sync: bool,
    /// The revision the provider was last given.
    #[serde(default)]
    pub applied_revision: u64,
    /// Failed attempts since the last success.
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// One instance (replica) of a function.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatus {
    pub id: String,
    /// The revision it runs.
    #[serde(default)]
    pub revision: u64,
    pub ready: bool,
    #[serde(default)]
    pub started_at: String,
    /// Provider-specific facts, flattened in JSON.
    #[serde(flatten)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// One revision of a function, as `GET /system/revisions/<name>` lists it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionInfo {
    pub revision: u64,
    pub image: String,
    /// The built image's digest, when graphene built it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
    /// A hash of the deployment: equal hashes deploy the same thing.
    pub spec_hash: String,
    pub created_by: String,
    pub created_at: String,
    pub state: RolloutState,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// This revision serves calls now.
    #[serde(default)]
    pub serving: bool,
    /// Made by a rollback to this earlier revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<u64>,
}

/// `GET /system/revisions/<name>`: newest first.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct History {
    pub name: String,
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<u64>,
    pub revisions: Vec<RevisionInfo>,
}

/// Body of `POST /system/rollback/<name>`; without a revision, the one that
/// served before the serving one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RollbackRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}

/// A change in the registry, one line of `GET /system/events` (NDJSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// `function` (added or changed), `revision` (a rollout's state),
    /// `replicas` (desired count), `removed`.
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub name: String,
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<Rollout>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u64>,
    pub at: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Function,
    Revision,
    Replicas,
    Removed,
}

/// A function's scaling policy and the autoscaler's last decision.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScalingStatus {
    /// False when `min == max` without `zero`: only manual scaling.
    pub enabled: bool,
    pub min: u64,
    pub max: u64,
    /// `capacity` or `rps`.
    #[serde(rename = "type")]
    pub metric: String,
    /// Load per replica aimed for (target × proportion).
    pub target: f64,
    /// Idle seconds before scaling to zero; absent when it never does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zero_after_seconds: Option<f64>,
    pub window_seconds: f64,
    /// Calls in flight (running or waiting) now.
    pub in_flight: u64,
    pub panicking: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_decision: Option<ScaleDecision>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleDecision {
    pub at: String,
    pub from: u64,
    pub to: u64,
    pub reason: String,
}

/// Body of `POST /system/scale-function/<name>`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleServiceRequest {
    #[serde(default)]
    pub service_name: String,
    pub replicas: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}

/// Body of `DELETE /system/functions`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteFunctionRequest {
    pub function_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}

/// Body of `/system/secrets`. `value` is text; `rawValue` is base64 bytes
/// (Go's encoding of `[]byte`). Listing returns names only.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Secret {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub raw_value: String,
}

/// One line of `GET /system/logs` (NDJSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogMessage {
    pub name: String,
    pub namespace: String,
    pub instance: String,
    pub timestamp: String,
    pub text: String,
}

/// `GET /system/info`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProviderInfo {
    pub provider: ProviderDetails,
    pub version: VersionInfo,
    pub arch: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProviderDetails {
    pub provider: String,
    pub orchestration: String,
    pub version: VersionInfo,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionInfo {
    #[serde(default)]
    pub commit_message: String,
    pub sha: String,
    pub release: String,
}

/// graphene's build request header (the handler folder follows as a tar).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BuildRequest {
    pub image: String,
    pub lang: String,
}

/// The last line of a build's progress stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildResult {
    pub ok: bool,
    pub image: String,
    #[serde(default)]
    pub digest: String,
    #[serde(default)]
    pub cached: bool,
    #[serde(default)]
    pub error: String,
}

/// A grant as the API takes it: actions (`invoke`, `read`, `deploy`,
/// `manage-secrets`, `admin`) on a resource for a principal, optionally
/// under a rate limit (`100/s`, `600/m`, `10000/d`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrantSpec {
    /// Left out in a token's own grants (they are for the token).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub principal: String,
    pub actions: Vec<String>,
    pub resource: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrantInfo {
    pub id: String,
    pub principal: String,
    pub actions: Vec<String>,
    pub resource: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    pub created_at: String,
    pub created_by: String,
}

/// `POST /system/tokens`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenRequest {
    pub name: String,
    /// Who the token is for (a person, team or customer); defaults to the
    /// principal creating it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
    /// How long the token is valid, e.g. `30d` or `12h`; empty for ever.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub expires_in: String,
    #[serde(default)]
    pub grants: Vec<GrantSpec>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    pub name: String,
    pub owner: String,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub expired: bool,
    /// The token itself: only in the answer that created it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
    #[serde(default)]
    pub grants: Vec<GrantInfo>,
}

/// One line of the audit trail: who changed what, when.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    pub at: String,
    pub principal: String,
    pub action: String,
    pub target: String,
    pub detail: String,
}

/// `GET /system/whoami`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WhoAmI {
    pub principal: String,
    #[serde(default)]
    pub roles: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_round_trips_openfaas_json() {
        let body = r#"{"service":"echo","image":"echo:latest","namespace":"openfaas-fn",
            "envProcess":"cat","envVars":{"a":"b"},"secrets":["s"],
            "labels":{"com.openfaas.scale.min":"1"},"limits":{"memory":"128Mi"},
            "readOnlyRootFilesystem":true}"#;
        let d: FunctionDeployment = serde_json::from_str(body).unwrap();
        assert_eq!(d.service, "echo");
        assert_eq!(d.env_process, "cat");
        assert_eq!(d.limits.as_ref().unwrap().memory, "128Mi");
        assert!(d.read_only_root_filesystem);
        let back = serde_json::to_value(&d).unwrap();
        assert_eq!(back["envVars"]["a"], "b");
        assert_eq!(back["readOnlyRootFilesystem"], true);
    }
}
