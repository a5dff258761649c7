//! The management API under `/system`, with OpenFaaS's shapes and status
//! codes (202 for accepted changes, 404 for unknown names, 409 for
//! conflicts), plus graphene's `/system/build`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine;
use futures_util::StreamExt;
use graphene_core::api::{
    BuildResult, DeleteFunctionRequest, FunctionDeployment, FunctionStatus, ProviderDetails,
    ProviderInfo, ScaleServiceRequest, Secret, VersionInfo,
};
use graphene_core::provider::{BuildInput, Provider, ProviderError};
use graphene_core::stack::Lang;
use graphene_core::{names, DEFAULT_NAMESPACE};
use serde::Deserialize;

use crate::access::{Action, Identity, Permit};
use crate::error::{ApiError, ApiResult};
use crate::metrics::ReplicaGauge;
use crate::store::StoredFunction;
use crate::Gateway;

type Gw<P> = State<Arc<Gateway<P>>>;
type Who = Extension<Identity>;

#[derive(Debug, Default, Deserialize)]
pub struct NamespaceQuery {
    #[serde(default)]
    namespace: Option<String>,
}

/// The namespace from the body, else the query, else the default; checked.
fn namespace(body: &str, query: &NamespaceQuery) -> ApiResult<String> {
    let ns = [Some(body), query.namespace.as_deref()]
        .into_iter()
        .flatten()
        .find(|s| !s.is_empty())
        .unwrap_or(DEFAULT_NAMESPACE)
        .to_string();
    names::validate("namespace", &ns)
        .map_err(|e| ApiError::bad_request(format!("namespace: {e}")))?;
    Ok(ns)
}

pub(crate) fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "invalid JSON body: {}",
            graphene_core::humanize_serde_error(&e.to_string())
        ))
    })
}

fn accepted() -> Response {
    StatusCode::ACCEPTED.into_response()
}

impl<P: Provider> Gateway<P> {
    async fn status_of(&self, f: StoredFunction) -> FunctionStatus {
        let mut runtime = self
            .provider
            .status(&f.namespace, &f.spec.service)
            .await
            .ok();
        if let Some(r) = runtime.as_mut() {
            r.scaling = self.scaler.status(&f.namespace, &f.spec.service).await;
        }
        let qualified = format!("{}.{}", f.spec.service, f.namespace);
        let s = f.spec;
        FunctionStatus {
            invocation_count: self.metrics.invocations(&qualified) as f64,
            replicas: runtime.as_ref().map_or(0, |r| r.desired_replicas),
            available_replicas: runtime.as_ref().map_or(0, |r| r.ready_replicas),
            created_at: f.created_at,
            graphene: runtime,
            name: s.service,
            image: s.image,
            namespace: f.namespace,
            env_process: s.env_process,
            env_vars: s.env_vars,
            constraints: s.constraints,
            secrets: s.secrets,
            labels: s.labels,
            annotations: s.annotations,
            limits: s.limits,
            requests: s.requests,
            read_only_root_filesystem: s.read_only_root_filesystem,
        }
    }

    /// Whether `who` could do `action` (for filtering lists; takes nothing
    /// from rate limits).
    fn can(&self, who: &Identity, action: Action, namespace: &str, name: &str) -> bool {
        self.policy().permit(who, action, namespace, name) != Permit::Denied
    }

    async fn apply(
        &self,
        who: &Identity,
        spec: FunctionDeployment,
        query: &NamespaceQuery,
        must_exist: bool,
    ) -> ApiResult<Response> {
        let ns = namespace(&spec.namespace, query)?;
        self.authorize(who, Action::Deploy, &ns, &spec.service)?;
        // What a deploy grant alone may not do: mount secrets it may not
        // manage, open the function to anyone, or point it at a host.
        for secret in &spec.secrets {
            self.authorize(who, Action::ManageSecrets, &ns, secret)?;
        }
        let settings = graphene_core::settings::FunctionSettings::from_deployment(&spec)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        if settings.public || settings.upstream.is_some() {
            self.authorize(who, Action::Admin, &ns, &spec.service)?;
        }
        let existing = self.store.function(&ns, &spec.service)?;
        if must_exist && existing.is_none() {
            return Err(ApiError::no_function(&spec.service, &ns));
        }
        let replicas = existing.and_then(|f| f.replicas);
        let d = self.deployment(&ns, spec.clone(), replicas)?;
        self.deploy(d).await?;
        self.store.put_function(&ns, &spec)?;
        self.reload_access()?;
        let verb = if must_exist {
            "function.update"
        } else {
            "function.deploy"
        };
        self.audited(
            who,
            verb,
            &format!("{}.{ns}", spec.service),
            format!("image {}", spec.image),
        );
        tracing::info!(function = %spec.service, namespace = %ns, image = %spec.image, "deployed");
        Ok(accepted())
    }

    /// Deploys again every function that uses a secret, so their files
    /// follow the new value.
    async fn refresh_users_of(&self, namespace: &str, secret: &str) -> ApiResult<()> {
        for f in self.store.functions(Some(namespace))? {
            if f.spec.secrets.iter().any(|s| s == secret) {
                let d = self.deployment(namespace, f.spec, f.replicas)?;
                self.deploy(d).await?;
            }
        }
        Ok(())
    }
}

pub async fn list<P: Provider>(
    State(gw): Gw<P>,
    Extension(who): Who,
    Query(q): Query<NamespaceQuery>,
) -> ApiResult<Response> {
    gw.signed_in(&who)?;
    let ns = namespace("", &q)?;
    let mut out = Vec::new();
    for f in gw.store.functions(Some(&ns))? {
        if !gw.can(&who, Action::Read, &ns, &f.spec.service) {
            continue;
        }
        out.push(gw.status_of(f).await);
    }
    Ok(Json(out).into_response())
}

pub async fn describe<P: Provider>(
    State(gw): Gw<P>,
    Extension(who): Who,
    Path(name): Path<String>,
    Query(q): Query<NamespaceQuery>,
) -> ApiResult<Response> {
    let (name, in_path) = names::split_qualified(&name);
    let ns = namespace(in_path.unwrap_or(""), &q)?;
    gw.authorize(&who, Action::Read, &ns, name)?;
    let f = gw
        .store
        .function(&ns, name)?
        .ok_or_else(|| ApiError::no_function(name, &ns))?;
    Ok(Json(gw.status_of(f).await).into_response())
}

pub async fn create<P: Provider>(
    State(gw): Gw<P>,
    Extension(who): Who,
    Query(q): Query<NamespaceQuery>,
    body: Bytes,
) -> ApiResult<Response> {
    gw.signed_in(&who)?;
    gw.apply(&who, parse(&body)?, &q, false).await
}

pub async fn update<P: Provider>(
    State(gw): Gw<P>,
    Extension(who): Who,
    Query(q): Query<NamespaceQuery>,
    body: Bytes,
) -> ApiResult<Response> {
    gw.signed_in(&who)?;
    gw.apply(&who, parse(&body)?, &q, true).await
}

pub async fn delete<P: Provider>(
    State(gw): Gw<P>,
    Extension(who): Who,
    Query(q): Query<NamespaceQuery>,
    body: Bytes,
) -> ApiResult<Response> {
    gw.signed_in(&who)?;
    let req: DeleteFunctionRequest = parse(&body)?;
    if req.function_name.is_empty() {
        return Err(ApiError::bad_request("functionName: must not be empty"));
    }
    let ns = namespace(&req.namespace, &q)?;
    gw.authorize(&who, Action::Deploy, &ns, &req.function_name)?;
    if !gw.store.delete_function(&ns, &req.function_name)? {
        return Err(ApiError::no_function(&req.function_name, &ns));
    }
    gw.reload_access()?;
    gw.audited(
        &who,
        "function.remove",
        &format!("{}.{ns}", req.function_name),
        String::new(),
    );
    gw.scaler.forget(&ns, &req.function_name);
    gw.dispatch.forget(&ns, &req.function_name);
    gw.cancel_jobs_of(&ns, &req.function_name).await;
    match gw.provider.remove(&ns, &req.function_name).await {
        Ok(()) | Err(ProviderError::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    tracing::info!(function = %req.function_name, namespace = %ns, "removed");
    Ok(accepted())
}

pub async fn scale<P: Provider>(
    State(gw): Gw<P>,
    Extension(who): Who,
    Path(name): Path<String>,
    Query(q): Query<NamespaceQuery>,
    body: Bytes,
) -> ApiResult<Response> {
    gw.signed_in(&who)?;
    let req: ScaleServiceRequest = parse(&body)?;
    let (name, in_path) = names::split_qualified(&name);
    let ns = namespace(in_path.unwrap_or(&req.namespace), &q)?;
    gw.authorize(&who, Action::Deploy, &ns, name)?;
    let f = gw
        .store
        .function(&ns, name)?
        .ok_or_else(|| ApiError::no_function(name, &ns))?;
    let settings = graphene_core::settings::FunctionSettings::from_deployment(&f.spec)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    check_manual_scale(req.replicas, &settings.scaling)?;
    gw.scale_by_hand(&ns, name, req.replicas).await?;
    gw.audited(
        &who,
        "function.scale",
        &format!("{name}.{ns}"),
        format!("{} replicas", req.replicas),
    );
    tracing::info!(function = %name, namespace = %ns, replicas = req.replicas, "scaled");
    Ok(accepted())
}

/// Zero is always allowed (the next call wakes the function). Otherwise the
/// count must lie within min and max, unless autoscaling is off (min == max).
fn check_manual_scale(replicas: u64, policy: &graphene_core::autoscale::Policy) -> ApiResult<()> {
    use graphene_core::settings::{LABEL_SCALE_MAX, LABEL_SCALE_MIN, MAX_REPLICAS};
    let bad = |reason: String| Err(ApiError::bad_request(format!("replicas: {reason}")));
    if replicas == 0 {
        return Ok(());
    }
    if !policy.enabled() {
        if replicas > MAX_REPLICAS {
            return bad(format!(
                "{replicas} is above the limit of {MAX_REPLICAS} replicas per function"
            ));
        }
        return Ok(());
    }
    if replicas > policy.max {
        return bad(format!(
            "{replicas} is above the function's maximum ({} from {LABEL_SCALE_MAX})",
            policy.max
        ));
    }
    if replicas < policy.min {
        return bad(format!(
            "{replicas} is below the function's minimum ({} from {LABEL_SCALE_MIN}); 0 is allowed",
            policy.min
        ));
    }
    Ok(())
}

pub async fn namespaces<P: Provider>(State(gw): Gw<P>, Extension(who): Who) -> ApiResult<Response> {
    gw.signed_in(&who)?;
    let mut all = gw.store.namespaces()?;
    if !all.iter().any(|n| n == DEFAULT_NAMESPACE) {
        all.insert(0, DEFAULT_NAMESPACE.to_string());
    }
    let policy = gw.policy();
    all.retain(|ns| policy.sees_namespace(&who, ns));
    Ok(Json(all).into_response())
}

pub async fn secrets<P: Provider>(
    State(gw): Gw<P>,
    Extension(who): Who,
    Query(q): Query<NamespaceQuery>,
) -> ApiResult<Response> {
    gw.signed_in(&who)?;
    let ns = namespace("", &q)?;
    let list: Vec<Secret> = gw
        .store
        .secret_names(&ns)?
        .into_iter()
        .filter(|name| gw.can(&who, Action::ManageSecrets, &ns, name))
        .map(|name| Secret {
            name,
            namespace: ns.clone(),
            ..Default::default()
        })
        .collect();
    Ok(Json(list).into_response())
}

/// The secret's name, namespace and value from a request body.
fn secret_body(body: &[u8], q: &NamespaceQuery) -> ApiResult<(String, String, Vec<u8>)> {
    let s: Secret = parse(body)?;
    names::validate("secret", &s.name).map_err(|e| ApiError::bad_request(format!("name: {e}")))?;
    let ns = namespace(&s.namespace, q)?;
    let value = if s.raw_value.is_empty() {
        s.value.into_bytes()
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(&s.raw_value)
            .map_err(|_| ApiError::bad_request("rawValue: must be base64"))?
    };
    Ok((s.name, ns, value))
}

pub async fn secret_create<P: Provider>(
    State(gw): Gw<P>,
    Extension(who): Who,
    Query(q): Query<NamespaceQuery>,
    body: Bytes,
) -> ApiResult<Response> {
    gw.signed_in(&who)?;
    let (name, ns, value) = secret_body(&body, &q)?;
    gw.authorize(&who, Action::ManageSecrets, &ns, &name)?;
    if value.is_empty() {
        return Err(ApiError::bad_request("value: must not be empty"));
    }
    if !gw.store.put_secret(&ns, &name, &value, false)? {
        return Err(ApiError::conflict(format!(
            "secret {name} already exists in namespace {ns}; use `graphene secret update` to change it"
        )));
    }
    gw.audited(
        &who,
        "secret.create",
        &format!("{name}.{ns}"),
        String::new(),
    );
    tracing::info!(secret = %name, namespace = %ns, "secret created");
    Ok(accepted())
}

pub async fn secret_update<P: Provider>(
    State(gw): Gw<P>,
    Extension(who): Who,
    Query(q): Query<NamespaceQuery>,
    body: Bytes,
) -> ApiResult<Response> {
    gw.signed_in(&who)?;
    let (name, ns, value) = secret_body(&body, &q)?;
    gw.authorize(&who, Action::ManageSecrets, &ns, &name)?;
    if value.is_empty() {
        return Err(ApiError::bad_request("value: must not be empty"));
    }
    if !gw.store.put_secret(&ns, &name, &value, true)? {
        return Err(ApiError::not_found(format!(
            "secret {name} not found in namespace {ns}"
        )));
    }
    gw.refresh_users_of(&ns, &name).await?;
    gw.audited(
        &who,
        "secret.update",
        &format!("{name}.{ns}"),
        String::new(),
    );
    tracing::info!(secret = %name, namespace = %ns, "secret updated");
    Ok(accepted())
}

pub async fn secret_delete<P: Provider>(
    State(gw): Gw<P>,
    Extension(who): Who,
    Query(q): Query<NamespaceQuery>,
    body: Bytes,
) -> ApiResult<Response> {
    gw.signed_in(&who)?;
    let (name, ns, _) = secret_body(&body, &q)?;
    gw.authorize(&who, Action::ManageSecrets, &ns, &name)?;
    let users: Vec<String> = gw
        .store
        .functions(Some(&ns))?
        .into_iter()
        .filter(|f| f.spec.secrets.contains(&name))
        .map(|f| f.spec.service)
        .collect();
    if !users.is_empty() {
        let named: Vec<&str> = users
            .iter()
            .filter(|f| gw.can(&who, Action::Read, &ns, f))
            .map(String::as_str)
            .collect();
        let who_uses = match named.len() == users.len() {
            true => named.join(", "),
            false => format!("{} functions", users.len()),
        };
        return Err(ApiError::conflict(format!(
            "secret {name} is used by {who_uses}; remove it from those functions first"
        )));
    }
    if !gw.store.delete_secret(&ns, &name)? {
        return Err(ApiError::not_found(format!(
            "secret {name} not found in namespace {ns}"
        )));
    }
    gw.audited(
        &who,
        "secret.remove",
        &format!("{name}.{ns}"),
        String::new(),
    );
    tracing::info!(secret = %name, namespace = %ns, "secret removed");
    Ok(accepted())
}

#[derive(Debug, Deserialize)]
pub struct LogQuery {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    tail: Option<String>,
    #[serde(default)]
    follow: Option<String>,
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    instance: Option<String>,
}

pub async fn logs<P: Provider>(
    State(gw): Gw<P>,
    Extension(who): Who,
    Query(q): Query<LogQuery>,
) -> ApiResult<Response> {
    gw.signed_in(&who)?;
    if q.name.is_empty() {
        return Err(ApiError::bad_request(
            "name: the function whose logs to read is required",
        ));
    }
    let ns = namespace(
        q.namespace.as_deref().unwrap_or(""),
        &NamespaceQuery::default(),
    )?;
    let tail = match q.tail.as_deref() {
        None | Some("") => None,
        Some(t) => match t.parse::<i64>() {
            Ok(n) if n > 0 => Some(n as usize),
            Ok(_) => None,
            Err(_) => {
                return Err(ApiError::bad_request(format!(
                    "tail: {t:?} is not a whole number"
                )))
            }
        },
    };
    let follow = matches!(
        q.follow.as_deref(),
        Some("true" | "1" | "TRUE" | "True" | "t")
    );
    // RFC 3339 compares lexically at second precision once cut to 19 chars.
    let since = match q.since.as_deref() {
        None | Some("") => None,
        Some(s) if s.len() >= 20 && s.as_bytes()[4] == b'-' && s.as_bytes()[10] == b'T' => {
            s.get(..19).map(str::to_string)
        }
        Some(s) => {
            return Err(ApiError::bad_request(format!(
                "since: {s:?} is not an RFC 3339 time"
            )))
        }
    };
    gw.authorize(&who, Action::Read, &ns, &q.name)?;
    if gw.store.function(&ns, &q.name)?.is_none() {
        return Err(ApiError::no_function(&q.name, &ns));
    }
    let feed = gw.provider.logs(&ns, &q.name, tail, follow)?;
    let keep = move |m: &graphene_core::api::LogMessage| {
        since
            .as_deref()
            .is_none_or(|s| m.timestamp.get(..19).unwrap_or("") >= s)
            && q.instance
                .as_deref()
                .is_none_or(|i| i.is_empty() || m.instance == i)
    };
    let line = |m: &graphene_core::api::LogMessage| {
        let mut b = serde_json::to_vec(m).unwrap_or_default();
        b.push(b'\n');
        Ok::<_, Infallible>(Bytes::from(b))
    };
    let backlog: Vec<_> = feed.backlog.iter().filter(|m| keep(m)).map(line).collect();
    let head = futures_util::stream::iter(backlog);
    let body = match feed.live {
        None => Body::from_stream(head),
        Some(rx) => {
            let live = futures_util::stream::unfold(rx, |mut rx| async move {
                loop {
                    match rx.recv().await {
                        Ok(m) => return Some((m, rx)),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                    }
                }
            })
            .filter(move |m| std::future::ready(keep(m)))
            .map(move |m| line(&m));
            Body::from_stream(head.chain(live))
        }
    };
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

pub async fn info<P: Provider>(State(gw): Gw<P>, Extension(who): Who) -> ApiResult<Response> {
    gw.signed_in(&who)?;
    let version = VersionInfo {
        commit_message: String::new(),
        sha: option_env!("GRAPHENE_GIT_SHA")
            .unwrap_or("unknown")
            .to_string(),
        release: env!("CARGO_PKG_VERSION").to_string(),
    };
    Ok(Json(ProviderInfo {
        provider: ProviderDetails {
            provider: gw.provider.name().to_string(),
            orchestration: "local".to_string(),
            version: version.clone(),
        },
        version,
        arch: std::env::consts::ARCH.to_string(),
    })
    .into_response())
}

#[derive(Debug, Deserialize)]
pub struct BuildQuery {
    #[serde(default)]
    image: String,
    #[serde(default)]
    lang: String,
}

/// Builds an uploaded function folder (a tar) into a named image, streaming
/// progress as NDJSON: `{"log": "..."}` lines, then `{"result": {...}}`.
/// Building runs the function's own install steps as the server's user, so
/// it needs `admin` on everything.
pub async fn build<P: Provider>(
    State(gw): Gw<P>,
    Extension(who): Who,
    Query(q): Query<BuildQuery>,
    request: axum::extract::Request,
) -> ApiResult<Response> {
    gw.signed_in(&who)?;
    let lang = Lang::parse(&q.lang).map_err(|e| ApiError::bad_request(format!("lang: {e}")))?;
    if q.image.trim().is_empty() || q.image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ApiError::bad_request(
            "image: must be a name such as echo:latest",
        ));
    }
    // Install steps (pip) run outside the sandbox, and images are shared by
    // every namespace: building is for admins.
    gw.authorize(&who, Action::Admin, "*", "*")?;
    let archive = axum::body::to_bytes(request.into_body(), crate::MAX_BUILD_UPLOAD)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the function folder is larger than {} bytes",
                    crate::MAX_BUILD_UPLOAD
                ),
            )
        })?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<serde_json::Value>();
    let progress_tx = tx.clone();
    let provider = gw.provider.clone();
    let input = BuildInput {
        image: q.image.clone(),
        lang,
        archive,
    };
    tokio::spawn(async move {
        let progress = Box::new(move |line: &str| {
            let _ = progress_tx.send(serde_json::json!({ "log": line }));
        });
        let result = provider
            .build(input, progress)
            .await
            .unwrap_or_else(|e| BuildResult {
                ok: false,
                image: q.image.clone(),
                digest: String::new(),
                cached: false,
                error: e.to_string(),
            });
        tracing::info!(image = %result.image, ok = result.ok, cached = result.cached, "build finished");
        let _ = tx.send(serde_json::json!({ "result": result }));
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let v = rx.recv().await?;
        let mut b = serde_json::to_vec(&v).unwrap_or_default();
        b.push(b'\n');
        Some((Ok::<_, Infallible>(Bytes::from(b)), rx))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Names every function, so it needs `read` on everything.
pub async fn metrics<P: Provider>(State(gw): Gw<P>, Extension(who): Who) -> ApiResult<Response> {
    gw.authorize(&who, Action::Read, "*", "*")?;
    let mut gauges = Vec::new();
    for f in gw.store.functions(None)? {
        if let Ok(r) = gw.provider.status(&f.namespace, &f.spec.service).await {
            gauges.push(ReplicaGauge {
                function: format!("{}.{}", f.spec.service, f.namespace),
                desired: r.desired_replicas,
                ready: r.ready_replicas,
                restarts: r.restarts,
                in_flight: gw.scaler.in_flight(&f.namespace, &f.spec.service),
                queued: r.queued,
            });
        }
    }
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        gw.metrics.render(&gauges),
    )
        .into_response())
}
