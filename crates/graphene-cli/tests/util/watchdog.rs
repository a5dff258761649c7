//! A `graphene watchdog` started as a plain process, and a function laid out
//! as its image holds it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{eventually, free_port, http, try_http, Reply, TempDir, BIN};

pub struct Watchdog {
    child: Child,
    pub port: u16,
    pub metrics_port: u16,
    pub log: Arc<Mutex<Vec<String>>>,
    /// Its TMPDIR: the lock file lies here.
    pub tmp: TempDir,
}

impl Watchdog {
    /// Starts the watchdog on `image` (a built function) or, with none, as
    /// an exec watchdog in `cwd`; `env` adds the knobs.
    pub fn start(image: Option<&Path>, cwd: &Path, env: &[(&str, &str)]) -> Self {
        let tmp = TempDir::new("wdtmp");
        let (port, metrics_port) = (free_port(), free_port());
        let mut cmd = Command::new(BIN);
        cmd.arg("watchdog")
            .current_dir(cwd)
            .env("TMPDIR", tmp.path())
            .env("port", port.to_string())
            .env("metrics_port", metrics_port.to_string())
            .env(
                "GRAPHENE_IMAGE_DIR",
                image.map_or_else(|| cwd.join("no-image"), Path::to_path_buf),
            )
            .env("GRAPHENE_FUNCTION", "hello")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start graphene watchdog");
        let log = Arc::new(Mutex::new(Vec::new()));
        super::collect_lines(child.stdout.take().unwrap(), "watchdog", log.clone());
        super::collect_lines(child.stderr.take().unwrap(), "watchdog", log.clone());
        let mut w = Self {
            child,
            port,
            metrics_port,
            log,
            tmp,
        };
        // Listening, or already gone (a handler that fails to import).
        eventually("the watchdog to listen", Duration::from_secs(20), || {
            let gone = w.child.try_wait().unwrap().is_some();
            (gone || try_http("GET", &w.url("/_/health"), b"", &[]).is_ok()).then_some(())
        });
        w
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn get(&self, path: &str) -> Reply {
        http("GET", &self.url(path), b"", &[])
    }

    pub fn post(&self, path: &str, body: &str) -> Reply {
        http("POST", &self.url(path), body.as_bytes(), &[])
    }

    pub fn wait_ready(&self) {
        eventually("/_/ready to answer 200", Duration::from_secs(30), || {
            (self.get("/_/ready").status == 200).then_some(())
        });
    }

    pub fn metrics(&self) -> String {
        http(
            "GET",
            &format!("http://127.0.0.1:{}/metrics", self.metrics_port),
            b"",
            &[],
        )
        .body
    }

    pub fn logged(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap()
            .success());
    }

    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        eventually("the watchdog to exit", limit, || {
            self.child.try_wait().unwrap()
        })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A function folder built with `graphene build --shrinkwrap` into the
/// layout its image has, with the virtual environment the image's build
/// step makes.
pub fn built(work: &Path, lang: &str, handler: &str) -> PathBuf {
    std::fs::create_dir_all(work.join("hello")).unwrap();
    std::fs::write(work.join("hello/handler.py"), handler).unwrap();
    std::fs::write(
        work.join("stack.yml"),
        format!(
            "version: 1.0\nfunctions:\n  hello:\n    lang: {lang}\n    handler: ./hello\n    image: registry.example.com/team/hello:1\n"
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["build", "--shrinkwrap", "contexts"])
        .current_dir(work)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let image = work.join("contexts/hello");
    let containerfile = std::fs::read_to_string(image.join("Containerfile")).unwrap();
    assert!(containerfile.contains("ENTRYPOINT [\"/usr/local/bin/graphene\", \"watchdog\"]"));
    let venv = Command::new("python3")
        .args(["-m", "venv", "--without-pip"])
        .arg(image.join("venv"))
        .status()
        .unwrap();
    assert!(venv.success());
    image
}
