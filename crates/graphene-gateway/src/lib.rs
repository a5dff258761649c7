//! graphene-gateway: the HTTP front door and the control plane.
//!
//! Start with [`Gateway::router`]: every request first passes `auth.rs`
//! (who is calling: admin credential, API token or OIDC JWT), then
//! `/function/*` goes to `invoke.rs` (call a function through the provider,
//! with OpenFaaS's headers and metrics), `/async-function/*` to `jobs.rs`
//! (durable asynchronous calls, one dispatcher over the queue backend),
//! `/system/*` to `system.rs` (the OpenFaaS management API), `revisions.rs`
//! (history, rollback, the event stream) and `admin.rs` (tokens, grants,
//! audit). Each handler asks `access.rs` whether the caller may do its
//! action.
//!
//! Functions live in `registry.rs`, the one home for a function's state
//! (revisions, desired replicas, scaling and async state), persisted by
//! `store.rs`. Changes are written there first; `reconcile.rs` then makes
//! the provider match, and records how each revision's rollout went.
//! `scaler.rs` wakes functions at zero and runs the autoscaler over the
//! registry. [`Gateway::restore`] hands every function to the provider at
//! start-up. The gateway knows runtimes only through
//! `graphene_core::provider::{Provider, Builder}`.

mod access;
mod admin;
mod auth;
mod calls;
mod error;
mod invoke;
mod jobs;
mod load;
mod metrics;
pub mod oidc;
pub mod proxy;
mod reconcile;
mod registry;
mod revisions;
mod scaler;
mod scaling;
mod store;
mod store_changes;
mod system;
pub mod tls;

use std::path::PathBuf;
use std::sync::Arc;

use axum::http::Request;
use axum::middleware;
use axum::routing::{any, delete, get, post};
use axum::Router;
use graphene_core::provider::{Builder, Provider};
use graphene_core::store::{AccessStore, Leadership, SecretStore, Stores};

pub use auth::{new_token as new_admin_token, TOKEN_FILE};
use error::ApiError;
use registry::Registry;
pub use registry::DEFAULT_KEEP_REVISIONS;
use store::Store;

pub const DEFAULT_MAX_BODY: usize = 32 << 20;
/// How long requests in flight may finish after a shutdown signal.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Largest function folder `/system/build` accepts (models can be big).
pub const MAX_BUILD_UPLOAD: usize = 1 << 30;
/// How long a client may take to send a request's headers (HTTP/1.1).
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Largest request head (request line and headers) accepted, in bytes.
pub const MAX_HEADERS: usize = 64 << 10;

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub state_dir: PathBuf,
    /// Largest request body accepted, in bytes (413 above).
    pub max_body: usize,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<proxy::Cidr>,
    /// OIDC issuers whose bearer JWTs are accepted.
    pub auth: oidc::AuthConfig,
    /// How long finished asynchronous jobs are kept.
    pub job_retention: std::time::Duration,
    /// Largest job result kept (and sent to its callback), in bytes.
    pub job_result_limit: usize,
    /// `nats://host:port` to keep jobs in NATS JetStream instead of the
    /// state directory.
    pub queue: Option<String>,
    /// Revisions kept per function (the serving one besides), for history
    /// and rollback; their images are kept too.
    pub keep_revisions: usize,
    /// A file holding the admin credential, instead of one made in the
    /// state directory.
    pub admin_token_file: Option<PathBuf>,
}

pub const DEFAULT_JOB_RETENTION: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);
pub const DEFAULT_JOB_RESULT_LIMIT: usize = 1 << 20;

pub struct Gateway<P> {
    provider: Arc<P>,
    builder: Arc<dyn Builder>,
    secrets: Arc<dyn SecretStore>,
    access: Arc<dyn AccessStore>,
    /// Tokens and grants as last read from `access` (a policy without
    /// public functions), and the lock that orders their reads.
    access_set: std::sync::RwLock<Arc<access::Policy>>,
    refreshing: tokio::sync::Mutex<()>,
    registry: Registry,
    metrics: metrics::Metrics,
    config: GatewayConfig,
    policy: std::sync::RwLock<Arc<access::Policy>>,
    reloading: std::sync::Mutex<()>,
    limiter: access::Limiter,
    oidc: oidc::Oidc,
    admin_hash: String,
    /// Which gateway runs the autoscaler (none: this one, alone).
    leadership: Option<Arc<dyn Leadership>>,
    /// Whether this gateway led at the autoscaler's last tick.
    leading: std::sync::atomic::AtomicBool,
    /// The other gateways' load, while this one leads.
    loads: load::Loads,
    /// What this gateway signs its load reports with.
    load_key: String,
    reporter: hyper_util::client::legacy::Client<
        graphene_http::HttpsConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
    jobs: Arc<dyn graphene_queue::JobQueue>,
    dispatch: jobs::Dispatch,
    /// Functions stored with a spec that is not a revision yet, deployed
    /// by [`Gateway::restore`].
    declared: std::sync::Mutex<
        Vec<(
            graphene_core::names::FunctionRef,
            graphene_core::api::FunctionDeployment,
        )>,
    >,
}

impl<P: Provider> Gateway<P> {
    /// Opens the state database and the registry, and makes the admin
    /// credential on first start (the returned path says where it was
    /// written). Functions and secrets are kept in the `stores` given (e.g.
    /// in the cluster), the state database holding those not given.
    pub async fn open(
        config: GatewayConfig,
        provider: Arc<P>,
        builder: Arc<dyn Builder>,
        stores: Stores,
    ) -> anyhow::Result<(Arc<Self>, Option<PathBuf>)> {
        let store = Arc::new(Store::open(&config.state_dir.join("state.db"))?);
        let created = auth::ensure_admin(
            &store,
            &config.state_dir,
            config.admin_token_file.as_deref(),
        )?;
        let admin_hash = store
            .credential_hash(auth::ADMIN)?
            .ok_or_else(|| anyhow::anyhow!("the admin credential is missing from the database"))?;
        let functions = stores
            .functions
            .unwrap_or_else(|| Arc::new(store::SqliteFunctions(store.clone())));
        let secrets = stores
            .secrets
            .unwrap_or_else(|| Arc::new(store::SqliteSecrets(store.clone())));
        let access = stores
            .access
            .unwrap_or_else(|| Arc::new(store::SqliteAccess(store.clone())));
        let (registry, declared) = Registry::open(functions, config.keep_revisions)
            .await
            .map_err(|e| anyhow::anyhow!("loading functions: {e}"))?;
        let jobs = graphene_queue::open(
            &config.state_dir,
            config.queue.as_deref(),
            config.job_result_limit,
        )
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
        let gw = Arc::new(Self {
            jobs,
            dispatch: Default::default(),
            provider,
            builder,
            secrets,
            access,
            access_set: Default::default(),
            refreshing: Default::default(),
            registry,
            metrics: Default::default(),
            oidc: oidc::Oidc::new(&config.auth)?,
            config,
            policy: Default::default(),
            reloading: Default::default(),
            limiter: Default::default(),
            load_key: load::key(&admin_hash),
            admin_hash,
            leadership: stores.leadership,
            leading: Default::default(),
            loads: Default::default(),
            reporter: graphene_http::client(None)?,
            declared: std::sync::Mutex::new(declared),
        });
        gw.refresh_access()
            .await
            .map_err(|e| anyhow::anyhow!("reading tokens and grants: {}", e.message))?;
        Ok((gw, created))
    }

    /// Hands every registered function to the provider (after a restart),
    /// one by one, then leaves each to its reconciler. A function whose
    /// newest revision failed comes back at the revision that served.
    pub async fn restore(self: &Arc<Self>) -> usize {
        let all = self.registry.list(None);
        for r in &all {
            self.apply_once(r).await;
            self.start_reconciler(r.clone());
        }
        let declared = std::mem::take(&mut *self.declared.lock().expect("declared lock"));
        for (id, spec) in declared {
            self.deploy_declared(&id, spec).await;
        }
        self.follow_store();
        self.follow_access();
        all.len()
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route(
                "/system/functions",
                get(system::list::<P>)
                    .post(system::create::<P>)
                    .put(system::update::<P>)
                    .delete(system::delete::<P>),
            )
            .route("/system/function/{name}", get(system::describe::<P>))
            .route("/system/scale-function/{name}", post(system::scale::<P>))
            .route("/system/namespaces", get(system::namespaces::<P>))
            .route(
                "/system/secrets",
                get(system::secrets::<P>)
                    .post(system::secret_create::<P>)
                    .put(system::secret_update::<P>)
                    .delete(system::secret_delete::<P>),
            )
            .route("/system/logs", get(system::logs::<P>))
            .route("/system/info", get(system::info::<P>))
            .route("/system/build", post(system::build::<P>))
            .route(
                "/system/tokens",
                get(admin::tokens::<P>).post(admin::token_create::<P>),
            )
            .route("/system/tokens/{name}", delete(admin::token_revoke::<P>))
            .route(
                "/system/grants",
                get(admin::grants::<P>).post(admin::grant_add::<P>),
            )
            .route("/system/grants/{id}", delete(admin::grant_remove::<P>))
            .route("/system/audit", get(admin::audit::<P>))
            .route("/system/whoami", get(admin::whoami::<P>))
            .route("/system/load", post(load::take::<P>))
            .route("/system/revisions/{name}", get(revisions::history::<P>))
            .route("/system/rollback/{name}", post(revisions::rollback::<P>))
            .route("/system/events", get(revisions::events::<P>))
            .route("/function/{*rest}", any(invoke::invoke::<P>))
            .route("/async-function/{*rest}", any(jobs::enqueue::<P>))
            .route(
                "/async-function/status/{id}",
                get(jobs::status::<P>).delete(jobs::cancel::<P>),
            )
            .route("/system/jobs", get(jobs::list::<P>))
            .route("/metrics", get(system::metrics::<P>))
            .route_layer(middleware::from_fn_with_state(
                self.clone(),
                auth::identify::<P>,
            ))
            .route("/healthz", get(|| async { "OK" }))
            .fallback(|| async { ApiError::not_found("no such route") })
            .with_state(self.clone())
    }

    /// Serves until `shutdown` completes, then lets requests in flight
    /// finish for up to [`SHUTDOWN_GRACE`] (followed log streams never do).
    /// With `tls`, every connection is TLS (HTTP/2 or HTTP/1.1 by ALPN);
    /// without, HTTP/1.1 and cleartext HTTP/2. Either way a client has
    /// [`HEADER_TIMEOUT`] to send a request's head of at most
    /// [`MAX_HEADERS`] bytes.
    pub async fn serve(
        self: &Arc<Self>,
        listener: tokio::net::TcpListener,
        tls: Option<Arc<tls::Tls>>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (tx, mut stopping) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = tx.send(true);
        });
        self.start_autoscaler();
        self.start_jobs();
        self.oidc.warm_up();
        if let Some(tls) = &tls {
            tls.watch();
        }
        let router = self.router();
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut builder =
            hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
        builder
            .http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .max_buf_size(MAX_HEADERS);
        builder
            .http2()
            .timer(hyper_util::rt::TokioTimer::new())
            .max_header_list_size(MAX_HEADERS as u32);
        let builder = Arc::new(builder);
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stopping.wait_for(|s| *s) => break,
            };
            let _ = tcp.set_nodelay(true);
            let router = router.clone();
            let service =
                hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(auth::Peer(peer));
                    let mut router = router.clone();
                    async move {
                        use tower_service::Service;
                        router.call(req.map(axum::body::Body::new)).await
                    }
                });
            let watcher = graceful.watcher();
            let builder = builder.clone();
            let acceptor = tls
                .as_ref()
                .map(|t| tokio_rustls::TlsAcceptor::from(t.config()));
            tokio::spawn(async move {
                use hyper_util::rt::TokioIo;
                match acceptor {
                    None => {
                        let conn =
                            builder.serve_connection_with_upgrades(TokioIo::new(tcp), service);
                        let _ = watcher.watch(conn.into_owned()).await;
                    }
                    Some(acceptor) => {
                        let Ok(Ok(stream)) =
                            tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                        else {
                            return; // not TLS, or too slow: dropped
                        };
                        let conn =
                            builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                        let _ = watcher.watch(conn.into_owned()).await;
                    }
                }
            });
        }
        drop(listener);
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
        Ok(())
    }

    pub async fn shutdown(&self) {
        self.provider.shutdown().await;
    }
}
