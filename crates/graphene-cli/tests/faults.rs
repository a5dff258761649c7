//! Faults: a handler that raises, runs too long, crashes, fails to import;
//! a replica that dies; a server killed with SIGKILL.

mod util;

use std::time::Duration;

use util::{eventually, Server};

const HANDLER: &str = r#"import os, time
def handle(req):
    if req.startswith("raise"):
        raise ValueError("bad input: " + req)
    if req.startswith("sleep"):
        time.sleep(float(req.split()[1]))
    if req.startswith("crash"):
        os._exit(9)
    if req.startswith("secret"):
        with open(os.path.join(os.environ["GRAPHENE_SECRETS_DIR"], "api-key")) as f:
            return f.read()
    return "ok " + str(os.getppid())
"#;

#[test]
fn handler_errors_timeouts_and_crashes() {
    let s = Server::start();
    s.function(
        "f",
        "python3",
        HANDLER,
        "    annotations:\n      com.graphene.timeout: 1s\n      com.graphene.workers: \"1\"\n",
    );
    s.ok(&["up"]);
    s.wait_ready("f");

    // An exception: 500 with its message, the traceback in the logs, and the
    // replica keeps serving.
    let r = s.post("/function/f", "raise now");
    assert_eq!(r.status, 500);
    assert_eq!(r.header("x-graphene-layer"), Some("function"));
    assert!(
        r.body.contains("ValueError: bad input: raise now"),
        "{}",
        r.body
    );
    eventually("the traceback in the logs", Duration::from_secs(10), || {
        s.ok(&["logs", "f"])
            .contains("Traceback (most recent call last)")
            .then_some(())
    });
    assert_eq!(s.post("/function/f", "x").status, 200);

    // Over the timeout: 504 naming the function's timeout; the worker is
    // replaced and the next call works.
    let r = s.post("/function/f", "sleep 5");
    assert_eq!(r.status, 504);
    assert!(r.body.contains("within its timeout (1s)"), "{}", r.body);
    assert_eq!(r.header("x-graphene-layer"), Some("function"));
    s.wait_ready("f");

    // A worker that dies mid-call: 502 naming the crash, others unaffected.
    let r = s.post("/function/f", "crash");
    assert_eq!(r.status, 502);
    assert!(r.body.contains("exited during the call"), "{}", r.body);
    s.wait_ready("f");

    // The warm parent dies (and its workers with it): it is restarted with
    // backoff, and describe shows the restart and the exit reason.
    let d = s.describe("f");
    let parent = d["graphene"]["parent"]["pid"].as_u64().unwrap();
    let before = d["graphene"]["restarts"].as_u64().unwrap();
    assert!(parent > 1);
    std::process::Command::new("kill")
        .args(["-9", &parent.to_string()])
        .status()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let d = s.describe("f");
        let exit = d["graphene"]["lastExit"].as_str().unwrap_or("").to_string();
        if d["graphene"]["restarts"].as_u64() > Some(before)
            && exit.contains("warm parent f-parent was killed by signal 9")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no restart of the warm parent recorded: {d}\n{}",
            s.ok(&["logs", "f"])
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    s.wait_ready("f");
    let text = s.ok(&["describe", "f"]);
    assert!(
        text.contains("Restarts:") && text.contains("Last exit:"),
        "{text}"
    );
}

#[test]
fn a_caller_that_gives_up_frees_its_worker() {
    let s = Server::start();
    s.function(
        "slow",
        "python3",
        "import time\ndef handle(req):\n    if req == 'hang':\n        time.sleep(600)\n    return 'done'\n",
        "    annotations:\n      com.graphene.workers: \"1\"\n      com.graphene.timeout: 20m\n",
    );
    s.ok(&["up"]);
    s.wait_ready("slow");
    // The caller gives up after half a second; the only worker is stuck.
    let gave_up = ureq::post(&format!("{}/function/slow", s.url))
        .set("Authorization", &format!("Bearer {}", s.token()))
        .timeout(Duration::from_millis(500))
        .send_string("hang");
    assert!(gave_up.is_err());
    // The stuck worker is replaced, so the next call is served long before
    // the handler's sleep would end.
    eventually("a fresh worker", Duration::from_secs(30), || {
        (s.post("/function/slow", "x").body == "done").then_some(())
    });
}

#[test]
fn a_broken_update_keeps_the_old_version_serving() {
    let s = Server::start();
    s.function("svc", "python3", "def handle(req):\n    return 'v1'\n", "");
    s.ok(&["up"]);
    s.wait_ready("svc");
    s.write(
        "svc/handler.py",
        "import not_installed_anywhere\ndef handle(req):\n    return 'v2'\n",
    );
    // `up` waits for the new version and reports that it fails to import.
    let e = s.fails(&["up"]);
    assert!(
        e.contains("svc failed to import its handler: ModuleNotFoundError"),
        "{e}"
    );
    assert!(
        e.contains("a previous version, if any, keeps serving"),
        "{e}"
    );
    // The failed revision is recorded with its import error; the first
    // one serves, and the runtime went back to running it.
    let d = s.describe("svc");
    assert_eq!(d["graphene"]["latest"]["revision"], 2, "{d}");
    assert_eq!(d["graphene"]["latest"]["state"], "failed", "{d}");
    assert!(
        d["graphene"]["latest"]["reason"]
            .as_str()
            .unwrap()
            .contains("ModuleNotFoundError"),
        "{d}"
    );
    assert_eq!(d["graphene"]["servingRevision"], 1, "{d}");
    eventually("revision 1 running again", Duration::from_secs(20), || {
        let d = s.describe("svc");
        (d["graphene"]["rollout"]["revision"] == 1 && d["availableReplicas"] == 1).then_some(())
    });
    for _ in 0..5 {
        let r = s.post("/function/svc", "x");
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, "v1"),
            "the old version keeps serving"
        );
    }
}

#[test]
fn import_error_is_reported() {
    let s = Server::start();
    s.function(
        "broken",
        "python3",
        "import no_such_module_here\n\ndef handle(req):\n    return req\n",
        "",
    );
    assert!(s
        .fails(&["up"])
        .contains("broken failed to import its handler"));
    let d = eventually("the import error", Duration::from_secs(20), || {
        let d = s.describe("broken");
        d["graphene"]["importError"].as_str().map(str::to_string)
    });
    assert!(d.contains("ModuleNotFoundError"), "{d}");
    let r = s.post("/function/broken", "x");
    assert_eq!(r.status, 503);
    assert!(
        r.body
            .contains("failed to import its handler: ModuleNotFoundError"),
        "{}",
        r.body
    );
    assert!(s.ok(&["describe", "broken"]).contains("Import error:"));
    assert!(s
        .ok(&["logs", "broken"])
        .contains("No module named 'no_such_module_here'"));

    let logs = s.ok(&["logs", "broken"]);
    assert!(
        !logs.contains("runner.py"),
        "tracebacks start at the handler: {logs}"
    );

    // Fixing the handler and deploying again brings it up.
    s.write(
        "broken/handler.py",
        "def handle(req):\n    return 'fixed'\n",
    );
    s.ok(&["up"]);
    eventually("the fixed handler", Duration::from_secs(30), || {
        (s.post("/function/broken", "x").body == "fixed").then_some(())
    });
}

#[test]
fn state_survives_sigkill() {
    // Also covers the unsandboxed runtime: secrets come from GRAPHENE_SECRETS_DIR.
    let s = Server::start_with(&["--no-sandbox"]);
    s.ok(&[
        "secret",
        "create",
        "api-key",
        "--from-literal",
        "s3cr3t-value",
    ]);
    s.function("f", "python3", HANDLER, "    secrets: [api-key]\n");
    s.ok(&["up"]);
    s.wait_ready("f");
    assert_eq!(s.post("/function/f", "secret").body, "s3cr3t-value");
    s.ok(&["scale", "f", "--replicas", "2"]);
    let token = s.token();

    let s = s.kill_and_restart();
    assert_eq!(s.token(), token, "the admin credential is kept");
    s.wait_ready("f");
    assert_eq!(s.post("/function/f", "secret").body, "s3cr3t-value");
    assert!(s.ok(&["secret", "list"]).contains("api-key"));
    eventually("both replicas back", Duration::from_secs(30), || {
        (s.describe("f")["availableReplicas"] == 2).then_some(())
    });
    // The secret's value never reaches the server's log.
    assert!(!s
        .log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("s3cr3t-value")));
}

#[test]
fn one_server_per_state_directory() {
    let s = Server::start();
    let out = std::process::Command::new(util::BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(&s.state)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another graphene serve is already using the state directory"),
        "{err}"
    );
    // The first server is unaffected.
    assert_eq!(s.get("/healthz").status, 200);
}

/// Whether a process is running (a zombie waiting for its reaper is not).
fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit(')')
                .next()
                .map(|rest| rest.trim_start().to_string())
        })
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
}

#[test]
fn no_function_process_outlives_the_server() {
    for signal in ["-TERM", "-KILL"] {
        let mut s = Server::start();
        s.function("f", "python3", "def handle(req):\n    return req\n", "");
        s.ok(&["up"]);
        s.wait_ready("f");
        let pid = s.describe("f")["graphene"]["instances"][0]["pid"]
            .as_u64()
            .unwrap();
        assert!(alive(pid));
        let status = s.signal_and_wait(signal);
        if signal == "-TERM" {
            assert!(status.success(), "a graceful stop exits 0: {status}");
        }
        eventually(
            &format!("the replica to go after {signal}"),
            Duration::from_secs(10),
            || (!alive(pid)).then_some(()),
        );
    }
}

#[test]
fn updates_and_scale_downs_let_calls_finish() {
    let s = Server::start();
    let handler = |v: &str| {
        format!(
            "import time\ndef handle(req):\n    if req[:1].isdigit():\n        time.sleep(float(req))\n    return '{v}'\n"
        )
    };
    s.function(
        "slow",
        "python3",
        &handler("v1"),
        "    labels:\n      com.openfaas.scale.max: 4\n",
    );
    s.ok(&["up"]);
    s.wait_ready("slow");
    s.ok(&["scale", "slow", "--replicas", "2"]);
    eventually("two replicas", Duration::from_secs(30), || {
        (s.describe("slow")["availableReplicas"] == 2).then_some(())
    });
    std::thread::scope(|scope| {
        // Four calls in progress while the function is updated and scaled down.
        let calls: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| s.post("/function/slow", "1.5")))
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        s.write("slow/handler.py", &handler("v2"));
        s.ok(&["up", "--wait", "0"]);
        s.ok(&["scale", "slow", "--replicas", "1"]);
        for c in calls {
            let r = c.join().unwrap();
            assert_eq!(
                (r.status, r.body.as_str()),
                (200, "v1"),
                "a call in progress failed: {r:?}"
            );
        }
    });
    eventually("the new version", Duration::from_secs(30), || {
        (s.post("/function/slow", "").body == "v2").then_some(())
    });
}
