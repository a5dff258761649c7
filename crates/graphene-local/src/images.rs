//! Local images: a function folder built into a directory the runtime can
//! run. A Python image holds the folder, a virtual environment with its
//! requirements, and the runner. Images are keyed by a digest of their
//! inputs, so an unchanged folder is not rebuilt; names (`echo:latest`) map
//! to digests in `index.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;

use graphene_core::api::BuildResult;
use graphene_core::provider::{BuildInput, Progress, ProviderError};
use graphene_core::stack::Lang;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, BufReader};

pub const RUNNER: &str = include_str!("../runner/runner.py");

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Image {
    pub name: String,
    pub digest: String,
    pub lang: String,
    #[serde(skip)]
    pub dir: PathBuf,
    /// Where the function's processes start, when not `dir/function` (an
    /// exec image adopted from a container's working directory).
    #[serde(skip)]
    pub workdir: Option<PathBuf>,
}

impl Image {
    pub fn lang(&self) -> Lang {
        Lang::parse(&self.lang).unwrap_or(Lang::Exec)
    }
    pub fn function_dir(&self) -> PathBuf {
        self.workdir
            .clone()
            .unwrap_or_else(|| self.dir.join("function"))
    }
    pub fn python(&self) -> PathBuf {
        self.dir.join("venv/bin/python")
    }
}

pub struct ImageStore {
    root: PathBuf,
    python: String,
    index: Mutex<BTreeMap<String, String>>,
    /// Images built elsewhere (into a container image) and run where they
    /// lie, by digest.
    adopted: Mutex<BTreeMap<String, Image>>,
    /// One build at a time: pip is heavy and two builds of one digest must
    /// not race.
    building: tokio::sync::Mutex<()>,
}

impl ImageStore {
    pub fn open(root: PathBuf, python: String) -> std::io::Result<Self> {
        std::fs::create_dir_all(&root)?;
        let index = match std::fs::read(root.join("index.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
            Err(_) => BTreeMap::new(),
        };
        Ok(Self {
            root,
            python,
            index: Mutex::new(index),
            adopted: Mutex::new(BTreeMap::new()),
            building: tokio::sync::Mutex::new(()),
        })
    }

    /// The digest a name refers to now, if its image is complete.
    pub fn digest_of(&self, name: &str) -> Option<String> {
        let digest = self.index.lock().expect("index lock").get(name).cloned()?;
        self.root
            .join(&digest)
            .join(".complete")
            .exists()
            .then_some(digest)
    }

    /// The built image a name refers to, if any.
    pub fn resolve(&self, name: &str) -> Option<Image> {
        self.by_digest(name, &self.digest_of(name)?)
    }

    /// A built image by digest (a revision runs the build it was deployed
    /// with, whatever the name refers to now), shown under `name`.
    pub fn by_digest(&self, name: &str, digest: &str) -> Option<Image> {
        if let Some(image) = self.adopted.lock().expect("adopted lock").get(digest) {
            return Some(Image {
                name: name.to_string(),
                ..image.clone()
            });
        }
        if digest.is_empty() || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let dir = self.root.join(digest);
        if !dir.join(".complete").exists() {
            return None;
        }
        let mut image: Image =
            serde_json::from_slice(&std::fs::read(dir.join("image.json")).ok()?).ok()?;
        image.name = name.to_string();
        image.dir = dir;
        Some(image)
    }

    /// Runs an image that was built elsewhere where it lies: `dir` holds
    /// what a build makes (`image.json`, `runner.py`, `function/`, `venv/`),
    /// or, for an exec function with no such folder, `workdir` is where its
    /// command runs. Returns the digest deployments name it by, and its
    /// language.
    pub fn adopt(&self, dir: PathBuf, workdir: Option<PathBuf>) -> std::io::Result<(String, Lang)> {
        let mut image = match std::fs::read(dir.join("image.json")) {
            Ok(bytes) => serde_json::from_slice::<Image>(&bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && workdir.is_some() => Image {
                name: String::new(),
                digest: String::new(),
                lang: Lang::Exec.as_str().to_string(),
                dir: PathBuf::new(),
                workdir: None,
            },
            Err(e) => return Err(e),
        };
        if image.digest.is_empty() {
            image.digest = "adopted".to_string();
        }
        image.dir = dir;
        image.workdir = workdir;
        let adopted = (image.digest.clone(), image.lang());
        self.adopted
            .lock()
            .expect("adopted lock")
            .insert(adopted.0.clone(), image);
        Ok(adopted)
    }

    /// Builds an image, one build at a time. Images that no name refers to
    /// and whose digest is not in `keep` are removed first. A build that
    /// fails (a bad archive, pip) is an error whose text is for the user;
    /// a result is always a success.
    pub async fn build(
        &self,
        input: BuildInput,
        mut progress: Progress,
        keep: &std::collections::HashSet<String>,
    ) -> Result<BuildResult, ProviderError> {
        let _one = self.building.lock().await;
        self.collect_garbage(keep);
        let staging = self.root.join(format!("staging-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        let archive = input.archive.clone();
        let unpack_to = staging.join("function");
        let digest = tokio::task::spawn_blocking(move || -> Result<String, String> {
            std::fs::create_dir_all(&unpack_to).map_err(|e| e.to_string())?;
            unpack(&archive, &unpack_to)?;
            digest_dir(&unpack_to).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| ProviderError::Internal(e.to_string()))?
        .map_err(ProviderError::Invalid)?;
        let digest = {
            let mut h = Sha256::new();
            h.update(input.lang.as_str());
            h.update(RUNNER);
            h.update(digest);
            hex(&h.finalize()[..16])
        };
        let dir = self.root.join(&digest);
        let cached = dir.join(".complete").exists();
        if cached {
            let _ = std::fs::remove_dir_all(&staging);
            progress(&format!(
                "{}: unchanged, using the existing build {digest}",
                input.image
            ));
        } else {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::rename(&staging, &dir).map_err(internal)?;
            if let Err(e) = self.prepare(&dir, input.lang, &mut progress).await {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(ProviderError::Invalid(e));
            }
            let meta = Image {
                name: input.image.clone(),
                digest: digest.clone(),
                lang: input.lang.as_str().to_string(),
                dir: dir.clone(),
                workdir: None,
            };
            std::fs::write(
                dir.join("image.json"),
                serde_json::to_vec(&meta).map_err(internal)?,
            )
            .map_err(internal)?;
            std::fs::write(dir.join(".complete"), b"").map_err(internal)?;
        }
        self.tag(&input.image, &digest).map_err(internal)?;
        Ok(BuildResult {
            ok: true,
            image: input.image,
            digest,
            cached,
            error: String::new(),
        })
    }

    /// Removes built images that no name refers to and no kept revision
    /// runs.
    fn collect_garbage(&self, keep: &std::collections::HashSet<String>) {
        let tagged: std::collections::HashSet<String> = self
            .index
            .lock()
            .expect("index lock")
            .values()
            .cloned()
            .collect();
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_image =
                entry.path().join("image.json").exists() || entry.path().join("function").is_dir();
            if is_image
                && !name.starts_with("staging-")
                && !tagged.contains(&name)
                && !keep.contains(&name)
            {
                tracing::info!(image = %name, "removing an image nothing uses any more");
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    fn tag(&self, name: &str, digest: &str) -> std::io::Result<()> {
        let mut index = self.index.lock().expect("index lock");
        index.insert(name.to_string(), digest.to_string());
        let tmp = self.root.join("index.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&*index)?)?;
        std::fs::rename(tmp, self.root.join("index.json"))
    }

    /// Makes the virtual environment and installs the requirements, streaming
    /// pip's output. Errors are the text shown to the user.
    async fn prepare(&self, dir: &Path, lang: Lang, progress: &mut Progress) -> Result<(), String> {
        if !lang.is_python() {
            return Ok(());
        }
        if !dir.join("function/handler.py").exists() {
            return Err("the function folder has no handler.py".into());
        }
        std::fs::write(dir.join("runner.py"), RUNNER).map_err(|e| e.to_string())?;
        progress("creating the virtual environment");
        let venv = dir.join("venv");
        run_streaming(
            tokio::process::Command::new(&self.python)
                .args(["-m", "venv", "--without-pip"])
                .arg(&venv),
            progress.as_mut(),
        )
        .await
        .map_err(|e| {
            format!(
                "could not create the virtual environment with {}: {e}",
                self.python
            )
        })?;
        let requirements = dir.join("function/requirements.txt");
        let wanted = std::fs::read_to_string(&requirements).unwrap_or_default();
        if wanted
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            progress("no requirements to install");
            return Ok(());
        }
        progress("installing requirements.txt with pip");
        run_streaming(
            tokio::process::Command::new(&self.python)
                .args([
                    "-m",
                    "pip",
                    "--disable-pip-version-check",
                    "--no-input",
                    "--python",
                ])
                .arg(venv.join("bin/python"))
                .args(["install", "--progress-bar", "off", "-r"])
                .arg(&requirements),
            progress.as_mut(),
        )
        .await
        .map_err(|e| format!("pip install failed ({e}); see pip's output above"))
    }
}

/// Runs a command, passing each line of its output (stdout and stderr, as
/// they come) to `progress`; an error says how it ended.
pub async fn run_streaming(
    cmd: &mut tokio::process::Command,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<(), String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| e.to_string())?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    for pipe in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = tx.send(line);
            }
        });
    }
    drop(tx);
    while let Some(line) = rx.recv().await {
        progress(&line);
    }
    let status = child.wait().await.map_err(|e| e.to_string())?;
    if status.success() {
        Ok(())
    } else {
        Err(status.to_string())
    }
}

/// Unpacks a function folder, accepting only plain files and folders (no
/// links or devices), each inside the target (the tar crate refuses `..`).
fn unpack(archive: &[u8], to: &Path) -> Result<(), String> {
    let bad =
        |e: std::io::Error| format!("the uploaded function folder is not a valid tar archive: {e}");
    let mut tar = tar::Archive::new(archive);
    for entry in tar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            let path = entry
                .path()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            return Err(format!(
                "the function folder may hold only files and folders; {path} is a link or special file"
            ));
        }
        if !entry.unpack_in(to).map_err(bad)? {
            return Err("the uploaded function folder has a path outside the folder".into());
        }
    }
    Ok(())
}

fn digest_dir(dir: &Path) -> std::io::Result<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            let name = entry.file_name();
            if name == "__pycache__" || name == ".venv" {
                continue;
            }
            if entry.file_type()?.is_dir() {
                walk(base, &path, out)?;
            } else {
                let rel = path
                    .strip_prefix(base)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, path));
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(dir, dir, &mut files)?;
    files.sort();
    let mut h = Sha256::new();
    for (rel, path) in files {
        h.update(rel.as_bytes());
        h.update([0]);
        h.update(std::fs::read(path)?);
        h.update([0]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn internal(e: impl std::fmt::Display) -> ProviderError {
    ProviderError::Internal(e.to_string())
}
