//! graphene-gateway: the HTTP front door and the control plane.
//!
//! Start with [`Gateway::router`]: every request first passes `auth.rs`
//! (who is calling: admin credential, API token or OIDC JWT), then
//! `/function/*` goes to `invoke.rs` (call a function through the provider,
//! with OpenFaaS's headers and metrics), `/async-function/*` to `jobs.rs`
//! (durable asynchronous calls; `jobs_nats.rs` runs them from NATS),
//! `/system/*` to `system.rs` (the OpenFaaS management API) and `admin.rs`
//! (tokens, grants, audit). Each handler asks `access.rs` whether the caller
//! may do its action. `scaler.rs` wakes functions at zero and runs the
//! autoscaler. `store.rs` keeps what was accepted in SQLite;
//! [`Gateway::restore`] brings every stored function back at start-up. The
//! gateway knows providers only through `graphene_core::provider::Provider`.

mod access;
mod admin;
mod auth;
mod error;
mod invoke;
mod jobs;
#[cfg(feature = "nats")]
mod jobs_nats;
mod metrics;
pub mod oidc;
pub mod proxy;
mod scaler;
mod store;
mod system;
pub mod tls;

use std::path::PathBuf;
use std::sync::Arc;

use axum::http::Request;
use axum::middleware;
use axum::routing::{any, delete, get, post};
use axum::Router;
use graphene_core::provider::{Deployment, Provider};
use graphene_core::settings::FunctionSettings;

pub use auth::TOKEN_FILE;
use error::{ApiError, ApiResult};
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
}

pub const DEFAULT_JOB_RETENTION: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);
pub const DEFAULT_JOB_RESULT_LIMIT: usize = 1 << 20;

pub struct Gateway<P> {
    provider: Arc<P>,
    store: Store,
    metrics: metrics::Metrics,
    scaler: scaler::Scaler,
    config: GatewayConfig,
    policy: std::sync::RwLock<Arc<access::Policy>>,
    reloading: std::sync::Mutex<()>,
    limiter: access::Limiter,
    oidc: oidc::Oidc,
    admin_hash: String,
    jobs: jobs::Backend,
    dispatch: jobs::Dispatch,
}

impl<P: Provider> Gateway<P> {
    /// Opens the state database and makes the admin credential on first
    /// start (the returned path says where it was written).
    pub async fn open(
        config: GatewayConfig,
        provider: Arc<P>,
    ) -> anyhow::Result<(Arc<Self>, Option<PathBuf>)> {
        let store = Store::open(&config.state_dir.join("state.db"))?;
        let created = auth::ensure_admin(&store, &config.state_dir)?;
        let admin_hash = store
            .credential_hash(auth::ADMIN)?
            .ok_or_else(|| anyhow::anyhow!("the admin credential is missing from the database"))?;
        let jobs = jobs::Backend::open(
            &config.state_dir,
            config.queue.as_deref(),
            config.job_result_limit,
        )
        .await?;
        let gw = Arc::new(Self {
            jobs,
            dispatch: Default::default(),
            provider,
            store,
            metrics: Default::default(),
            scaler: Default::default(),
            oidc: oidc::Oidc::new(&config.auth)?,
            config,
            policy: Default::default(),
            reloading: Default::default(),
            limiter: Default::default(),
            admin_hash,
        });
        gw.reload_access()
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        Ok((gw, created))
    }

    /// Deploys every stored function again (after a restart).
    pub async fn restore(&self) -> anyhow::Result<usize> {
        let functions = self.store.functions(None)?;
        let n = functions.len();
        for f in functions {
            let name = f.spec.service.clone();
            match self.deployment(&f.namespace, f.spec, f.replicas) {
                Ok(d) => {
                    if let Err(e) = self.deploy(d).await {
                        tracing::warn!(function = %name, namespace = %f.namespace, error = %e, "could not restore function");
                    }
                }
                Err(e) => {
                    tracing::warn!(function = %name, error = %e.message, "could not restore function")
                }
            }
        }
        Ok(n)
    }

    /// Validates a spec and resolves its secrets into a deployment.
    fn deployment(
        &self,
        namespace: &str,
        spec: graphene_core::api::FunctionDeployment,
        replicas: Option<u64>,
    ) -> ApiResult<Deployment> {
        let settings = FunctionSettings::from_deployment(&spec)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let mut secrets = Vec::new();
        for name in &spec.secrets {
            let value = self.store.secret(namespace, name)?.ok_or_else(|| {
                ApiError::bad_request(format!(
                    "secrets: secret {name:?} does not exist in namespace {namespace}; create it with `graphene secret create {name}`"
                ))
            })?;
            secrets.push((name.clone(), value));
        }
        // A count stored before the function's bounds changed is brought
        // within them; zero stays zero (the next call wakes it).
        let replicas = replicas.map(|n| match settings.scaling.enabled() {
            true if n > 0 => n.clamp(settings.min_replicas.max(1), settings.max_replicas),
            true => 0,
            false => n.min(graphene_core::settings::MAX_REPLICAS),
        });
        Ok(Deployment {
            namespace: namespace.to_string(),
            spec,
            settings,
            secrets,
            replicas,
        })
    }

    /// Hands a deployment to the provider and tracks its scaling.
    async fn deploy(&self, d: Deployment) -> Result<(), graphene_core::provider::ProviderError> {
        let (ns, name) = (d.namespace.clone(), d.spec.service.clone());
        let policy = d.settings.scaling.clone();
        // Async calls never ask for more than the function can run at once.
        let capacity = (d.settings.max_replicas * d.settings.workers).max(1);
        self.dispatch.track(
            &ns,
            &name,
            d.settings.async_concurrency.min(capacity),
            d.settings.retry.clone(),
        );
        let fallback = d.replicas.unwrap_or(d.settings.min_replicas);
        self.provider.deploy(d).await?;
        // The count the provider settled on (a redeploy keeps the current one).
        let desired = self
            .provider
            .status(&ns, &name)
            .await
            .map_or(fallback, |s| s.desired_replicas);
        self.scaler.track(&ns, &name, policy, desired).await;
        Ok(())
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
