//! OCI images of functions (`graphene build --oci`): a generated build
//! context (a Containerfile and what it copies), built by an OCI builder
//! found on this machine (buildah, podman or docker), and pushed to the
//! image's registry, which names the result by digest.
//!
//! The image holds the function as the local runtime lays it out
//! (`/home/app/image`: `image.json`, `runner.py`, `function/`, `venv/`) and
//! this very `graphene` binary as its entrypoint (`graphene watchdog`).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context as _};
use graphene_core::stack::{Lang, StackFunction};
use sha2::{Digest, Sha256};

use crate::files;

/// The base image when neither `--base` nor the stack file's `build.base`
/// names one: an official slim Python image (Debian bookworm, glibc 2.36).
pub const DEFAULT_BASE: &str = "docker.io/library/python:3.11-slim-bookworm";
/// The user functions run as: not root, and owning nothing in the image
/// but its home folder.
pub const APP_USER: u32 = 10001;
const IMAGE_DIR: &str = graphene_watchdog::config::IMAGE_DIR;

/// What one function's image is made from.
pub struct Function<'a> {
    pub name: &'a str,
    pub spec: &'a StackFunction,
    pub lang: Lang,
    pub dir: PathBuf,
    pub image: String,
    pub base: String,
}

/// Writes the build context of `f` into `out` (created afresh): the
/// Containerfile, the `graphene` binary, the runner and the function folder.
/// Returns the function folder's digest (the image's revision label).
pub fn write_context(f: &Function<'_>, out: &Path) -> anyhow::Result<String> {
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("emptying {}", out.display()))?;
    }
    let function = out.join("function");
    std::fs::create_dir_all(&function).with_context(|| format!("creating {}", out.display()))?;
    let mut digest = Sha256::new();
    for (rel, path) in files::function_files(&f.dir)? {
        let to = function.join(&rel);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(&path, &to).with_context(|| format!("copying {}", path.display()))?;
        let bytes = std::fs::read(&path)?;
        digest.update((rel.to_string_lossy().len() as u64).to_be_bytes());
        digest.update(rel.to_string_lossy().as_bytes());
        digest.update((bytes.len() as u64).to_be_bytes());
        digest.update(&bytes);
    }
    if f.lang.is_python() && !function.join("handler.py").exists() {
        bail!(
            "functions.{}.handler: {} has no handler.py",
            f.name,
            f.dir.display()
        );
    }
    let revision: String = digest
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if !function.join("requirements.txt").exists() {
        std::fs::write(function.join("requirements.txt"), "")?;
    }
    std::fs::write(out.join("runner.py"), graphene_local::RUNNER)?;
    // What the watchdog reads; nothing in it changes with the handler, so
    // its layer is reused.
    std::fs::write(
        out.join("image.json"),
        serde_json::to_vec(&serde_json::json!({
            "name": f.name,
            "digest": "",
            "lang": f.lang.as_str(),
        }))?,
    )?;
    let exe = std::env::current_exe().context("finding the graphene binary to put in the image")?;
    std::fs::copy(&exe, out.join("graphene"))
        .with_context(|| format!("copying {}", exe.display()))?;
    let requirements = std::fs::read_to_string(function.join("requirements.txt"))?;
    std::fs::write(
        out.join("Containerfile"),
        containerfile(
            f,
            &revision,
            &source_of(&f.dir),
            wants_packages(&requirements),
        ),
    )?;
    settle(out)?;
    Ok(revision)
}

/// The base of the gateway's image when `--base` names none: glibc 2.36,
/// as the binary is built against.
pub const GATEWAY_BASE: &str = "docker.io/library/debian:bookworm-slim";

/// Writes the build context of the gateway's image into `out` (created
/// afresh): this very `graphene` binary on `base`, run as an unprivileged
/// user, `graphene serve` by default (the install's Deployment names the
/// arguments).
pub fn write_gateway_context(base: &str, out: &Path) -> anyhow::Result<()> {
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("emptying {}", out.display()))?;
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let exe = std::env::current_exe().context("finding the graphene binary to put in the image")?;
    std::fs::copy(&exe, out.join("graphene"))
        .with_context(|| format!("copying {}", exe.display()))?;
    std::fs::write(
        out.join("Containerfile"),
        format!(
            "FROM {base}\n\
             COPY graphene /usr/local/bin/graphene\n\
             LABEL org.opencontainers.image.title=\"graphene gateway\"\n\
             USER {APP_USER}:{APP_USER}\n\
             ENTRYPOINT [\"/usr/local/bin/graphene\"]\n\
             CMD [\"serve\"]\n"
        ),
    )?;
    settle(out)
}

/// Gives every file and folder of the context one fixed time: builders key
/// their layer cache (and layers their digest) on file times too, so an
/// unchanged `requirements.txt` must look unchanged to reuse its layer.
fn settle(dir: &Path) -> anyhow::Result<()> {
    // 1980-01-01, the usual fixed time of reproducible archives.
    let fixed = std::time::UNIX_EPOCH + std::time::Duration::from_secs(315_532_800);
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            settle(&entry.path())?;
        } else {
            std::fs::File::options()
                .write(true)
                .open(entry.path())?
                .set_modified(fixed)?;
        }
    }
    std::fs::File::open(dir)?.set_modified(fixed)?;
    Ok(())
}

/// Whether a requirements file asks for anything.
fn wants_packages(requirements: &str) -> bool {
    requirements
        .lines()
        .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
}

/// Where the function's source lives: its git remote when it has one, else
/// its folder.
fn source_of(dir: &Path) -> String {
    std::process::Command::new("git")
        .args(["config", "--get", "remote.origin.url"])
        .current_dir(dir)
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| {
            std::fs::canonicalize(dir)
                .unwrap_or_else(|_| dir.to_path_buf())
                .display()
                .to_string()
        })
}

/// A Containerfile value in double quotes.
fn quoted(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The Containerfile: requirements in a layer of their own (reused while
/// `requirements.txt` is unchanged), then the binary and runner, then the
/// handler in the last layer.
fn containerfile(f: &Function<'_>, revision: &str, source: &str, packages: bool) -> String {
    let dir = IMAGE_DIR;
    let mut out = String::new();
    let mut line = |l: String| {
        out.push_str(&l);
        out.push('\n');
    };
    line(format!(
        "# Generated by `graphene build --oci` for function {}.",
        f.name
    ));
    line(format!("FROM {}", f.base));
    line(format!(
        "ENV HOME=/home/app PYTHONDONTWRITEBYTECODE=1 GRAPHENE_FUNCTION={}",
        quoted(f.name)
    ));
    if f.lang.is_python() {
        line(
            "# Requirements first: this layer is reused while requirements.txt is unchanged."
                .into(),
        );
        line(format!(
            "COPY function/requirements.txt {dir}/function/requirements.txt"
        ));
        let install = match packages {
            true => format!(
                "python3 -m venv {dir}/venv && {dir}/venv/bin/pip install --no-cache-dir \
                 --disable-pip-version-check --no-input -r {dir}/function/requirements.txt"
            ),
            false => format!("python3 -m venv --without-pip {dir}/venv"),
        };
        line(format!(
            "RUN mkdir -p /home/app && chown {APP_USER}:{APP_USER} /home/app && {install}"
        ));
    } else {
        line(format!(
            "RUN mkdir -p /home/app && chown {APP_USER}:{APP_USER} /home/app"
        ));
        if let Some(fprocess) = f.spec.fprocess.as_deref() {
            line(format!("ENV fprocess={}", quoted(fprocess)));
        }
    }
    line("COPY graphene /usr/local/bin/graphene".into());
    line(format!("COPY runner.py image.json {dir}/"));
    line("# The handler last: a change to it rebuilds only this layer.".into());
    line(format!("COPY function/ {dir}/function/"));
    // Labels last: the revision changes with the handler, and every step
    // after a changed one is rebuilt.
    line(format!(
        "LABEL org.opencontainers.image.title={} org.opencontainers.image.source={} \\",
        quoted(f.name),
        quoted(source)
    ));
    line(format!(
        "      org.opencontainers.image.revision={} com.graphene.template={}",
        quoted(revision),
        quoted(f.lang.as_str())
    ));
    line(format!("USER {APP_USER}:{APP_USER}"));
    line("WORKDIR /home/app".into());
    line("EXPOSE 8080 8081".into());
    line("ENTRYPOINT [\"/usr/local/bin/graphene\", \"watchdog\"]".into());
    out
}

/// An OCI builder on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builder {
    Buildah,
    Podman,
    Docker,
}

impl Builder {
    const ALL: [Builder; 3] = [Builder::Buildah, Builder::Podman, Builder::Docker];

    pub fn program(self) -> &'static str {
        match self {
            Builder::Buildah => "buildah",
            Builder::Podman => "podman",
            Builder::Docker => "docker",
        }
    }

    /// The builder asked for, or the first one installed.
    pub fn find(choice: Option<&str>) -> anyhow::Result<Builder> {
        let installed = |b: &Builder| find_program(b.program()).is_some();
        match choice {
            Some(name) => {
                let b = Self::ALL
                    .into_iter()
                    .find(|b| b.program() == name)
                    .with_context(|| {
                        format!("--builder {name:?}: use buildah, podman or docker")
                    })?;
                if !installed(&b) {
                    bail!("--builder {name}: {name} is not installed (not found on PATH)");
                }
                Ok(b)
            }
            None => Self::ALL.into_iter().find(installed).context(
                "no OCI builder found: install buildah, podman or docker, \
                 or write the build context with --shrinkwrap DIR for another builder",
            ),
        }
    }

    /// Builds the context in `dir` into `image`, printing the builder's
    /// output as it comes.
    pub async fn build(self, dir: &Path, image: &str, prefix: &str) -> anyhow::Result<()> {
        let file = dir.join("Containerfile");
        let mut cmd = tokio::process::Command::new(self.program());
        match self {
            Builder::Buildah => cmd.args(["build", "--layers"]),
            Builder::Podman => cmd.args(["build", "--layers"]),
            Builder::Docker => cmd.arg("build"),
        };
        cmd.arg("-f").arg(&file).args(["-t", image]).arg(dir);
        run(cmd, prefix).await.map(drop).with_context(|| {
            format!(
                "{} build of {image} failed; its output is above",
                self.program()
            )
        })
    }

    /// Pushes `image` to its registry; returns the pushed manifest's
    /// digest (`sha256:...`).
    pub async fn push(self, image: &str, prefix: &str) -> anyhow::Result<String> {
        let digest_file = std::env::temp_dir().join(format!(
            "graphene-push-{}-{}",
            std::process::id(),
            image.replace(['/', ':', '@'], "_")
        ));
        let mut cmd = tokio::process::Command::new(self.program());
        match self {
            Builder::Buildah | Builder::Podman => {
                cmd.arg("push")
                    .arg("--digestfile")
                    .arg(&digest_file)
                    .arg(image)
                    .arg(format!("docker://{image}"));
            }
            Builder::Docker => {
                cmd.args(["push", image]);
            }
        }
        let output = run(cmd, prefix).await.with_context(|| {
            format!(
                "{} push of {image} failed; its output is above",
                self.program()
            )
        })?;
        let digest = match self {
            Builder::Docker => output
                .iter()
                .find_map(|l| l.split("digest: ").nth(1))
                .and_then(|rest| rest.split_whitespace().next())
                .map(str::to_string),
            _ => std::fs::read_to_string(&digest_file)
                .ok()
                .map(|s| s.trim().to_string()),
        };
        let _ = std::fs::remove_file(&digest_file);
        match digest.filter(|d| d.starts_with("sha256:")) {
            Some(d) => Ok(d),
            None => bail!(
                "{} pushed {image} but did not say its digest",
                self.program()
            ),
        }
    }
}

fn find_program(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

/// Runs a builder command, printing each line of its output (stdout and
/// stderr, verbatim) behind `prefix`; returns the lines.
async fn run(mut cmd: tokio::process::Command, prefix: &str) -> anyhow::Result<Vec<String>> {
    let program = cmd.as_std().get_program().to_string_lossy().into_owned();
    let mut seen = Vec::new();
    graphene_local::run_streaming(&mut cmd, &mut |line| {
        eprintln!("{prefix}{line}");
        seen.push(line.to_string());
    })
    .await
    .map_err(|e| anyhow::anyhow!("{program}: {e}"))?;
    Ok(seen)
}

/// `name@sha256:...` for a pushed image: the tag's digest at push time, so
/// that a re-pushed tag never changes what a revision runs.
pub fn by_digest(image: &str, digest: &str) -> String {
    let name = image.split('@').next().unwrap_or(image);
    format!("{name}@{digest}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerfile_layers_requirements_before_the_handler() {
        let spec = StackFunction::default();
        let f = Function {
            name: "sentiment",
            spec: &spec,
            lang: Lang::Python3Http,
            dir: PathBuf::from("."),
            image: "registry.example.com/team/sentiment:1.2".into(),
            base: "example.org/python:3.11".into(),
        };
        let text = containerfile(&f, "abc", "git@example.com:team/x.git", true);
        let at = |needle: &str| {
            text.find(needle)
                .unwrap_or_else(|| panic!("{needle:?} not in:\n{text}"))
        };
        assert!(at("FROM example.org/python:3.11") < at("COPY function/requirements.txt"));
        assert!(at("pip install") < at("COPY graphene "));
        assert!(at("COPY graphene ") < at("COPY function/ "));
        assert!(at("COPY function/ ") < at("USER 10001:10001"));
        at("org.opencontainers.image.revision=\"abc\"");
        at("com.graphene.template=\"python3-http\"");
        at("ENTRYPOINT [\"/usr/local/bin/graphene\", \"watchdog\"]");
        let bare = containerfile(&f, "abc", "here", false);
        assert!(bare.contains("venv --without-pip") && !bare.contains("pip install"));
    }

    #[test]
    fn exec_images_carry_fprocess_quoted() {
        let spec = StackFunction {
            fprocess: Some(r#"tr "a" '\z'"#.into()),
            ..Default::default()
        };
        let f = Function {
            name: "shout",
            spec: &spec,
            lang: Lang::Exec,
            dir: PathBuf::from("."),
            image: "shout:1".into(),
            base: "b".into(),
        };
        let text = containerfile(&f, "r", "s", false);
        assert!(text.contains(r#"ENV fprocess="tr \"a\" '\\z'""#), "{text}");
        assert!(!text.contains("venv"));
    }

    #[test]
    fn digests_replace_tags_and_old_digests() {
        assert_eq!(by_digest("r.io/a/b:1", "sha256:ff"), "r.io/a/b:1@sha256:ff");
        assert_eq!(
            by_digest("r.io/a/b@sha256:00", "sha256:ff"),
            "r.io/a/b@sha256:ff"
        );
    }
}
