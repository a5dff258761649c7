//! A real Prometheus scrapes graphene's /metrics: the exposition parses and
//! the OpenFaaS metric names come through with their labels.

mod util;

use std::process::{Command, Stdio};
use std::time::Duration;

use util::{eventually, Server, TempDir};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn prometheus_scrapes_gateway_metrics() {
    let Ok(prometheus) = which("prometheus") else {
        eprintln!("prometheus is not installed (scripts/test.sh installs it): not tested");
        return;
    };
    let s = Server::start();
    s.function("echo", "python3", "def handle(req):\n    return req\n", "");
    s.ok(&["up"]);
    s.wait_ready("echo");
    for _ in 0..3 {
        assert_eq!(s.post("/function/echo", "x").status, 200);
    }

    // Prometheus scrapes with a token that may only read.
    let out = s.cli_as(
        &s.token(),
        &["token", "create", "prometheus", "--grant", "read:*"],
        b"",
    );
    assert!(out.status.success());
    let scrape_token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let dir = TempDir::new("prom");
    let target = s.url.trim_start_matches("http://");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: graphene\n    authorization:\n      credentials: {scrape_token}\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let mut child = Command::new(prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let query = |q: &str| -> Option<serde_json::Value> {
        let url = format!("http://127.0.0.1:{port}/api/v1/query");
        let resp = ureq::get(&url)
            .query("query", q)
            .timeout(Duration::from_secs(5))
            .call()
            .ok()?;
        let v: serde_json::Value = serde_json::from_str(&resp.into_string().ok()?).ok()?;
        let results = v["data"]["result"].as_array()?.clone();
        results.into_iter().next()
    };
    let invocations = eventually(
        "Prometheus to scrape graphene",
        Duration::from_secs(60),
        || {
            query(
                r#"gateway_function_invocation_total{function_name="echo.openfaas-fn",code="200"}"#,
            )
        },
    );
    let _ = child.kill();
    let _ = child.wait();
    let value: f64 = invocations["value"][1].as_str().unwrap().parse().unwrap();
    assert!(value >= 3.0, "{invocations}");
    assert_eq!(invocations["metric"]["job"], "graphene");
}

#[test]
fn metrics_pass_promtool() {
    let Ok(promtool) = which("promtool") else {
        eprintln!("promtool is not installed (scripts/test.sh installs it): not tested");
        return;
    };
    let s = Server::start();
    s.function("echo", "python3", "def handle(req):\n    return req\n", "");
    s.ok(&["up"]);
    s.wait_ready("echo");
    assert_eq!(s.post("/function/echo", "x").status, 200);
    let metrics = s.get("/metrics").body;
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), metrics.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The exposition parses; the only lint notes are about the names that
    // OpenFaaS chose and dashboards depend on.
    let accepted = [
        "gateway_function_invocation_started counter metrics should have \"_total\" suffix",
        "gateway_service_count non-histogram and non-summary metrics should not have \"_count\" suffix",
    ];
    for line in said.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            accepted.contains(&line.trim()),
            "promtool: {line}\n{metrics}"
        );
    }
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    let paths = std::env::var_os("PATH").ok_or(())?;
    std::env::split_paths(&paths)
        .map(|p| p.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}
