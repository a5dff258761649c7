//! How a function's processes are started: inside bubblewrap where it works
//! (its secrets mounted at /var/openfaas/secrets, a private /tmp), or as plain
//! child processes with a warning where it does not. Inside the sandbox the
//! state directory (credentials, database, other functions' files) is hidden
//! behind an empty tmpfs, other processes are invisible (own PID namespace)
//! and capabilities are dropped. Either way the process
//! gets a clean environment: nothing of the server's own (tokens, paths)
//! leaks into a function.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use graphene_core::SECRETS_MOUNT;

/// Where the function's secrets are, as the function sees them.
pub const SECRETS_ENV: &str = "GRAPHENE_SECRETS_DIR";

/// The host read-only, fresh /dev, /proc, /tmp and /var.
const BASE: &[&str] = &[
    "--ro-bind",
    "/",
    "/",
    "--dev",
    "/dev",
    "--proc",
    "/proc",
    "--tmpfs",
    "/tmp",
    "--tmpfs",
    "/var",
];
/// Own IPC, hostname and PID namespaces, a new session, no capabilities,
/// and nothing left behind if the server dies.
const ISOLATION: &[&str] = &[
    "--unshare-ipc",
    "--unshare-uts",
    "--unshare-pid",
    "--new-session",
    "--cap-drop",
    "ALL",
    "--die-with-parent",
];

#[derive(Debug, Clone)]
pub struct Sandbox {
    bwrap: Option<PathBuf>,
    /// Folders hidden from functions (the state directory).
    hidden: Vec<PathBuf>,
}

/// What one process of a function needs to see.
pub struct Mounts<'a> {
    pub image_dir: &'a Path,
    pub run_dir: Option<&'a Path>,
    pub secrets_dir: &'a Path,
    /// Whether the process may use the network (`com.graphene.network`).
    pub network: bool,
}

impl Sandbox {
    /// Uses bubblewrap if it is installed and works here, unless disabled.
    pub fn detect(enabled: bool, hidden: Vec<PathBuf>) -> Self {
        if !enabled {
            return Self {
                bwrap: None,
                hidden,
            };
        }
        let found = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("bwrap"))
                .find(|p| p.is_file())
        });
        // Probe with the very flags functions will run under.
        let works = found.as_ref().is_some_and(|b| {
            std::process::Command::new(b)
                .args(BASE)
                .args(ISOLATION)
                .arg("true")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        if !works {
            tracing::warn!(
                "bubblewrap (bwrap) is not available or does not work here: functions run without a sandbox, \
                 and read their secrets from the folder named by ${SECRETS_ENV} instead of {SECRETS_MOUNT}"
            );
        }
        Self {
            bwrap: found.filter(|_| works),
            hidden,
        }
    }

    pub fn enabled(&self) -> bool {
        self.bwrap.is_some()
    }

    /// A command for `program args` inside the sandbox, with a clean
    /// environment holding only PATH, LANG and what `env` adds.
    pub fn command(
        &self,
        program: &Path,
        args: &[&str],
        mounts: &Mounts<'_>,
        env: &[(String, String)],
    ) -> tokio::process::Command {
        let mut cmd = match &self.bwrap {
            Some(bwrap) => {
                let mut c = tokio::process::Command::new(bwrap);
                c.args(BASE);
                for dir in &self.hidden {
                    c.arg("--tmpfs").arg(dir);
                }
                c.arg("--ro-bind")
                    .arg(mounts.image_dir)
                    .arg(mounts.image_dir);
                if let Some(run) = mounts.run_dir {
                    c.arg("--bind").arg(run).arg(run);
                }
                c.arg("--ro-bind")
                    .arg(mounts.secrets_dir)
                    .arg(SECRETS_MOUNT);
                c.args(ISOLATION);
                if !mounts.network {
                    // Only loopback, in a namespace of its own: the
                    // gateway still reaches it over its Unix socket.
                    c.arg("--unshare-net");
                }
                c.arg("--chdir").arg(mounts.image_dir.join("function"));
                c.arg("--").arg(program).args(args);
                c
            }
            None => {
                let mut c = tokio::process::Command::new(program);
                c.args(args).current_dir(mounts.image_dir.join("function"));
                c
            }
        };
        let secrets = if self.enabled() {
            SECRETS_MOUNT.to_string()
        } else {
            mounts.secrets_dir.to_string_lossy().into_owned()
        };
        cmd.env_clear()
            .env(
                "PATH",
                std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
            )
            .env("LANG", "C.UTF-8")
            .env("HOME", "/tmp")
            .env(SECRETS_ENV, secrets)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        cmd
    }
}
