//! Asynchronous calls: durable across SIGKILL, retried with backoff,
//! cancellable, with status and callbacks (to a receiver in the test that
//! can refuse its first deliveries).

mod util;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use util::{eventually, Server};

/// One callback as received.
#[derive(Debug, Clone)]
struct Received {
    headers: HashMap<String, String>,
    body: String,
}

/// An HTTP server that records callbacks and answers 500 to the first
/// `refuse` of them.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    fn start(refuse: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/done", listener.local_addr().unwrap());
        let got = Arc::new(Mutex::new(Vec::new()));
        let keep = got.clone();
        let seen = Arc::new(AtomicUsize::new(0));
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let keep = keep.clone();
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut headers = HashMap::new();
                    let mut line = String::new();
                    // A connection closed before a request (a sender killed).
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let l = line.trim_end();
                        if l.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = l.split_once(':') {
                            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                        }
                    }
                    let n: usize = headers
                        .get("content-length")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    let mut body = vec![0; n];
                    if reader.read_exact(&mut body).is_err() {
                        return; // cut off mid-request
                    }
                    let status = if seen.fetch_add(1, Ordering::SeqCst) < refuse {
                        "500 Internal Server Error"
                    } else {
                        keep.lock().unwrap().push(Received {
                            headers,
                            body: String::from_utf8_lossy(&body).into_owned(),
                        });
                        "200 OK"
                    };
                    let mut s = stream;
                    let _ = write!(
                        s,
                        "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                });
            }
        });
        Self { url, got }
    }

    fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }
}

fn enqueue(s: &Server, function: &str, body: &str, headers: &[(&str, &str)]) -> String {
    let auth = format!("Bearer {}", s.token());
    let mut all = headers.to_vec();
    all.push(("Authorization", &auth));
    let r = s.request(
        "POST",
        &format!("/async-function/{function}"),
        body.as_bytes(),
        &all,
    );
    assert_eq!(r.status, 202, "{}", r.body);
    r.header("x-call-id").unwrap().to_string()
}

fn status(s: &Server, id: &str) -> Value {
    let r = s.get(&format!("/async-function/status/{id}"));
    assert_eq!(r.status, 200, "{}", r.body);
    serde_json::from_str(&r.body).unwrap()
}

#[test]
fn a_thousand_jobs_survive_sigkill() {
    thousand_jobs(Server::start(), None);
}

#[cfg(feature = "nats")]
#[test]
fn a_thousand_jobs_survive_sigkill_and_a_nats_restart() {
    let mut nats = util::Nats::start();
    let s = Server::start_with(&["--queue", &nats.url.clone()]);
    thousand_jobs(s, Some(&mut nats));
}

/// Enqueues 1000 jobs, SIGKILLs the gateway mid-way (and restarts NATS
/// when there is one) and checks every job completes.
fn thousand_jobs(s: Server, nats: Option<&mut util::Nats>) {
    s.function(
        "work",
        "python3",
        "import time\ndef handle(req):\n    time.sleep(0.02)\n    return 'done ' + req\n",
        "    annotations:\n      com.graphene.async.concurrency: \"8\"\n",
    );
    s.ok(&["up"]);
    s.wait_ready("work");
    let cb = Receiver::start(0);
    let total = 1000;
    let ids: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let (s, url) = (&s, cb.url.clone());
                scope.spawn(move || {
                    (0..total / 4)
                        .map(|i| {
                            let n = t * (total / 4) + i;
                            enqueue(s, "work", &n.to_string(), &[("X-Callback-Url", &url)])
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(ids.len(), total);
    // Kill the server while jobs are running and queued.
    eventually("some callbacks", Duration::from_secs(60), || {
        (cb.received().len() >= 100).then_some(())
    });
    let before = cb.received().len();
    let s = s.kill_and_restart();
    assert!(before < total, "the kill came too late to test anything");
    let restarted_nats = nats.is_some();
    if let Some(n) = nats {
        eventually("more callbacks", Duration::from_secs(120), || {
            (cb.received().len() > before + 50).then_some(())
        });
        n.restart();
    }
    let got = eventually("every job's callback", Duration::from_secs(180), || {
        let got = cb.received();
        let ok: std::collections::HashSet<String> = got
            .iter()
            .filter(|r| r.headers.get("x-function-status").map(String::as_str) == Some("200"))
            .map(|r| r.headers["x-call-id"].clone())
            .collect();
        (ok.len() == total).then_some(got)
    });
    // Each accepted job completed, with its own answer.
    let mut per_id: HashMap<&str, usize> = HashMap::new();
    for r in &got {
        let id = r
            .headers
            .get("x-call-id")
            .unwrap_or_else(|| panic!("a callback without X-Call-Id: {r:?}"));
        *per_id.entry(id.as_str()).or_default() += 1;
        assert_eq!(r.headers["x-function-name"], "work");
        assert!(r.headers.contains_key("x-duration-seconds"));
        assert!(r.body.starts_with("done "), "{}", r.body);
    }
    for id in &ids {
        assert!(per_id.contains_key(id.as_str()), "job {id} was lost");
    }
    // Callbacks are at least once: only those in flight at a crash may be
    // sent twice: up to 32 at once from the embedded queue; up to the
    // callback consumer's 64 unacknowledged ones per disruption on NATS
    // (here two: the gateway's kill and the nats-server restart).
    let bound = if restarted_nats { 128 } else { 32 };
    let repeats = per_id.values().filter(|n| **n > 1).count();
    assert!(repeats <= bound, "{repeats} callbacks repeated");
    let v = status(&s, &ids[0]);
    assert_eq!(v["status"], "succeeded");
    assert_eq!(v["callback"]["status"], "delivered");
}

const FLAKY: &str = r#"import json, time
calls = {}
def handle(event, context):
    cid = event.headers.get("X-Call-Id")
    seen = calls.setdefault(cid, [])
    seen.append(time.time())
    body = event.body.decode()
    if body.startswith("big"):
        return {"statusCode": 200, "body": "x" * int(body.split()[1])}
    if body.startswith("sleep"):
        time.sleep(float(body.split()[1]))
        return {"statusCode": 200, "body": "slept"}
    fails = int(body.split()[1]) if body.startswith("fail") else 0
    code = int(body.split()[2]) if body.startswith("fail") and len(body.split()) > 2 else 500
    if len(seen) <= fails:
        return {"statusCode": code, "body": "not yet"}
    return {"statusCode": 200, "body": json.dumps(seen)}
"#;

#[test]
fn retries_backoff_cancel_callbacks_and_idempotency() {
    retries_and_more(Server::start());
}

#[cfg(feature = "nats")]
#[test]
fn retries_backoff_cancel_callbacks_and_idempotency_on_nats() {
    let nats = util::Nats::start();
    retries_and_more(Server::start_with(&["--queue", &nats.url]));
}

fn retries_and_more(s: Server) {
    s.function(
        "flaky",
        "python3-http",
        FLAKY,
        "    annotations:\n      com.graphene.workers: \"1\"\n      com.openfaas.scale.max: \"1\"\n      com.graphene.async.concurrency: \"1\"\n      com.openfaas.retry.attempts: \"4\"\n      com.openfaas.retry.min_backoff: 200ms\n      com.openfaas.retry.max_backoff: 2s\n",
    );
    s.ok(&["up"]);
    s.wait_ready("flaky");

    // 500, then 429, then success: retried with a growing wait.
    let cb = Receiver::start(2);
    let id = enqueue(&s, "flaky", "fail 1", &[("X-Callback-Url", &cb.url)]);
    let id429 = enqueue(&s, "flaky", "fail 2 429", &[]);
    let done = eventually("the retried job", Duration::from_secs(30), || {
        let v = status(&s, &id);
        (v["status"] == "succeeded").then_some(v)
    });
    assert_eq!(done["attempts"], 2, "{done}");
    let times: Vec<f64> = serde_json::from_str(done["result"].as_str().unwrap()).unwrap();
    assert!(
        times[1] - times[0] >= 0.1,
        "waited at least half of min_backoff: {times:?}"
    );
    let v = eventually("the 429 job", Duration::from_secs(30), || {
        let v = status(&s, &id429);
        (v["status"] == "succeeded").then_some(v)
    });
    let times: Vec<f64> = serde_json::from_str(v["result"].as_str().unwrap()).unwrap();
    assert_eq!(times.len(), 3);
    assert!(
        times[2] - times[1] >= 0.2,
        "the second wait doubles: {times:?}"
    );
    // The callback receiver refused twice; the third delivery counted.
    let got = eventually("the callback", Duration::from_secs(30), || {
        cb.received()
            .into_iter()
            .find(|r| r.headers["x-call-id"] == id)
    });
    assert_eq!(got.headers["x-function-status"], "200");
    let v = status(&s, &id);
    assert_eq!(v["callback"]["status"], "delivered");
    assert_eq!(v["callback"]["attempts"], 3);

    // A large result is kept up to the backend's limit and reaches the
    // callback (marked when cut).
    let big = enqueue(&s, "flaky", "big 900000", &[("X-Callback-Url", &cb.url)]);
    let v = eventually("the big job", Duration::from_secs(30), || {
        let v = status(&s, &big);
        (v["status"] == "succeeded").then_some(v)
    });
    let kept = v["result"].as_str().unwrap().len();
    assert!(kept > 100_000, "{kept}");
    assert_eq!(v["resultTruncated"], kept < 900_000);
    let got = eventually("the big callback", Duration::from_secs(30), || {
        cb.received()
            .into_iter()
            .find(|r| r.headers["x-call-id"] == big)
    });
    assert_eq!(got.body.len(), kept);

    // Exhausted: failed for good, with the last error, in the dead-letter list.
    let dead = enqueue(&s, "flaky", "fail 99", &[]);
    let v = eventually("the exhausted job", Duration::from_secs(30), || {
        let v = status(&s, &dead);
        (v["status"] == "failed").then_some(v)
    });
    assert_eq!(v["attempts"], 4);
    assert_eq!(v["statusCode"], 500);
    assert!(
        v["lastError"]
            .as_str()
            .unwrap()
            .contains("gave up after 4 attempts"),
        "{v}"
    );
    let list = s.ok(&["job", "list", "--state", "failed"]);
    assert!(list.contains(&dead), "{list}");

    // Cancel: only while queued.
    let busy = enqueue(&s, "flaky", "sleep 2", &[]);
    let waiting = enqueue(&s, "flaky", "fail 0", &[]);
    eventually("the slow job to start", Duration::from_secs(10), || {
        (status(&s, &busy)["status"] == "running").then_some(())
    });
    let out = s.cli(&["job", "cancel", &busy]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("409"));
    s.ok(&["job", "cancel", &waiting]);
    assert_eq!(status(&s, &waiting)["status"], "cancelled");
    eventually("the slow job to end", Duration::from_secs(10), || {
        (status(&s, &busy)["status"] == "succeeded").then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        status(&s, &waiting)["attempts"],
        0,
        "a cancelled job never runs"
    );

    // A client-supplied call id is accepted once.
    let a = enqueue(&s, "flaky", "fail 0", &[("X-Call-Id", "order-42")]);
    let b = enqueue(&s, "flaky", "fail 0", &[("X-Call-Id", "order-42")]);
    assert_eq!((a.as_str(), b.as_str()), ("order-42", "order-42"));
    let v = eventually("order-42", Duration::from_secs(10), || {
        let v = status(&s, "order-42");
        (v["status"] == "succeeded").then_some(v)
    });
    assert_eq!(v["attempts"], 1);
    let runs: Vec<f64> = serde_json::from_str(v["result"].as_str().unwrap()).unwrap();
    assert_eq!(runs.len(), 1, "ran once");

    // Bad input and access.
    let bad = s.request(
        "POST",
        "/async-function/flaky",
        b"x",
        &[
            ("X-Callback-Url", "ftp://nope"),
            ("Authorization", &format!("Bearer {}", s.token())),
        ],
    );
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("X-Callback-Url"));
    assert_eq!(
        s.anonymous("POST", "/async-function/flaky", "x").status,
        401
    );
    assert_eq!(s.post("/async-function/nope", "x").status, 404);
    assert_eq!(s.get("/async-function/status/no-such-id").status, 404);
    assert_eq!(
        s.anonymous("GET", &format!("/async-function/status/{id}"), "")
            .status,
        401
    );
    // Removing the function cancels what it had queued.
    let running = enqueue(&s, "flaky", "sleep 2", &[]);
    let queued: Vec<String> = (0..2)
        .map(|_| enqueue(&s, "flaky", "fail 0", &[]))
        .collect();
    eventually("the slow job to start", Duration::from_secs(10), || {
        (status(&s, &running)["status"] == "running").then_some(())
    });
    s.ok(&["rm", "flaky"]);
    for id in &queued {
        assert_eq!(status(&s, id)["status"], "cancelled", "{id}");
    }
    let status_text = s.ok(&["job", "status", &id]);
    assert!(
        status_text.contains("succeeded") && status_text.contains("Attempts:    2"),
        "{status_text}"
    );
}

/// A job longer than its lease (30 s) keeps it: it runs once.
fn long_job(s: Server) {
    s.function(
        "long",
        "python3-http",
        FLAKY,
        "    annotations:\n      com.graphene.timeout: 2m\n",
    );
    s.ok(&["up"]);
    s.wait_ready("long");
    let id = enqueue(&s, "long", "sleep 36", &[]);
    let v = eventually("the long job", Duration::from_secs(90), || {
        let v = status(&s, &id);
        (v["status"] == "succeeded").then_some(v)
    });
    assert_eq!(
        v["attempts"],
        1,
        "not delivered again while it ran: {v}\n{}",
        s.ok(&["logs", "long"])
    );
    assert!(v["durationSeconds"].as_f64().unwrap() >= 36.0);
}

#[test]
fn a_job_longer_than_its_lease_runs_once() {
    long_job(Server::start());
}

#[cfg(feature = "nats")]
#[test]
fn a_job_longer_than_its_lease_runs_once_on_nats() {
    let nats = util::Nats::start();
    long_job(Server::start_with(&["--queue", &nats.url]));
}

#[test]
fn an_async_backlog_scales_the_function_up() {
    let s = Server::start();
    s.function(
        "batch",
        "python3-http",
        FLAKY,
        "    labels:\n      com.openfaas.scale.max: \"3\"\n    annotations:\n      com.graphene.workers: \"1\"\n      com.graphene.async.concurrency: \"3\"\n",
    );
    s.ok(&["up"]);
    s.wait_ready("batch");
    let ids: Vec<String> = (0..9)
        .map(|_| enqueue(&s, "batch", "sleep 1", &[]))
        .collect();
    eventually("a second replica", Duration::from_secs(30), || {
        (s.describe("batch")["replicas"].as_u64().unwrap() > 1).then_some(())
    });
    for id in &ids {
        eventually("the backlog", Duration::from_secs(60), || {
            (status(&s, id)["status"] == "succeeded").then_some(())
        });
    }
}
