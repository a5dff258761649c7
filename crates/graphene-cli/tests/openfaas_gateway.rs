//! Interop: the real OpenFaaS gateway pointed at a running `graphene
//! watchdog`, as it is pointed at of-watchdog, serves calls unchanged.
//!
//! The gateway is built from its public source (openfaas/faas, `gateway/`,
//! modules vendored), which no package registry serves: the test runs when
//! `OPENFAAS_GATEWAY` names the built binary:
//!
//! ```text
//! OPENFAAS_GATEWAY=/path/to/gateway cargo test -p graphene-cli \
//!     --test openfaas_gateway -- --ignored
//! ```
//!
//! The gateway binds :8080 and :8082 on all interfaces (fixed).

mod util;

use std::process::{Command, Stdio};
use std::time::Duration;

use util::watchdog::{built, Watchdog};
use util::{eventually, try_http, TempDir};

const ECHO: &str = r#"
import json

def handle(event, context):
    return {
        "statusCode": 202,
        "body": json.dumps({"path": event.path, "body": event.body.decode(), "query": event.query}),
        "headers": {"Content-Type": "application/json", "X-Model": "v1"},
    }
"#;

#[test]
#[ignore = "needs OPENFAAS_GATEWAY: the OpenFaaS gateway built from its source"]
fn the_openfaas_gateway_serves_calls_through_graphene_watchdog() {
    let gateway = std::env::var("OPENFAAS_GATEWAY").expect("OPENFAAS_GATEWAY");
    let work = TempDir::new("ofgw");
    let image = built(work.path(), "python3-http", ECHO);
    let wd = Watchdog::start(Some(&image), work.path(), &[]);
    wd.wait_ready();
    let gw = Command::new(gateway)
        .env("functions_provider_url", wd.url("/"))
        .env("scale_from_zero", "false")
        .env("basic_auth", "false")
        .env("faas_prometheus_host", "127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the OpenFaaS gateway");
    let _gw = KillOnDrop(gw);
    // (Its /healthz is forwarded to the provider: here, the function.)
    let r = eventually(
        "the gateway to forward a call",
        Duration::from_secs(30),
        || {
            try_http(
                "POST",
                "http://127.0.0.1:8080/function/echo/predict?k=3",
                b"features",
                &[("Content-Type", "text/plain")],
            )
            .ok()
            .filter(|r| r.status != 502 && r.status != 503)
        },
    );
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.header("x-model"), Some("v1"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.header("x-call-id").is_some(), "the gateway's call id");
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    // The provider URL is the watchdog's: it gets the gateway's whole path.
    assert_eq!(v["path"], "/function/echo/predict");
    assert_eq!(v["query"]["k"], "3");
    assert_eq!(v["body"], "features");
    let m = wd.metrics();
    assert!(
        m.contains("http_requests_total{code=\"202\",method=\"post\"} 1"),
        "{m}"
    );
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
