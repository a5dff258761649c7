//! Who may call what: API tokens, grants, public functions, rate limits,
//! the audit trail, trusted proxies and request limits, with the real
//! binary and the real CLI.

mod util;

use std::time::Duration;

use util::{eventually, Server};

const ECHO: &str = "def handle(req):\n    return req\n";
/// Answers with the names of the headers it received.
const HEADERS: &str = "def handle(event, context):\n    return ' '.join(sorted(event.headers))\n";

fn stdout(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn tokens_grants_and_public_functions() {
    let s = Server::start();
    s.function(
        "open",
        "python3",
        ECHO,
        "    labels:\n      com.graphene.public: \"true\"\n",
    );
    s.function("private", "python3", ECHO, "");
    s.function("other", "python3", ECHO, "");
    s.ok(&["up"]);
    for f in ["open", "private", "other"] {
        s.wait_ready(f);
    }

    // Without a credential: only the public function answers, and a missing
    // function looks exactly like a private one.
    assert_eq!(s.anonymous("POST", "/function/open", "hi").body, "hi");
    let private = s.anonymous("POST", "/function/private", "hi");
    let missing = s.anonymous("POST", "/function/nope", "hi");
    assert_eq!(private.status, 401);
    assert!(private.header("www-authenticate").is_some());
    assert_eq!((missing.status, &missing.body), (401, &private.body));
    assert_eq!(s.anonymous("GET", "/system/functions", "").status, 401);
    assert_eq!(s.anonymous("GET", "/metrics", "").status, 401);
    assert_eq!(s.anonymous("GET", "/healthz", "").status, 200);

    // A customer's token may invoke `private` only.
    let token = stdout(&s.cli_as(
        &s.token(),
        &[
            "token",
            "create",
            "acme",
            "--owner",
            "ACME Corp",
            "--grant",
            "invoke:private",
            "--expires",
            "30d",
        ],
        b"",
    ));
    assert!(token.starts_with("gph_"), "{token}");
    assert_eq!(s.bearer(&token, "POST", "/function/private", "x").body, "x");
    let other = s.bearer(&token, "POST", "/function/other", "x");
    let nope = s.bearer(&token, "POST", "/function/nope", "x");
    assert_eq!(other.status, 403, "{}", other.body);
    assert!(
        other.body.contains("token:acme may not invoke other"),
        "{}",
        other.body
    );
    assert_eq!(nope.status, 403, "no grant: existence is not revealed");
    assert_eq!(
        s.bearer(&token, "GET", "/system/function/private", "")
            .status,
        403
    );
    assert_eq!(
        s.bearer(&token, "GET", "/system/functions", "").body.trim(),
        "[]"
    );
    assert_eq!(s.bearer(&token, "GET", "/system/tokens", "").status, 403);
    assert_eq!(s.bearer(&token, "GET", "/metrics", "").status, 403);
    let out = s.cli_as(&token, &["whoami"], b"");
    assert_eq!(stdout(&out), "token:acme");
    // Deploying needs its own grant.
    let denied = s.cli_as(&token, &["rm", "private"], b"");
    assert!(!denied.status.success());
    assert!(String::from_utf8_lossy(&denied.stderr).contains("403"));

    // The value is shown once: never in listings, logs or the database.
    let list = s.ok(&["token", "list"]);
    assert!(
        list.contains("acme")
            && list.contains("ACME Corp")
            && list.contains("invoke openfaas-fn/private")
    );
    assert!(!list.contains(&token));
    assert!(!s.log.lock().unwrap().iter().any(|l| l.contains(&token)));
    let db = std::fs::read(s.state.join("state.db")).unwrap();
    assert!(!String::from_utf8_lossy(&db).contains(&token));

    // A second grant, made apart from the token, lets it read.
    let added = s.ok(&["grant", "add", "token:acme", "read", "private"]);
    let id = added
        .trim()
        .rsplit("id ")
        .next()
        .unwrap()
        .trim_end_matches(')')
        .to_string();
    assert_eq!(
        s.bearer(&token, "GET", "/system/function/private", "")
            .status,
        200
    );
    let listed = s.bearer(&token, "GET", "/system/functions", "").body;
    assert!(
        listed.contains("\"private\"") && !listed.contains("\"other\""),
        "{listed}"
    );
    s.ok(&["grant", "rm", &id]);
    assert_eq!(
        s.bearer(&token, "GET", "/system/function/private", "")
            .status,
        403
    );

    // Wrong, malformed and revoked credentials are 401 without echoing them.
    let wrong = s.bearer("gph_not-a-real-token", "POST", "/function/open", "x");
    assert_eq!(
        wrong.status, 401,
        "a bad credential is refused even for public functions"
    );
    assert!(wrong.body.contains("unknown or revoked API token"));
    assert!(!wrong.body.contains("not-a-real-token"));
    let odd = s.request(
        "POST",
        "/function/open",
        b"x",
        &[("Authorization", "Token abc")],
    );
    assert_eq!(odd.status, 401);
    assert!(odd.body.contains("Bearer"), "{}", odd.body);
    let jwt = s.bearer("aaa.bbb.ccc", "POST", "/function/open", "x");
    assert_eq!(jwt.status, 401);
    assert!(jwt.body.contains("no OIDC issuer"), "{}", jwt.body);

    // Tokens and grants survive a crash; revoking takes effect at once.
    let s = s.kill_and_restart();
    s.wait_ready("private");
    assert_eq!(s.bearer(&token, "POST", "/function/private", "y").body, "y");
    s.ok(&["token", "revoke", "acme"]);
    assert_eq!(
        s.bearer(&token, "POST", "/function/private", "y").status,
        401
    );
    assert!(
        s.ok(&["grant", "list"]).lines().count() == 1,
        "its grants went with it"
    );

    // Expiry.
    let brief = stdout(&s.cli_as(
        &s.token(),
        &[
            "token",
            "create",
            "brief",
            "--grant",
            "invoke:private",
            "--expires",
            "1s",
        ],
        b"",
    ));
    eventually("the token to expire", Duration::from_secs(10), || {
        let r = s.bearer(&brief, "POST", "/function/private", "z");
        (r.status == 401 && r.body.contains("expired")).then_some(())
    });

    // Who did what, when.
    let audit = s.ok(&["audit"]);
    for line in [
        "token.create",
        "grant.add",
        "grant.remove",
        "token.revoke",
        "function.deploy",
    ] {
        assert!(audit.contains(line), "{line} missing from:\n{audit}");
    }
    assert!(audit.contains("admin"));

    // Bad grants and tokens name the field.
    for (args, field) in [
        (vec!["grant", "add", "token:x", "fly", "private"], "actions"),
        (
            vec!["grant", "add", "bob", "invoke", "private"],
            "principal",
        ),
        (
            vec!["grant", "add", "anyone", "deploy", "private"],
            "actions",
        ),
        (vec!["grant", "add", "role:a", "invoke", "a b"], "resource"),
        (
            vec!["grant", "add", "role:a", "invoke", "x", "--rate", "5/week"],
            "rateLimit",
        ),
        (
            vec!["grant", "add", "token:ghost", "invoke", "x"],
            "principal",
        ),
        (vec!["token", "create", "Bad Name"], "name"),
        (
            vec!["token", "create", "t", "--expires", "soon"],
            "expiresIn",
        ),
    ] {
        let err = s.fails(&args);
        assert!(
            err.contains(field) && err.contains("400"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn deploy_and_secret_grants() {
    let s = Server::start();
    s.function("svc", "python3-http", HEADERS, "    secrets: [svc-key]\n");
    let ci = stdout(&s.cli_as(
        &s.token(),
        &[
            "token",
            "create",
            "ci",
            "--grant",
            "deploy:namespace:openfaas-fn",
            "--grant",
            "manage-secrets:svc-*",
        ],
        b"",
    ));
    let fails_with = |out: std::process::Output, code: &str| {
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success() && err.contains(code), "{err}");
    };
    // Builds run install steps outside the sandbox: only admins build.
    fails_with(s.cli_as(&ci, &["build"], b""), "403");
    s.ok(&["build"]);
    // The CI token creates its secret and deploys...
    stdout(&s.cli_as(
        &ci,
        &["secret", "create", "svc-key", "--from-literal", "v"],
        b"",
    ));
    stdout(&s.cli_as(&ci, &["deploy"], b""));
    assert!(stdout(&s.cli_as(&ci, &["list"], b"")).contains("svc"));
    // ...but may not call it, touch other secrets, or hand out access.
    assert_eq!(s.bearer(&ci, "POST", "/function/svc", "x").status, 403);
    fails_with(
        s.cli_as(
            &ci,
            &["secret", "create", "db-password", "--from-literal", "v"],
            b"",
        ),
        "403",
    );
    fails_with(
        s.cli_as(&ci, &["grant", "add", "token:ci", "invoke", "svc"], b""),
        "403",
    );
    // Nor mount a secret it may not manage, nor make the function public.
    s.ok(&[
        "secret",
        "create",
        "db-password",
        "--from-literal",
        "hunter2",
    ]);
    let spec = |extra: &str| {
        format!(r#"{{"service":"svc","image":"svc:latest","secrets":["svc-key"{extra}]}}"#)
    };
    let r = s.bearer(&ci, "PUT", "/system/functions", &spec(r#","db-password""#));
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("manage-secrets"), "{}", r.body);
    let public = r#"{"service":"svc","image":"svc:latest","secrets":["svc-key"],"labels":{"com.graphene.public":"true"}}"#;
    assert_eq!(
        s.bearer(&ci, "PUT", "/system/functions", public).status,
        403
    );
    assert_eq!(
        s.bearer(&ci, "PUT", "/system/functions", &spec("")).status,
        202
    );
    let audit = s.ok(&["audit"]);
    assert!(
        audit
            .lines()
            .any(|l| l.contains("token:ci") && l.contains("function.deploy")),
        "{audit}"
    );
    assert!(audit
        .lines()
        .any(|l| l.contains("token:ci") && l.contains("secret.create")));

    // The caller's credential is for the gateway: the function never sees it.
    s.wait_ready("svc");
    let seen = s.post("/function/svc", "x");
    assert_eq!(seen.status, 200, "{}", seen.body);
    assert!(
        seen.body.contains("x-call-id") && !seen.body.contains("authorization"),
        "{}",
        seen.body
    );
}

#[test]
fn rate_limits_per_principal_and_client() {
    let s = Server::start_with(&["--trusted-proxy", "127.0.0.1"]);
    s.function("scored", "python3", ECHO, "");
    s.ok(&["up"]);
    s.wait_ready("scored");
    let token = |name: &str, rate: &str| {
        stdout(&s.cli_as(
            &s.token(),
            &[
                "token",
                "create",
                name,
                "--grant",
                "invoke:scored",
                "--rate",
                rate,
            ],
            b"",
        ))
    };
    let a = token("a", "3/m");
    let b = token("b", "3/m");
    for _ in 0..3 {
        assert_eq!(s.bearer(&a, "POST", "/function/scored", "x").status, 200);
    }
    let limited = s.bearer(&a, "POST", "/function/scored", "x");
    assert_eq!(limited.status, 429, "{}", limited.body);
    let wait: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=20).contains(&wait), "{wait}");
    assert!(limited.body.contains("3/m"));
    assert_eq!(
        s.bearer(&b, "POST", "/function/scored", "x").status,
        200,
        "each principal has its own bucket"
    );
    let metrics = s.get("/metrics").body;
    assert!(metrics
        .contains(r#"graphene_principal_requests_total{principal="token:a",result="limited"} 1"#));
    assert!(metrics
        .contains(r#"graphene_principal_requests_total{principal="token:a",result="allowed"} 3"#));

    // Callers without a credential are limited per client address, taken
    // from X-Forwarded-For because the proxy (here: loopback) is trusted.
    s.ok(&[
        "grant", "add", "anyone", "invoke", "scored", "--rate", "1/m",
    ]);
    let from = |ip: &str| {
        s.request("POST", "/function/scored", b"x", &[("X-Forwarded-For", ip)])
            .status
    };
    assert_eq!(from("203.0.113.1"), 200);
    assert_eq!(from("203.0.113.1"), 429);
    assert_eq!(from("203.0.113.2"), 200);
}

#[test]
fn request_heads_are_limited() {
    let s = Server::start();
    let huge = "x".repeat(100 << 10);
    let r = s.request("GET", "/healthz", b"", &[("X-Huge", &huge)]);
    assert_eq!(r.status, 431, "a 100 KiB header is refused");
    assert_eq!(s.get("/healthz").status, 200);
}

/// `--admin-token-file` (a Secret mounted into every gateway replica): the
/// credential in it is the admin's, at every start, and the state
/// directory gets none of its own; a missing or empty file stops the
/// server, naming the flag.
#[test]
fn the_admin_credential_can_come_from_a_file() {
    let dir = util::TempDir::new("admintoken");
    let file = dir.path().join("admin-token");
    std::fs::write(&file, "gph_given_by_a_secret\n").unwrap();
    let path = file.to_str().unwrap();
    let s = Server::start_with(&["--admin-token-file", path]);
    assert!(!s.state.join("admin-token").exists());
    let with = |token: &str| {
        util::http(
            "GET",
            &format!("{}/system/functions", s.url),
            b"",
            &[("Authorization", &format!("Bearer {token}"))],
        )
        .status
    };
    assert_eq!(with("gph_given_by_a_secret"), 200);
    assert_eq!(with("gph_something_else"), 401);
    // A new value is taken at the next start.
    std::fs::write(&file, "gph_rotated").unwrap();
    let s = s.kill_and_restart();
    assert_eq!(
        util::http(
            "GET",
            &format!("{}/system/functions", s.url),
            b"",
            &[("Authorization", "Bearer gph_rotated")],
        )
        .status,
        200
    );
    let refused = |file: &str| {
        let out = std::process::Command::new(util::BIN)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin-token-file",
                file,
            ])
            .env("GRAPHENE_STATE_DIR", dir.path().join("state"))
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = refused("/nonexistent/admin-token");
    assert!(err.contains("--admin-token-file: cannot read"), "{err}");
    std::fs::write(&file, "\n").unwrap();
    let err = refused(path);
    assert!(
        err.contains("--admin-token-file:") && err.contains("is empty"),
        "{err}"
    );
}
