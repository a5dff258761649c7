//! From `graphene new` to a working endpoint, for each built-in template.

mod util;

use std::time::Duration;

use util::{eventually, Server};

#[test]
fn new_up_invoke_each_template() {
    let s = Server::start();
    s.ok(&["new", "echo", "--lang", "python3"]);
    s.ok(&["new", "web", "--lang", "python3-http"]);
    s.ok(&["new", "shout", "--lang", "exec"]);
    s.write(
        "web/handler.py",
        r#"import json
def handle(event, context):
    return {
        "statusCode": 201,
        "headers": {"X-Seen-Method": event.method, "Content-Type": "application/json"},
        "body": json.dumps({"path": event.path, "query": event.query,
                            "body": event.body.decode(), "agent": event.headers.get("X-Test", ""),
                            "has": "X-TEST" in event.headers}),
    }
"#,
    );
    let up = s.cli(&["up"]);
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let progress = String::from_utf8_lossy(&up.stderr);
    assert!(
        progress.contains("[echo] creating the virtual environment"),
        "{progress}"
    );

    // python3: handle(req: str) -> str, via the CLI.
    let out = s.cli_stdin(&["invoke", "echo"], b"hello graphene");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello graphene");

    // python3-http: status, headers, path, query and body pass through.
    let auth = format!("Bearer {}", s.token());
    let r = s.request(
        "PUT",
        "/function/web/items/7?colour=red",
        b"payload",
        &[("X-Test", "yes"), ("Authorization", &auth)],
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.header("x-seen-method"), Some("PUT"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["path"], "/items/7");
    assert_eq!(v["query"]["colour"], "red");
    assert_eq!(v["body"], "payload");
    assert_eq!(
        v["agent"], "yes",
        "headers are looked up without regard to case"
    );
    assert_eq!(v["has"], true);
    // OpenFaaS headers: a generated call id, start time, duration.
    assert_eq!(r.header("x-call-id").map(str::len), Some(36));
    assert!(r.header("x-start-time").unwrap().parse::<u128>().is_ok());
    assert!(r
        .header("x-duration-seconds")
        .unwrap()
        .parse::<f64>()
        .is_ok());
    let r = s.request(
        "POST",
        "/function/web",
        b"",
        &[("X-Call-Id", "my-call-1"), ("Authorization", &auth)],
    );
    assert_eq!(r.header("x-call-id"), Some("my-call-1"));

    // exec: stdin to stdout, a process per call, Http_* variables.
    let r = s.post("/function/shout", "make me loud");
    assert_eq!((r.status, r.body.as_str()), (200, "MAKE ME LOUD"));
    s.write(
        "shout/run.sh",
        "#!/bin/sh\necho \"$Http_Method $Http_Path $Http_Query $Http_X_Thing\"\n",
    );
    s.ok(&["up", "--filter", "shout"]);
    let r = s.request(
        "GET",
        "/function/shout/a/b?q=1",
        b"",
        &[("X-Thing", "th"), ("Authorization", &auth)],
    );
    assert_eq!(r.body.trim(), "GET /a/b q=1 th");

    // The handler can import its own modules, relatively or by name.
    s.write("echo/helpers.py", "def shout(s):\n    return s.upper()\n");
    s.write(
        "echo/handler.py",
        "from .helpers import shout\nimport helpers\n\ndef handle(req):\n    return shout(req) + helpers.shout('!')\n",
    );
    s.ok(&["up", "--filter", "echo"]);
    eventually("the new echo", Duration::from_secs(30), || {
        (s.post("/function/echo", "hi").body == "HI!").then_some(())
    });

    // An unchanged folder is not rebuilt.
    let again = s.cli(&["build", "--filter", "echo"]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("unchanged"));
}

#[test]
fn warm_start_and_concurrent_workers() {
    let s = Server::start();
    s.function(
        "model",
        "python3",
        r#"import os, time
LOADED_AT = time.time()  # a "model" loaded once per replica
CALLS = 0

def handle(req):
    global CALLS
    CALLS += 1
    started = time.time()
    if req.startswith("slow"):
        time.sleep(0.4)
    return f"{LOADED_AT} {os.getpid()} {CALLS} {started} {time.time()}"
"#,
        "    annotations:\n      com.graphene.workers: \"3\"\n",
    );
    s.ok(&["up"]);
    s.wait_ready("model");
    let loaded: Vec<String> = (0..6)
        .map(|_| {
            s.post("/function/model", "x")
                .body
                .split(' ')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(
        loaded.iter().all(|l| *l == loaded[0]),
        "the handler was imported again: {loaded:?}"
    );

    // Three slow calls at once are served by three different workers whose
    // calls overlap in time.
    let replies: Vec<Vec<f64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3)
            .map(|_| scope.spawn(|| s.post("/function/model", "slow").body))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap()
                    .split(' ')
                    .map(|x| x.parse().unwrap())
                    .collect()
            })
            .collect()
    });
    let pids: std::collections::BTreeSet<u64> = replies.iter().map(|r| r[1] as u64).collect();
    assert_eq!(
        pids.len(),
        3,
        "calls were not spread over the workers: {replies:?}"
    );
    let latest_start = replies.iter().map(|r| r[3]).fold(f64::MIN, f64::max);
    let earliest_end = replies.iter().map(|r| r[4]).fold(f64::MAX, f64::min);
    assert!(
        latest_start < earliest_end,
        "calls did not overlap: {replies:?}"
    );
    assert!(
        replies.iter().all(|r| r[0] == replies[0][0]),
        "workers share the imported module"
    );

    let d = s.describe("model");
    assert_eq!(d["graphene"]["workersPerReplica"], 3);
    eventually("invocation count", Duration::from_secs(5), || {
        (s.describe("model")["invocationCount"].as_f64() >= Some(9.0)).then_some(())
    });
}

#[test]
fn python3_http_return_values() {
    let s = Server::start();
    s.function(
        "shapes",
        "python3-http",
        r#"def handle(event, context):
    kind = event.body.decode()
    if kind == "list":
        return [1, 2]
    if kind == "dict-body":
        return {"statusCode": 202, "body": {"ok": True}}
    if kind == "bad-status":
        return {"statusCode": "abc"}
    return "plain"
"#,
        "",
    );
    s.ok(&["up"]);
    s.wait_ready("shapes");
    let r = s.post("/function/shapes", "list");
    assert_eq!((r.status, r.body.as_str()), (200, "[1, 2]"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let r = s.post("/function/shapes", "dict-body");
    assert_eq!((r.status, r.body.as_str()), (202, r#"{"ok": true}"#));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let r = s.post("/function/shapes", "bad-status");
    assert_eq!(r.status, 500);
    assert!(
        r.body
            .contains("statusCode must be an HTTP status between 100 and 599, got 'abc'"),
        "{}",
        r.body
    );
    let r = s.post("/function/shapes", "");
    assert_eq!((r.status, r.body.as_str()), (200, "plain"));
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
}

#[test]
fn exec_calls_are_limited_to_the_workers() {
    let s = Server::start();
    s.ok(&["new", "slow", "--lang", "exec"]);
    s.write(
        "slow/run.sh",
        "#!/bin/sh\ndate +%s.%N\nsleep 0.4\ndate +%s.%N\n",
    );
    let path = s.work.path().join("stack.yml");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "    fprocess: sh run.sh\n",
        "    fprocess: sh run.sh\n    annotations:\n      com.graphene.workers: \"1\"\n",
    );
    std::fs::write(&path, text).unwrap();
    s.ok(&["up"]);
    // Two calls at once with one slot: one runs after the other.
    let spans: Vec<(f64, f64)> = std::thread::scope(|scope| {
        let calls: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| s.post("/function/slow", "").body))
            .collect();
        calls
            .into_iter()
            .map(|c| {
                let out = c.join().unwrap();
                let t: Vec<f64> = out.split_whitespace().map(|x| x.parse().unwrap()).collect();
                (t[0], t[1])
            })
            .collect()
    });
    let (a, b) = (spans[0], spans[1]);
    assert!(a.1 <= b.0 || b.1 <= a.0, "exec calls overlapped: {spans:?}");
}

#[test]
fn images_no_kept_revision_uses_are_removed() {
    // One revision kept per function: an image goes once its revision is
    // neither kept nor serving. (The default keeps ten, for rollbacks.)
    let s = Server::start_with(&["--keep-revisions", "1"]);
    let images = s.state.join("local/images");
    let built = || -> std::collections::BTreeSet<String> {
        std::fs::read_dir(&images)
            .unwrap()
            .flatten()
            .filter(|e| e.path().join("image.json").exists())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    };
    s.function("gc", "python3", "def handle(req):\n    return 'v1'\n", "");
    s.ok(&["up"]);
    let v1 = built();
    assert_eq!(v1.len(), 1);
    // v2 is built but not deployed: v1 still runs, so both stay.
    s.write("gc/handler.py", "def handle(req):\n    return 'v2'\n");
    s.ok(&["build"]);
    assert_eq!(built().len(), 2);
    assert!(built().is_superset(&v1));
    // v2 deployed and serving; building v3 removes v1 (no name, no kept
    // revision).
    s.ok(&["deploy"]);
    eventually("v2 serving alone", Duration::from_secs(30), || {
        let d = s.describe("gc");
        let instances = d["graphene"]["instances"].as_array().unwrap().clone();
        (s.post("/function/gc", "").body == "v2" && instances.iter().all(|i| i["retiring"] != true))
            .then_some(())
    });
    s.write("gc/handler.py", "def handle(req):\n    return 'v3'\n");
    s.ok(&["build"]);
    let now = built();
    assert_eq!(now.len(), 2, "{now:?}");
    assert!(now.is_disjoint(&v1), "v1 was removed: {now:?}");
    assert_eq!(
        s.post("/function/gc", "").body,
        "v2",
        "the running version is untouched"
    );
}

#[test]
fn exec_background_processes_do_not_hold_the_call() {
    let s = Server::start_with(&["--no-sandbox"]);
    s.ok(&["new", "bg", "--lang", "exec"]);
    s.write("bg/run.sh", "#!/bin/sh\nsleep 120 &\necho started\n");
    let path = s.work.path().join("stack.yml");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "    fprocess: sh run.sh\n",
        "    fprocess: sh run.sh\n    annotations:\n      com.graphene.timeout: 60s\n",
    );
    std::fs::write(&path, text).unwrap();
    s.ok(&["up"]);
    // Answered when the command exits, not when its background child would
    // (the call's timeout is far longer than the test's deadline).
    let reply = std::thread::scope(|scope| {
        let call = scope.spawn(|| s.post("/function/bg", ""));
        eventually("the answer", Duration::from_secs(20), || {
            call.is_finished().then_some(())
        });
        call.join().unwrap()
    });
    assert_eq!((reply.status, reply.body.trim()), (200, "started"));
}
