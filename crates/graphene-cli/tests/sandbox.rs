//! What a function can reach: inside the sandbox, not the server's state
//! (credential, database, other functions' secrets) and not other processes.

mod util;

use util::Server;

const PROBE: &str = r#"import os, json
def handle(req):
    targets = json.loads(req)
    out = {}
    for name, path in targets.items():
        try:
            if os.path.isdir(path):
                out[name] = "listed " + ",".join(os.listdir(path))
            else:
                with open(path) as f:
                    out[name] = "read " + f.read()[:40]
        except Exception as e:
            out[name] = "denied " + type(e).__name__
    try:
        with open(os.path.join(os.path.dirname(__file__), "planted.txt"), "w") as f:
            f.write("x")
        out["write_own_folder"] = "wrote"
    except Exception as e:
        out["write_own_folder"] = "denied " + type(e).__name__
    for name, path in (("write_etc", "/etc/graphene-probe"), ("write_state", targets.get("state_file", "/nonexistent"))):
        try:
            with open(path, "w") as f:
                f.write("x")
            out[name] = "wrote"
        except Exception as e:
            out[name] = "denied " + type(e).__name__
    out["uid"] = os.getuid()
    out["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    return json.dumps(out)
"#;

#[test]
fn functions_cannot_reach_the_state_or_each_other() {
    let s = Server::start();
    if !s.sandboxed() {
        eprintln!("bubblewrap does not work here: the sandbox is not tested");
        return;
    }
    s.ok(&[
        "secret",
        "create",
        "a-key",
        "--from-literal",
        "alpha-secret",
    ]);
    s.ok(&["secret", "create", "b-key", "--from-literal", "beta-secret"]);
    s.function("fa", "python3", PROBE, "    secrets: [a-key]\n");
    s.function(
        "fb",
        "python3",
        "def handle(req):\n    return 'b'\n",
        "    secrets: [b-key]\n",
    );
    s.ok(&["up"]);
    s.wait_ready("fb");
    let state = s.state.display().to_string();
    let targets = serde_json::json!({
        "own_secret": "/var/openfaas/secrets/a-key",
        "other_secret": "/var/openfaas/secrets/b-key",
        "admin_token": format!("{state}/admin-token"),
        "database": format!("{state}/state.db"),
        "state_dir": state,
        "secrets_dir": format!("{state}/local/secrets"),
        "state_file": format!("{state}/planted-by-fa"),
        "server_config": format!("{}/.config", std::env::var("HOME").unwrap_or_default()),
    });
    let r = s.post("/function/fa", &targets.to_string());
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["own_secret"], "read alpha-secret");
    for hidden in [
        "admin_token",
        "database",
        "secrets_dir",
        "other_secret",
        "write_etc",
    ] {
        let got = v[hidden].as_str().unwrap();
        assert!(got.starts_with("denied"), "{hidden}: {got}");
    }
    let listing = v["state_dir"].as_str().unwrap();
    assert!(
        !listing.contains("admin-token") && !listing.contains("state.db"),
        "the state directory is hidden: {listing}"
    );
    assert!(
        v["write_own_folder"]
            .as_str()
            .unwrap()
            .starts_with("denied"),
        "{v}"
    );
    assert_ne!(v["uid"], 0, "functions do not run as root: {v}");
    let config = v["server_config"].as_str().unwrap();
    assert!(
        config == "listed " || config.starts_with("denied"),
        "the server user's ~/.config is hidden: {config}"
    );
    assert!(
        !s.state.join("planted-by-fa").exists(),
        "a write to the state directory must not reach it"
    );
    // Its own PID namespace: the server and other functions are not there.
    let pids = v["pids"].as_array().unwrap();
    assert!(pids.len() < 10, "sees other processes: {pids:?}");
    assert!(!r.body.contains("beta-secret"));
}

const PROBE_LIMITS: &str = r#"import socket
def handle(req):
    if req.startswith("alloc "):
        b = bytearray(int(req.split()[1]) << 20)
        for i in range(0, len(b), 4096):
            b[i] = 1
        return "allocated"
    if req.startswith("connect "):
        host, port = req.split()[1].rsplit(":", 1)
        try:
            socket.create_connection((host, int(port)), timeout=2).close()
            return "connected"
        except OSError as e:
            return "refused " + type(e).__name__
    return "ok"
"#;

#[test]
fn memory_limits_and_network_policy() {
    let s = Server::start();
    let limited = "    limits:\n      memory: 96Mi\n      cpu: 500m\n    annotations:\n      com.graphene.workers: \"1\"\n";
    s.function("capped", "python3", PROBE_LIMITS, limited);
    s.function(
        "offline",
        "python3",
        PROBE_LIMITS,
        "    annotations:\n      com.graphene.network: none\n",
    );
    s.function("free", "python3", PROBE_LIMITS, "");
    s.ok(&["up"]);
    for f in ["capped", "offline", "free"] {
        s.wait_ready(f);
    }
    let gateway = s.url.trim_start_matches("http://").to_string();
    assert_eq!(
        s.post("/function/free", &format!("connect {gateway}")).body,
        "connected"
    );
    assert_eq!(s.post("/function/free", "alloc 256").body, "allocated");
    if s.sandboxed() {
        let r = s.post("/function/offline", &format!("connect {gateway}"));
        assert!(r.body.starts_with("refused"), "network none: {}", r.body);
    } else {
        eprintln!("no sandbox here: the network policy is not tested");
    }
    let log = s.log.lock().unwrap().join("\n");
    if log.contains("cgroups: not available") {
        assert!(log.contains("NOT enforced"), "a clear warning: {log}");
        eprintln!("no usable cgroups here: memory limits are not tested");
        return;
    }
    assert_eq!(s.post("/function/capped", "alloc 16").body, "allocated");
    let r = s.post("/function/capped", "alloc 256");
    assert_eq!(
        r.status, 502,
        "over its memory limit the worker is killed: {}",
        r.body
    );
    assert!(
        r.body.contains("signal 9") || r.body.contains("killed"),
        "{}",
        r.body
    );
    // A fresh worker takes its place.
    util::eventually("a fresh worker", std::time::Duration::from_secs(30), || {
        (s.post("/function/capped", "alloc 16").body == "allocated").then_some(())
    });
}
