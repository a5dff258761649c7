//! The OpenFaaS-compatible management API, auth, metrics, and bad input.

mod util;

use std::io::{BufRead, BufReader};
use std::time::Duration;

use util::{eventually, Server};

fn basic(user: &str, pass: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

#[test]
fn openfaas_management_api() {
    let s = Server::start();
    s.function(
        "echo",
        "python3",
        "def handle(req):\n    print('got', req)\n    return req\n",
        "",
    );
    s.ok(&["build"]);

    // faas-cli style deploy body: labels/annotations may be null.
    let body = r#"{"service":"echo","image":"echo:latest","namespace":"team-a","envVars":{"A":"1"},
                   "labels":null,"annotations":null}"#;
    assert_eq!(
        s.admin("PUT", "/system/functions", body).status,
        404,
        "update of a missing function"
    );
    assert_eq!(s.admin("POST", "/system/functions", body).status, 202);
    assert_eq!(s.admin("PUT", "/system/functions", body).status, 202);
    eventually("echo.team-a", Duration::from_secs(20), || {
        (s.post("/function/echo.team-a", "ns").body == "ns").then_some(())
    });
    assert_eq!(
        s.post("/function/echo", "x").status,
        404,
        "not in the default namespace"
    );

    let list: serde_json::Value = serde_json::from_str(
        &s.admin("GET", "/system/functions?namespace=team-a", "")
            .body,
    )
    .unwrap();
    let f = &list[0];
    assert_eq!(
        f["graphene"]["instances"][0]["id"], "echo-1",
        "an unchanged update keeps the replica"
    );
    assert_eq!(f["name"], "echo");
    assert_eq!(f["namespace"], "team-a");
    assert_eq!(f["image"], "echo:latest");
    assert_eq!(f["envVars"]["A"], "1");
    assert_eq!(f["replicas"], 1);
    assert_eq!(f["availableReplicas"], 1);
    assert!(f["createdAt"].as_str().unwrap().ends_with('Z'));
    assert_eq!(f["invocationCount"], 1.0);
    let ns: Vec<String> =
        serde_json::from_str(&s.admin("GET", "/system/namespaces", "").body).unwrap();
    assert!(ns.contains(&"team-a".to_string()) && ns.contains(&"openfaas-fn".to_string()));

    // Basic auth as faas-cli login sends it.
    let r = s.request(
        "GET",
        "/system/function/echo?namespace=team-a",
        b"",
        &[("Authorization", &basic("admin", &s.token()))],
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        s.admin("GET", "/system/function/nope?namespace=team-a", "")
            .status,
        404
    );

    // Scale, logs as NDJSON, info, healthz.
    let scale = r#"{"serviceName":"echo","replicas":2,"namespace":"team-a"}"#;
    assert_eq!(
        s.admin("POST", "/system/scale-function/echo", scale).status,
        202
    );
    let too_many = r#"{"serviceName":"echo","replicas":21,"namespace":"team-a"}"#;
    let r = s.admin("POST", "/system/scale-function/echo", too_many);
    assert_eq!(r.status, 400);
    assert!(
        r.body.contains("above the function's maximum (20"),
        "{}",
        r.body
    );
    eventually("two ready replicas", Duration::from_secs(20), || {
        (s.describe("echo.team-a")["availableReplicas"] == 2).then_some(())
    });
    let logs = s.admin(
        "GET",
        "/system/logs?name=echo&namespace=team-a&tail=-1&follow=false",
        "",
    );
    assert_eq!(logs.header("content-type"), Some("application/x-ndjson"));
    let lines: Vec<serde_json::Value> = logs
        .body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines
        .iter()
        .any(|l| l["text"] == "got ns" && l["namespace"] == "team-a" && l["name"] == "echo"));
    let info: serde_json::Value =
        serde_json::from_str(&s.admin("GET", "/system/info", "").body).unwrap();
    assert_eq!(info["provider"]["provider"], "graphene-local");
    assert!(info["version"]["release"].is_string());
    assert_eq!(s.get("/healthz").status, 200);

    // Metrics with OpenFaaS's names.
    let m = s.get("/metrics").body;
    assert!(
        m.contains(
            "gateway_function_invocation_total{code=\"200\",function_name=\"echo.team-a\"} 1"
        ),
        "{m}"
    );
    assert!(
        m.contains("gateway_functions_seconds_count{code=\"200\",function_name=\"echo.team-a\"} 1")
    );
    assert!(m.contains("gateway_function_invocation_started{function_name=\"echo.team-a\"} 1"));
    assert!(m.contains("gateway_service_count{function_name=\"echo.team-a\"} 2"));

    // Delete, then it is gone.
    let del = r#"{"functionName":"echo"}"#;
    assert_eq!(
        s.admin("DELETE", "/system/functions?namespace=team-a", del)
            .status,
        202
    );
    assert_eq!(
        s.admin("DELETE", "/system/functions?namespace=team-a", del)
            .status,
        404
    );
    assert_eq!(s.post("/function/echo.team-a", "x").status, 404);
}

#[test]
fn upstream_functions_proxy_to_an_http_service() {
    let s = Server::start();
    // The gateway's own /healthz serves as the upstream HTTP service.
    let body = format!(
        r#"{{"service":"up","image":"external","annotations":{{"com.graphene.upstream":"{}"}}}}"#,
        s.url
    );
    assert_eq!(s.admin("POST", "/system/functions", &body).status, 202);
    let r = s.get("/function/up/healthz");
    assert_eq!((r.status, r.body.as_str()), (200, "OK"));
    assert!(r.header("x-call-id").is_some());
    let r = s.get("/function/up/no-such-route");
    assert_eq!(r.status, 404, "the upstream's own status passes through");
    // An upstream that does not answer: 502 naming it.
    let dead = r#"{"service":"dead","image":"x","annotations":{"com.graphene.upstream":"http://127.0.0.1:9"}}"#;
    assert_eq!(s.admin("POST", "/system/functions", dead).status, 202);
    let r = s.get("/function/dead");
    assert_eq!(r.status, 502);
    assert!(
        r.body.contains("upstream http://127.0.0.1:9 failed"),
        "{}",
        r.body
    );
}

#[test]
fn secrets_api_never_shows_values() {
    let s = Server::start();
    let create = r#"{"name":"db-pass","value":"hunter2-secret"}"#;
    assert_eq!(s.admin("POST", "/system/secrets", create).status, 202);
    assert_eq!(s.admin("POST", "/system/secrets", create).status, 409);
    let list = s.admin("GET", "/system/secrets", "");
    assert!(
        list.body.contains("db-pass") && !list.body.contains("hunter2"),
        "{}",
        list.body
    );
    assert_eq!(
        s.admin("PUT", "/system/secrets", r#"{"name":"other","value":"x"}"#)
            .status,
        404
    );

    s.function(
        "reader",
        "python3",
        "import os\ndef handle(req):\n    d = os.environ['GRAPHENE_SECRETS_DIR']\n    return open(d + '/db-pass').read() + '|' + d\n",
        "    secrets: [db-pass]\n",
    );
    s.ok(&["up"]);
    s.wait_ready("reader");
    let (value, dir) = s
        .post("/function/reader", "")
        .body
        .split_once('|')
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .unwrap();
    assert_eq!(value, "hunter2-secret");
    if s.sandboxed() {
        assert_eq!(
            dir, "/var/openfaas/secrets",
            "inside the sandbox secrets are where OpenFaaS puts them"
        );
    }
    // Updating the value reaches the function.
    assert_eq!(
        s.admin(
            "PUT",
            "/system/secrets",
            r#"{"name":"db-pass","value":"new-value"}"#
        )
        .status,
        202
    );
    eventually("the new secret value", Duration::from_secs(30), || {
        s.post("/function/reader", "")
            .body
            .starts_with("new-value|")
            .then_some(())
    });
    // A secret in use can't be removed.
    let r = s.admin("DELETE", "/system/secrets", r#"{"name":"db-pass"}"#);
    assert_eq!(r.status, 409);
    assert!(r.body.contains("used by reader"));
    // Values never show in describe or the server log.
    assert!(!s
        .admin("GET", "/system/function/reader", "")
        .body
        .contains("new-value"));
    assert!(!s
        .log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("hunter2") || l.contains("new-value")));
}

#[test]
fn bad_input_gets_clear_errors() {
    let s = Server::start_with(&["--max-body", "1000"]);
    // Management routes need the credential.
    let r = s.anonymous("GET", "/system/functions", "");
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").is_some());
    let r = s.request(
        "GET",
        "/system/functions",
        b"",
        &[("Authorization", &basic("admin", "wrong"))],
    );
    assert_eq!(r.status, 401);

    // API bodies: the field and reason are named.
    let cases = [
        (
            "POST",
            "/system/functions",
            "{not json",
            "invalid JSON body",
        ),
        (
            "POST",
            "/system/functions",
            r#"{"image":"x"}"#,
            "missing field `service`",
        ),
        (
            "POST",
            "/system/functions",
            r#"{"service":"Bad_Name","image":"x"}"#,
            "service: invalid function name",
        ),
        (
            "POST",
            "/system/functions",
            r#"{"service":"ok","image":"never-built:1"}"#,
            "was not built on this server",
        ),
        (
            "POST",
            "/system/functions",
            r#"{"service":"ok","image":"x","secrets":["missing"]}"#,
            "secrets: secret \"missing\" does not exist",
        ),
        (
            "POST",
            "/system/functions",
            r#"{"service":"ok","image":"x","labels":{"com.openfaas.scale.min":"many"}}"#,
            "labels.com.openfaas.scale.min",
        ),
        (
            "POST",
            "/system/functions",
            r#"{"service":"ok","image":"x","limits":{"nvidia.com/gpu":"1"}}"#,
            "limits.nvidia.com/gpu: the local runtime does not hand out GPUs",
        ),
        (
            "POST",
            "/system/secrets",
            r#"{"name":"x","value":""}"#,
            "value: must not be empty",
        ),
        (
            "POST",
            "/system/secrets",
            r#"{"name":"A B","value":"v"}"#,
            "name: invalid secret name",
        ),
        ("GET", "/system/logs", "", "name: the function whose logs"),
        ("GET", "/system/logs?name=x&tail=lots", "", "tail:"),
        (
            "POST",
            "/system/build?image=x&lang=cobol",
            "",
            "lang: unknown lang \"cobol\"",
        ),
        (
            "POST",
            "/system/functions?namespace=Bad",
            r#"{"service":"ok","image":"x"}"#,
            "namespace: invalid namespace name",
        ),
    ];
    for (method, path, body, want) in cases {
        let r = s.admin(method, path, body);
        assert_eq!(r.status, 400, "{method} {path} {body}: {}", r.body);
        assert!(
            r.body.contains(want),
            "{method} {path} {body}: got {:?}, want {want:?}",
            r.body
        );
    }
    assert_eq!(s.admin("GET", "/system/logs?name=nope", "").status, 404);
    let r = s.admin(
        "POST",
        "/system/functions",
        r#"{"service":"ok","image":"x","annotations":{"com.graphene.timeout":"99999999999999999999"}}"#,
    );
    assert_eq!(r.status, 400);
    assert!(
        r.body.contains("annotations.com.graphene.timeout"),
        "{}",
        r.body
    );
    assert_eq!(
        s.admin("POST", "/system/scale-function/nope", r#"{"replicas":1}"#)
            .status,
        404
    );

    let r = s.post("/async-function/echo", "x");
    assert_eq!(r.status, 404, "no such function to queue for");
    assert!(r.body.contains("function echo not found"), "{}", r.body);
    // Invocation: unknown function 404, body too large 413.
    assert_eq!(s.post("/function/nope", "x").status, 404);
    assert_eq!(s.post("/function/Not_Valid", "x").status, 404);
    s.function("echo", "python3", "def handle(req):\n    return req\n", "");
    s.ok(&["up"]);
    s.wait_ready("echo");
    assert_eq!(s.post("/function/echo", &"x".repeat(2000)).status, 413);
    assert_eq!(s.post("/function/echo", &"x".repeat(500)).status, 200);
}

#[test]
fn cli_errors_name_the_problem() {
    let s = Server::start();
    s.write(
        "stack.yml",
        "version: 1.0\nfunctions:\n  Echo:\n    lang: python3\n    handler: ./echo\n",
    );
    let e = s.fails(&["up"]);
    assert!(
        e.contains("line 3: functions.Echo: invalid function name"),
        "{e}"
    );
    s.write(
        "stack.yml",
        "version: 1.0\nfunctions:\n  echo:\n    lang: ruby\n    handler: ./echo\n",
    );
    let e = s.fails(&["up"]);
    assert!(
        e.contains("line 4: functions.echo.lang: unknown lang \"ruby\""),
        "{e}"
    );
    s.write("stack.yml", "version: 1.0\nfunctions:\n  echo:\n    lang: python3\n    handler: ./missing\n    color: red\n");
    let e = s.fails(&["up"]);
    assert!(
        e.contains("functions.echo.handler: folder") && e.contains("does not exist"),
        "{e}"
    );
    assert!(
        e.contains("unknown field functions.echo.color ignored"),
        "{e}"
    );
    s.write("stack.yml", "version: 1.0\nfunctions:\n  echo:\n    lang: python3\n    handler: ./echo\n    secrets: [nope]\n");
    s.write("echo/handler.py", "def handle(req):\n    return req\n");
    let e = s.fails(&["up"]);
    assert!(e.contains("secret \"nope\" does not exist"), "{e}");
    assert!(s
        .fails(&["new", "Bad_Name"])
        .contains("invalid function name"));
    assert!(s
        .fails(&["new", "x", "--lang", "cobol"])
        .contains("unknown lang"));
    assert!(s
        .fails(&["describe", "ghost"])
        .contains("function ghost not found"));

    // pip's own error is shown, and nothing is deployed.
    s.write(
        "stack.yml",
        "version: 1.0\nfunctions:\n  deps:\n    lang: python3\n    handler: ./deps\n",
    );
    s.write("deps/handler.py", "def handle(req):\n    return req\n");
    s.write("deps/requirements.txt", "this is not a requirement ===\n");
    let e = s.fails(&["up"]);
    assert!(
        e.contains("[deps]") && e.contains("pip install failed"),
        "{e}"
    );
    assert!(
        e.to_lowercase().contains("invalid requirement"),
        "pip's own message: {e}"
    );
    assert_eq!(s.admin("GET", "/system/functions", "").body, "[]");
}

#[test]
fn logs_follow_streams_new_lines() {
    let s = Server::start();
    s.function(
        "talk",
        "python3",
        "def handle(req):\n    print('said', req)\n    return req\n",
        "",
    );
    s.ok(&["up"]);
    s.wait_ready("talk");
    let mut child = std::process::Command::new(util::BIN)
        .args(["logs", "talk", "--follow"])
        .env("GRAPHENE_URL", &s.url)
        .env("GRAPHENE_TOKEN", s.token())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = eventually("a followed line", Duration::from_secs(20), || {
        s.post("/function/talk", "hello-follow");
        rx.recv_timeout(Duration::from_millis(200))
            .ok()
            .filter(|l| l.contains("said hello-follow"))
    });
    assert!(line.contains("said hello-follow"), "{line}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn login_stores_the_credential() {
    let s = Server::start();
    let out = std::process::Command::new(util::BIN)
        .args(["login", "--password-stdin", "--gateway", &s.url])
        .env("HOME", s.work.path())
        .env_remove("GRAPHENE_TOKEN")
        .env_remove("XDG_CONFIG_HOME")
        .env("GRAPHENE_STATE_DIR", s.work.path().join("elsewhere"))
        .stdin(std::fs::File::open(s.state.join("admin-token")).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Later calls use the stored credential.
    let list = std::process::Command::new(util::BIN)
        .args(["list", "--gateway", &s.url])
        .env("HOME", s.work.path())
        .env_remove("GRAPHENE_TOKEN")
        .env_remove("XDG_CONFIG_HOME")
        .env("GRAPHENE_STATE_DIR", s.work.path().join("elsewhere"))
        .output()
        .unwrap();
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let bad = std::process::Command::new(util::BIN)
        .args(["login", "--password", "wrong", "--gateway", &s.url])
        .env("HOME", s.work.path())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("refused this credential"));
}

#[test]
fn cli_verbs_round_trip() {
    let s = Server::start();
    s.ok(&["secret", "create", "tok", "--from-literal", "one"]);
    s.function(
        "show",
        "python3",
        "import os\ndef handle(req):\n    return open(os.environ['GRAPHENE_SECRETS_DIR'] + '/tok').read()\n",
        "    secrets: [tok]\n",
    );
    s.ok(&["up"]);
    s.wait_ready("show");
    let list = s.ok(&["list"]);
    assert!(
        list.contains("show") && list.contains("show:latest"),
        "{list}"
    );
    assert_eq!(s.post("/function/show", "").body, "one");

    // secret update through the CLI reaches the function; remove is refused
    // while the function uses it.
    s.ok(&["secret", "update", "tok", "--from-literal", "two"]);
    eventually("the updated secret", Duration::from_secs(30), || {
        (s.post("/function/show", "").body == "two").then_some(())
    });
    assert!(s
        .fails(&["secret", "remove", "tok"])
        .contains("used by show"));

    // scale through the CLI, then describe shows it.
    s.ok(&["scale", "show", "--replicas", "2"]);
    eventually("two replicas", Duration::from_secs(30), || {
        s.ok(&["describe", "show"])
            .contains("Available replicas:  2")
            .then_some(())
    });
    assert!(s
        .fails(&["scale", "show", "--replicas", "999"])
        .contains("above the function's maximum"));

    // logs --since keeps only later lines.
    let all = s.ok(&["logs", "show"]);
    assert!(all.contains("the handler imported"), "{all}");
    let none = s.ok(&["logs", "show", "--since", "2999-01-01T00:00:00Z"]);
    assert!(none.trim().is_empty(), "{none}");
    assert!(s
        .fails(&["logs", "show", "--since", "yesterday"])
        .contains("since:"));

    // rm by name, then the secret can go.
    s.ok(&["rm", "show"]);
    assert_eq!(s.post("/function/show", "").status, 404);
    assert!(s.fails(&["rm", "show"]).contains("not found"));
    s.ok(&["secret", "remove", "tok"]);
    assert!(!s.ok(&["secret", "list"]).contains("tok"));
}

#[test]
fn a_closed_pipe_ends_the_cli_quietly() {
    let s = Server::start();
    // `graphene audit | head -0`: the reader is gone before anything is written.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(util::BIN)
        .arg("audit")
        .env("GRAPHENE_URL", &s.url)
        .env("GRAPHENE_TOKEN", s.token())
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
