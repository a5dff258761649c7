//! Reading a stack file from disk: the text goes to `graphene_core::stack`,
//! environment files and handler folders are resolved beside the file.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use graphene_core::stack::{self, Lang, Stack, StackFunction};

pub struct StackFile {
    pub path: PathBuf,
    pub dir: PathBuf,
    pub stack: Stack,
}

impl StackFile {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let parsed = stack::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        for w in &parsed.warnings {
            eprintln!("warning: {}: {w}", path.display());
        }
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut stack = parsed.stack;
        for (name, f) in stack.functions.iter_mut() {
            let mut env = f.environment.clone();
            for file in &f.environment_file {
                let p = dir.join(file);
                let text = std::fs::read_to_string(&p).with_context(|| {
                    format!("functions.{name}.environment_file: reading {}", p.display())
                })?;
                let more = stack::parse_environment_file(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
                env.extend(more);
            }
            f.environment = env;
            // Labels and annotations are checked now, not after a build.
            graphene_core::settings::FunctionSettings::from_deployment(&f.deployment(name))
                .map_err(|e| anyhow::anyhow!("{}: functions.{name}.{e}", path.display()))?;
        }
        Ok(Self {
            path: path.to_path_buf(),
            dir,
            stack,
        })
    }

    /// The functions to act on: all, or the one named.
    pub fn select(&self, filter: Option<&str>) -> anyhow::Result<Vec<(&String, &StackFunction)>> {
        let picked: Vec<_> = self
            .stack
            .functions
            .iter()
            .filter(|(n, _)| filter.is_none_or(|f| f == n.as_str()))
            .collect();
        if picked.is_empty() {
            match filter {
                Some(f) => bail!("{}: no function named {f:?}", self.path.display()),
                None => bail!("{}: defines no functions", self.path.display()),
            }
        }
        Ok(picked)
    }

    /// The selected functions that are built here: those with a `lang` and
    /// no `skip_build`, with their language and folder.
    pub fn buildable(
        &self,
        filter: Option<&str>,
    ) -> anyhow::Result<Vec<(&String, &StackFunction, Lang, PathBuf)>> {
        let mut out = Vec::new();
        for (name, f) in self.select(filter)? {
            let Some(lang) = f.lang.as_deref().filter(|_| !f.skip_build) else {
                continue;
            };
            let lang = Lang::parse(lang).map_err(anyhow::Error::msg)?;
            out.push((name, f, lang, self.handler_dir(name, f)?));
        }
        Ok(out)
    }

    pub fn handler_dir(&self, name: &str, f: &StackFunction) -> anyhow::Result<PathBuf> {
        let handler = f.handler.as_deref().unwrap_or("");
        let dir = self.dir.join(handler);
        if !dir.is_dir() {
            bail!(
                "{}: functions.{name}.handler: folder {} does not exist",
                self.path.display(),
                dir.display()
            );
        }
        Ok(dir)
    }
}

/// `stack.yml` or `stack.yaml` in the current folder when no file is given.
pub fn default_path(flag: Option<PathBuf>) -> PathBuf {
    flag.unwrap_or_else(|| {
        let yaml = PathBuf::from("stack.yaml");
        if !Path::new("stack.yml").exists() && yaml.exists() {
            yaml
        } else {
            PathBuf::from("stack.yml")
        }
    })
}
