//! How a function's processes are started: inside bubblewrap where it works
//! (its secrets mounted at /var/openfaas/secrets, a private /tmp), or as plain
//! child processes with a warning where it does not. Inside the sandbox the
//! state directory (credentials, database, other functions' files) is hidden
//! behind an empty tmpfs, other processes are invisible (own PID namespace),
//! capabilities are dropped, and the function runs as `nobody` in a user
//! namespace of its own where the kernel allows it. `com.graphene.network:
//! none` adds a network namespace with nothing but loopback. Either way the process
//! gets a clean environment: nothing of the server's own (tokens, paths)
//! leaks into a function.

use std::ffi::OsString;
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

/// Not root inside: `nobody`, in a user namespace of its own.
const NOT_ROOT: &[&str] = &["--unshare-user", "--uid", "65534", "--gid", "65534"];

#[derive(Debug, Clone)]
pub struct Sandbox {
    bwrap: Option<PathBuf>,
    /// Functions run as `nobody` (the kernel allows user namespaces).
    not_root: bool,
    /// Folders and files hidden from functions (the state directory, the
    /// server user's configuration and keys).
    hidden: Vec<PathBuf>,
}

/// What one process of a function needs to see.
pub struct Mounts<'a> {
    pub image_dir: &'a Path,
    /// The working directory: the function folder.
    pub workdir: &'a Path,
    pub run_dir: Option<&'a Path>,
    pub secrets_dir: &'a Path,
    /// Whether the process may use the network (`com.graphene.network`).
    pub network: bool,
    /// `cgroup.procs` files the process joins before it starts.
    pub join: &'a [PathBuf],
}

impl Sandbox {
    /// Uses bubblewrap if it is installed and works here, unless disabled.
    pub fn detect(enabled: bool, hidden: Vec<PathBuf>) -> Self {
        if !enabled {
            return Self {
                bwrap: None,
                not_root: false,
                hidden,
            };
        }
        let found = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("bwrap"))
                .find(|p| p.is_file())
        });
        // Probe with the very flags functions will run under.
        let probe = |extra: &[&str]| {
            found.as_ref().is_some_and(|b| {
                std::process::Command::new(b)
                    .args(BASE)
                    .args(ISOLATION)
                    .args(extra)
                    .arg("true")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            })
        };
        let not_root = probe(NOT_ROOT);
        let works = not_root || probe(&[]);
        if works && !not_root {
            tracing::warn!("user namespaces are not available: sandboxed functions run as the server's user, without capabilities");
        }
        if !works {
            tracing::warn!(
                "bubblewrap (bwrap) is not available or does not work here: functions run without a sandbox, \
                 and read their secrets from the folder named by ${SECRETS_ENV} instead of {SECRETS_MOUNT}"
            );
        }
        Self {
            bwrap: found.filter(|_| works),
            not_root,
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
        let mut argv: Vec<OsString> = Vec::new();
        match &self.bwrap {
            Some(bwrap) => {
                let mut arg = |a: &dyn AsRef<std::ffi::OsStr>| argv.push(a.as_ref().to_owned());
                arg(bwrap);
                BASE.iter().for_each(|a| arg(a));
                for path in &self.hidden {
                    if path.is_dir() {
                        arg(&"--tmpfs");
                        arg(path);
                    } else if path.exists() {
                        for a in [
                            &"--ro-bind" as &dyn AsRef<std::ffi::OsStr>,
                            &"/dev/null",
                            path,
                        ] {
                            arg(a);
                        }
                    }
                }
                for a in [
                    &"--ro-bind" as &dyn AsRef<std::ffi::OsStr>,
                    &mounts.image_dir,
                    &mounts.image_dir,
                ] {
                    arg(a);
                }
                if let Some(run) = mounts.run_dir {
                    for a in [&"--bind" as &dyn AsRef<std::ffi::OsStr>, &run, &run] {
                        arg(a);
                    }
                }
                for a in [
                    &"--ro-bind" as &dyn AsRef<std::ffi::OsStr>,
                    &mounts.secrets_dir,
                    &SECRETS_MOUNT,
                ] {
                    arg(a);
                }
                ISOLATION.iter().for_each(|a| arg(a));
                if self.not_root {
                    NOT_ROOT.iter().for_each(|a| arg(a));
                }
                if !mounts.network {
                    // Only loopback, in a namespace of its own: the
                    // gateway still reaches it over its Unix socket.
                    arg(&"--unshare-net");
                }
                arg(&"--chdir");
                arg(&mounts.workdir);
                arg(&"--");
                arg(&program);
                args.iter().for_each(|a| arg(a));
            }
            None => {
                argv.push(program.into());
                argv.extend(args.iter().map(OsString::from));
            }
        }
        let mut cmd = match mounts.join {
            [] => {
                let mut c = tokio::process::Command::new(&argv[0]);
                c.args(&argv[1..]);
                c
            }
            // A shell joins the cgroup first and then becomes the program,
            // so nothing it starts runs outside the group even for a moment.
            files => {
                let mut c = tokio::process::Command::new("/bin/sh");
                c.arg("-c")
                    .arg(r#"while [ "$1" != -- ]; do echo $$ > "$1" || exit 97; shift; done; shift; exec "$@""#)
                    .arg("sh")
                    .args(files)
                    .arg("--")
                    .args(&argv);
                c
            }
        };
        cmd.current_dir(mounts.workdir);
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
