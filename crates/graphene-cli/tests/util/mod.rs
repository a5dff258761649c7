//! Test harness: a real `graphene serve` on an ephemeral port with its own
//! state directory, the real CLI against it, and a small HTTP helper.
#![allow(dead_code)]

pub mod registry;
pub mod watchdog;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_graphene");

/// A folder removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "gt-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `f` until it returns `Some`, failing the test after `limit`.
pub fn eventually<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub struct Server {
    pub url: String,
    pub state: PathBuf,
    pub work: TempDir,
    child: Child,
    /// Everything the server wrote to stderr so far.
    pub log: Arc<Mutex<Vec<String>>>,
    extra: Vec<String>,
    /// The certificate the CLI trusts (`GRAPHENE_CA`) for an HTTPS server.
    pub ca: Option<PathBuf>,
}

impl Server {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Self {
        let work = TempDir::new("srv");
        let state = work.path().join("state");
        Self::launch(work, state, extra.iter().map(|s| s.to_string()).collect())
    }

    fn launch(work: TempDir, state: PathBuf, extra: Vec<String>) -> Self {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--state-dir"])
            .arg(&state)
            .args(&extra)
            .env("GRAPHENE_LOG", "info")
            .env_remove("GRAPHENE_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start graphene serve");
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let keep = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[server] {line}");
                keep.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let url = loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("graphene serve printed its address");
            if let Some(i) = line.find("listening on http") {
                let rest = &line[i + "listening on ".len()..];
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        let ca = extra
            .iter()
            .any(|a| a == "--tls-self-signed")
            .then(|| state.join("tls/cert.pem"));
        Self {
            url,
            state,
            work,
            child,
            log,
            extra,
            ca,
        }
    }

    /// Whether the server runs functions inside bubblewrap.
    pub fn sandboxed(&self) -> bool {
        self.log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("sandbox=true"))
    }

    /// The admin credential: the one it made, or the one it was given
    /// with `--admin-token-file`.
    pub fn token(&self) -> String {
        let given = self
            .extra
            .iter()
            .position(|a| a == "--admin-token-file")
            .map(|i| PathBuf::from(&self.extra[i + 1]));
        std::fs::read_to_string(given.unwrap_or_else(|| self.state.join("admin-token")))
            .unwrap()
            .trim()
            .to_string()
    }

    /// SIGKILLs the server and starts it again on the same state directory.
    pub fn kill_and_restart(mut self) -> Self {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let work = std::mem::replace(&mut self.work, TempDir(PathBuf::new()));
        let state = self.state.clone();
        let extra = self.extra.clone();
        Self::launch(work, state, extra)
    }

    /// Sends a signal to the server and waits for it to exit.
    pub fn signal_and_wait(&mut self, signal: &str) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args([signal, &pid]).status().unwrap();
        self.child.wait().unwrap()
    }

    /// Runs the CLI in the work folder against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_stdin(args, b"")
    }

    pub fn cli_stdin(&self, args: &[&str], stdin: &[u8]) -> Output {
        self.cli_as(&self.token(), args, stdin)
    }

    /// Runs the CLI with another credential (empty: none).
    pub fn cli_as(&self, token: &str, args: &[&str], stdin: &[u8]) -> Output {
        with_stdin(
            Command::new(BIN)
                .args(args)
                .current_dir(self.work.path())
                .env("GRAPHENE_URL", &self.url)
                .env("GRAPHENE_TOKEN", token)
                .env(
                    "GRAPHENE_STATE_DIR",
                    self.work.path().join("no-local-state"),
                )
                .envs(self.ca.iter().map(|c| ("GRAPHENE_CA", c)))
                .env("HOME", self.work.path())
                .env_remove("XDG_CONFIG_HOME"),
            stdin,
        )
    }

    /// Runs the CLI and fails the test unless it succeeds; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "graphene {args:?} failed:\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the CLI expecting failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            !out.status.success(),
            "graphene {args:?} should have failed"
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Writes a file in the work folder.
    pub fn write(&self, rel: &str, text: &str) {
        let p = self.work.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// A function folder with the given handler, added to stack.yml.
    pub fn function(&self, name: &str, lang: &str, handler: &str, extra_yaml: &str) {
        self.ok(&["new", name, "--lang", lang]);
        self.write(&format!("{name}/handler.py"), handler);
        if !extra_yaml.is_empty() {
            let path = self.work.path().join("stack.yml");
            let text = std::fs::read_to_string(&path).unwrap();
            let anchor = format!("    image: {name}:latest\n");
            let text = text.replace(&anchor, &format!("{anchor}{extra_yaml}"));
            std::fs::write(path, text).unwrap();
        }
    }

    /// GET as the operator (with the admin credential).
    pub fn get(&self, path: &str) -> Reply {
        self.admin("GET", path, "")
    }

    /// POST as the operator (with the admin credential).
    pub fn post(&self, path: &str, body: &str) -> Reply {
        self.admin("POST", path, body)
    }

    /// A request with no credential at all.
    pub fn anonymous(&self, method: &str, path: &str, body: &str) -> Reply {
        self.request(method, path, body.as_bytes(), &[])
    }

    /// A request with `Authorization: Bearer <token>`.
    pub fn bearer(&self, token: &str, method: &str, path: &str, body: &str) -> Reply {
        let auth = format!("Bearer {token}");
        self.request(method, path, body.as_bytes(), &[("Authorization", &auth)])
    }

    pub fn admin(&self, method: &str, path: &str, body: &str) -> Reply {
        let auth = format!("Bearer {}", self.token());
        self.request(method, path, body.as_bytes(), &[("Authorization", &auth)])
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> Reply {
        http(method, &format!("{}{path}", self.url), body, headers)
    }

    /// Waits until a function answers 200 to `body`.
    pub fn wait_ready(&self, name: &str) {
        eventually(
            &format!("{name} to answer"),
            Duration::from_secs(60),
            || (self.post(&format!("/function/{name}"), "ping").status == 200).then_some(()),
        );
    }

    pub fn describe(&self, name: &str) -> serde_json::Value {
        serde_json::from_str(
            &self
                .admin("GET", &format!("/system/function/{name}"), "")
                .body,
        )
        .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP request; any status is a reply, only a failed connection
/// panics.
pub fn http(method: &str, url: &str, body: &[u8], headers: &[(&str, &str)]) -> Reply {
    try_http(method, url, body, headers).unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

/// One HTTP request, or why no reply came.
pub fn try_http(
    method: &str,
    url: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    let mut req = ureq::request(method, url).timeout(Duration::from_secs(60));
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let resp = match req.send_bytes(body) {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(e.to_string()),
    };
    let status = resp.status();
    let headers = resp
        .headers_names()
        .into_iter()
        .map(|h| (h.clone(), resp.header(&h).unwrap_or("").to_string()))
        .collect();
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut resp.into_reader(), &mut body).map_err(|e| e.to_string())?;
    Ok(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// A TCP port free on loopback now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Copies a child's output lines into a shared list (and the test's
/// output, behind `tag`) as they come.
pub fn collect_lines(
    pipe: impl std::io::Read + Send + 'static,
    tag: &'static str,
    into: Arc<Mutex<Vec<String>>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            eprintln!("[{tag}] {line}");
            into.lock().unwrap().push(line);
        }
    });
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A real `nats-server` with JetStream on an ephemeral port; restartable on
/// the same port and storage.
pub struct Nats {
    pub url: String,
    ip: String,
    port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl Nats {
    pub fn start() -> Self {
        Self::start_on("127.0.0.1")
    }

    /// On another address of this machine (e.g. one pods reach).
    pub fn start_on(ip: &str) -> Self {
        let port = free_port();
        let mut n = Self {
            url: format!("nats://{ip}:{port}"),
            ip: ip.to_string(),
            port,
            dir: TempDir::new("nats"),
            child: None,
        };
        n.launch();
        n
    }

    fn launch(&mut self) {
        let child = Command::new("nats-server")
            .args(["-js", "-a", &self.ip, "-p", &self.port.to_string(), "-sd"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server runs (scripts/test.sh installs it)");
        self.child = Some(child);
        let addr = format!("{}:{}", self.ip, self.port);
        eventually("nats-server to listen", Duration::from_secs(20), || {
            std::net::TcpStream::connect(&addr).ok().map(|_| ())
        });
    }

    /// Kills the server and starts it again on the same storage.
    pub fn restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.launch();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `cmd` to its end with `stdin` as its input.
pub fn with_stdin(cmd: &mut Command, stdin: &[u8]) -> Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}
