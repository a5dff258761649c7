//! `graphene watchdog` as a plain process: the container entrypoint's HTTP
//! contract (health, readiness, calls, OpenFaaS's environment knobs,
//! max_inflight, SIGTERM drain, metrics), for a Python function laid out by
//! `graphene build --shrinkwrap` and for an exec function.

mod util;

use std::process::Command;
use std::time::{Duration, Instant};

use util::watchdog::{built, Watchdog};
use util::{eventually, free_port, http, TempDir, BIN};

const SLOW_IMPORT: &str = r#"
import json, os, time
time.sleep(1.5)  # a model loading

def handle(event, context):
    if event.body == b"crash":
        os._exit(3)
    if event.body.startswith(b"sleep"):
        time.sleep(float(event.body.split()[1]))
    return {
        "statusCode": 201,
        "body": json.dumps({
            "method": event.method,
            "path": event.path,
            "query": event.query,
            "call": event.headers.get("X-Call-Id"),
            "start": event.headers.get("X-Start-Time"),
            "body": event.body.decode(),
            "env": os.environ.get("GREETING"),
        }),
        "headers": {"Content-Type": "application/json"},
    }
"#;

#[test]
fn python_function_ready_after_import_and_calls_keep_their_shape() {
    let work = TempDir::new("wd");
    let image = built(work.path(), "python3-http", SLOW_IMPORT);
    let wd = Watchdog::start(Some(&image), work.path(), &[("GREETING", "hi")]);
    // Alive at once; ready only once the handler imported.
    assert_eq!(wd.get("/_/health").status, 200);
    let early = wd.get("/_/ready");
    assert_eq!(early.status, 503, "{early:?}");
    assert!(!wd.tmp.path().join(".lock").exists());
    wd.wait_ready();
    eventually("the lock file", Duration::from_secs(5), || {
        wd.tmp.path().join(".lock").exists().then_some(())
    });
    // Every other path, method, query, header and body is the call.
    let r = http(
        "PUT",
        &wd.url("/models/a?x=1&y=two"),
        b"payload",
        &[("X-Call-Id", "call-42"), ("X-Start-Time", "1700000000")],
    );
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["method"], "PUT");
    assert_eq!(v["path"], "/models/a");
    assert_eq!(v["query"]["y"], "two");
    assert_eq!(v["call"], "call-42");
    assert_eq!(v["start"], "1700000000");
    assert_eq!(v["body"], "payload");
    assert_eq!(
        v["env"], "hi",
        "the container's environment reaches the function"
    );
    // A crashed worker is re-forked: the next call is served.
    assert_eq!(wd.post("/", "crash").status, 502);
    eventually("a re-forked worker", Duration::from_secs(20), || {
        (wd.post("/", "again").status == 201).then_some(())
    });
    // of-watchdog's metric names, on the second port.
    let m = wd.metrics();
    assert!(
        m.contains("http_requests_total{code=\"201\",method=\"put\"} 1"),
        "{m}"
    );
    assert!(m.contains("http_request_duration_seconds_bucket{code=\"502\",method=\"post\",le="));
    assert!(m.contains("http_requests_in_flight 0"));
    // Health and readiness answer GET only.
    assert_eq!(http("POST", &wd.url("/_/health"), b"", &[]).status, 405);
}

#[test]
fn max_inflight_answers_429_and_sigterm_drains_calls_in_flight() {
    let work = TempDir::new("wd");
    let image = built(work.path(), "python3-http", SLOW_IMPORT);
    let mut wd = Watchdog::start(
        Some(&image),
        work.path(),
        &[
            ("max_inflight", "1"),
            ("healthcheck_interval", "500ms"),
            ("write_timeout", "20s"),
        ],
    );
    wd.wait_ready();
    let url = wd.url("/");
    let slow = std::thread::spawn(move || http("POST", &url, b"sleep 2", &[]));
    eventually(
        "the slow call to be in flight",
        Duration::from_secs(10),
        || {
            wd.metrics()
                .contains("http_requests_in_flight 1")
                .then_some(())
        },
    );
    let refused = wd.post("/", "one too many");
    assert_eq!(refused.status, 429, "{refused:?}");
    assert!(refused.body.contains("Max concurrent requests: 1"));
    assert_eq!(wd.get("/_/ready").status, 429, "at max_inflight");
    // SIGTERM with the call in flight: not ready at once, the call
    // finishes, then the process exits 0.
    let sent = Instant::now();
    wd.signal("-TERM");
    eventually("/_/ready to answer 503", Duration::from_secs(5), || {
        (wd.get("/_/ready").status == 503).then_some(())
    });
    assert_eq!(wd.get("/_/health").status, 503);
    let answered = slow.join().unwrap();
    assert_eq!(answered.status, 201, "{answered:?}");
    let status = wd.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "exit {status:?}");
    assert!(
        sent.elapsed() >= Duration::from_millis(500),
        "waited healthcheck_interval"
    );
    assert!(wd.logged("SIGTERM"));
    assert!(!wd.tmp.path().join(".lock").exists());
}

#[test]
fn a_dead_warm_parent_ends_the_container_with_an_error() {
    let work = TempDir::new("wd");
    let image = built(work.path(), "python3", "def handle(req):\n    return req\n");
    let mut wd = Watchdog::start(Some(&image), work.path(), &[]);
    wd.wait_ready();
    let parent = eventually("the warm parent's pid", Duration::from_secs(10), || {
        wd.log.lock().unwrap().iter().find_map(|l| {
            l.split("warm parent pid ")
                .nth(1)
                .and_then(|rest| rest.trim_end_matches(')').parse::<u32>().ok())
        })
    });
    assert!(Command::new("kill")
        .args(["-KILL", &parent.to_string()])
        .status()
        .unwrap()
        .success());
    let status = wd.wait_exit(Duration::from_secs(20));
    assert!(
        !status.success(),
        "a dead warm parent must fail the container"
    );
    assert!(wd.logged("exiting so that the container is restarted"));
}

#[test]
fn an_import_error_ends_the_container_with_the_error_in_its_log() {
    let work = TempDir::new("wd");
    let image = built(
        work.path(),
        "python3",
        "raise RuntimeError('no model file')\n",
    );
    let mut wd = Watchdog::start(Some(&image), work.path(), &[]);
    let status = wd.wait_exit(Duration::from_secs(20));
    assert!(!status.success());
    assert!(wd.logged("no model file"));
}

#[test]
fn exec_functions_run_fprocess_per_call_with_openfaas_variables() {
    let work = TempDir::new("wd");
    let wd = Watchdog::start(
        None,
        work.path(),
        &[
            (
                "fprocess",
                "echo \"$Http_Method $Http_Path $Http_Query\"; tr a-z A-Z",
            ),
            ("content_type", "text/plain"),
            ("exec_timeout", "1s"),
        ],
    );
    wd.wait_ready();
    let r = http("POST", &wd.url("/a/b?q=1"), b"shout", &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "POST /a/b q=1\nSHOUT");
    assert_eq!(r.header("content-type"), Some("text/plain"));
    // Past exec_timeout the process is killed: 504.
    let wd2 = Watchdog::start(
        None,
        work.path(),
        &[("fprocess", "sleep 5"), ("exec_timeout", "1s")],
    );
    wd2.wait_ready();
    let started = Instant::now();
    assert_eq!(wd2.post("/", "").status, 504);
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[test]
fn bad_settings_fail_at_start_naming_the_variable() {
    let work = TempDir::new("wd");
    let out = Command::new(BIN)
        .arg("watchdog")
        .current_dir(work.path())
        .env("max_inflight", "lots")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_inflight"), "{err}");
    let out = Command::new(BIN)
        .arg("watchdog")
        .current_dir(work.path())
        .env("GRAPHENE_IMAGE_DIR", work.path().join("nothing"))
        .env("port", free_port().to_string())
        .env("metrics_port", free_port().to_string())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("fprocess is not set"), "{err}");
    // The exec health check of OpenFaaS images.
    let check = Command::new(BIN)
        .args(["watchdog", "--run-healthcheck"])
        .env("TMPDIR", work.path())
        .output()
        .unwrap();
    assert!(!check.status.success());
}

#[test]
fn a_body_slower_than_read_timeout_gets_408() {
    use std::io::{Read, Write};
    let work = TempDir::new("wd");
    let wd = Watchdog::start(
        None,
        work.path(),
        &[("fprocess", "cat"), ("read_timeout", "500ms")],
    );
    wd.wait_ready();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", wd.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Ten bytes promised, two sent.
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // A body sent in time is the call.
    assert_eq!(wd.post("/", "whole").body, "whole");
}
