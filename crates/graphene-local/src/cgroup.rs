//! Memory and CPU limits from a function's `limits` (`memory: 128Mi`,
//! `cpu: 500m`), enforced with cgroups where the kernel lets this server use
//! them: cgroup v1's memory and cpu controllers, or a cgroup v2 subtree with
//! those controllers. Each replica gets its own group (as each replica is a
//! container elsewhere) and so does a function's warm parent. Where neither
//! works, [`Cgroups::unavailable`] says why, and deploys with limits log a
//! warning that they are not enforced.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// What one group may use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub memory_bytes: Option<u64>,
    pub cpu_millis: Option<u64>,
}

impl Resources {
    pub fn any(&self) -> bool {
        self.memory_bytes.is_some() || self.cpu_millis.is_some()
    }
}

#[derive(Debug)]
enum Base {
    /// Our own folders under the v1 memory and cpu hierarchies.
    V1 {
        memory: PathBuf,
        cpu: Option<PathBuf>,
    },
    /// Our own folder in the v2 tree, with memory and cpu delegated to it.
    V2 {
        dir: PathBuf,
    },
    Off(String),
}

#[derive(Debug)]
pub struct Cgroups {
    base: Base,
    next: AtomicU64,
}

/// A group processes are put in; removed when dropped (once empty).
#[derive(Debug)]
pub struct Group {
    dirs: Vec<PathBuf>,
}

const PERIOD_US: u64 = 100_000;

impl Cgroups {
    /// Finds a hierarchy this process may create groups in.
    pub fn detect() -> Self {
        let base = match detect() {
            Ok(b) => b,
            Err(reason) => Base::Off(reason),
        };
        if let Base::Off(reason) = &base {
            tracing::info!("cgroups: not available ({reason}); functions' memory and cpu limits will not be enforced");
        } else {
            tracing::info!(
                ?base,
                "cgroups: functions' memory and cpu limits are enforced"
            );
        }
        Self {
            base,
            next: AtomicU64::new(0),
        }
    }

    /// Why limits cannot be enforced here, if they cannot.
    pub fn unavailable(&self) -> Option<&str> {
        match &self.base {
            Base::Off(reason) => Some(reason),
            _ => None,
        }
    }

    /// A new group with these limits (None when there is nothing to limit
    /// or no cgroups; failures are logged).
    pub fn group(&self, label: &str, r: Resources) -> Option<Group> {
        if !r.any() {
            return None;
        }
        let name = format!(
            "{}-{}",
            label.replace(['/', '.'], "_"),
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        // Folders made so far are removed (by Group's drop) if a step fails.
        let mut g = Group { dirs: Vec::new() };
        let made = match &self.base {
            Base::Off(_) => return None,
            Base::V1 { memory, cpu } => (|| {
                let m = memory.join(&name);
                std::fs::create_dir(&m)?;
                g.dirs.push(m.clone());
                if let Some(bytes) = r.memory_bytes {
                    std::fs::write(m.join("memory.limit_in_bytes"), bytes.to_string())?;
                }
                if let (Some(cpu), Some(millis)) = (cpu, r.cpu_millis) {
                    let c = cpu.join(&name);
                    std::fs::create_dir(&c)?;
                    g.dirs.push(c.clone());
                    std::fs::write(c.join("cpu.cfs_period_us"), PERIOD_US.to_string())?;
                    std::fs::write(
                        c.join("cpu.cfs_quota_us"),
                        (millis * PERIOD_US / 1000).to_string(),
                    )?;
                }
                Ok::<_, std::io::Error>(())
            })(),
            Base::V2 { dir } => (|| {
                let d = dir.join(&name);
                std::fs::create_dir(&d)?;
                g.dirs.push(d.clone());
                if let Some(bytes) = r.memory_bytes {
                    std::fs::write(d.join("memory.max"), bytes.to_string())?;
                    let _ = std::fs::write(d.join("memory.swap.max"), "0");
                }
                if let Some(millis) = r.cpu_millis {
                    // Without a delegated cpu controller only memory is held.
                    if let Err(e) = std::fs::write(
                        d.join("cpu.max"),
                        format!("{} {PERIOD_US}", millis * PERIOD_US / 1000),
                    ) {
                        tracing::warn!(group = %name, error = %e, "cpu limit not enforced");
                    }
                }
                Ok(())
            })(),
        }
        .map(|()| g);
        match made {
            Ok(g) => Some(g),
            Err(e) => {
                tracing::warn!(group = %name, error = %e, "could not create a cgroup: limits not enforced for it");
                None
            }
        }
    }
}

impl Group {
    /// The files a process writes its pid to, to join the group.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Moves a running process into the group.
    pub fn add(&self, pid: u32) {
        for f in self.procs_files() {
            if let Err(e) = std::fs::write(&f, pid.to_string()) {
                tracing::warn!(pid, file = %f.display(), error = %e, "could not move a process into its cgroup");
            }
        }
    }
}

impl Drop for Group {
    /// A group can only go once its processes have; they are being stopped,
    /// so this tries for a few seconds off the caller's thread.
    fn drop(&mut self) {
        let dirs = std::mem::take(&mut self.dirs);
        std::thread::spawn(move || {
            for _ in 0..50 {
                if dirs
                    .iter()
                    .all(|d| std::fs::remove_dir(d).is_ok() || !d.exists())
                {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        });
    }
}

fn detect() -> Result<Base, String> {
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("/proc/self/cgroup: {e}"))?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
    let path_of = |controller: &str| {
        own.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
            ctrls
                .split(',')
                .any(|c| c == controller)
                .then(|| path.to_string())
        })
    };
    // (mount point, root) of the v1 hierarchy holding a controller, or of v2.
    let mount_of = |controller: Option<&str>| {
        mounts.lines().find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            let fstype = *r.first()?;
            let ok = match controller {
                Some(c) => fstype == "cgroup" && r.get(2)?.split(',').any(|o| o == c),
                None => fstype == "cgroup2",
            };
            let (point, root) = (f.get(4)?, f.get(3)?);
            ok.then(|| (PathBuf::from(point), root.to_string()))
        })
    };
    let own_dir = |mount: (PathBuf, String), path: &str| {
        let rel = path.strip_prefix(mount.1.as_str()).unwrap_or(path);
        mount.0.join(rel.trim_start_matches('/'))
    };
    let tag = format!("graphene-{}", std::process::id());
    if let (Some(path), Some(mount)) = (path_of("memory"), mount_of(Some("memory"))) {
        let memory = own_dir(mount, &path);
        clean_stale(&memory);
        let dir = memory.join(&tag);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cgroup v1 memory: cannot create {}: {e}", dir.display()))?;
        let cpu = match (path_of("cpu"), mount_of(Some("cpu"))) {
            (Some(p), Some(m)) => {
                let parent = own_dir(m, &p);
                clean_stale(&parent);
                let d = parent.join(&tag);
                std::fs::create_dir_all(&d).ok().map(|_| d)
            }
            _ => None,
        };
        return Ok(Base::V1 { memory: dir, cpu });
    }
    let (Some(path), Some(mount)) = (path_of(""), mount_of(None)) else {
        return Err("no cgroup memory controller is mounted".into());
    };
    let own = own_dir(mount, &path);
    let controllers = std::fs::read_to_string(own.join("cgroup.controllers")).unwrap_or_default();
    if !controllers.split_whitespace().any(|c| c == "memory") {
        return Err(format!(
            "cgroup v2: the memory controller is not delegated to {}",
            own.display()
        ));
    }
    // Processes may only live in leaves: this server moves into a leaf of
    // its own, then hands memory and cpu down to its functions' groups.
    let server = own.join("graphene-server");
    std::fs::create_dir_all(&server)
        .and_then(|_| std::fs::write(server.join("cgroup.procs"), std::process::id().to_string()))
        .map_err(|e| format!("cgroup v2: cannot move into {}: {e}", server.display()))?;
    std::fs::write(own.join("cgroup.subtree_control"), "+memory +cpu")
        .or_else(|_| std::fs::write(own.join("cgroup.subtree_control"), "+memory"))
        .map_err(|e| {
            format!(
                "cgroup v2: cannot enable the memory controller below {}: {e}",
                own.display()
            )
        })?;
    let dir = own.join(&tag);
    std::fs::create_dir_all(&dir)
        .map_err(|e| format!("cgroup v2: cannot create {}: {e}", dir.display()))?;
    let _ = std::fs::write(dir.join("cgroup.subtree_control"), "+memory +cpu");
    Ok(Base::V2 { dir })
}

/// Removes the empty groups of servers that are gone.
fn clean_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("graphene-")
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Ok(children) = std::fs::read_dir(e.path()) {
            for c in children.flatten().filter(|c| c.path().is_dir()) {
                let _ = std::fs::remove_dir(c.path());
            }
        }
        let _ = std::fs::remove_dir(e.path());
    }
}
