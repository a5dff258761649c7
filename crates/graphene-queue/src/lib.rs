//! graphene-queue: the durable queue behind `/async-function`. A job is
//! written (and fsynced) before the caller gets its 202, so nothing accepted
//! is lost when the server is killed. Running jobs hold a lease: a job whose
//! lease ran out (its gateway died) is queued again, which makes execution
//! at-least-once; a finished attempt only counts if it is the job's current
//! attempt, so a late duplicate can't overwrite a newer result.
//!
//! [`JobQueue`] is what the gateway's dispatcher uses; [`open`] gives the
//! backend the `--queue` URL names. [`Jobs`] is the embedded backend's
//! store: a SQLite database in the state directory ([`Embedded`] puts it
//! behind the trait); `nats.rs` keeps jobs in NATS JetStream. Times are Unix
//! milliseconds.

use std::path::Path;
use std::sync::Mutex;

use graphene_core::settings::RetryPolicy;
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

#[cfg(feature = "nats")]
pub mod nats;
mod queue;

pub use queue::{
    callback_backoff, BoxFuture, CallbackDelivery, Delivery, Embedded, JobQueue, QueueError, Room,
};

/// The queue `url` names (`nats://...`), or the embedded one in `state_dir`.
pub async fn open(
    state_dir: &Path,
    url: Option<&str>,
    result_limit: usize,
) -> std::result::Result<std::sync::Arc<dyn JobQueue>, String> {
    match url {
        None => Ok(std::sync::Arc::new(Embedded::open(&state_dir.join("jobs.db"), result_limit)?)),
        #[cfg(feature = "nats")]
        Some(url) => Ok(std::sync::Arc::new(crate::nats::NatsJobs::connect(url, result_limit).await?)),
        #[cfg(not(feature = "nats"))]
        Some(url) => Err(format!(
            "--queue {url}: this graphene was built without NATS support (cargo build --features nats)"
        )),
    }
}

type Result<T> = rusqlite::Result<T>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Running => "running",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            State::Queued,
            State::Running,
            State::Succeeded,
            State::Failed,
            State::Cancelled,
        ]
        .into_iter()
        .find(|x| x.name() == s)
    }
}

/// A request accepted for later.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: String,
    pub namespace: String,
    pub function: String,
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub callback: Option<String>,
    /// Who asked (may read its status).
    pub principal: String,
    pub retry: RetryPolicy,
}

/// A job as the dispatcher runs it.
#[derive(Debug, Clone)]
pub struct Job {
    pub new: NewJob,
    /// This attempt's number (1 for the first).
    pub attempt: u32,
}

/// What one attempt came to.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub code: u16,
    pub body: Vec<u8>,
    pub headers: Vec<(String, String)>,
    pub duration_ms: u64,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

/// A callback due for delivery.
#[derive(Debug, Clone)]
pub struct Callback {
    pub id: String,
    pub url: String,
    pub namespace: String,
    pub function: String,
    pub code: u16,
    pub body: Vec<u8>,
    pub headers: Vec<(String, String)>,
    pub duration_ms: u64,
    pub truncated: bool,
    pub attempts: u32,
}

/// A job as `status` and `list` show it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobStatus {
    pub call_id: String,
    pub function: String,
    pub namespace: String,
    pub status: String,
    pub attempts: u32,
    pub max_attempts: u32,
    pub created_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<u64>,
    /// When a queued job is due (after a backoff).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The function's answer (UTF-8 lossy), up to the result limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    #[serde(default)]
    pub result_truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback: Option<CallbackStatus>,
    #[serde(skip)]
    pub principal: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallbackStatus {
    pub url: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// What `cancel` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Cancel {
    Cancelled,
    NotFound,
    /// Too late: it is running or finished.
    Already(State),
}

pub struct Jobs {
    db: Mutex<Connection>,
    /// Results kept (and sent to callbacks) up to this many bytes.
    result_limit: usize,
}

/// Deliveries of one callback before it is given up.
pub const CALLBACK_ATTEMPTS: u32 = 10;

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("serialisable")
}

fn from_json<T: for<'a> Deserialize<'a>>(text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

impl Jobs {
    pub fn open(path: &Path, result_limit: usize) -> Result<Self> {
        let db = Connection::open(path)?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS jobs (
                id TEXT PRIMARY KEY, namespace TEXT NOT NULL, function TEXT NOT NULL,
                method TEXT NOT NULL, path TEXT NOT NULL, query TEXT NOT NULL,
                headers TEXT NOT NULL, body BLOB NOT NULL, callback TEXT,
                principal TEXT NOT NULL, retry TEXT NOT NULL,
                state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
                next_at INTEGER NOT NULL, lease_until INTEGER,
                created_at INTEGER NOT NULL, started_at INTEGER, finished_at INTEGER,
                status_code INTEGER, duration_ms INTEGER, result BLOB, result_headers TEXT,
                result_truncated INTEGER NOT NULL DEFAULT 0, last_error TEXT,
                callback_state TEXT, callback_attempts INTEGER NOT NULL DEFAULT 0,
                callback_next_at INTEGER, callback_error TEXT);
             CREATE INDEX IF NOT EXISTS jobs_due ON jobs (state, next_at);
             CREATE INDEX IF NOT EXISTS jobs_function_due ON jobs (namespace, function, state, next_at);
             CREATE INDEX IF NOT EXISTS jobs_listed ON jobs (namespace, created_at);
             CREATE INDEX IF NOT EXISTS jobs_callbacks ON jobs (callback_state, callback_next_at);
             CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at);",
        )?;
        Ok(Self {
            db: Mutex::new(db),
            result_limit,
        })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().expect("jobs lock")
    }

    /// Stores a job. When a job with this id was accepted before, nothing
    /// is stored and the principal that queued that one is returned.
    pub fn enqueue(&self, j: &NewJob, now: u64) -> Result<Option<String>> {
        let db = self.db();
        let n = db.execute(
            "INSERT OR IGNORE INTO jobs (id, namespace, function, method, path, query, headers, body,
                callback, principal, retry, state, next_at, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 'queued', ?12, ?12)",
            params![
                j.id,
                j.namespace,
                j.function,
                j.method,
                j.path,
                j.query,
                json(&j.headers),
                j.body,
                j.callback,
                j.principal,
                json(&j.retry),
                now as i64
            ],
        )?;
        if n > 0 {
            return Ok(None);
        }
        db.query_row("SELECT principal FROM jobs WHERE id = ?1", [&j.id], |r| {
            r.get(0)
        })
        .map(Some)
    }

    /// Jobs left running by a gateway that is gone: queued again. The
    /// embedded backend has one gateway, so at start-up every running job
    /// is such a job.
    pub fn requeue_running(&self, now: u64) -> Result<usize> {
        self.db().execute(
            "UPDATE jobs SET state = 'queued', lease_until = NULL, next_at = ?1 WHERE state = 'running'",
            [now as i64],
        )
    }

    /// Running jobs whose lease ran out: queued again.
    pub fn requeue_expired(&self, now: u64) -> Result<usize> {
        self.db().execute(
            "UPDATE jobs SET state = 'queued', lease_until = NULL, next_at = ?1
             WHERE state = 'running' AND lease_until < ?1",
            [now as i64],
        )
    }

    /// Takes due jobs, oldest first within each function, at most `room`
    /// of each listed function (so one function's backlog never hides
    /// another's), and leases them until `lease_until`.
    pub fn claim(
        &self,
        now: u64,
        lease_until: u64,
        room: &[((String, String), usize)],
    ) -> Result<Vec<Job>> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let mut candidates: Vec<(String, String, String)> = Vec::new();
        {
            let mut stmt = tx.prepare_cached(
                "SELECT id FROM jobs WHERE namespace = ?1 AND function = ?2 AND state = 'queued'
                 AND next_at <= ?3 ORDER BY next_at, created_at LIMIT ?4",
            )?;
            for ((ns, function), n) in room.iter().filter(|(_, n)| *n > 0) {
                let rows = stmt.query_map(params![ns, function, now as i64, *n as i64], |r| {
                    r.get::<_, String>(0)
                })?;
                for id in rows {
                    candidates.push((id?, ns.clone(), function.clone()));
                }
            }
        }
        let mut jobs = Vec::new();
        for (id, _, _) in candidates {
            tx.execute(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_until = ?2,
                    started_at = COALESCE(started_at, ?3) WHERE id = ?1",
                params![id, lease_until as i64, now as i64],
            )?;
            jobs.push(tx.query_row(
                "SELECT id, namespace, function, method, path, query, headers, body, callback,
                        principal, retry, attempts FROM jobs WHERE id = ?1",
                [&id],
                |r| {
                    let headers: String = r.get(6)?;
                    let retry: String = r.get(10)?;
                    Ok(Job {
                        new: NewJob {
                            id: r.get(0)?,
                            namespace: r.get(1)?,
                            function: r.get(2)?,
                            method: r.get(3)?,
                            path: r.get(4)?,
                            query: r.get(5)?,
                            headers: from_json(&headers)?,
                            body: r.get(7)?,
                            callback: r.get(8)?,
                            principal: r.get(9)?,
                            retry: from_json(&retry)?,
                        },
                        attempt: r.get(11)?,
                    })
                },
            )?);
        }
        tx.commit()?;
        Ok(jobs)
    }

    /// Keeps running jobs' leases alive.
    pub fn extend(&self, ids: &[(String, u32)], lease_until: u64) -> Result<()> {
        let mut db = self.db();
        let tx = db.transaction()?;
        for (id, attempt) in ids {
            tx.execute(
                "UPDATE jobs SET lease_until = ?3 WHERE id = ?1 AND attempts = ?2 AND state = 'running'",
                params![id, attempt, lease_until as i64],
            )?;
        }
        tx.commit()
    }

    /// Queues an attempt again for `next_at`. False if the attempt is no
    /// longer the job's current one.
    pub fn retry(&self, id: &str, attempt: u32, next_at: u64, error: &str) -> Result<bool> {
        Ok(self.db().execute(
            "UPDATE jobs SET state = 'queued', lease_until = NULL, next_at = ?3, last_error = ?4
             WHERE id = ?1 AND attempts = ?2 AND state = 'running'",
            params![id, attempt, next_at as i64, error],
        )? > 0)
    }

    /// Ends a job with its last attempt's outcome and schedules its
    /// callback. False if the attempt is no longer the current one.
    pub fn finish(
        &self,
        id: &str,
        attempt: u32,
        succeeded: bool,
        o: &Outcome,
        now: u64,
    ) -> Result<bool> {
        let truncated = o.body.len() > self.result_limit;
        let body = &o.body[..o.body.len().min(self.result_limit)];
        Ok(self.db().execute(
            "UPDATE jobs SET state = ?3, lease_until = NULL, finished_at = ?4, status_code = ?5,
                duration_ms = ?6, result = ?7, result_headers = ?8, result_truncated = ?9,
                last_error = COALESCE(?10, last_error),
                callback_state = CASE WHEN callback IS NULL THEN NULL ELSE 'pending' END,
                callback_next_at = ?4
             WHERE id = ?1 AND attempts = ?2 AND state = 'running'",
            params![
                id,
                attempt,
                if succeeded { "succeeded" } else { "failed" },
                now as i64,
                o.code,
                o.duration_ms as i64,
                body,
                json(&o.headers),
                truncated,
                o.error
            ],
        )? > 0)
    }

    pub fn cancel(&self, id: &str, now: u64) -> Result<Cancel> {
        let db = self.db();
        let n = db.execute(
            "UPDATE jobs SET state = 'cancelled', finished_at = ?2 WHERE id = ?1 AND state = 'queued'",
            params![id, now as i64],
        )?;
        if n > 0 {
            return Ok(Cancel::Cancelled);
        }
        let state: Option<String> = db
            .query_row("SELECT state FROM jobs WHERE id = ?1", [id], |r| r.get(0))
            .optional()?;
        Ok(match state.as_deref().and_then(State::parse) {
            None => Cancel::NotFound,
            Some(s) => Cancel::Already(s),
        })
    }

    /// A removed function's queued jobs: cancelled, with the reason.
    pub fn cancel_function(&self, namespace: &str, function: &str, now: u64) -> Result<usize> {
        self.db().execute(
            "UPDATE jobs SET state = 'cancelled', finished_at = ?3,
                last_error = 'the function was removed before the job ran'
             WHERE namespace = ?1 AND function = ?2 AND state = 'queued'",
            params![namespace, function, now as i64],
        )
    }

    /// Callbacks due now, oldest first.
    pub fn callbacks_due(&self, now: u64, max: usize) -> Result<Vec<Callback>> {
        let db = self.db();
        let mut stmt = db.prepare_cached(
            "SELECT id, callback, namespace, function, status_code, result, result_headers,
                    duration_ms, result_truncated, callback_attempts
             FROM jobs WHERE callback_state = 'pending' AND callback_next_at <= ?1
             ORDER BY callback_next_at LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![now as i64, max as i64], |r| {
            let headers: String = r.get(6)?;
            Ok(Callback {
                id: r.get(0)?,
                url: r.get(1)?,
                namespace: r.get(2)?,
                function: r.get(3)?,
                code: r.get(4)?,
                body: r.get::<_, Option<Vec<u8>>>(5)?.unwrap_or_default(),
                headers: from_json(&headers)?,
                duration_ms: r.get::<_, i64>(7)? as u64,
                truncated: r.get(8)?,
                attempts: r.get(9)?,
            })
        })?;
        rows.collect()
    }

    /// Records a delivery, or schedules another try (`next_at`), or gives up
    /// after [`CALLBACK_ATTEMPTS`].
    pub fn callback_done(&self, id: &str, error: Option<&str>, next_at: u64) -> Result<()> {
        let db = self.db();
        match error {
            None => db.execute(
                "UPDATE jobs SET callback_state = 'delivered', callback_attempts = callback_attempts + 1,
                    callback_error = NULL WHERE id = ?1",
                [id],
            )?,
            Some(e) => db.execute(
                "UPDATE jobs SET callback_attempts = callback_attempts + 1, callback_error = ?2,
                    callback_next_at = ?3,
                    callback_state = CASE WHEN callback_attempts + 1 >= ?4 THEN 'failed' ELSE 'pending' END
                 WHERE id = ?1",
                params![id, e, next_at as i64, CALLBACK_ATTEMPTS],
            )?,
        };
        Ok(())
    }

    pub fn status(&self, id: &str) -> Result<Option<JobStatus>> {
        let db = self.db();
        let mut stmt = db.prepare_cached(&format!("{SELECT_STATUS} WHERE id = ?1"))?;
        stmt.query_row([id], status_row).optional()
    }

    /// Newest first, optionally of one function or in one state; without
    /// results (`status` has them).
    pub fn list(
        &self,
        namespace: &str,
        function: Option<&str>,
        state: Option<State>,
        limit: usize,
    ) -> Result<Vec<JobStatus>> {
        let db = self.db();
        let mut stmt = db.prepare_cached(&format!(
            "{SELECT_STATUS} WHERE namespace = ?1 AND (?2 IS NULL OR function = ?2)
             AND (?3 IS NULL OR state = ?3) ORDER BY created_at DESC, id LIMIT ?4"
        ))?;
        let rows = stmt.query_map(
            params![namespace, function, state.map(State::name), limit as i64],
            status_row,
        )?;
        rows.map(|r| {
            r.map(|mut s| {
                s.result = None;
                s
            })
        })
        .collect()
    }

    /// Forgets finished jobs (and delivered or failed callbacks) older than
    /// `before`.
    pub fn purge(&self, before: u64) -> Result<usize> {
        self.db().execute(
            "DELETE FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled') AND finished_at < ?1
             AND (callback_state IS NULL OR callback_state != 'pending')",
            [before as i64],
        )
    }
}

const SELECT_STATUS: &str =
    "SELECT id, function, namespace, state, attempts, retry, created_at, started_at,
    finished_at, next_at, status_code, duration_ms, last_error, result, result_truncated, callback,
    callback_state, callback_attempts, callback_error, principal FROM jobs";

fn status_row(r: &rusqlite::Row<'_>) -> Result<JobStatus> {
    let retry: String = r.get(5)?;
    let retry: RetryPolicy = from_json(&retry)?;
    let state: String = r.get(3)?;
    let url: Option<String> = r.get(15)?;
    let opt =
        |i: usize| -> Result<Option<u64>> { Ok(r.get::<_, Option<i64>>(i)?.map(|v| v as u64)) };
    Ok(JobStatus {
        call_id: r.get(0)?,
        function: r.get(1)?,
        namespace: r.get(2)?,
        next_attempt_at: (state == "queued").then(|| opt(9)).transpose()?.flatten(),
        status: state,
        attempts: r.get(4)?,
        max_attempts: retry.attempts,
        created_at: r.get::<_, i64>(6)? as u64,
        started_at: opt(7)?,
        finished_at: opt(8)?,
        status_code: r.get(10)?,
        duration_seconds: opt(11)?.map(|ms| ms as f64 / 1000.0),
        last_error: r.get(12)?,
        result: r
            .get::<_, Option<Vec<u8>>>(13)?
            .map(|b| String::from_utf8_lossy(&b).into_owned()),
        result_truncated: r.get(14)?,
        callback: url
            .map(|url| {
                Ok::<_, rusqlite::Error>(CallbackStatus {
                    url,
                    status: r
                        .get::<_, Option<String>>(16)?
                        .unwrap_or_else(|| "waiting".into()),
                    attempts: r.get(17)?,
                    last_error: r.get(18)?,
                })
            })
            .transpose()?,
        principal: r.get(19)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, function: &str) -> NewJob {
        NewJob {
            id: id.into(),
            namespace: "ns".into(),
            function: function.into(),
            method: "POST".into(),
            path: "/".into(),
            query: String::new(),
            headers: vec![("x-a".into(), "1".into())],
            body: b"body".to_vec(),
            callback: Some("http://127.0.0.1:1/cb".into()),
            principal: "admin".into(),
            retry: RetryPolicy::default(),
        }
    }

    fn outcome(code: u16) -> Outcome {
        Outcome {
            code,
            body: b"0123456789".to_vec(),
            headers: vec![],
            duration_ms: 5,
            error: None,
        }
    }

    #[test]
    fn lifecycle_leases_and_fencing() {
        let dir = std::env::temp_dir().join(format!("graphene-jobs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("jobs.db");
        let _ = std::fs::remove_file(&path);
        let q = Jobs::open(&path, 4).unwrap();
        assert_eq!(q.enqueue(&job("a", "f"), 10).unwrap(), None);
        assert_eq!(
            q.enqueue(&job("a", "f"), 11).unwrap().as_deref(),
            Some("admin"),
            "an id is accepted once"
        );
        assert_eq!(q.enqueue(&job("b", "f"), 12).unwrap(), None);
        assert_eq!(q.enqueue(&job("c", "g"), 13).unwrap(), None);
        // Room for one of f and one of g.
        let room = |n: usize| {
            vec![
                (("ns".to_string(), "f".to_string()), n),
                (("ns".to_string(), "g".to_string()), n),
            ]
        };
        let got = q.claim(20, 100, &room(1)).unwrap();
        let ids: Vec<_> = got.iter().map(|j| j.new.id.as_str()).collect();
        assert_eq!(ids, ["a", "c"]);
        assert_eq!(got[0].new.headers, [("x-a".to_string(), "1".to_string())]);
        assert_eq!(q.cancel("b", 21).unwrap(), Cancel::Cancelled);
        assert_eq!(q.cancel("a", 21).unwrap(), Cancel::Already(State::Running));
        assert_eq!(q.cancel("zzz", 21).unwrap(), Cancel::NotFound);
        // a's lease runs out: queued again, then claimed as attempt 2.
        assert_eq!(q.requeue_expired(150).unwrap(), 2);
        let again = q.claim(150, 300, &room(5)).unwrap();
        assert_eq!(again.iter().find(|j| j.new.id == "a").unwrap().attempt, 2);
        // The first attempt's late answer does not count.
        assert!(!q.finish("a", 1, true, &outcome(200), 160).unwrap());
        assert!(q.finish("a", 2, true, &outcome(200), 170).unwrap());
        let s = q.status("a").unwrap().unwrap();
        assert_eq!(
            (s.status.as_str(), s.attempts, s.status_code),
            ("succeeded", 2, Some(200))
        );
        assert_eq!(
            (s.result.as_deref(), s.result_truncated),
            (Some("0123"), true)
        );
        // Its callback is due; a failure schedules another try.
        let due = q.callbacks_due(170, 10).unwrap();
        assert_eq!(due.len(), 1);
        q.callback_done("a", Some("refused"), 1000).unwrap();
        assert!(q.callbacks_due(999, 10).unwrap().is_empty());
        q.callback_done("a", None, 0).unwrap();
        let cb = q.status("a").unwrap().unwrap().callback.unwrap();
        assert_eq!((cb.status.as_str(), cb.attempts), ("delivered", 2));
        // c retries, then fails for good.
        assert!(q.retry("c", 2, 500, "503 from the function").unwrap());
        assert_eq!(q.status("c").unwrap().unwrap().next_attempt_at, Some(500));
        assert!(q.claim(499, 600, &room(5)).unwrap().is_empty());
        let c = q.claim(500, 600, &room(5)).unwrap();
        let mut failed = outcome(500);
        failed.error = Some("gave up".into());
        assert!(q.finish("c", c[0].attempt, false, &failed, 510).unwrap());
        let listed = q.list("ns", None, Some(State::Failed), 10).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].last_error.as_deref(), Some("gave up"));
        // Everything survives reopening; purge forgets finished jobs.
        drop(q);
        let q = Jobs::open(&path, 4).unwrap();
        assert_eq!(q.status("a").unwrap().unwrap().status, "succeeded");
        assert_eq!(
            q.purge(10_000).unwrap(),
            2,
            "a and the cancelled b; c's callback is still pending"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
