//! The version lifecycle against the real binary: revisions, failed deploys
//! that never take a serving function down (not even across a restart),
//! history, rollback and the event stream.

mod util;

use std::time::Duration;

use util::{eventually, Server};

const GOOD: &str = "def handle(req):\n    return 'v1'\n";
const BROKEN: &str = "import not_installed_anywhere\ndef handle(req):\n    return 'v2'\n";

fn answer(s: &Server, name: &str) -> (u16, String) {
    let r = s.post(&format!("/function/{name}"), "x");
    (r.status, r.body)
}

/// After a deploy whose handler failed to import, fixing the handler and
/// running `up` again succeeds: the wait follows the new revision, not the
/// failed one's import error.
#[test]
fn up_after_a_failed_deploy_waits_for_the_fixed_version() {
    let s = Server::start();
    s.function("svc", "python3", GOOD, "");
    s.ok(&["up"]);
    s.write("svc/handler.py", BROKEN);
    let e = s.fails(&["up"]);
    assert!(e.contains("failed to import its handler"), "{e}");
    // Fixed, with a slow import so that the broken version's retries
    // would be seen first if the wait looked at them.
    s.write(
        "svc/handler.py",
        "import time\ntime.sleep(1.5)\ndef handle(req):\n    return 'v3'\n",
    );
    let out = s.cli(&["up"]);
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(answer(&s, "svc"), (200, "v3".into()));
}

/// A function answering 200 still answers 200 after a failed deploy and a
/// server restart, and a later build does not remove its image.
#[test]
fn a_failed_deploy_keeps_serving_across_restarts_and_builds() {
    let s = Server::start();
    s.function("svc", "python3", GOOD, "");
    s.ok(&["up"]);
    assert_eq!(answer(&s, "svc"), (200, "v1".into()));
    s.write("svc/handler.py", BROKEN);
    s.fails(&["up"]);
    assert_eq!(answer(&s, "svc"), (200, "v1".into()));
    let s = s.kill_and_restart();
    eventually("v1 after the restart", Duration::from_secs(30), || {
        (answer(&s, "svc") == (200, "v1".into())).then_some(())
    });
    // Another build collects unused images: the serving one stays.
    s.function("other", "python3", "def handle(req):\n    return 'o'\n", "");
    s.ok(&["build", "--filter", "other"]);
    let s = s.kill_and_restart();
    eventually(
        "v1 after a build and a restart",
        Duration::from_secs(30),
        || (answer(&s, "svc") == (200, "v1".into())).then_some(()),
    );
    let d = s.describe("svc");
    assert_eq!(d["graphene"]["servingRevision"], 1, "{d}");
    assert_eq!(d["graphene"]["latest"]["state"], "failed", "{d}");
}

#[test]
fn history_and_rollback() {
    let s = Server::start();
    s.function("svc", "python3", GOOD, "");
    s.ok(&["up"]);
    s.write("svc/handler.py", "def handle(req):\n    return 'v2'\n");
    s.ok(&["up"]);
    assert_eq!(answer(&s, "svc"), (200, "v2".into()));
    // Redeploying the same thing makes no revision.
    assert!(s.ok(&["deploy"]).contains("(revision 2)"));
    // A third build moves the image name on; revision 1's build is kept.
    s.write("svc/handler.py", "def handle(req):\n    return 'v3'\n");
    s.ok(&["build"]);
    let out = s.ok(&["rollback", "svc"]);
    assert!(out.contains("back to revision 1 as revision 3"), "{out}");
    assert_eq!(answer(&s, "svc"), (200, "v1".into()));
    s.ok(&["rollback", "svc", "--to", "2"]);
    assert_eq!(answer(&s, "svc"), (200, "v2".into()));

    let h: serde_json::Value = serde_json::from_str(&s.ok(&["history", "svc", "--json"])).unwrap();
    let revisions = h["revisions"].as_array().unwrap();
    let numbers: Vec<u64> = revisions
        .iter()
        .map(|r| r["revision"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [4, 3, 2, 1], "{h}");
    assert_eq!(h["serving"], 4, "{h}");
    assert_eq!(revisions[0]["rollbackOf"], 2, "{h}");
    assert_eq!(revisions[1]["rollbackOf"], 1, "{h}");
    assert!(revisions.iter().all(|r| r["state"] == "ready"), "{h}");
    assert!(revisions.iter().all(|r| r["createdBy"] == "admin"), "{h}");
    let table = s.ok(&["history", "svc"]);
    assert!(table.contains("serving; rollback to 2"), "{table}");

    // Bad rollbacks are refused with the reason.
    let e = s.fails(&["rollback", "svc", "--to", "9"]);
    assert!(e.contains("no revision 9") && e.contains("404"), "{e}");
    let r = s.post("/system/rollback/svc", "{\"revision\": \"one\"}");
    assert_eq!(r.status, 400, "{}", r.body);
    let r = s.post("/system/rollback/nope", "{}");
    assert_eq!(r.status, 404, "{}", r.body);
    // Reading history needs a credential.
    assert_eq!(s.anonymous("GET", "/system/revisions/svc", "").status, 401);
    // The audit trail names rollbacks.
    let audit = s.ok(&["audit"]);
    assert!(audit.contains("function.rollback"), "{audit}");
}

#[test]
fn rolling_back_needs_a_kept_revision() {
    let s = Server::start_with(&["--keep-revisions", "1"]);
    s.function("svc", "python3", GOOD, "");
    s.ok(&["up"]);
    s.write("svc/handler.py", "def handle(req):\n    return 'v2'\n");
    s.ok(&["up"]);
    // Only the serving revision is kept: there is nothing to go back to.
    let e = s.fails(&["rollback", "svc"]);
    assert!(e.contains("no earlier revision"), "{e}");
    let e = s.fails(&["rollback", "svc", "--to", "1"]);
    assert!(e.contains("no revision 1"), "{e}");
}

#[test]
fn events_start_with_the_state_and_follow_changes() {
    let s = Server::start();
    s.function("svc", "python3", GOOD, "");
    s.ok(&["up"]);
    let url = format!("{}/system/events?name=svc", s.url);
    let resp = ureq::get(&url)
        .set("Authorization", &format!("Bearer {}", s.token()))
        .call()
        .unwrap();
    assert_eq!(resp.header("content-type"), Some("application/x-ndjson"));
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(resp.into_reader()));
    let first: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["type"], "function");
    assert_eq!(first["revision"]["revision"], 1);
    assert_eq!(first["revision"]["state"], "ready");
    assert_eq!(first["serving"], 1);
    s.ok(&["scale", "svc", "--replicas", "2"]);
    let next: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(
        (next["type"].as_str(), next["replicas"].as_u64()),
        (Some("replicas"), Some(2))
    );
    s.ok(&["rm", "svc"]);
    let last: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(last["type"], "removed");
}
