//! Elastic scaling with the real binary: scale up under load and back down,
//! scale to zero and back on the next call, bursts at zero, 429 at the
//! maximum, manual scale bounds, forked and unforked replicas, crashes and
//! import failures while calls are held.

mod util;

use std::time::{Duration, Instant};

use util::{eventually, Server};

/// A call straight to the server as the operator (usable from many threads).
fn call(s: &Server, url: &str, body: &str) -> (u16, String, Option<String>) {
    let r = ureq::post(url)
        .set("Authorization", &format!("Bearer {}", s.token()))
        .timeout(Duration::from_secs(60))
        .send_string(body);
    let r = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{url}: {e}"),
    };
    let status = r.status();
    let retry = r.header("retry-after").map(str::to_string);
    (status, r.into_string().unwrap_or_default(), retry)
}

fn replicas(s: &Server, name: &str) -> u64 {
    s.describe(name)["replicas"].as_u64().unwrap()
}

fn metric(s: &Server, line_start: &str) -> f64 {
    s.get("/metrics")
        .body
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

const SLEEPY: &str = r#"import os, time
IMPORTED_BY = os.getpid()
def handle(req):
    if req.startswith("sleep"):
        time.sleep(float(req.split()[1]))
    if req.startswith("crash"):
        os._exit(9)
    return f"{IMPORTED_BY} {os.getpid()}"
"#;

#[test]
fn scales_up_under_load_and_back_down_without_errors() {
    let s = Server::start();
    s.function(
        "busy",
        "python3",
        SLEEPY,
        "    labels:\n      com.openfaas.scale.max: \"4\"\n      com.openfaas.scale.target: \"1\"\n      com.openfaas.scale.target-proportion: \"1\"\n      com.graphene.scale.window: 2s\n    annotations:\n      com.graphene.workers: \"1\"\n",
    );
    s.ok(&["up"]);
    s.wait_ready("busy");
    assert_eq!(replicas(&s, "busy"), 1);
    let url = format!("{}/function/busy", s.url);
    let srv = &s;
    let stop = Instant::now() + Duration::from_secs(5);
    let mut peak = 0;
    let failures: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..6)
            .map(|_| {
                let url = url.clone();
                scope.spawn(move || {
                    let mut bad = Vec::new();
                    while Instant::now() < stop {
                        let (status, body, _) = call(srv, &url, "sleep 0.2");
                        if status != 200 {
                            bad.push(format!("{status} {body}"));
                        }
                    }
                    bad
                })
            })
            .collect();
        while Instant::now() < stop {
            peak = peak.max(replicas(&s, "busy"));
            std::thread::sleep(Duration::from_millis(200));
        }
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    assert!(failures.is_empty(), "calls failed: {failures:?}");
    assert!(peak >= 3, "scaled up under 6 concurrent calls: peak {peak}");
    assert!(peak <= 4, "bounded by max: peak {peak}");
    let d = s.describe("busy");
    let scaling = &d["graphene"]["scaling"];
    assert_eq!(scaling["type"], "capacity", "{d}");
    assert!(scaling["lastDecision"]["reason"].is_string(), "{d}");
    // Load gone: back to min within a few windows, one step at a time.
    eventually("scale back to 1", Duration::from_secs(30), || {
        (replicas(&s, "busy") == 1).then_some(())
    });
    assert!(
        metric(
            &s,
            "graphene_scale_events_total{direction=\"down\",function_name=\"busy.openfaas-fn\"}"
        ) >= 1.0
    );
    let text = s.ok(&["describe", "busy"]);
    assert!(
        text.contains("Autoscaling:") && text.contains("Last decision:"),
        "{text}"
    );
}

#[test]
fn scales_to_zero_when_idle_and_back_on_the_next_call() {
    let s = Server::start();
    s.function(
        "nap",
        "python3",
        SLEEPY,
        "    labels:\n      com.openfaas.scale.zero: \"true\"\n      com.openfaas.scale.zero-duration: 1s\n      com.graphene.scale.window: 2s\n",
    );
    s.ok(&["up"]);
    s.wait_ready("nap");
    let to_zero = |what: &str| {
        eventually(what, Duration::from_secs(30), || {
            let d = s.describe("nap");
            (d["replicas"] == 0 && d["availableReplicas"] == 0).then_some(d)
        })
    };
    let d = to_zero("scale to zero after idle");
    // At zero no worker runs; the warm parent keeps the imported handler.
    assert!(
        d["graphene"]["instances"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "{d}"
    );
    assert_eq!(d["graphene"]["parent"]["ready"], true, "{d}");
    assert!(d["graphene"]["scaling"]["lastDecision"]["reason"]
        .as_str()
        .unwrap()
        .contains("zero-duration"));

    // The next call wakes it: no error, and it was forked from the parent
    // (the handler was imported by another process than the one serving).
    let r = s.post("/function/nap", "hi");
    assert_eq!(r.status, 200, "{}", r.body);
    let pids: Vec<&str> = r.body.split(' ').collect();
    assert_ne!(pids[0], pids[1], "served by a forked worker: {}", r.body);
    assert_eq!(replicas(&s, "nap"), 1);
    assert!(
        metric(
            &s,
            "graphene_cold_start_wait_seconds_count{function_name=\"nap.openfaas-fn\"}"
        ) >= 1.0
    );

    // A burst of 50 concurrent calls at zero: all are held and all succeed.
    to_zero("scale to zero again");
    let url = format!("{}/function/nap", s.url);
    let srv = &s;
    let results: Vec<(u16, String)> = std::thread::scope(|scope| {
        let calls: Vec<_> = (0..50)
            .map(|_| {
                let url = url.clone();
                scope.spawn(move || {
                    let (status, body, _) = call(srv, &url, "x");
                    (status, body)
                })
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let failed: Vec<_> = results.iter().filter(|(s, _)| *s != 200).collect();
    assert!(failed.is_empty(), "{failed:?}");

    // After a restart a function resting at zero stays there, and wakes.
    to_zero("scale to zero before the restart");
    let s = s.kill_and_restart();
    assert_eq!(replicas(&s, "nap"), 0);
    assert_eq!(s.post("/function/nap", "again").status, 200);
}

#[test]
fn a_full_function_at_its_maximum_answers_429_with_retry_after() {
    let s = Server::start();
    // min == max: no autoscaling; one worker; a 2 s timeout gives a 0.2 s
    // wait for a free worker.
    s.function(
        "one",
        "python3",
        SLEEPY,
        "    labels:\n      com.openfaas.scale.min: \"1\"\n      com.openfaas.scale.max: \"1\"\n    annotations:\n      com.graphene.workers: \"1\"\n      com.graphene.timeout: 2s\n",
    );
    s.ok(&["up"]);
    s.wait_ready("one");
    let url = format!("{}/function/one", s.url);
    let srv = &s;
    std::thread::scope(|scope| {
        let busy = scope.spawn(|| call(srv, &url, "sleep 1.5"));
        eventually("the worker to be busy", Duration::from_secs(10), || {
            (s.describe("one")["graphene"]["instances"][0]["inFlight"] == 1).then_some(())
        });
        let started = Instant::now();
        let (status, body, retry) = call(srv, &url, "x");
        assert_eq!(status, 429, "{body}");
        assert!(body.contains("are busy and autoscaling is off"), "{body}");
        assert_eq!(retry.as_deref(), Some("1"));
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(busy.join().unwrap().0, 200);
    });
}

#[test]
fn manual_scale_is_bounded_unless_autoscaling_is_off() {
    let s = Server::start();
    s.function(
        "bounded",
        "python3",
        SLEEPY,
        "    labels:\n      com.openfaas.scale.min: \"2\"\n      com.openfaas.scale.max: \"3\"\n",
    );
    s.function(
        "fixed",
        "python3",
        SLEEPY,
        "    labels:\n      com.openfaas.scale.min: \"1\"\n      com.openfaas.scale.max: \"1\"\n",
    );
    s.ok(&["up"]);
    let e = s.fails(&["scale", "bounded", "--replicas", "1"]);
    assert!(
        e.contains("below the function's minimum (2 from com.openfaas.scale.min)"),
        "{e}"
    );
    let e = s.fails(&["scale", "bounded", "--replicas", "4"]);
    assert!(e.contains("above the function's maximum (3"), "{e}");
    s.ok(&["scale", "bounded", "--replicas", "3"]);
    assert_eq!(replicas(&s, "bounded"), 3);
    // Zero is always allowed; the next call wakes the function to its min.
    s.ok(&["scale", "bounded", "--replicas", "0"]);
    assert_eq!(replicas(&s, "bounded"), 0);
    assert_eq!(s.post("/function/bounded", "x").status, 200);
    assert_eq!(replicas(&s, "bounded"), 2);
    // min == max: only manual scaling, which is then free.
    s.ok(&["scale", "fixed", "--replicas", "5"]);
    eventually("five replicas", Duration::from_secs(30), || {
        (s.describe("fixed")["availableReplicas"] == 5).then_some(())
    });
    assert_eq!(s.describe("fixed")["graphene"]["scaling"]["enabled"], false);
}

#[test]
fn replicas_fork_from_the_warm_parent_unless_opted_out() {
    let s = Server::start();
    s.function("forked", "python3", SLEEPY, "");
    s.function(
        "unforked",
        "python3",
        SLEEPY,
        "    annotations:\n      com.graphene.fork: \"false\"\n      com.graphene.workers: \"1\"\n",
    );
    s.ok(&["up"]);
    for (name, forked) in [("forked", true), ("unforked", false)] {
        s.wait_ready(name);
        s.ok(&["scale", name, "--replicas", "2"]);
        eventually("two replicas", Duration::from_secs(30), || {
            (s.describe(name)["availableReplicas"] == 2).then_some(())
        });
        let r = s.post(&format!("/function/{name}"), "x");
        let pids: Vec<&str> = r.body.split(' ').collect();
        assert_eq!(pids[0] != pids[1], forked, "{name}: {}", r.body);
        assert_eq!(
            s.describe(name)["graphene"]["parent"].is_object(),
            forked,
            "{name}"
        );
        // Scaling down drains a replica and ends it: its workers are not
        // replaced (no restarts), and the other replica keeps serving.
        s.ok(&["scale", name, "--replicas", "1"]);
        eventually("one replica left", Duration::from_secs(30), || {
            let d = s.describe(name);
            (d["graphene"]["instances"].as_array().map(Vec::len) == Some(1)).then_some(())
        });
        assert_eq!(s.post(&format!("/function/{name}"), "x").status, 200);
        let d = s.describe(name);
        assert_eq!(d["graphene"]["restarts"], 0, "{name}: {d}");
    }
}

#[test]
fn a_crash_mid_call_fails_only_that_call() {
    let s = Server::start();
    s.function(
        "crashy",
        "python3",
        SLEEPY,
        "    annotations:\n      com.graphene.workers: \"2\"\n",
    );
    s.ok(&["up"]);
    s.wait_ready("crashy");
    let url = format!("{}/function/crashy", s.url);
    let srv = &s;
    std::thread::scope(|scope| {
        let slow = scope.spawn(|| call(srv, &url, "sleep 1"));
        eventually("the slow call to run", Duration::from_secs(10), || {
            (s.describe("crashy")["graphene"]["instances"][0]["inFlight"] == 1).then_some(())
        });
        let (status, body, _) = call(srv, &url, "crash");
        assert_eq!(status, 502, "{body}");
        assert!(
            body.contains("exited during the call (exited with code 9)"),
            "{body}"
        );
        let (status, body, _) = slow.join().unwrap();
        assert_eq!(status, 200, "the other call is unaffected: {body}");
    });
    // The worker is replaced; the replica serves again.
    s.wait_ready("crashy");
    eventually("both workers back", Duration::from_secs(10), || {
        (s.describe("crashy")["graphene"]["instances"][0]["workers"] == 2).then_some(())
    });
}

#[test]
fn held_calls_fail_fast_when_the_handler_does_not_import() {
    let s = Server::start();
    s.function(
        "broken",
        "python3",
        "import not_installed_anywhere\ndef handle(req):\n    return req\n",
        "",
    );
    let _ = s.cli(&["up"]);
    let started = Instant::now();
    let r = s.post("/function/broken", "x");
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(
        r.body
            .contains("failed to import its handler: ModuleNotFoundError"),
        "{}",
        r.body
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "not held for the 30 s timeout"
    );
    // Import retries back off instead of looping hot.
    std::thread::sleep(Duration::from_secs(3));
    let restarts = s.describe("broken")["graphene"]["restarts"]
        .as_u64()
        .unwrap();
    assert!(restarts <= 5, "{restarts} restarts in ~3 s");
}

#[test]
fn a_full_queue_turns_calls_away_with_503() {
    let s = Server::start();
    // Unforked replicas that take a while to import, and room for one
    // waiting call.
    s.function(
        "slowstart",
        "python3",
        "import time\ntime.sleep(1.5)\ndef handle(req):\n    return 'ok'\n",
        "    annotations:\n      com.graphene.fork: \"false\"\n      com.graphene.workers: \"1\"\n      com.graphene.queue: \"1\"\n",
    );
    s.ok(&["up"]);
    s.wait_ready("slowstart");
    s.ok(&["scale", "slowstart", "--replicas", "0"]);
    eventually("zero replicas", Duration::from_secs(30), || {
        let d = s.describe("slowstart");
        d["graphene"]["instances"]
            .as_array()
            .is_none_or(Vec::is_empty)
            .then_some(())
    });
    let url = format!("{}/function/slowstart", s.url);
    let srv = &s;
    std::thread::scope(|scope| {
        let first = scope.spawn(|| call(srv, &url, "x"));
        eventually("the first call to wait", Duration::from_secs(10), || {
            (s.describe("slowstart")["graphene"]["queued"] == 1).then_some(())
        });
        let (status, body, _) = call(srv, &url, "x");
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("already holds 1 calls waiting"), "{body}");
        assert!(body.contains("com.graphene.queue"), "{body}");
        let (status, body, _) = first.join().unwrap();
        assert_eq!(
            status, 200,
            "the held call is served once the replica imported: {body}"
        );
    });
}
