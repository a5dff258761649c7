//! graphene-watchdog: `graphene watchdog`, the entrypoint of a function's
//! container. It speaks OpenFaaS's watchdog contract, so graphene images run
//! wherever OpenFaaS images run and OpenFaaS images run on graphene:
//!
//! - HTTP on `port`; `GET /_/health` answers while the process is alive and
//!   not stopping, `GET /_/ready` once the handler has imported (503 before,
//!   429 at `max_inflight`); every other request is a call.
//! - A Python function runs as in the local runtime, from the same code: a
//!   warm parent imports the handler once and forks workers, which are
//!   re-forked when they crash. The runtime here is a `LocalProvider` that
//!   adopts the image built into the container, with no sandbox (the
//!   container is one) and its log on stdout. An exec function runs
//!   `fprocess` once per call, like OpenFaaS's classic watchdog.
//! - A warm parent that dies ends the process with a non-zero status, so the
//!   container's restart policy starts it afresh.
//! - SIGTERM: not ready at once; calls are still taken for
//!   `healthcheck_interval` (while load balancers catch up), then the
//!   listener closes and calls in flight finish within `write_timeout`;
//!   then exit 0.
//! - Prometheus metrics on `metrics_port` with of-watchdog's names.

pub mod config;
mod metrics;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use graphene_core::api::FunctionDeployment;
use graphene_core::names::FunctionRef;
use graphene_core::provider::{
    is_hop_by_hop, Deployment, Invocation, Provider, ProviderError, ERROR_CLASS_HEADER,
};
use graphene_core::settings::FunctionSettings;
use graphene_local::{LocalConfig, LocalProvider};
use http_body_util::BodyExt;

pub use config::{Config, ConfigError};

/// Where the lock file of OpenFaaS's exec health check lies.
pub fn lock_file() -> PathBuf {
    std::env::temp_dir().join(".lock")
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Setup(String),
    /// The function's process died: the container must restart.
    #[error("{0}; exiting so that the container is restarted")]
    RunnerExited(String),
}

struct Watchdog {
    config: Config,
    provider: LocalProvider,
    function: FunctionRef,
    /// An exec function: answers get `content_type` whatever they say.
    exec: bool,
    in_flight: AtomicUsize,
    /// The handler imported: ready for good (a warm parent that dies ends
    /// the process). Kept here so that probes never wait on the runtime.
    imported: AtomicBool,
    stopping: AtomicBool,
    next_call: AtomicU64,
    metrics: metrics::Metrics,
}

/// Runs the watchdog until SIGTERM (or SIGINT) has drained it (`Ok`), or
/// until the function's process dies (`Err`).
pub async fn run(config: Config) -> Result<(), Error> {
    let state = std::env::temp_dir().join(format!("graphene-watchdog-{}", std::process::id()));
    let (exit_tx, mut exit_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (provider, _builder) = LocalProvider::open(LocalConfig {
        dir: state.clone(),
        python: "python3".into(),
        // The container is the sandbox.
        sandbox: false,
        hidden: Vec::new(),
        logs_to_stdout: true,
        runner_exit: Some(Arc::new(move |reason| {
            let _ = exit_tx.send(reason);
        })),
    })
    .map_err(|e| Error::Setup(format!("could not use {}: {e}", state.display())))?;
    let (digest, exec) = adopt(&provider, &config)?;
    let function = FunctionRef::new(graphene_core::DEFAULT_NAMESPACE, &config.name);
    provider
        .apply(deployment(&config, &function, digest, exec)?)
        .await
        .map_err(|e| Error::Setup(e.to_string()))?;
    let wd = Arc::new(Watchdog {
        provider,
        function,
        exec,
        in_flight: AtomicUsize::new(0),
        imported: AtomicBool::new(false),
        stopping: AtomicBool::new(false),
        next_call: AtomicU64::new(1),
        metrics: metrics::Metrics::default(),
        config,
    });

    let calls = bind(wd.config.port).await?;
    let metrics = bind(wd.config.metrics_port).await?;
    eprintln!(
        "graphene watchdog: {} function {:?} on port {}, metrics on port {}; timeouts: read {:?}, write {:?}, exec {:?}",
        if exec { "exec" } else { "python" },
        wd.config.name,
        wd.config.port,
        wd.config.metrics_port,
        wd.config.read_timeout,
        wd.config.write_timeout,
        wd.config.exec_timeout,
    );
    let (close, closed) = tokio::sync::oneshot::channel::<()>();
    let app = axum::Router::new().fallback(handle).with_state(wd.clone());
    let mut server = tokio::spawn(async move {
        axum::serve(calls, app)
            .with_graceful_shutdown(async move {
                let _ = closed.await;
            })
            .await
    });
    let scrape = axum::Router::new()
        .route("/metrics", axum::routing::get(render_metrics))
        .with_state(wd.clone());
    tokio::spawn(async move { axum::serve(metrics, scrape).await });
    tokio::spawn(mark_ready(wd.clone()));

    let signal = stop_signal();
    tokio::select! {
        reason = exit_rx.recv() => {
            let _ = std::fs::remove_file(lock_file());
            return Err(Error::RunnerExited(reason.unwrap_or_default()));
        }
        done = &mut server => {
            return Err(Error::Setup(format!("the HTTP server stopped: {done:?}")));
        }
        name = signal => {
            wd.stopping.store(true, Ordering::Release);
            let _ = std::fs::remove_file(lock_file());
            eprintln!(
                "graphene watchdog: {name}: not ready; taking calls for {:?} more, then draining {} in flight",
                wd.config.healthcheck_interval,
                wd.in_flight.load(Ordering::Relaxed)
            );
        }
    }
    tokio::time::sleep(wd.config.healthcheck_interval).await;
    let _ = close.send(());
    if tokio::time::timeout(wd.config.write_timeout, server)
        .await
        .is_err()
    {
        eprintln!(
            "graphene watchdog: {} calls still in flight after write_timeout ({:?})",
            wd.in_flight.load(Ordering::Relaxed),
            wd.config.write_timeout
        );
    }
    wd.provider.shutdown().await;
    let _ = std::fs::remove_dir_all(&state);
    eprintln!("graphene watchdog: stopped");
    Ok(())
}

/// The built function in the image, or (with `fprocess` and no build) the
/// working directory an exec function's command runs in.
fn adopt(provider: &LocalProvider, config: &Config) -> Result<(String, bool), Error> {
    let built = config.image_dir.join("image.json");
    let (dir, workdir) = if built.exists() {
        (config.image_dir.clone(), None)
    } else if !config.fprocess.is_empty() {
        let cwd = std::env::current_dir().map_err(|e| Error::Setup(e.to_string()))?;
        (cwd.clone(), Some(cwd))
    } else {
        return Err(Error::Setup(format!(
            "nothing to run: {} does not exist (a function built with `graphene build --oci`), \
             and fprocess is not set (the command of an exec function)",
            built.display()
        )));
    };
    let (digest, lang) = provider
        .adopt(dir, workdir)
        .map_err(|e| Error::Setup(format!("could not read {}: {e}", built.display())))?;
    let exec = !lang.is_python();
    if exec && config.fprocess.is_empty() {
        return Err(Error::Setup(
            "the function is an exec function: set fprocess to the command to run".into(),
        ));
    }
    Ok((digest, exec))
}

/// The one revision this container runs: one replica, the function's
/// environment, `exec_timeout` as the call limit.
fn deployment(
    config: &Config,
    function: &FunctionRef,
    image_digest: String,
    exec: bool,
) -> Result<Deployment, Error> {
    let mut env_vars = config.env.clone();
    env_vars
        .entry(graphene_local::SECRETS_ENV.to_string())
        .or_insert_with(|| graphene_core::SECRETS_MOUNT.to_string());
    let spec = FunctionDeployment {
        service: function.name.clone(),
        image: function.name.clone(),
        env_process: config.fprocess.clone(),
        env_vars: env_vars.into_iter().collect(),
        annotations: Some(
            [(
                graphene_local::settings::ANNOTATION_FORK.to_string(),
                config.fork.to_string(),
            )]
            .into_iter()
            .collect(),
        ),
        ..Default::default()
    };
    let mut settings =
        FunctionSettings::from_deployment(&spec).map_err(|e| Error::Setup(e.to_string()))?;
    settings.timeout = config.exec_timeout;
    // An exec function runs a process per call, as many as max_inflight
    // lets in.
    settings.workers = match (exec, config.max_inflight) {
        (true, 0) => graphene_core::settings::MAX_WORKERS,
        (true, n) => n as u64,
        (false, _) => config.workers,
    };
    Ok(Deployment {
        function: function.clone(),
        revision: 1,
        spec,
        settings,
        image_digest,
        secrets: Vec::new(),
        replicas: 1,
    })
}

async fn bind(port: u16) -> Result<tokio::net::TcpListener, Error> {
    tokio::net::TcpListener::bind(("0.0.0.0", port))
        .await
        .map_err(|e| Error::Setup(format!("could not listen on port {port}: {e}")))
}

async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// Marks the function ready once its handler imported, and writes
/// `/tmp/.lock` then: OpenFaaS images' exec health check (`[ -e /tmp/.lock ]`,
/// or `graphene watchdog --run-healthcheck`).
async fn mark_ready(wd: Arc<Watchdog>) {
    while !wd.stopping.load(Ordering::Acquire) {
        let ready = wd
            .provider
            .status(&wd.function)
            .await
            .is_ok_and(|s| s.ready_replicas > 0);
        if ready {
            wd.imported.store(true, Ordering::Release);
            if !wd.config.suppress_lock {
                if let Err(e) = std::fs::write(lock_file(), b"") {
                    eprintln!(
                        "graphene watchdog: could not write {} ({e}); set suppress_lock=true to do without",
                        lock_file().display()
                    );
                }
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Counts a call in flight for as long as it lives.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn handle(State(wd): State<Arc<Watchdog>>, req: Request) -> Response {
    match req.uri().path() {
        "/_/health" => return health(&wd, req.method()),
        "/_/ready" => return ready(&wd, req.method()),
        _ => {}
    }
    let started = Instant::now();
    let method = req.method().as_str().to_ascii_lowercase();
    let now = wd.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
    let _counted = InFlight(&wd.in_flight);
    let response = match wd.config.max_inflight {
        limit if limit > 0 && now > limit => failure(ProviderError::Overloaded(
            format!("Concurrent request limit exceeded. Max concurrent requests: {limit}"),
            1,
        )),
        _ => call(&wd, req).await,
    };
    wd.metrics.observe(
        response.status().as_u16(),
        &method,
        started.elapsed().as_secs_f64(),
    );
    response
}

fn health(wd: &Watchdog, method: &Method) -> Response {
    if method != Method::GET {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    match wd.stopping.load(Ordering::Acquire) {
        true => plain(StatusCode::SERVICE_UNAVAILABLE, "stopping".into()),
        false => plain(StatusCode::OK, "OK".into()),
    }
}

fn ready(wd: &Watchdog, method: &Method) -> Response {
    if method != Method::GET {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let limit = wd.config.max_inflight;
    if wd.stopping.load(Ordering::Acquire) {
        plain(StatusCode::SERVICE_UNAVAILABLE, "stopping".into())
    } else if !wd.imported.load(Ordering::Acquire) {
        plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the function is starting".into(),
        )
    } else if limit > 0 && wd.in_flight.load(Ordering::Acquire) >= limit {
        plain(
            StatusCode::TOO_MANY_REQUESTS,
            format!("at max_inflight ({limit})"),
        )
    } else {
        plain(StatusCode::OK, "OK".into())
    }
}

async fn call(wd: &Watchdog, req: Request) -> Response {
    let deadline = tokio::time::Instant::now() + wd.config.write_timeout;
    let (parts, body) = req.into_parts();
    let body = match tokio::time::timeout(wd.config.read_timeout, body.collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) => {
            return plain(
                StatusCode::BAD_REQUEST,
                format!("the request body could not be read: {e}"),
            )
        }
        Err(_) => {
            return plain(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body was not read within read_timeout ({:?})",
                    wd.config.read_timeout
                ),
            )
        }
    };
    let call_id = parts
        .headers
        .get("x-call-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| format!("{}", wd.next_call.fetch_add(1, Ordering::Relaxed)));
    let headers = parts
        .headers
        .iter()
        .filter(|(k, _)| !is_hop_by_hop(k.as_str()))
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let invocation = Invocation {
        method: parts.method.as_str().to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or("").to_string(),
        headers,
        body: body.into(),
        call_id,
    };
    let result =
        match tokio::time::timeout_at(deadline, wd.provider.invoke(&wd.function, invocation)).await
        {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return failure(e),
            Err(_) => {
                return plain(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "no answer within write_timeout ({:?})",
                        wd.config.write_timeout
                    ),
                )
            }
        };
    let mut response = Response::new(match result.body {
        graphene_core::provider::Body::Full(b) => Body::from(b),
        graphene_core::provider::Body::Stream(s) => Body::from_stream(s),
    });
    *response.status_mut() = StatusCode::from_u16(result.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let h = response.headers_mut();
    for (k, v) in result.headers {
        if is_hop_by_hop(&k) {
            continue;
        }
        if let (Ok(k), Ok(v)) = (
            axum::http::HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(&v),
        ) {
            h.append(k, v);
        }
    }
    let content_type = match (&wd.config.content_type, wd.exec) {
        (Some(t), _) => Some(t.as_str()),
        (None, true) => Some("application/octet-stream"),
        (None, false) => None,
    };
    if let Some(t) = content_type.and_then(|t| HeaderValue::from_str(t).ok()) {
        if wd.exec || !h.contains_key("content-type") {
            h.insert("content-type", t);
        }
    }
    response
}

/// A failure of the runtime (not the function's own answer), named by its
/// class so that a gateway in front tells the two apart.
fn failure(e: ProviderError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = plain(status, e.to_string());
    let h = response.headers_mut();
    h.insert(ERROR_CLASS_HEADER, HeaderValue::from_static(e.class()));
    if let ProviderError::Overloaded(_, seconds) = e {
        if let Ok(v) = HeaderValue::from_str(&seconds.to_string()) {
            h.insert("retry-after", v);
        }
    }
    response
}

fn plain(status: StatusCode, text: String) -> Response {
    (
        status,
        [("content-type", "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

async fn render_metrics(State(wd): State<Arc<Watchdog>>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        wd.metrics.render(wd.in_flight.load(Ordering::Relaxed)),
    )
        .into_response()
}
