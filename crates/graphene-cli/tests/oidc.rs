//! OIDC with a real, certified OpenID provider (npm `oidc-provider`, started
//! from `tests/oidc/provider.mjs`): its RS256 access tokens, and tokens
//! crafted to be wrong in each way a gateway must catch.

mod util;

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use util::{eventually, Server, BIN};

struct Provider {
    child: Child,
    url: String,
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/oidc")
}

impl Provider {
    fn start() -> Self {
        let dir = fixture();
        assert!(
            dir.join("node_modules/oidc-provider").is_dir(),
            "the OpenID provider is not installed: run scripts/test.sh (it runs `npm ci` in tests/oidc)"
        );
        let mut child = Command::new("node")
            .arg(dir.join("provider.mjs"))
            .arg("0")
            .current_dir(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node runs");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        // Keep reading: the provider logs to stdout and dies on a closed pipe.
        std::thread::spawn(move || {
            for l in out.lines().map_while(Result::ok) {
                eprintln!("[provider] {l}");
            }
        });
        let url = line
            .trim()
            .strip_prefix("ready ")
            .unwrap_or_else(|| panic!("the provider did not start: {line:?}"))
            .to_string();
        Self { child, url }
    }

    fn post(&self, path: &str, body: Value) -> Value {
        let r = ureq::post(&format!("{}{path}", self.url))
            .timeout(Duration::from_secs(30))
            .set("Content-Type", "application/json")
            .send_string(&body.to_string())
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        serde_json::from_str(&r.into_string().unwrap()).unwrap()
    }

    fn mint(&self, mode: &str, claims: Value) -> String {
        self.post("/_test/mint", json!({ "mode": mode, "claims": claims }))["token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// A real access token by the client-credentials grant.
    fn client_token(&self, client: &str, secret: &str) -> String {
        let r = ureq::post(&format!("{}/token", self.url))
            .set(
                "Authorization",
                &format!("Basic {}", b64(&format!("{client}:{secret}"))),
            )
            .send_form(&[
                ("grant_type", "client_credentials"),
                ("resource", "urn:graphene"),
            ])
            .unwrap_or_else(|e| panic!("token: {e}"));
        let v: Value = serde_json::from_str(&r.into_string().unwrap()).unwrap();
        v["access_token"].as_str().unwrap().to_string()
    }
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn header_kid(token: &str) -> String {
    use base64::Engine;
    let head = token.split('.').next().unwrap();
    let v: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(head)
            .unwrap(),
    )
    .unwrap();
    v["kid"].as_str().unwrap_or("").to_string()
}

/// A configured issuer that does not answer.
const DOWN: &str = "http://127.0.0.1:9";

fn server_for(p: &Provider) -> Server {
    let config = util::TempDir::new("auth");
    let path = config.path().join("auth.yaml");
    std::fs::write(
        &path,
        format!(
            "oidc:\n  - issuer: {}\n    audience: urn:graphene\n    roles: [realm_access.roles, resource_access.graphene.roles]\n    leeway: 60s\n    prefix: \"kc:\"\n  - issuer: {DOWN}\n    audience: urn:graphene\n    prefix: \"down:\"\n",
            p.url
        ),
    )
    .unwrap();
    let s = Server::start_with(&["--auth-config", path.to_str().unwrap()]);
    std::mem::forget(config); // read once at start; removed with /tmp
    s.function(
        "model",
        "python3",
        "def handle(req):\n    return 'scored ' + req\n",
        "",
    );
    s.ok(&["up"]);
    s.wait_ready("model");
    s
}

#[test]
fn bearer_jwts_are_checked_every_way() {
    let p = Provider::start();
    let s = server_for(&p);
    let call = |token: &str| s.bearer(token, "POST", "/function/model", "x");
    let expect = |token: &str, status: u16, says: &str, case: &str| {
        let r = call(token);
        assert_eq!(r.status, status, "{case}: {}", r.body);
        assert!(r.body.contains(says), "{case}: {:?} lacks {says:?}", r.body);
        assert!(!r.body.contains(token), "{case}: the token is echoed");
    };

    assert_eq!(s.anonymous("POST", "/function/model", "x").status, 401);
    expect("abc.def.ghi", 401, "malformed", "malformed");
    let valid = p.mint("rs256", json!({}));
    expect(
        &valid,
        403,
        "user:kc:minted may not invoke model",
        "valid, no grant",
    );
    s.ok(&["grant", "add", "user:kc:minted", "invoke", "model"]);
    expect(&valid, 200, "scored x", "valid, with grant");
    let t = now();
    let cases = [
        (
            "expired",
            json!({"iat": t - 900, "exp": t - 600}),
            "rs256",
            "expired",
        ),
        (
            "not yet valid",
            json!({"nbf": t + 600}),
            "rs256",
            "not valid yet",
        ),
        (
            "wrong issuer",
            json!({"iss": "http://127.0.0.1:1/evil"}),
            "rs256",
            "issuer",
        ),
        (
            "wrong audience",
            json!({"aud": "someone-else"}),
            "rs256",
            "audience",
        ),
        ("no expiry", json!({"exp": null}), "rs256", "required claim"),
        ("tampered", json!({}), "tamper", "signature"),
        ("alg none", json!({}), "none", "algorithm"),
        (
            "HS256 keyed with the public key",
            json!({}),
            "hs256-pubkey",
            "algorithm",
        ),
        ("unknown kid", json!({}), "unknown-kid", "signing key"),
    ];
    for (case, claims, mode, says) in cases {
        expect(&p.mint(mode, claims), 401, says, case);
    }
    // An issuer whose keys can't be fetched: the gateway can't tell, so 503.
    expect(
        &p.mint("rs256", json!({"iss": DOWN})),
        503,
        "could not be fetched",
        "issuer down",
    );
    // Within the leeway, and without a kid when the issuer has one key.
    expect(
        &p.mint("rs256", json!({"exp": t - 20})),
        200,
        "scored",
        "expired within leeway",
    );
    expect(
        &p.mint("no-kid", json!({})),
        200,
        "scored",
        "no kid, one key",
    );

    // Real tokens from the provider: roles from the configured claim paths.
    let analyst = p.client_token("analyst", "analyst-secret");
    let plain = p.client_token("plain", "plain-secret");
    assert_eq!(header_kid(&analyst), "k1");
    expect(
        &analyst,
        403,
        "user:kc:analyst may not invoke model",
        "no grant for the role yet",
    );
    s.ok(&[
        "grant",
        "add",
        "role:kc:analyst",
        "invoke",
        "model",
        "--rate",
        "100/s",
    ]);
    s.ok(&[
        "grant",
        "add",
        "role:kc:deployer",
        "deploy",
        "namespace:openfaas-fn",
    ]);
    expect(&analyst, 200, "scored", "role from realm_access.roles");
    expect(
        &plain,
        403,
        "user:kc:plain may not invoke",
        "a client without the role",
    );
    let who: Value =
        serde_json::from_str(&s.bearer(&analyst, "GET", "/system/whoami", "").body).unwrap();
    assert_eq!(who["principal"], "user:kc:analyst");
    let roles = who["roles"].to_string();
    assert!(
        roles.contains("analyst") && roles.contains("deployer"),
        "{roles}"
    );
    assert_eq!(
        s.bearer(&analyst, "GET", "/system/function/model", "")
            .status,
        200,
        "deployer (from resource_access) may read"
    );

    // Key rotation: a token signed with the new key is accepted once the
    // gateway refetched the keys; the old key's tokens stop working.
    let kid = p.post("/_test/rotate", json!({}))["kid"]
        .as_str()
        .unwrap()
        .to_string();
    let rotated = p.client_token("analyst", "analyst-secret");
    assert_eq!(header_kid(&rotated), kid);
    eventually(
        "the rotated key to be fetched",
        Duration::from_secs(20),
        || (call(&rotated).status == 200).then_some(()),
    );
    expect(
        &analyst,
        401,
        "signing key",
        "a key the issuer no longer publishes",
    );
}

#[test]
fn cli_login_with_client_credentials_and_device_flow() {
    let p = Provider::start();
    let s = server_for(&p);
    s.ok(&["grant", "add", "user:kc:analyst", "read", "*"]);
    s.ok(&["grant", "add", "user:kc:alice", "invoke", "model"]);

    // A service: client credentials, the secret on stdin.
    let out = s.cli_as(
        "",
        &[
            "login",
            "--oidc-issuer",
            &p.url,
            "--client-id",
            "analyst",
            "--client-secret-stdin",
            "--resource",
            "urn:graphene",
        ],
        b"analyst-secret\n",
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("as user:kc:analyst"), "{said}");
    let who = s.cli_as("", &["whoami"], b"");
    assert!(String::from_utf8_lossy(&who.stdout).starts_with("user:kc:analyst"));
    let wrong = s.cli_as(
        "",
        &[
            "login",
            "--oidc-issuer",
            &p.url,
            "--client-id",
            "analyst",
            "--client-secret-stdin",
        ],
        b"wrong\n",
    );
    assert!(!wrong.status.success());
    assert!(
        !String::from_utf8_lossy(&wrong.stderr).contains("wrong"),
        "the secret is not echoed"
    );

    // A person: the device flow; the provider's own pages approve it.
    let mut login = Command::new(BIN)
        .args([
            "login",
            "--oidc-issuer",
            &p.url,
            "--client-id",
            "cli",
            "--scope",
            "openid",
            "--resource",
            "urn:graphene",
        ])
        .current_dir(s.work.path())
        .env("GRAPHENE_URL", &s.url)
        .env_remove("GRAPHENE_TOKEN")
        .env("GRAPHENE_STATE_DIR", s.work.path().join("no-local-state"))
        .env("HOME", s.work.path().join("device-home"))
        .env_remove("XDG_CONFIG_HOME")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(login.stderr.take().unwrap());
    let mut prompt = String::new();
    stderr.read_line(&mut prompt).unwrap();
    let code = prompt
        .trim()
        .rsplit(' ')
        .next()
        .unwrap_or_else(|| panic!("no code in {prompt:?}"))
        .to_string();
    assert!(prompt.contains("open http"), "{prompt}");
    let approved = p.post(
        "/_test/approve",
        json!({"user_code": code, "account": "alice"}),
    );
    assert_eq!(approved["ok"], true, "{approved}");
    let status = login.wait().unwrap();
    let mut out = String::new();
    login
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(status.success(), "{out}{rest}");
    assert!(out.contains("as user:kc:alice"), "{out}");
}
