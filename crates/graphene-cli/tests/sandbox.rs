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
        "admin_token": format!("{state}/admin-token"),
        "database": format!("{state}/state.db"),
        "state_dir": state,
        "secrets_dir": format!("{state}/local/secrets"),
    });
    let r = s.post("/function/fa", &targets.to_string());
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["own_secret"], "read alpha-secret");
    for hidden in ["admin_token", "database", "secrets_dir"] {
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
    // Its own PID namespace: the server and other functions are not there.
    let pids = v["pids"].as_array().unwrap();
    assert!(pids.len() < 10, "sees other processes: {pids:?}");
    assert!(!r.body.contains("beta-secret"));
}
