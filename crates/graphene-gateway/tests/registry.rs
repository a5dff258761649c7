//! The registry and reconciler through the real router, on the in-memory
//! provider (no Python): desired state first, a failed revision never
//! replacing the serving one (also across a restart with an empty runtime),
//! rollback, a runtime that refuses for a while, and removal.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use graphene_gateway::{Gateway, GatewayConfig};
use graphene_testing::fake::{FakeBuilder, FakeProvider};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower_service::Service;

struct Client {
    gw: Arc<Gateway<FakeProvider>>,
    token: String,
}

struct Reply {
    status: StatusCode,
    revision: Option<u64>,
    body: String,
}

impl Client {
    async fn open(
        state: &std::path::Path,
        provider: FakeProvider,
        builder: Arc<FakeBuilder>,
    ) -> Self {
        let config = GatewayConfig {
            state_dir: state.to_path_buf(),
            max_body: 1 << 20,
            trusted_proxies: Vec::new(),
            auth: Default::default(),
            job_retention: Duration::from_secs(3600),
            job_result_limit: 1 << 20,
            queue: None,
            keep_revisions: 10,
            admin_token_file: None,
        };
        let (gw, _) = Gateway::open(config, Arc::new(provider), builder, Default::default())
            .await
            .unwrap();
        gw.restore().await;
        let token = std::fs::read_to_string(state.join(graphene_gateway::TOKEN_FILE))
            .unwrap()
            .trim()
            .to_string();
        Self { gw, token }
    }

    async fn send(&self, method: &str, path: &str, body: Value) -> Reply {
        let body = match body {
            Value::Null => Body::empty(),
            Value::String(s) => Body::from(s),
            v => Body::from(v.to_string()),
        };
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {}", self.token))
            .body(body)
            .unwrap();
        let resp = self.gw.router().call(req).await.unwrap();
        let status = resp.status();
        let revision = resp
            .headers()
            .get(graphene_core::api::REVISION_HEADER)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            revision,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    async fn deploy(&self, image: &str) -> Reply {
        self.send(
            "PUT",
            "/system/functions",
            json!({"service": "svc", "image": image}),
        )
        .await
    }

    async fn describe(&self) -> Value {
        serde_json::from_str(
            &self
                .send("GET", "/system/function/svc", Value::Null)
                .await
                .body,
        )
        .unwrap()
    }

    async fn call(&self) -> (StatusCode, String) {
        let r = self
            .send("POST", "/function/svc", Value::String("x".into()))
            .await;
        (r.status, r.body)
    }

    /// Waits until `check` holds for the function's description.
    async fn until(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let d = self.describe().await;
            if check(&d) {
                return d;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {d}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn temp(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("graphene-gw-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn latest_is(state: &'static str, revision: u64) -> impl Fn(&Value) -> bool {
    move |d| {
        d["graphene"]["latest"]["state"] == state && d["graphene"]["latest"]["revision"] == revision
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revisions_through_the_registry() {
    let dir = temp("revisions");
    let builder = Arc::new(FakeBuilder::default());
    for image in ["svc:a", "svc:b", "svc-broken:c"] {
        builder.add(image);
    }
    let c = Client::open(&dir, FakeProvider::new(), builder.clone()).await;
    // Create is POST; an update of a missing function is 404.
    let r = c.deploy("svc:a").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let r = c
        .send(
            "POST",
            "/system/functions",
            json!({"service": "svc", "image": "svc:a"}),
        )
        .await;
    assert_eq!(
        (r.status, r.revision),
        (StatusCode::ACCEPTED, Some(1)),
        "{}",
        r.body
    );
    c.until("revision 1 ready", latest_is("ready", 1)).await;
    assert_eq!(c.call().await, (StatusCode::OK, "a".into()));
    // Unchanged: no new revision.
    assert_eq!(c.deploy("svc:a").await.revision, Some(1));
    // A broken revision fails; revision 1 keeps serving and runs again.
    assert_eq!(c.deploy("svc-broken:c").await.revision, Some(2));
    let d = c.until("revision 2 failed", latest_is("failed", 2)).await;
    assert_eq!(d["graphene"]["servingRevision"], 1, "{d}");
    c.until("revision 1 running again", |d| {
        d["graphene"]["rollout"]["revision"] == 1
    })
    .await;
    assert_eq!(c.call().await, (StatusCode::OK, "a".into()));
    // An image the runtime can't run is refused before anything is stored.
    let r = c.deploy("missing:x").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.body.contains("does not exist"), "{}", r.body);
    assert_eq!(c.describe().await["graphene"]["latest"]["revision"], 2);

    // A restart with an empty runtime brings back the serving revision.
    drop(c);
    let c = Client::open(&dir, FakeProvider::new(), builder.clone()).await;
    c.until("revision 1 back", |d| {
        d["graphene"]["rollout"]["revision"] == 1 && d["availableReplicas"] == 1
    })
    .await;
    assert_eq!(c.call().await, (StatusCode::OK, "a".into()));

    // Update, then roll back to the revision before.
    assert_eq!(c.deploy("svc:b").await.revision, Some(3));
    c.until("revision 3 ready", latest_is("ready", 3)).await;
    assert_eq!(c.call().await, (StatusCode::OK, "b".into()));
    let r = c.send("POST", "/system/rollback/svc", json!({})).await;
    assert_eq!(
        (r.status, r.revision),
        (StatusCode::ACCEPTED, Some(4)),
        "{}",
        r.body
    );
    c.until("revision 4 ready", latest_is("ready", 4)).await;
    assert_eq!(c.call().await, (StatusCode::OK, "a".into()));
    let h: Value = serde_json::from_str(
        &c.send("GET", "/system/revisions/svc", Value::Null)
            .await
            .body,
    )
    .unwrap();
    assert_eq!(h["serving"], 4, "{h}");
    assert_eq!(h["revisions"][0]["rollbackOf"], 1, "{h}");
    assert_eq!(h["revisions"][2]["state"], "failed", "{h}");
    let r = c
        .send("POST", "/system/rollback/svc", json!({"revision": 99}))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let r = c
        .send("POST", "/system/rollback/svc", json!({"revison": 1}))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(
        r.body.contains("revison"),
        "names the unknown field: {}",
        r.body
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciler_catches_up_with_a_runtime_that_refused() {
    let dir = temp("reconcile");
    let builder = Arc::new(FakeBuilder::default());
    builder.add("svc:a");
    let provider = FakeProvider::new();
    let c = Client::open(&dir, provider.clone(), builder).await;
    provider.refuse_applies(2);
    // Accepted (stored) although the runtime is down: the desired state is
    // written first.
    let r = c
        .send(
            "POST",
            "/system/functions",
            json!({"service": "svc", "image": "svc:a"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let d = c
        .until("a failed attempt shown", |d| {
            d["graphene"]["reconcile"]["attempts"].as_u64() >= Some(1)
        })
        .await;
    assert_eq!(d["graphene"]["reconcile"]["inSync"], false, "{d}");
    assert!(
        d["graphene"]["reconcile"]["lastError"]
            .as_str()
            .unwrap()
            .contains("the runtime is down"),
        "{d}"
    );
    // While it catches up, calls are told so.
    let (status, body) = c.call().await;
    assert!(
        status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::OK,
        "{status} {body}"
    );
    c.until("in sync and ready", |d| {
        d["graphene"]["reconcile"]["inSync"] == true && latest_is("ready", 1)(d)
    })
    .await;
    assert_eq!(c.call().await, (StatusCode::OK, "a".into()));
    // Removal: gone from the registry at once, from the runtime soon after.
    let r = c
        .send(
            "DELETE",
            "/system/functions",
            json!({"functionName": "svc"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    assert_eq!(c.call().await.0, StatusCode::NOT_FOUND);
    assert!(
        provider.running().is_empty(),
        "removed from the runtime before the answer"
    );
    // Deployed again under the same name right away: the new function is
    // not undone by its predecessor's removal.
    let r = c
        .send(
            "POST",
            "/system/functions",
            json!({"service": "svc", "image": "svc:a"}),
        )
        .await;
    assert_eq!(
        (r.status, r.revision),
        (StatusCode::ACCEPTED, Some(1)),
        "{}",
        r.body
    );
    c.until("the new svc ready", latest_is("ready", 1)).await;
    assert_eq!(c.call().await, (StatusCode::OK, "a".into()));
    let _ = std::fs::remove_dir_all(dir);
}
