//! graphene-gateway: the HTTP front door and the control plane.
//!
//! Start with [`Gateway::router`]: `/function/*` goes to `invoke.rs` (call a
//! function through the provider, with OpenFaaS's headers and metrics),
//! `/system/*` to `system.rs` (the OpenFaaS management API, behind the admin
//! credential of `auth.rs`). `scaler.rs` wakes functions at zero and runs the
//! autoscaler. `store.rs` keeps what was accepted in SQLite;
//! [`Gateway::restore`] brings every stored function back at start-up. The
//! gateway knows providers only through `graphene_core::provider::Provider`.

mod auth;
mod error;
mod invoke;
mod metrics;
mod scaler;
mod store;
mod system;
pub mod tls;

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
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

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub state_dir: PathBuf,
    /// Largest request body accepted, in bytes (413 above).
    pub max_body: usize,
}

pub struct Gateway<P> {
    provider: Arc<P>,
    store: Store,
    metrics: metrics::Metrics,
    scaler: scaler::Scaler,
    config: GatewayConfig,
}

impl<P: Provider> Gateway<P> {
    /// Opens the state database and makes the admin credential on first
    /// start (the returned path says where it was written).
    pub fn open(
        config: GatewayConfig,
        provider: Arc<P>,
    ) -> anyhow::Result<(Arc<Self>, Option<PathBuf>)> {
        let store = Store::open(&config.state_dir.join("state.db"))?;
        let created = auth::ensure_admin(&store, &config.state_dir)?;
        let gw = Arc::new(Self {
            provider,
            store,
            metrics: Default::default(),
            scaler: Default::default(),
            config,
        });
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
        let system = Router::new()
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
            .route_layer(middleware::from_fn_with_state(
                self.clone(),
                require_admin::<P>,
            ));
        Router::new()
            .merge(system)
            .route("/function/{*rest}", any(invoke::invoke::<P>))
            .route(
                "/async-function/{*rest}",
                any(|| async {
                    ApiError::new(
                        StatusCode::NOT_IMPLEMENTED,
                        "asynchronous invocation is not available yet; call /function/<name> instead",
                    )
                }),
            )
            .route("/healthz", get(|| async { "OK" }))
            .route("/metrics", get(system::metrics::<P>))
            .fallback(|| async { ApiError::not_found("no such route") })
            .with_state(self.clone())
    }

    /// Serves until `shutdown` completes, then lets requests in flight
    /// finish for up to [`SHUTDOWN_GRACE`] (followed log streams never do).
    /// With `tls`, every connection is TLS (HTTP/2 or HTTP/1.1 by ALPN).
    pub async fn serve(
        self: &Arc<Self>,
        listener: tokio::net::TcpListener,
        tls: Option<Arc<tls::Tls>>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = tx.send(true);
        });
        self.start_autoscaler();
        let mut stopping = rx.clone();
        let Some(tls) = tls else {
            let graceful = async move {
                let mut rx = rx;
                let _ = rx.wait_for(|s| *s).await;
            };
            let server = axum::serve(listener, self.router()).with_graceful_shutdown(graceful);
            return tokio::select! {
                r = server => r,
                _ = async {
                    let _ = stopping.wait_for(|s| *s).await;
                    tokio::time::sleep(SHUTDOWN_GRACE).await;
                } => Ok(()),
            };
        };
        tls.watch();
        let router = self.router();
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((tcp, _)) = accepted else { continue };
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
                    let service = hyper_util::service::TowerToHyperService::new(router.clone());
                    let watcher = graceful.watcher();
                    tokio::spawn(async move {
                        let Ok(Ok(stream)) =
                            tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                        else {
                            return; // not TLS, or too slow: dropped
                        };
                        let builder = hyper_util::server::conn::auto::Builder::new(
                            hyper_util::rt::TokioExecutor::new(),
                        );
                        let conn = builder.serve_connection_with_upgrades(
                            hyper_util::rt::TokioIo::new(stream),
                            service,
                        );
                        let _ = watcher.watch(conn.into_owned()).await;
                    });
                }
                _ = stopping.wait_for(|s| *s) => break,
            }
        }
        drop(listener);
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
        Ok(())
    }

    pub async fn shutdown(&self) {
        self.provider.shutdown().await;
    }
}

async fn require_admin<P: Provider>(
    State(gw): State<Arc<Gateway<P>>>,
    req: Request,
    next: Next,
) -> Response {
    let ok = match (
        auth::presented(req.headers()),
        gw.store.credential_hash(auth::ADMIN),
    ) {
        (Some(token), Ok(Some(hash))) => auth::matches(&token, &hash),
        _ => false,
    };
    if !ok {
        let mut r = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong credential: /system needs the admin credential, as a bearer token or HTTP basic auth with user admin",
        )
        .into_response();
        r.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Basic realm=\"graphene\""),
        );
        return r;
    }
    next.run(req).await
}
