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
    ProviderInfo, Rollout, ScaleServiceRequest, Secret, VersionInfo,
};
use graphene_core::names::FunctionRef;
use graphene_core::provider::{BuildInput, Provider};
use graphene_core::settings::FunctionSettings;
use graphene_core::stack::Lang;
use graphene_core::{names, DEFAULT_NAMESPACE};
use serde::Deserialize;

use crate::access::{Action, Identity, Permit};
use crate::error::{ApiError, ApiResult};
use crate::metrics::ReplicaGauge;
use crate::registry::Record;
use crate::Gateway;

type Gw<P> = State<Arc<Gateway<P>>>;
type Who = Extension<Identity>;

#[derive(Debug, Default, Deserialize)]
pub struct NamespaceQuery {
    #[serde(default)]
    namespace: Option<String>,
}

/// The namespace from the body, else the query, else the default; checked.
pub(crate) fn namespace(body: &str, query: &NamespaceQuery) -> ApiResult<String> {
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

pub(crate) fn accepted_revision(revision: u64) -> Response {
    let mut r = accepted();
    r.headers_mut().insert(
        graphene_core::api::REVISION_HEADER,
        axum::http::HeaderValue::from(revision),
    );
    r
}

impl<P: Provider> Gateway<P> {
    /// A function as OpenFaaS shows it, with the runtime's status and the
    /// registry's view (revisions, scaling, reconcile) under `graphene`.
    async fn status_of(&self, r: &Record) -> FunctionStatus {
        let d = r.desired();
        let mut runtime = self.provider.status(&r.id).await.unwrap_or_default();
        runtime.scaling = Some(r.scaling.status());
        runtime.serving_revision = d.serving();
        let latest = d.latest();
        runtime.latest = Some(Rollout {
            revision: latest.revision,
            state: latest.state,
            reason: latest.reason.clone(),
        });
        runtime.reconcile = Some(r.reconcile_status());
        let s = d.latest().spec.clone();
        FunctionStatus {
            invocation_count: self.metrics.invocations(&r.id) as f64,
            replicas: r.scaling.desired(),
            available_replicas: runtime.ready_replicas,
            created_at: r.created_at.clone(),
            graphene: Some(runtime),
            name: r.id.name.clone(),
            image: s.image,
            namespace: r.id.namespace.clone(),
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

    /// Checks a deployment as the caller may make it, then records it in
    /// the registry (a new revision when it changes anything); the
    /// reconciler hands it to the provider. Answers with the revision.
    pub(crate) async fn apply(
        self: &Arc<Self>,
        who: &Identity,
        id: &FunctionRef,
        spec: FunctionDeployment,
        rollback_of: Option<u64>,
    ) -> ApiResult<u64> {
        self.authorize(who, Action::Deploy, &id.namespace, &id.name)?;
        // What a deploy grant alone may not do: mount secrets it may not
        // manage, open the function to anyone, or point it at a host.
        for secret in &spec.secrets {
            self.authorize(who, Action::ManageSecrets, &id.namespace, secret)?;
        }
        let settings = FunctionSettings::from_deployment(&spec)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let annotations = spec.annotations.clone().unwrap_or_default();
        let privileged = graphene_core::settings::PRIVILEGED_ANNOTATIONS
            .iter()
            .any(|k| annotations.contains_key(*k));
        if settings.public || privileged {
            self.authorize(who, Action::Admin, &id.namespace, &id.name)?;
        }
        self.record_deploy(who, id, spec, settings, rollback_of)
            .await
    }

    /// Records a deployment already authorised (by the caller's grants, or
    /// by whoever may write the store it was declared in).
    pub(crate) async fn record_deploy(
        self: &Arc<Self>,
        who: &Identity,
        id: &FunctionRef,
        mut spec: FunctionDeployment,
        settings: FunctionSettings,
        rollback_of: Option<u64>,
    ) -> ApiResult<u64> {
        spec.namespace = id.namespace.clone();
        // A rollback runs the build its revision ran; a deploy, the build
        // the name refers to now.
        let digest = match rollback_of {
            Some(n) => self
                .registry
                .get(id)
                .and_then(|r| r.desired().revision(n).map(|s| s.digest.clone()))
                .unwrap_or_default(),
            None => self.builder.resolve(&spec.image).unwrap_or_default(),
        };
        let writing = self.registry.writing().await;
        let existing = self.registry.get(id);
        self.provider.check(&graphene_core::provider::Deployment {
            function: id.clone(),
            revision: 0,
            spec: spec.clone(),
            settings: settings.clone(),
            image_digest: digest.clone(),
            secrets: self.secrets_of(&id.namespace, &spec.secrets).await?,
            replicas: 0,
        })?;
        let change = crate::registry::Change {
            spec: spec.clone(),
            settings,
            digest,
            by: who.principal.clone(),
            rollback_of,
        };
        let (record, revision, new) = self.registry.deploy(&writing, id, change).await?;
        drop(writing);
        if existing.is_none() {
            self.start_reconciler(record.clone());
        }
        self.handed_over(&record).await;
        // Public functions are part of the access policy.
        self.reload_access()?;
        let (verb, detail) = match (rollback_of, existing.is_some()) {
            (Some(n), _) => (
                "function.rollback",
                format!("revision {revision} from revision {n}"),
            ),
            (None, true) => (
                "function.update",
                format!("revision {revision}, image {}", spec.image),
            ),
            (None, false) => (
                "function.deploy",
                format!("revision {revision}, image {}", spec.image),
            ),
        };
        self.audited(who, verb, &id.to_string(), detail).await;
        match new {
            true => tracing::info!(function = %id, revision, image = %spec.image, "deployed"),
            false => tracing::info!(function = %id, revision, "deployed unchanged"),
        }
        Ok(revision)
    }

    /// Hands the provider again every function that uses a secret, so
    /// their files follow the new value.
    async fn refresh_users_of(&self, namespace: &str, secret: &str) {
        for r in self.registry.list(Some(namespace)) {
            if r.desired().spec.secrets.iter().any(|s| s == secret) {
                r.touch();
            }
        }
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
    for r in gw.registry.list(Some(&ns)) {
        if gw.can(&who, Action::Read, &ns, &r.id.name) {
            out.push(gw.status_of(&r).await);
        }
    }
    Ok(Json(out).into_response())
}

/// The function a path's `name[.namespace]` and the query name, once the
/// caller may `action` it.
pub(crate) fn target<P: Provider>(
    gw: &Gateway<P>,
    who: &Identity,
    action: Action,
    qualified: &str,
    body_ns: &str,
    q: &NamespaceQuery,
) -> ApiResult<(FunctionRef, Arc<Record>)> {
    let (name, in_path) = names::split_qualified(qualified);
    let ns = namespace(in_path.unwrap_or(body_ns), q)?;
    gw.authorize(who, action, &ns, name)?;
    let id = FunctionRef::new(ns, name);
    let r = gw
        .registry
        .get(&id)
        .ok_or_else(|| ApiError::no_function(&id.name, &id.namespace))?;
    Ok((id, r))
}

pub async fn describe<P: Provider>(
    State(gw): Gw<P>,
    Extension(who): Who,
    Path(name): Path<String>,
    Query(q): Query<NamespaceQuery>,
) -> ApiResult<Response> {
    let (_, r) = target(&gw, &who, Action::Read, &name, "", &q)?;
    Ok(Json(gw.status_of(&r).await).into_response())
}

async fn deploy<P: Provider>(
    gw: Arc<Gateway<P>>,
    who: Identity,
    q: NamespaceQuery,
    body: Bytes,
    must_exist: bool,
) -> ApiResult<Response> {
    gw.signed_in(&who)?;
    let spec: FunctionDeployment = parse(&body)?;
    let ns = namespace(&spec.namespace, &q)?;
    names::validate("function", &spec.service)
        .map_err(|e| ApiError::bad_request(format!("service: {e}")))?;
    let id = FunctionRef::new(ns, &spec.service);
    if must_exist && gw.registry.get(&id).is_none() {
        gw.authorize(&who, Action::Deploy, &id.namespace, &id.name)?;
        return Err(ApiError::no_function(&id.name, &id.namespace));
    }
    let revision = gw.apply(&who, &id, spec, None).await?;
    Ok(accepted_revision(revision))
}

pub async fn create<P: Provider>(
    State(gw): Gw<P>,
    Extension(who): Who,
    Query(q): Query<NamespaceQuery>,
    body: Bytes,
) -> ApiResult<Response> {
    deploy(gw, who, q, body, false).await
}

pub async fn update<P: Provider>(
    State(gw): Gw<P>,
    Extension(who): Who,
    Query(q): Query<NamespaceQuery>,
    body: Bytes,
) -> ApiResult<Response> {
    deploy(gw, who, q, body, true).await
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
    let (id, _) = target(
        &gw,
        &who,
        Action::Deploy,
        &req.function_name,
        &req.namespace,
        &q,
    )?;
    // Gone from the registry first; its reconciler removes it from the
    // provider (until that succeeds).
    let writing = gw.registry.writing().await;
    let removed = gw.registry.remove(&writing, &id).await?;
    drop(writing);
    let Some(removed) = removed else {
        return Err(ApiError::no_function(&id.name, &id.namespace));
    };
    gw.removed_from_runtime(&removed).await;
    gw.reload_access()?;
    gw.audited(&who, "function.remove", &id.to_string(), String::new())
        .await;
    gw.cancel_jobs_of(&id).await;
    tracing::info!(function = %id, "removed");
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
    let (id, r) = target(&gw, &who, Action::Deploy, &name, &req.namespace, &q)?;
    check_manual_scale(req.replicas, &r.desired().settings.scaling)?;
    gw.scale_by_hand(&r, req.replicas).await?;
    gw.audited(
        &who,
        "function.scale",
        &id.to_string(),
        format!("{} replicas", req.replicas),
    )
    .await;
    tracing::info!(function = %id, replicas = req.replicas, "scaled");
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
    let mut all = gw.secrets.namespaces().await?;
    all.extend(
        gw.registry
            .list(None)
            .iter()
            .map(|r| r.id.namespace.clone()),
    );
    all.sort();
    all.dedup();
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
        .secrets
        .names(&ns)
        .await?
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
    if !gw.secrets.put(&ns, &name, &value, false).await? {
        return Err(ApiError::conflict(format!(
            "secret {name} already exists in namespace {ns}; use `graphene secret update` to change it"
        )));
    }
    gw.audited(
        &who,
        "secret.create",
        &format!("{name}.{ns}"),
        String::new(),
    )
    .await;
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
    if !gw.secrets.put(&ns, &name, &value, true).await? {
        return Err(ApiError::not_found(format!(
            "secret {name} not found in namespace {ns}"
        )));
    }
    gw.refresh_users_of(&ns, &name).await;
    gw.audited(
        &who,
        "secret.update",
        &format!("{name}.{ns}"),
        String::new(),
    )
    .await;
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
        .registry
        .list(Some(&ns))
        .into_iter()
        .filter(|r| r.desired().spec.secrets.contains(&name))
        .map(|r| r.id.name.clone())
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
    if !gw.secrets.delete(&ns, &name).await? {
        return Err(ApiError::not_found(format!(
            "secret {name} not found in namespace {ns}"
        )));
    }
    gw.audited(
        &who,
        "secret.remove",
        &format!("{name}.{ns}"),
        String::new(),
    )
    .await;
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
    let id = FunctionRef::new(ns, &q.name);
    if gw.registry.get(&id).is_none() {
        return Err(ApiError::no_function(&id.name, &id.namespace));
    }
    let feed = gw
        .provider
        .logs(&id, graphene_core::provider::LogQuery { tail, follow })
        .await?;
    let keep = move |m: &graphene_core::api::LogMessage| {
        since
            .as_deref()
            .is_none_or(|s| m.timestamp.get(..19).unwrap_or("") >= s)
            && q.instance
                .as_deref()
                .is_none_or(|i| i.is_empty() || m.instance == i)
    };
    let body = Body::from_stream(feed.filter(move |m| std::future::ready(keep(m))).map(|m| {
        let mut b = serde_json::to_vec(&m).unwrap_or_default();
        b.push(b'\n');
        Ok::<_, Infallible>(Bytes::from(b))
    }));
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
            orchestration: gw.provider.orchestration().to_string(),
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
    let builder = gw.builder.clone();
    // Images of revisions that serve or may be rolled back to stay.
    let keep = gw.registry.kept_digests();
    let input = BuildInput {
        image: q.image.clone(),
        lang,
        archive,
    };
    tokio::spawn(async move {
        let progress = Box::new(move |line: &str| {
            let _ = progress_tx.send(serde_json::json!({ "log": line }));
        });
        let result = builder
            .build(input, progress, keep)
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
    for r in gw.registry.list(None) {
        if let Ok(status) = gw.provider.status(&r.id).await {
            gauges.push(ReplicaGauge {
                function: r.id.clone(),
                desired: status.desired_replicas,
                ready: status.ready_replicas,
                restarts: status
                    .details
                    .get("restarts")
                    .and_then(|v| v.as_u64())
                    .unwrap_or(0),
                in_flight: r.scaling.in_flight(),
                queued: status
                    .details
                    .get("queued")
                    .and_then(|v| v.as_u64())
                    .unwrap_or(0),
            });
        }
    }
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        gw.metrics.render(&gauges),
    )
        .into_response())
}
