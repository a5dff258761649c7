//! The Provider trait: what a runtime (local processes, Kubernetes) does for
//! the gateway. The gateway depends on this trait only, never on a provider.

use std::future::Future;

use bytes::Bytes;
use thiserror::Error;

use crate::api::{FunctionDeployment, LogMessage, RuntimeStatus};
use crate::settings::FunctionSettings;

/// Headers that belong to one connection, not to the call: the gateway never
/// forwards them either way.
pub const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
];

pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// A provider failure, classed so that the gateway can map it to a status
/// code without knowing the provider.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProviderError {
    /// The caller asked for something invalid (400).
    #[error("{0}")]
    Invalid(String),
    /// No such function, image or instance (404).
    #[error("{0}")]
    NotFound(String),
    /// No replica could take the call: not ready, import failed, stopped (503).
    #[error("{0}")]
    Unavailable(String),
    /// The handler ran past the function's timeout (504).
    #[error("{0}")]
    Timeout(String),
    /// The replica died or broke the protocol mid-call (502).
    #[error("{0}")]
    Upstream(String),
    /// Every replica is busy and the function is at its maximum (429, with
    /// `Retry-After` in seconds).
    #[error("{0}")]
    Overloaded(String, u64),
    /// The operation is not offered by this provider (501).
    #[error("{0}")]
    Unsupported(String),
    /// Anything else: logged, reported as a generic 500.
    #[error("{0}")]
    Internal(String),
}

/// One function to run, with its secrets resolved by the control plane.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub namespace: String,
    pub spec: FunctionDeployment,
    pub settings: FunctionSettings,
    /// Secret name and value, for every secret the function names.
    pub secrets: Vec<(String, Vec<u8>)>,
    /// Replicas to run; `None` keeps the current count (or the minimum).
    pub replicas: Option<u64>,
}

/// An invocation, as the gateway hands it to a replica.
#[derive(Debug, Clone, Default)]
pub struct Invocation {
    pub method: String,
    /// The path below `/function/<name>`, starting with `/`.
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub call_id: String,
}

#[derive(Debug, Clone, Default)]
pub struct InvocationResult {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// How long the call waited for a first replica, when it found none
    /// ready (a cold start).
    pub cold_start: Option<std::time::Duration>,
}

/// Logs already kept, and the live feed when following.
pub struct LogFeed {
    pub backlog: Vec<LogMessage>,
    pub live: Option<tokio::sync::broadcast::Receiver<LogMessage>>,
}

/// A build's input: the function folder as a tar archive.
pub struct BuildInput {
    pub image: String,
    pub lang: crate::stack::Lang,
    pub archive: Bytes,
}

pub type Progress = Box<dyn FnMut(&str) + Send>;

pub trait Provider: Send + Sync + 'static {
    /// A short name for `/system/info`.
    fn name(&self) -> &'static str;

    /// Creates or updates a function.
    fn deploy(&self, d: Deployment) -> impl Future<Output = Result<(), ProviderError>> + Send;

    fn remove(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<(), ProviderError>> + Send;

    fn scale(
        &self,
        namespace: &str,
        name: &str,
        replicas: u64,
    ) -> impl Future<Output = Result<(), ProviderError>> + Send;

    /// Whether a function is deployed (cheap: checked on every call).
    fn has(&self, namespace: &str, name: &str) -> bool;

    /// The runtime state of a deployed function.
    fn status(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<RuntimeStatus, ProviderError>> + Send;

    fn invoke(
        &self,
        namespace: &str,
        name: &str,
        call: Invocation,
    ) -> impl Future<Output = Result<InvocationResult, ProviderError>> + Send;

    fn logs(
        &self,
        namespace: &str,
        name: &str,
        tail: Option<usize>,
        follow: bool,
    ) -> Result<LogFeed, ProviderError>;

    /// Builds a function folder into a named image this provider can run.
    fn build(
        &self,
        input: BuildInput,
        progress: Progress,
    ) -> impl Future<Output = Result<crate::api::BuildResult, ProviderError>> + Send;

    /// Stops every replica (on shutdown).
    fn shutdown(&self) -> impl Future<Output = ()> + Send;
}
