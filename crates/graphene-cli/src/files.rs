//! The files of a function folder that make its image, whoever builds it.

use std::path::{Path, PathBuf};

/// Folders that are never part of a function: local environments, caches,
/// version control, build output.
const LEFT_OUT: [&str; 5] = [".venv", "venv", "__pycache__", ".git", "build"];

/// Every plain file of a function folder (links and the folders above left
/// out), as (path inside the folder, path on disk), in name order.
pub fn function_files(dir: &Path) -> anyhow::Result<Vec<(PathBuf, PathBuf)>> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(PathBuf, PathBuf)>) -> anyhow::Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name();
            if LEFT_OUT.iter().any(|s| name == *s) {
                continue;
            }
            let path = e.path();
            let kind = e.file_type()?;
            if kind.is_dir() {
                walk(base, &path, out)?;
            } else if kind.is_file() {
                out.push((path.strip_prefix(base)?.to_path_buf(), path));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    Ok(out)
}

/// A function folder as a tar archive (what `graphene build` sends).
pub fn pack(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for (rel, path) in function_files(dir)? {
        b.append_path_with_name(&path, rel)?;
    }
    Ok(b.into_inner()?)
}
