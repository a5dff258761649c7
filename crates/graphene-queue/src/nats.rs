//! The NATS JetStream backend, for several gateways sharing one queue. The
//! semantics are the embedded backend's:
//!
//! - A job is a message on the work-queue stream `GRAPHENE_JOBS`, subject
//!   `graphene.jobs.<namespace>.<function>`, published with `Nats-Msg-Id` set
//!   to its call id (JetStream drops a repeat within its duplicate window)
//!   and acknowledged by the server before the gateway answers 202.
//! - Its status lives in the key-value bucket `graphene_jobs` (key: the call
//!   id in hex), which also makes call ids unique beyond that window.
//! - Each function has a durable pull consumer whose `max_ack_pending` is the
//!   function's async concurrency, shared by every gateway. A running job is
//!   kept alive with in-progress acks; when its gateway dies, JetStream
//!   delivers it again after `ack_wait`. A retry is a NAK with the backoff as
//!   delay; the attempt number is JetStream's delivery count.
//! - Callbacks are messages on `GRAPHENE_CALLBACKS`, consumed the same way.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, kv, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::queue::{callback_backoff, BoxFuture, CallbackDelivery, Delivery, JobQueue, Room};
use crate::{Callback, CallbackStatus, Cancel, JobStatus, NewJob, Outcome, State};

pub use async_nats::jetstream::{message::AckKind, Message};

const JOBS: &str = "GRAPHENE_JOBS";
const CALLBACKS: &str = "GRAPHENE_CALLBACKS";
const BUCKET: &str = "graphene_jobs";
/// How long a delivered job may go without an in-progress ack.
pub const ACK_WAIT: Duration = Duration::from_secs(30);

pub type Error = String;

fn err(what: &str) -> impl Fn(String) -> Error + '_ {
    move |e| format!("NATS JetStream: {what}: {e}")
}

/// Bodies travel as base64 (JSON would spell each byte as a number).
mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

/// A job's record in the bucket.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    status: JobStatus,
    principal: String,
    callback: Option<String>,
    /// The callback of a finished job, kept until it is queued: a gateway
    /// that dies in between leaves it for the next delivery to queue.
    #[serde(default)]
    outbox: Option<CallbackWire>,
    /// False until the job's message is stored: a repeated POST then
    /// publishes it (again, harmlessly, within the duplicate window).
    #[serde(default = "yes")]
    published: bool,
}

fn yes() -> bool {
    true
}

impl Record {
    /// A job's first record, as queued.
    fn queued(j: &NewJob, now: u64, published: bool) -> Self {
        Record {
            status: JobStatus {
                call_id: j.id.clone(),
                function: j.function.clone(),
                namespace: j.namespace.clone(),
                status: State::Queued.name().into(),
                max_attempts: j.retry.attempts,
                created_at: now,
                callback: j.callback.as_ref().map(|url| CallbackStatus {
                    url: url.clone(),
                    status: "waiting".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            principal: j.principal.clone(),
            callback: j.callback.clone(),
            outbox: None,
            published,
        }
    }
}

/// What [`NatsJobs::change`] did.
#[derive(Debug, PartialEq)]
enum Changed {
    Applied,
    /// The record says another delivery owns the job now.
    Fenced,
    /// No record (it expired from the bucket).
    Missing,
}

/// The message a job travels as.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Wire {
    id: String,
    namespace: String,
    function: String,
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    #[serde(with = "b64")]
    body: Vec<u8>,
    callback: Option<String>,
    principal: String,
    retry: graphene_core::settings::RetryPolicy,
}

impl From<&NewJob> for Wire {
    fn from(j: &NewJob) -> Self {
        Self {
            id: j.id.clone(),
            namespace: j.namespace.clone(),
            function: j.function.clone(),
            method: j.method.clone(),
            path: j.path.clone(),
            query: j.query.clone(),
            headers: j.headers.clone(),
            body: j.body.clone(),
            callback: j.callback.clone(),
            principal: j.principal.clone(),
            retry: j.retry.clone(),
        }
    }
}

impl From<Wire> for NewJob {
    fn from(w: Wire) -> Self {
        Self {
            id: w.id,
            namespace: w.namespace,
            function: w.function,
            method: w.method,
            path: w.path,
            query: w.query,
            headers: w.headers,
            body: w.body,
            callback: w.callback,
            principal: w.principal,
            retry: w.retry,
        }
    }
}

/// A callback as it travels.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CallbackWire {
    id: String,
    url: String,
    namespace: String,
    function: String,
    code: u16,
    #[serde(with = "b64")]
    body: Vec<u8>,
    headers: Vec<(String, String)>,
    duration_ms: u64,
    truncated: bool,
}

type Consumer = jetstream::consumer::Consumer<pull::Config>;

pub struct NatsJobs {
    js: jetstream::Context,
    kv: kv::Store,
    result_limit: usize,
    /// Largest request body a job may carry (the server's message size
    /// limit, less base64 and the rest of the message).
    pub max_body: usize,
    /// Each function's consumer, with the concurrency it was made with.
    consumers: tokio::sync::Mutex<HashMap<(String, String), (u64, Consumer)>>,
    callbacks: tokio::sync::Mutex<Option<Consumer>>,
}

fn key(id: &str) -> String {
    id.bytes().map(|b| format!("{b:02x}")).collect()
}

impl NatsJobs {
    /// Connects and makes the streams and the bucket if they are missing.
    pub async fn connect(url: &str, result_limit: usize) -> Result<Self, Error> {
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(url)
            .await
            .map_err(|e| format!("NATS: cannot connect to {url}: {e}"))?;
        // The server's message size limit (NATS's default until it said).
        let max_payload = match client.server_info().max_payload {
            0 => 1 << 20,
            n => n.max(256 << 10),
        };
        let max_body = max_payload / 4 * 3 - (16 << 10);
        let js = jetstream::new(client);
        for (name, subjects) in [(JOBS, "graphene.jobs.>"), (CALLBACKS, "graphene.callbacks")] {
            js.get_or_create_stream(stream::Config {
                name: name.into(),
                subjects: vec![subjects.into()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .map_err(|e| err("creating the stream")(e.to_string()))?;
        }
        let kv = match js.get_key_value(BUCKET).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: BUCKET.into(),
                    history: 1,
                    storage: stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| err("creating the bucket")(e.to_string()))?,
        };
        Ok(Self {
            js,
            kv,
            // The record keeps the result twice (text and callback): both
            // must fit one message.
            result_limit: result_limit.min(max_payload / 4 - (16 << 10)),
            max_body,
            consumers: Default::default(),
            callbacks: Default::default(),
        })
    }

    async fn record(&self, id: &str) -> Result<Option<(Record, u64)>, Error> {
        let entry = self
            .kv
            .entry(key(id))
            .await
            .map_err(|e| err("reading a job")(e.to_string()))?;
        match entry.filter(|e| e.operation == kv::Operation::Put) {
            None => Ok(None),
            Some(e) => serde_json::from_slice(&e.value)
                .map(|r| Some((r, e.revision)))
                .map_err(|x| {
                    format!("NATS JetStream: job {id} has a record this gateway can't read: {x}")
                }),
        }
    }

    /// Writes a job's first record, unless one exists (whoever writes
    /// first, the gateway that accepted it or the one that runs it, wins).
    async fn create(&self, r: &Record) -> Result<(), Error> {
        let value = Bytes::from(serde_json::to_vec(r).expect("serialisable"));
        match self.kv.create(key(&r.status.call_id), value).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(err("writing a job")(e.to_string())),
        }
    }

    /// Changes a record with `f`, retrying on a concurrent change; `f`
    /// returns false to leave it alone (fenced).
    async fn change(&self, id: &str, f: impl Fn(&mut Record) -> bool) -> Result<Changed, Error> {
        for _ in 0..20 {
            let Some((mut r, revision)) = self.record(id).await? else {
                return Ok(Changed::Missing);
            };
            if !f(&mut r) {
                return Ok(Changed::Fenced);
            }
            let value = Bytes::from(serde_json::to_vec(&r).expect("serialisable"));
            match self.kv.update(key(id), value, revision).await {
                Ok(_) => return Ok(Changed::Applied),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(err("writing a job")(e.to_string())),
            }
        }
        Err("NATS JetStream: a job's record kept changing under us".into())
    }

    /// Like the embedded [`crate::Jobs::enqueue`]: `None` when stored, the
    /// first caller's principal when the id was taken.
    pub async fn enqueue(&self, j: &NewJob, now: u64) -> Result<Option<String>, Error> {
        // The record comes first: it claims the call id for its caller.
        let record = Record::queued(j, now, false);
        let value = Bytes::from(serde_json::to_vec(&record).expect("serialisable"));
        match self.kv.create(key(&j.id), value).await {
            Ok(_) => {}
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                let Some((r, _)) = self.record(&j.id).await? else {
                    return Err("NATS JetStream: a job record vanished".into());
                };
                if r.principal != j.principal || r.published {
                    return Ok(Some(r.principal));
                }
                // Accepted before, but its message may never have been stored.
            }
            Err(e) => return Err(err("writing a job")(e.to_string())),
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", j.id.as_str());
        let payload = Bytes::from(serde_json::to_vec(&Wire::from(j)).expect("serialisable"));
        self.js
            .publish_with_headers(
                format!("graphene.jobs.{}.{}", j.namespace, j.function),
                headers,
                payload,
            )
            .await
            .map_err(|e| err("publishing a job")(e.to_string()))?
            .await
            .map_err(|e| err("storing a job")(e.to_string()))?;
        self.change(&j.id, |r| {
            r.published = true;
            true
        })
        .await?;
        Ok(None)
    }

    pub async fn status(&self, id: &str) -> Result<Option<JobStatus>, Error> {
        Ok(self.record(id).await?.map(|(r, _)| {
            let mut s = r.status;
            s.principal = r.principal;
            s
        }))
    }

    pub async fn cancel(&self, id: &str, now: u64) -> Result<Cancel, Error> {
        let Some((r, _)) = self.record(id).await? else {
            return Ok(Cancel::NotFound);
        };
        let done = self
            .change(id, |r| {
                if r.status.status != State::Queued.name() {
                    return false;
                }
                r.status.status = State::Cancelled.name().into();
                r.status.finished_at = Some(now);
                true
            })
            .await?;
        Ok(match done {
            Changed::Applied => Cancel::Cancelled,
            Changed::Missing => Cancel::NotFound,
            Changed::Fenced => {
                let now = self
                    .record(id)
                    .await?
                    .map_or(r.status.status, |(r, _)| r.status.status);
                Cancel::Already(State::parse(&now).unwrap_or(State::Running))
            }
        })
    }

    /// A removed function's queued jobs: cancelled (their messages are
    /// dropped when delivered, should the function come back).
    pub async fn cancel_function(
        &self,
        namespace: &str,
        function: &str,
        now: u64,
    ) -> Result<usize, Error> {
        let mut n = 0;
        for j in self
            .list(namespace, Some(function), Some(State::Queued), usize::MAX)
            .await?
        {
            if self.cancel(&j.call_id, now).await? == Cancel::Cancelled {
                n += 1;
            }
        }
        Ok(n)
    }

    pub async fn list(
        &self,
        namespace: &str,
        function: Option<&str>,
        state: Option<State>,
        limit: usize,
    ) -> Result<Vec<JobStatus>, Error> {
        let mut keys = self
            .kv
            .keys()
            .await
            .map_err(|e| err("listing jobs")(e.to_string()))?;
        let mut out = Vec::new();
        while let Some(k) = keys.next().await {
            let Ok(k) = k else { continue };
            let Ok(Some(v)) = self.kv.get(&k).await else {
                continue;
            };
            let Ok(r) = serde_json::from_slice::<Record>(&v) else {
                continue;
            };
            let s = r.status;
            if s.namespace == namespace
                && function.is_none_or(|f| s.function == f)
                && state.is_none_or(|st| s.status == st.name())
            {
                out.push(JobStatus {
                    principal: r.principal,
                    ..s
                });
            }
        }
        out.sort_by(|a, b| {
            b.created_at
                .cmp(&a.created_at)
                .then(a.call_id.cmp(&b.call_id))
        });
        out.truncate(limit);
        Ok(out)
    }

    /// A delivered job and its attempt number; `None` when it was cancelled
    /// or already finished (the message is then dropped).
    pub async fn begin(&self, msg: &Message, now: u64) -> Result<Option<(NewJob, u32)>, Error> {
        let wire: Wire = match serde_json::from_slice(&msg.payload) {
            Ok(w) => w,
            Err(e) => {
                let _ = msg.ack_with(AckKind::Term).await;
                return Err(format!("a job message that is not a job: {e}"));
            }
        };
        let attempt = msg.info().map(|i| i.delivered.max(1) as u32).unwrap_or(1);
        let job: NewJob = wire.into();
        if self.record(&job.id).await?.is_none() {
            // Published, but the gateway died before writing its record.
            self.create(&Record::queued(&job, now, true)).await?;
        }
        let go = self
            .change(&job.id, |r| {
                // Queued, or running under an older delivery (whose gateway
                // stopped keeping it alive); never back to an older one.
                let takes_over = r.status.status == "queued"
                    || (r.status.status == "running" && attempt > r.status.attempts);
                if !takes_over {
                    return false;
                }
                r.status.status = State::Running.name().into();
                r.status.attempts = attempt;
                r.status.started_at.get_or_insert(now);
                r.status.next_attempt_at = None;
                true
            })
            .await?;
        if go != Changed::Applied {
            let Some((r, _)) = self.record(&job.id).await? else {
                return Err("NATS JetStream: a job record vanished".into());
            };
            match r.status.status.as_str() {
                // A newer delivery runs it: leave this one be.
                "running" | "queued" => {}
                // Finished, but its gateway may have died before queueing
                // the callback.
                "succeeded" | "failed" => {
                    if let Some(cb) = &r.outbox {
                        self.queue_callback(cb).await?;
                    }
                    let _ = msg.ack().await;
                }
                _ => {
                    let _ = msg.ack_with(AckKind::Term).await;
                }
            }
            return Ok(None);
        }
        Ok(Some((job, attempt)))
    }

    pub async fn retry(
        &self,
        msg: &Message,
        id: &str,
        attempt: u32,
        wait: Duration,
        next_at: u64,
        error: &str,
    ) -> Result<bool, Error> {
        let changed = self
            .change(id, |r| {
                if r.status.attempts != attempt || r.status.status != "running" {
                    return false;
                }
                r.status.status = State::Queued.name().into();
                r.status.next_attempt_at = Some(next_at);
                r.status.last_error = Some(error.to_string());
                true
            })
            .await?;
        if changed == Changed::Fenced {
            // A newer delivery owns the message: a NAK would apply to it.
            return Ok(false);
        }
        msg.ack_with(AckKind::Nak(Some(wait)))
            .await
            .map_err(|e| err("scheduling a retry")(e.to_string()))?;
        Ok(true)
    }

    /// Records the outcome, queues the callback, and acknowledges the job.
    pub async fn finish(
        &self,
        msg: &Message,
        id: &str,
        attempt: u32,
        succeeded: bool,
        o: &Outcome,
        now: u64,
    ) -> Result<bool, Error> {
        let truncated = o.body.len() > self.result_limit;
        let body = o.body[..o.body.len().min(self.result_limit)].to_vec();
        let current = self
            .change(id, |r| {
                if r.status.attempts != attempt || r.status.status != "running" {
                    return false;
                }
                r.outbox = r.callback.clone().map(|url| CallbackWire {
                    id: id.to_string(),
                    url,
                    namespace: r.status.namespace.clone(),
                    function: r.status.function.clone(),
                    code: o.code,
                    body: body.clone(),
                    headers: o.headers.clone(),
                    duration_ms: o.duration_ms,
                    truncated,
                });
                let s = &mut r.status;
                s.status = if succeeded {
                    State::Succeeded
                } else {
                    State::Failed
                }
                .name()
                .into();
                s.finished_at = Some(now);
                s.status_code = Some(o.code);
                s.duration_seconds = Some(o.duration_ms as f64 / 1000.0);
                if o.error.is_some() {
                    s.last_error = o.error.clone();
                }
                s.result = Some(String::from_utf8_lossy(&body).into_owned());
                s.result_truncated = truncated;
                if let Some(cb) = s.callback.as_mut() {
                    cb.status = "pending".into();
                }
                true
            })
            .await?;
        match current {
            // A newer delivery of this job is running: it will finish it.
            Changed::Fenced => return Ok(false),
            // Its record expired from the bucket: nothing left to record.
            Changed::Missing => {
                msg.ack()
                    .await
                    .map_err(|e| err("acknowledging a job")(e.to_string()))?;
                return Ok(false);
            }
            Changed::Applied => {}
        }
        if let Some((
            Record {
                outbox: Some(cb), ..
            },
            _,
        )) = self.record(id).await?
        {
            self.queue_callback(&cb).await?;
        }
        msg.ack()
            .await
            .map_err(|e| err("acknowledging a job")(e.to_string()))?;
        Ok(true)
    }

    /// Queues a callback (at most once per job within the stream's
    /// duplicate window).
    async fn queue_callback(&self, cb: &CallbackWire) -> Result<(), Error> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("cb-{}", cb.id).as_str());
        self.js
            .publish_with_headers(
                "graphene.callbacks",
                headers,
                Bytes::from(serde_json::to_vec(cb).expect("serialisable")),
            )
            .await
            .map_err(|e| err("queueing a callback")(e.to_string()))?
            .await
            .map_err(|e| err("storing a callback")(e.to_string()))?;
        Ok(())
    }

    /// Keeps a running job from being delivered again.
    pub async fn in_progress(msg: &Message) {
        let _ = msg.ack_with(AckKind::Progress).await;
    }

    pub fn callback_of(msg: &Message) -> Option<(Callback, u32)> {
        let w: CallbackWire = serde_json::from_slice(&msg.payload).ok()?;
        let attempts = msg.info().map(|i| i.delivered.max(1) as u32).unwrap_or(1);
        Some((
            Callback {
                id: w.id,
                url: w.url,
                namespace: w.namespace,
                function: w.function,
                code: w.code,
                body: w.body,
                headers: w.headers,
                duration_ms: w.duration_ms,
                truncated: w.truncated,
                attempts: attempts - 1,
            },
            attempts,
        ))
    }

    /// Records a delivery attempt; acknowledges, or asks for another try
    /// after `wait`, or gives up after `max` attempts.
    pub async fn callback_done(
        &self,
        msg: &Message,
        id: &str,
        attempts: u32,
        max: u32,
        error: Option<&str>,
        wait: Duration,
    ) -> Result<(), Error> {
        let give_up = error.is_some() && attempts >= max;
        // The message first: a delivered callback must not be sent again
        // because its status could not be written.
        let kind = match (error, give_up) {
            (None, _) => AckKind::Ack,
            (Some(_), true) => AckKind::Term,
            (Some(_), false) => AckKind::Nak(Some(wait)),
        };
        msg.ack_with(kind)
            .await
            .map_err(|e| err("acknowledging a callback")(e.to_string()))?;
        self.change(id, |r| {
            let Some(cb) = r.status.callback.as_mut() else {
                return false;
            };
            cb.attempts = attempts;
            cb.last_error = error.map(str::to_string);
            cb.status = match (error, give_up) {
                (None, _) => "delivered",
                (Some(_), true) => "failed",
                (Some(_), false) => "pending",
            }
            .into();
            true
        })
        .await
        .map(|_| ())
    }
}

/// A delivered message: a job's, or a callback's with its delivery count.
struct Delivered(Arc<Message>, u32);

fn delivered(token: &Arc<dyn std::any::Any + Send + Sync>) -> &Delivered {
    token
        .downcast_ref::<Delivered>()
        .expect("a NATS delivery's token")
}

/// The durable consumer of one function's jobs, shared by every gateway.
async fn job_consumer(
    js: &jetstream::Context,
    namespace: &str,
    function: &str,
    concurrency: u64,
) -> Result<Consumer, Error> {
    // `_` can't appear in names, so no two functions share a consumer.
    let name = format!("jobs_{namespace}_{function}");
    let stream = js
        .get_stream(JOBS)
        .await
        .map_err(|e| err("opening the stream")(e.to_string()))?;
    stream
        .create_consumer(pull::Config {
            durable_name: Some(name),
            filter_subject: format!("graphene.jobs.{namespace}.{function}"),
            ack_wait: ACK_WAIT,
            max_ack_pending: concurrency as i64,
            max_deliver: -1,
            ..Default::default()
        })
        .await
        .map_err(|e| err("creating a consumer")(e.to_string()))
}

/// The durable consumer of callbacks.
async fn callback_consumer(js: &jetstream::Context) -> Result<Consumer, Error> {
    let stream = js
        .get_stream(CALLBACKS)
        .await
        .map_err(|e| err("opening the stream")(e.to_string()))?;
    stream
        .create_consumer(pull::Config {
            durable_name: Some("callbacks".into()),
            ack_wait: Duration::from_secs(90),
            max_ack_pending: CALLBACKS_PENDING,
            max_deliver: -1,
            ..Default::default()
        })
        .await
        .map_err(|e| err("creating a consumer")(e.to_string()))
}

/// Callbacks delivered and not yet settled, across gateways.
const CALLBACKS_PENDING: i64 = 64;

/// How long the server may hold a fetch for messages it can't hand out yet.
/// A fetch with no expiry is held for as long as the consumer has messages
/// it may not deliver (its `max_ack_pending` taken by other gateways, or by
/// deliveries to a gateway that died, until their `ack_wait`); given up
/// here, the server would later deliver into an inbox nobody reads, and
/// that message would wait out another `ack_wait`.
const FETCH_EXPIRES: Duration = Duration::from_millis(250);
/// How long a fetch may go unanswered (a server restarting).
const FETCH_UNANSWERED: Duration = Duration::from_secs(5);

impl NatsJobs {
    /// A function's consumer, made (or updated) for `concurrency`.
    async fn consumer_for(&self, r: &Room) -> Result<Consumer, Error> {
        let key = (r.namespace.clone(), r.function.clone());
        let mut all = self.consumers.lock().await;
        if let Some((c, consumer)) = all.get(&key) {
            if *c == r.concurrency {
                return Ok(consumer.clone());
            }
        }
        let consumer = job_consumer(&self.js, &r.namespace, &r.function, r.concurrency).await?;
        all.insert(key, (r.concurrency, consumer.clone()));
        Ok(consumer)
    }

    /// Up to `max` of a consumer's messages, without waiting for more.
    async fn fetch(consumer: &Consumer, max: usize) -> Result<Vec<Message>, Error> {
        let read = async {
            let mut batch = consumer
                .fetch()
                .max_messages(max)
                .expires(FETCH_EXPIRES)
                .messages()
                .await
                .map_err(|e| err("fetching")(e.to_string()))?;
            // A status in the batch (e.g. 409: the function's jobs already
            // run up to its concurrency on other gateways) ends it.
            let mut out = Vec::new();
            while let Some(Ok(m)) = batch.next().await {
                out.push(m);
            }
            Ok(out)
        };
        // What a lost answer delivered meanwhile comes again after
        // `ack_wait`.
        tokio::time::timeout(FETCH_UNANSWERED, read)
            .await
            .unwrap_or_else(|_| Err("NATS JetStream: a fetch went unanswered".into()))
    }
}

impl JobQueue for NatsJobs {
    fn max_body(&self) -> Option<usize> {
        Some(self.max_body)
    }

    fn enqueue<'a>(
        &'a self,
        job: NewJob,
        now: u64,
    ) -> BoxFuture<'a, Result<Option<String>, Error>> {
        Box::pin(async move { NatsJobs::enqueue(self, &job, now).await })
    }

    fn status<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<JobStatus>, Error>> {
        Box::pin(NatsJobs::status(self, id))
    }

    fn cancel<'a>(&'a self, id: &'a str, now: u64) -> BoxFuture<'a, Result<Cancel, Error>> {
        Box::pin(NatsJobs::cancel(self, id, now))
    }

    fn cancel_function<'a>(
        &'a self,
        namespace: &'a str,
        function: &'a str,
        now: u64,
    ) -> BoxFuture<'a, Result<usize, Error>> {
        Box::pin(NatsJobs::cancel_function(self, namespace, function, now))
    }

    fn list<'a>(
        &'a self,
        namespace: &'a str,
        function: Option<&'a str>,
        state: Option<State>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<JobStatus>, Error>> {
        Box::pin(NatsJobs::list(self, namespace, function, state, limit))
    }

    /// Nothing to do: JetStream delivers a dead gateway's jobs again after
    /// `ack_wait`.
    fn recover(&self, _now: u64) -> BoxFuture<'_, Result<usize, Error>> {
        Box::pin(std::future::ready(Ok(0)))
    }

    /// Nothing to do: leases are JetStream's, retention the bucket's TTL.
    fn maintain(&self, _now: u64, _retention: Duration) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn claim<'a>(
        &'a self,
        room: &'a [Room],
        now: u64,
        _lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<Delivery>, Error>> {
        Box::pin(async move {
            let mut messages = Vec::new();
            let mut failed = None;
            // Every function's at once: a fetch may be held for up to
            // `FETCH_EXPIRES`.
            let rooms: Vec<&Room> = room.iter().filter(|r| r.free > 0).collect();
            let fetches = rooms.iter().map(|r| async move {
                match self.consumer_for(r).await {
                    Ok(c) => Self::fetch(&c, r.free).await,
                    Err(e) => Err(e),
                }
            });
            let all = futures_util::future::join_all(fetches).await;
            for (r, fetched) in rooms.into_iter().zip(all) {
                match fetched {
                    Ok(m) => messages.extend(m),
                    Err(e) => {
                        // Made afresh next time (the server may have
                        // restarted).
                        self.consumers
                            .lock()
                            .await
                            .remove(&(r.namespace.clone(), r.function.clone()));
                        failed.get_or_insert(e);
                    }
                }
            }
            // Each start is a few round trips to the bucket: all at once.
            let started =
                futures_util::future::join_all(messages.iter().map(|m| self.begin(m, now))).await;
            let mut out = Vec::new();
            for (msg, started) in messages.into_iter().zip(started) {
                match started {
                    Ok(Some((job, attempt))) => out.push(Delivery {
                        job,
                        attempt,
                        token: Arc::new(Delivered(Arc::new(msg), attempt)),
                    }),
                    Ok(None) => {}
                    // Not started: delivered again soon (not after
                    // `ack_wait`), as its next attempt.
                    Err(e) => {
                        let _ = msg.ack_with(AckKind::Nak(None)).await;
                        failed.get_or_insert(e);
                    }
                }
            }
            match failed {
                Some(e) if out.is_empty() => Err(e),
                _ => Ok(out),
            }
        })
    }

    fn keep<'a>(
        &'a self,
        d: &'a Delivery,
        _now: u64,
        _lease: Duration,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            Self::in_progress(&delivered(&d.token).0).await;
            Ok(())
        })
    }

    fn retry<'a>(
        &'a self,
        d: &'a Delivery,
        wait: Duration,
        error: &'a str,
        now: u64,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            let next = now + wait.as_millis() as u64;
            NatsJobs::retry(
                self,
                &delivered(&d.token).0,
                &d.job.id,
                d.attempt,
                wait,
                next,
                error,
            )
            .await
        })
    }

    fn finish<'a>(
        &'a self,
        d: &'a Delivery,
        succeeded: bool,
        outcome: &'a Outcome,
        now: u64,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            NatsJobs::finish(
                self,
                &delivered(&d.token).0,
                &d.job.id,
                d.attempt,
                succeeded,
                outcome,
                now,
            )
            .await
        })
    }

    fn callbacks(
        &self,
        _now: u64,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<CallbackDelivery>, Error>> {
        Box::pin(async move {
            let consumer = {
                let mut c = self.callbacks.lock().await;
                match c.as_ref() {
                    Some(c) => c.clone(),
                    None => {
                        let made = callback_consumer(&self.js).await?;
                        *c = Some(made.clone());
                        made
                    }
                }
            };
            let mut out = Vec::new();
            let fetched = match Self::fetch(&consumer, max.max(1)).await {
                Ok(m) => m,
                Err(e) => {
                    // Made afresh next time (the server may have restarted).
                    *self.callbacks.lock().await = None;
                    return Err(e);
                }
            };
            for msg in fetched {
                match Self::callback_of(&msg) {
                    Some((callback, attempts)) => out.push(CallbackDelivery {
                        callback,
                        token: Arc::new(Delivered(Arc::new(msg), attempts)),
                    }),
                    None => {
                        let _ = msg.ack_with(AckKind::Term).await;
                    }
                }
            }
            Ok(out)
        })
    }

    fn callback_done<'a>(
        &'a self,
        c: &'a CallbackDelivery,
        error: Option<&'a str>,
        _now: u64,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let Delivered(msg, attempts) = delivered(&c.token);
            NatsJobs::callback_done(
                self,
                msg,
                &c.callback.id,
                *attempts,
                crate::CALLBACK_ATTEMPTS,
                error,
                callback_backoff(c.callback.attempts),
            )
            .await
        })
    }
}
