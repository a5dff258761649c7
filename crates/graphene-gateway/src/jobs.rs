//! Asynchronous calls: `/async-function/<name>[.<ns>][/<path>]` stores the
//! request durably (graphene-queue) and answers 202 with `X-Call-Id`; the
//! dispatcher runs due jobs, at most `com.graphene.async.concurrency` at once
//! per function, through the same provider and autoscaler as synchronous
//! calls; failures the function's retry policy names are tried again with
//! backoff; the result is kept for `GET /async-function/status/<id>` and
//! POSTed to `X-Callback-Url` (itself retried). A job is run at least once:
//! one whose gateway died while it ran is run again.
//!
//! There is one dispatcher whatever the backend: it claims deliveries from
//! the `graphene_queue::JobQueue` (SQLite or NATS JetStream), keeps their
//! leases while they run, and settles them; the same failure ends the same
//! way on both.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use graphene_core::names::FunctionRef;
use graphene_core::provider::{Invocation, Provider, ProviderError};
use graphene_core::DEFAULT_NAMESPACE;
use graphene_queue::{Cancel, Delivery, NewJob, Outcome, Room, State as JobState};
use http_body_util::Full;
use serde::Deserialize;

use crate::access::{Action, Identity, Permit};
use crate::calls;
use crate::error::{ApiError, ApiResult};
use crate::Gateway;

/// How long a running job is leased; renewed every third of it.
const LEASE: Duration = Duration::from_secs(30);
/// Jobs running at once across all functions.
const MAX_RUNNING: usize = 256;
/// Callbacks being delivered at once.
const MAX_CALLBACKS: usize = 32;
const CALLBACK_TIMEOUT: Duration = Duration::from_secs(30);
/// Headers not kept with a job: credentials are not stored.
const NOT_STORED: &[&str] = &["cookie", "x-callback-url", "host"];

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// What follows an attempt.
pub(crate) enum Decision {
    Retry { wait: Duration, error: String },
    Finish { succeeded: bool, outcome: Outcome },
}

/// A backend failure: logged; the caller gets a 503.
fn unavailable(e: String) -> ApiError {
    tracing::warn!(error = %e, "job queue");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the job queue is unavailable; try again shortly",
    )
}

/// The dispatcher's global counts and wake-ups; each function's own
/// settings and running count live in its registry record.
#[derive(Default)]
pub struct Dispatch {
    running: AtomicUsize,
    wake: tokio::sync::Notify,
    /// A job ended: its callback may be due.
    callbacks_due: tokio::sync::Notify,
}

/// One running job of a function, counted while it lives.
pub(crate) struct Running(Arc<AtomicU64>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<P: Provider> Gateway<P> {
    /// Room for more jobs per function, at most `free` in all.
    fn room(&self, free: usize) -> Vec<Room> {
        let mut left = free;
        let mut out = Vec::new();
        for r in self.registry.list(None) {
            let concurrency = r.async_concurrency();
            let n = (concurrency.saturating_sub(r.jobs_running.load(Ordering::Acquire)) as usize)
                .min(left);
            left -= n;
            out.push(Room {
                namespace: r.id.namespace.clone(),
                function: r.id.name.clone(),
                concurrency,
                free: n,
            });
        }
        out
    }

    /// Counts a job of the function as running until the guard drops.
    fn job_starts(&self, f: &FunctionRef) -> Option<Running> {
        let c = self.registry.get(f)?.jobs_running.clone();
        c.fetch_add(1, Ordering::AcqRel);
        Some(Running(c))
    }
}

/// `POST /async-function/<name>[.<namespace>][/<path>]`.
pub async fn enqueue<P: Provider>(
    State(gw): State<Arc<Gateway<P>>>,
    Extension(who): Extension<Identity>,
    req: Request,
) -> ApiResult<Response> {
    let (parts, body) = req.into_parts();
    let (name, ns, path) = crate::invoke::route(parts.uri.path(), "/async-function/");
    gw.authorize(&who, Action::Invoke, ns, name)?;
    let retry = match gw.registry.get(&FunctionRef::new(ns, name)) {
        Some(r) => r.desired().settings.retry.clone(),
        None => return Err(ApiError::no_function(name, ns)),
    };
    let header = |k: &str| parts.headers.get(k).and_then(|v| v.to_str().ok());
    let callback = match header("x-callback-url").map(str::trim) {
        None | Some("") => None,
        Some(url) => {
            let ok = (url.starts_with("http://") || url.starts_with("https://"))
                && url.parse::<hyper::Uri>().is_ok_and(|u| u.host().is_some());
            if !ok {
                return Err(ApiError::bad_request(
                    "X-Callback-Url: must be an absolute http:// or https:// URL",
                ));
            }
            Some(url.to_string())
        }
    };
    let id = calls::call_id(&parts.headers)?;
    let body = calls::read_body(&parts.headers, body, gw.config.max_body).await?;
    if let Some(limit) = gw.jobs.max_body().filter(|l| body.len() > *l) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body is larger than the {limit} bytes a job can carry in this job queue (NATS: its max_payload)"
            ),
        ));
    }
    let job = NewJob {
        id: id.clone(),
        namespace: ns.to_string(),
        function: name.to_string(),
        method: parts.method.as_str().to_string(),
        path: path.to_string(),
        query: parts.uri.query().unwrap_or("").to_string(),
        headers: calls::forwarded(&parts.headers, NOT_STORED, &id),
        body: body.to_vec(),
        callback,
        principal: who.principal.clone(),
        retry,
    };
    match gw.jobs.enqueue(job, now_ms()).await.map_err(unavailable)? {
        None => {
            gw.dispatch.wake.notify_one();
            tracing::debug!(call_id = %id, function = %name, "job accepted");
        }
        Some(owner) if owner != who.principal => {
            return Err(ApiError::conflict(
                "X-Call-Id: this call id was already used by another caller; pick another",
            ))
        }
        Some(_) => {}
    }
    let mut r = StatusCode::ACCEPTED.into_response();
    if let Ok(v) = HeaderValue::from_str(&id) {
        r.headers_mut().insert("x-call-id", v);
    }
    Ok(r)
}

impl<P: Provider> Gateway<P> {
    /// The job, if `who` asked for it or may `action` its function; a job
    /// they may not see is reported missing.
    async fn job_for(
        &self,
        who: &Identity,
        id: &str,
        action: Action,
    ) -> ApiResult<graphene_queue::JobStatus> {
        let found = self.jobs.status(id).await.map_err(unavailable)?;
        let missing = || ApiError::not_found(format!("no job with call id {id}"));
        let Some(s) = found else {
            self.signed_in(who)?;
            return Err(missing());
        };
        if s.principal == who.principal
            || self.policy().permit(who, action, &s.namespace, &s.function) != Permit::Denied
        {
            return Ok(s);
        }
        self.signed_in(who)?;
        Err(missing())
    }

    /// A removed function's queued jobs end as cancelled.
    pub(crate) async fn cancel_jobs_of(&self, f: &FunctionRef) {
        let cancelled = self
            .jobs
            .cancel_function(&f.namespace, &f.name, now_ms())
            .await;
        match cancelled {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "cancelled the queued jobs of a removed function"),
            Err(e) => tracing::warn!(error = %e, "could not cancel a removed function's jobs"),
        }
    }

    /// Starts the one dispatcher (whatever the backend) and the callback
    /// sender.
    pub(crate) fn start_jobs(self: &Arc<Self>) {
        let gw = self.clone();
        tokio::spawn(async move {
            match gw.jobs.recover(now_ms()).await {
                Ok(n) if n > 0 => tracing::info!(
                    jobs = n,
                    "queued again the jobs that were running when the server stopped"
                ),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "could not requeue running jobs"),
            }
            gw.dispatch_loop().await;
        });
        let gw = self.clone();
        tokio::spawn(async move { gw.callback_loop().await });
    }

    async fn dispatch_loop(self: Arc<Self>) {
        loop {
            let _ = tokio::time::timeout(Duration::from_millis(200), self.dispatch.wake.notified())
                .await;
            let now = now_ms();
            if let Err(e) = self.jobs.maintain(now, self.config.job_retention).await {
                tracing::warn!(error = %e, "job queue upkeep");
                continue;
            }
            let free = MAX_RUNNING.saturating_sub(self.dispatch.running.load(Ordering::Acquire));
            if free == 0 {
                continue;
            }
            let room = self.room(free);
            match self.jobs.claim(&room, now, LEASE).await {
                Ok(claimed) => {
                    for d in claimed {
                        let counted =
                            self.job_starts(&FunctionRef::new(&d.job.namespace, &d.job.function));
                        self.dispatch.running.fetch_add(1, Ordering::AcqRel);
                        let gw = self.clone();
                        tokio::spawn(async move {
                            gw.run_job(d).await;
                            drop(counted);
                            gw.dispatch.running.fetch_sub(1, Ordering::AcqRel);
                            gw.dispatch.wake.notify_one();
                        });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not claim jobs"),
            }
        }
    }

    /// Runs one attempt of a job and decides what follows: another try
    /// after a wait, or the end.
    pub(crate) async fn attempt(&self, j: &NewJob, attempt: u32) -> Decision {
        // Deliveries after a lost worker count too: a job that keeps taking
        // its gateway down ends instead of looping.
        if attempt > j.retry.attempts {
            return Decision::Finish {
                succeeded: false,
                outcome: Outcome {
                    code: 500,
                    body: Vec::new(),
                    headers: Vec::new(),
                    duration_ms: 0,
                    error: Some(format!(
                        "its worker was lost; gave up after {} attempts",
                        attempt - 1
                    )),
                },
            };
        }
        let started = Instant::now();
        let function = FunctionRef::new(&j.namespace, &j.function);
        self.metrics.started(&function);
        let mut headers = j.headers.clone();
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("x-call-id"))
        {
            headers.push(("x-call-id".into(), j.id.clone()));
        }
        // A removed function has no record; the provider then answers 404.
        let load = match self.registry.get(&function) {
            Some(r) => Some(self.call_starts(&r).await.0),
            None => None,
        };
        let result = self
            .provider
            .invoke(
                &function,
                Invocation {
                    method: j.method.clone(),
                    path: j.path.clone(),
                    query: j.query.clone(),
                    headers,
                    body: Bytes::from(j.body.clone()).into(),
                    call_id: j.id.clone(),
                },
            )
            .await;
        let result = match result {
            // A job keeps at most the result limit: read no more than that.
            Ok(r) => match r
                .body
                .collect(self.config.job_result_limit.max(1 << 20) * 2)
                .await
            {
                Ok(body) => Ok((r.status, r.headers, body)),
                Err(e) => Err(ProviderError::Upstream(e.to_string())),
            },
            Err(e) => Err(e),
        };
        drop(load);
        let duration_ms = started.elapsed().as_millis() as u64;
        let mut outcome = match result {
            Ok((status, headers, body)) => Outcome {
                code: status,
                body: body.to_vec(),
                headers,
                duration_ms,
                error: (status >= 400).then(|| format!("the function answered {status}")),
            },
            Err(e) => {
                let gone = matches!(e, ProviderError::NotFound(_));
                let api = ApiError::from(e);
                Outcome {
                    code: if gone { 404 } else { api.status.as_u16() },
                    body: api.message.clone().into_bytes(),
                    headers: vec![("content-type".into(), "text/plain".into())],
                    duration_ms,
                    error: Some(api.message),
                }
            }
        };
        self.metrics
            .finished(&function, outcome.code, started.elapsed().as_secs_f64());
        if j.retry.retries(outcome.code) && attempt < j.retry.attempts {
            let wait = j.retry.backoff(attempt + 1, rand::random::<f64>());
            tracing::info!(call_id = %j.id, attempt, code = outcome.code, wait_ms = wait.as_millis() as u64, "job will be tried again");
            self.metrics.job(&function, "retried");
            return Decision::Retry {
                wait,
                error: outcome.error.unwrap_or_default(),
            };
        }
        let succeeded = outcome.code < 400;
        if !succeeded && attempt > 1 {
            outcome.error = outcome
                .error
                .map(|e| format!("{e} (gave up after {attempt} attempts)"));
        }
        self.metrics
            .job(&function, if succeeded { "succeeded" } else { "failed" });
        Decision::Finish { succeeded, outcome }
    }

    async fn run_job(self: &Arc<Self>, d: Delivery) {
        let (j, attempt) = (&d.job, d.attempt);
        // The lease is kept while the call runs, however long it takes.
        let keep = async {
            loop {
                // Often enough that a busy machine never lets it lapse.
                tokio::time::sleep(LEASE / 6).await;
                if let Err(e) = self.jobs.keep(&d, now_ms(), LEASE).await {
                    tracing::warn!(call_id = %j.id, error = %e, "could not renew a job's lease");
                }
            }
        };
        let decision = tokio::select! {
            decision = self.attempt(j, attempt) => decision,
            _ = keep => unreachable!("keeping a lease never ends"),
        };
        let stored = match &decision {
            Decision::Retry { wait, error } => self.jobs.retry(&d, *wait, error, now_ms()).await,
            Decision::Finish { succeeded, outcome } => {
                self.jobs.finish(&d, *succeeded, outcome, now_ms()).await
            }
        };
        match stored {
            Ok(true) => self.dispatch.callbacks_due.notify_one(),
            Ok(false) => {
                tracing::info!(call_id = %j.id, attempt, "a newer attempt of this job took over; this one's outcome is dropped")
            }
            Err(e) => {
                tracing::error!(call_id = %j.id, error = %e, "could not record a job's outcome; it runs again when its lease ends")
            }
        }
    }

    async fn callback_loop(self: Arc<Self>) {
        let http = match graphene_http::client::<Full<Bytes>>(None) {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "no HTTP client for callbacks");
                return;
            }
        };
        // Deliveries under way, so a due callback is not sent twice at once.
        // The query and the claim happen under this lock, which a finished
        // delivery also takes (after recording itself), so a callback
        // delivered meanwhile is never picked up again.
        let sending: Arc<tokio::sync::Mutex<HashSet<String>>> = Default::default();
        loop {
            let _ = tokio::time::timeout(
                Duration::from_millis(100),
                self.dispatch.callbacks_due.notified(),
            )
            .await;
            let due = {
                let mut sending = sending.lock().await;
                let free = MAX_CALLBACKS.saturating_sub(sending.len());
                if free == 0 {
                    continue;
                }
                match self.jobs.callbacks(now_ms(), sending.len() + free).await {
                    Ok(due) => due
                        .into_iter()
                        .filter(|c| sending.insert(c.callback.id.clone()))
                        .collect::<Vec<_>>(),
                    Err(e) => {
                        tracing::warn!(error = %e, "job queue");
                        continue;
                    }
                }
            };
            for c in due {
                let gw = self.clone();
                let http = http.clone();
                let sending = sending.clone();
                tokio::spawn(async move {
                    let cb = &c.callback;
                    let error = deliver(&http, cb).await.err();
                    if let Some(e) = &error {
                        tracing::info!(call_id = %cb.id, url = %cb.url, error = %e, "callback not delivered; it will be tried again");
                    }
                    let mut sending = sending.lock().await;
                    if let Err(e) = gw.jobs.callback_done(&c, error.as_deref(), now_ms()).await {
                        tracing::warn!(error = %e, "could not record a callback");
                    }
                    sending.remove(&cb.id);
                    drop(sending);
                    gw.dispatch.callbacks_due.notify_one();
                });
            }
        }
    }
}

pub(crate) type Http =
    hyper_util::client::legacy::Client<graphene_http::HttpsConnector, Full<Bytes>>;

/// POSTs a job's result with OpenFaaS's callback headers.
pub(crate) async fn deliver(http: &Http, cb: &graphene_queue::Callback) -> Result<(), String> {
    let mut req = hyper::Request::post(&cb.url)
        .header("x-call-id", &cb.id)
        .header("x-function-status", cb.code.to_string())
        .header("x-function-name", &cb.function)
        .header("x-function-namespace", &cb.namespace)
        .header(
            "x-duration-seconds",
            format!("{:.6}", cb.duration_ms as f64 / 1000.0),
        );
    if cb.truncated {
        req = req.header("x-result-truncated", "true");
    }
    for (k, v) in &cb.headers {
        if k.eq_ignore_ascii_case("content-type") {
            req = req.header("content-type", v);
        }
    }
    let req = req
        .body(Full::new(Bytes::from(cb.body.clone())))
        .map_err(|e| format!("bad callback request: {e}"))?;
    let resp = tokio::time::timeout(CALLBACK_TIMEOUT, http.request(req))
        .await
        .map_err(|_| format!("no answer in {CALLBACK_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    match resp.status() {
        s if s.is_success() => Ok(()),
        s => Err(format!("the receiver answered {s}")),
    }
}

/// `GET /async-function/status/<call-id>`.
pub async fn status<P: Provider>(
    State(gw): State<Arc<Gateway<P>>>,
    Extension(who): Extension<Identity>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    Ok(Json(gw.job_for(&who, &id, Action::Read).await?).into_response())
}

/// `DELETE /async-function/status/<call-id>`: cancels a queued job.
pub async fn cancel<P: Provider>(
    State(gw): State<Arc<Gateway<P>>>,
    Extension(who): Extension<Identity>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    gw.job_for(&who, &id, Action::Invoke).await?;
    match gw.jobs.cancel(&id, now_ms()).await.map_err(unavailable)? {
        Cancel::Cancelled => {
            tracing::info!(call_id = %id, by = %who.principal, "job cancelled");
            Ok(StatusCode::OK.into_response())
        }
        Cancel::NotFound => Err(ApiError::not_found(format!("no job with call id {id}"))),
        Cancel::Already(s) => Err(ApiError::conflict(format!(
            "job {id} is {} and can no longer be cancelled (only queued jobs can)",
            s.name()
        ))),
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    function: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /system/jobs`: jobs of the functions the caller may read.
pub async fn list<P: Provider>(
    State(gw): State<Arc<Gateway<P>>>,
    Extension(who): Extension<Identity>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Response> {
    gw.signed_in(&who)?;
    let ns = q
        .namespace
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    let state = match q.state.as_deref() {
        None | Some("") => None,
        Some(s) => Some(JobState::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "state: {s:?} is not one of queued, running, succeeded, failed, cancelled"
            ))
        })?),
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let function = q.function.filter(|f| !f.is_empty());
    let policy = gw.policy();
    let list: Vec<_> = gw
        .jobs
        .list(&ns, function.as_deref(), state, limit)
        .await
        .map_err(unavailable)?
        .into_iter()
        .filter(|s| {
            s.principal == who.principal
                || policy.permit(&who, Action::Read, &s.namespace, &s.function) != Permit::Denied
        })
        .collect();
    Ok(Json(list).into_response())
}
