//! The seam between the gateway and the runtimes.
//!
//! [`Provider`] is what a runtime (local processes, Kubernetes) does for the
//! gateway: desired state in (a function's revision and its replica count),
//! a neutral status out (desired, ready, the rollout of the revision it was
//! given, instances with opaque per-provider details), calls with streamed
//! bodies, and logs as an async stream. It says nothing about processes,
//! pods or workers: each provider reads the labels and annotations only it
//! understands (see [`Provider::check`]). [`Builder`] turns a function folder
//! into an image some provider can run; it is a trait of its own because
//! where images come from (local virtual environments, an OCI registry) is
//! independent of where they run.
//!
//! The gateway depends on these traits only, never on an implementation.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_core::Stream;
use thiserror::Error;

use crate::api::{BuildResult, FunctionDeployment, LogMessage, RuntimeStatus};
use crate::names::FunctionRef;
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

/// The header a runtime's HTTP front (`graphene watchdog`) names its own
/// failures with, by [`ProviderError::class`], so that a provider that
/// reaches it over HTTP tells them from a function's own answers.
pub const ERROR_CLASS_HEADER: &str = "x-graphene-error";

impl ProviderError {
    /// A short name of the error's class, for [`ERROR_CLASS_HEADER`].
    pub fn class(&self) -> &'static str {
        match self {
            ProviderError::Invalid(_) => "invalid",
            ProviderError::NotFound(_) => "not-found",
            ProviderError::Unavailable(_) => "unavailable",
            ProviderError::Timeout(_) => "timeout",
            ProviderError::Upstream(_) => "upstream",
            ProviderError::Overloaded(_, _) => "overloaded",
            ProviderError::Unsupported(_) => "unsupported",
            ProviderError::Internal(_) => "internal",
        }
    }

    /// The error a runtime reported with [`ERROR_CLASS_HEADER`]; `None` for
    /// a class this version does not know.
    pub fn from_class(class: &str, message: String, retry_after: u64) -> Option<Self> {
        Some(match class {
            "invalid" => ProviderError::Invalid(message),
            "not-found" => ProviderError::NotFound(message),
            "unavailable" => ProviderError::Unavailable(message),
            "timeout" => ProviderError::Timeout(message),
            "upstream" => ProviderError::Upstream(message),
            "overloaded" => ProviderError::Overloaded(message, retry_after.max(1)),
            "unsupported" => ProviderError::Unsupported(message),
            "internal" => ProviderError::Internal(message),
            _ => return None,
        })
    }

    /// The HTTP status a caller gets for it.
    pub fn status(&self) -> u16 {
        match self {
            ProviderError::Invalid(_) => 400,
            ProviderError::NotFound(_) => 404,
            ProviderError::Unavailable(_) => 503,
            ProviderError::Timeout(_) => 504,
            ProviderError::Upstream(_) => 502,
            ProviderError::Overloaded(_, _) => 429,
            ProviderError::Unsupported(_) => 501,
            ProviderError::Internal(_) => 500,
        }
    }
}

/// One revision of a function to run: the desired state the gateway hands a
/// provider. Secrets are resolved by the control plane.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub function: FunctionRef,
    /// The registry's revision number; the provider reports the rollout of
    /// the revision it was last given.
    pub revision: u64,
    pub spec: FunctionDeployment,
    /// The settings every provider shares (timeout, scaling, limits),
    /// derived once by core. Runtime-specific settings are in the spec's
    /// labels and annotations, for the provider to read.
    pub settings: FunctionSettings,
    /// The built image's digest when a [`Builder`] made it (pinned, so a
    /// revision runs what it was deployed with even after the name moved);
    /// empty for images from elsewhere.
    pub image_digest: String,
    /// Secret name and value, for every secret the function names.
    pub secrets: Vec<(String, Vec<u8>)>,
    /// Replicas to run.
    pub replicas: u64,
}

/// Why a body could not be read.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BodyError {
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the body could not be read: {0}")]
    Broken(String),
}

pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, BodyError>> + Send>>;

/// A request or response body as it crosses the contract: whole, or a
/// stream of chunks (large bodies, streamed answers). A provider that needs
/// the whole body collects it; one that can stream passes it on.
pub enum Body {
    Full(Bytes),
    Stream(BodyStream),
}

impl Default for Body {
    fn default() -> Self {
        Body::Full(Bytes::new())
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Body::Full(b) => write!(f, "Body::Full({} bytes)", b.len()),
            Body::Stream(_) => f.write_str("Body::Stream"),
        }
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Self {
        Body::Full(b)
    }
}

impl From<Vec<u8>> for Body {
    fn from(b: Vec<u8>) -> Self {
        Body::Full(b.into())
    }
}

impl Body {
    /// The whole body, refusing more than `limit` bytes.
    pub async fn collect(self, limit: usize) -> Result<Bytes, BodyError> {
        let mut stream = match self {
            Body::Full(b) if b.len() > limit => return Err(BodyError::TooLarge(limit)),
            Body::Full(b) => return Ok(b),
            Body::Stream(s) => s,
        };
        let mut out = Vec::new();
        while let Some(chunk) = std::future::poll_fn(|cx| stream.as_mut().poll_next(cx)).await {
            let chunk = chunk?;
            if out.len() + chunk.len() > limit {
                return Err(BodyError::TooLarge(limit));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out.into())
    }

    pub fn into_stream(self) -> BodyStream {
        match self {
            Body::Stream(s) => s,
            Body::Full(b) => Box::pin(Once(Some(b))),
        }
    }
}

struct Once(Option<Bytes>);

impl Stream for Once {
    type Item = Result<Bytes, BodyError>;
    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Poll::Ready(self.0.take().filter(|b| !b.is_empty()).map(Ok))
    }
}

/// An invocation, as the gateway hands it to a replica.
#[derive(Debug, Default)]
pub struct Invocation {
    pub method: String,
    /// The path below `/function/<name>`, starting with `/`.
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Body,
    pub call_id: String,
}

#[derive(Debug, Default)]
pub struct InvocationResult {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Body,
    /// How long the call waited for a first replica, when it found none
    /// ready (a cold start).
    pub cold_start: Option<std::time::Duration>,
}

/// Which logs to read.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogQuery {
    /// Only the last lines kept.
    pub tail: Option<usize>,
    /// Keep the stream open for new lines.
    pub follow: bool,
}

/// A function's log lines: those kept, then (when following) new ones as
/// they are written. Ends when the function is removed.
pub type LogStream = Pin<Box<dyn Stream<Item = LogMessage> + Send>>;

/// A boxed future, for the object-safe [`Builder`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub trait Provider: Send + Sync + 'static {
    /// A short name for `/system/info`.
    fn name(&self) -> &'static str;

    /// What `/system/info` calls the orchestration (`local`, `kubernetes`).
    fn orchestration(&self) -> &'static str;

    /// Checks a deployment before the gateway stores it: the settings only
    /// this provider reads, and whether its image can run here. Cheap and
    /// without side effects; an `Invalid` error is the 400 the caller gets.
    fn check(&self, d: &Deployment) -> Result<(), ProviderError>;

    /// Makes the function run `d`'s revision with `d.replicas` replicas
    /// (creating it when new). The previous revision keeps serving until
    /// the new one is ready; a revision that never becomes ready never
    /// takes the function down. Applying the revision that already runs
    /// changes nothing but the replica count.
    fn apply(&self, d: Deployment) -> impl Future<Output = Result<(), ProviderError>> + Send;

    /// Learns of `d` without changing the runtime: for a gateway that
    /// serves a function's calls while another one (the leader) applies it.
    /// `d.secrets` is empty (the leader resolves and applies them). Only
    /// called where several gateways share the runtime; a provider that
    /// can be shared must implement it (the default learns nothing).
    fn follow(&self, d: Deployment) -> impl Future<Output = Result<(), ProviderError>> + Send {
        let _ = d;
        async { Ok(()) }
    }

    /// Forgets a function without changing the runtime (the leader removes
    /// it). Where one gateway drives the runtime, [`Provider::remove`].
    fn forget(
        &self,
        function: &FunctionRef,
    ) -> impl Future<Output = Result<(), ProviderError>> + Send {
        self.remove(function)
    }

    fn scale(
        &self,
        function: &FunctionRef,
        replicas: u64,
    ) -> impl Future<Output = Result<(), ProviderError>> + Send;

    fn remove(
        &self,
        function: &FunctionRef,
    ) -> impl Future<Output = Result<(), ProviderError>> + Send;

    /// The runtime state of a function, including the rollout of the
    /// revision it was last given.
    fn status(
        &self,
        function: &FunctionRef,
    ) -> impl Future<Output = Result<RuntimeStatus, ProviderError>> + Send;

    fn invoke(
        &self,
        function: &FunctionRef,
        call: Invocation,
    ) -> impl Future<Output = Result<InvocationResult, ProviderError>> + Send;

    fn logs(
        &self,
        function: &FunctionRef,
        query: LogQuery,
    ) -> impl Future<Output = Result<LogStream, ProviderError>> + Send;

    /// Stops every replica (on shutdown).
    fn shutdown(&self) -> impl Future<Output = ()> + Send;
}

/// A build's input: the function folder as a tar archive.
pub struct BuildInput {
    pub image: String,
    pub lang: crate::stack::Lang,
    pub archive: Bytes,
}

pub type Progress = Box<dyn FnMut(&str) + Send>;

/// Builds function folders into images a provider can run.
pub trait Builder: Send + Sync + 'static {
    /// Builds `input` into the image it names. Images that no name refers
    /// to may be removed, except those in `keep` (digests of revisions that
    /// serve or may be rolled back to). A failed build is an error (its
    /// text is shown to the user as it is); a result is a success.
    fn build<'a>(
        &'a self,
        input: BuildInput,
        progress: Progress,
        keep: HashSet<String>,
    ) -> BoxFuture<'a, Result<BuildResult, ProviderError>>;

    /// The digest an image name refers to now, when this builder made it.
    fn resolve(&self, image: &str) -> Option<String>;
}
