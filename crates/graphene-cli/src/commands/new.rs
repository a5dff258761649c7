use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::Args;
use graphene_core::names;
use graphene_core::stack::{self, Lang};

use crate::config;
use crate::stackfile;

const TEMPLATES: &[(&str, &str, &str)] = &[
    (
        "python3",
        "handler.py",
        include_str!("../../templates/python3/handler.py"),
    ),
    (
        "python3",
        "requirements.txt",
        include_str!("../../templates/python3/requirements.txt"),
    ),
    (
        "python3-http",
        "handler.py",
        include_str!("../../templates/python3-http/handler.py"),
    ),
    (
        "python3-http",
        "requirements.txt",
        include_str!("../../templates/python3-http/requirements.txt"),
    ),
    (
        "exec",
        "run.sh",
        include_str!("../../templates/exec/run.sh"),
    ),
];

#[derive(Args)]
pub struct New {
    /// The function's name (lower-case letters, digits and '-')
    pub name: String,
    /// Template: python3, python3-http or exec
    #[arg(long, default_value = "python3")]
    pub lang: String,
    /// Stack file to add the function to (created if missing) [default: stack.yml]
    #[arg(short = 'f', long = "yaml")]
    pub file: Option<PathBuf>,
    /// Gateway written into a new stack file
    #[arg(short = 'g', long)]
    pub gateway: Option<String>,
}

impl New {
    pub fn run(self) -> anyhow::Result<()> {
        names::validate("function", &self.name)?;
        let lang = Lang::parse(&self.lang).map_err(|e| anyhow::anyhow!("--lang: {e}"))?;
        let file = stackfile::default_path(self.file.clone());
        let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let existing = match std::fs::read_to_string(&file) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
        };
        if let Some(text) = &existing {
            let parsed =
                stack::parse(text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            if parsed.stack.functions.contains_key(&self.name) {
                bail!(
                    "{}: already defines a function named {}",
                    file.display(),
                    self.name
                );
            }
            if !functions_last(text) {
                bail!(
                    "{}: `functions:` is not the last section, so graphene can't append to it; add {} by hand",
                    file.display(),
                    self.name
                );
            }
        }
        let dir = base.join(&self.name);
        if dir.exists() {
            bail!("{} already exists", dir.display());
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for (_, name, text) in TEMPLATES.iter().filter(|(l, _, _)| *l == lang.as_str()) {
            std::fs::write(dir.join(name), text)?;
        }
        let mut entry = format!(
            "  {name}:\n    lang: {lang}\n    handler: ./{name}\n    image: {name}:latest\n",
            name = self.name
        );
        if lang == Lang::Exec {
            entry.push_str("    fprocess: sh run.sh\n");
        }
        let text = match existing {
            Some(mut text) => {
                if !text.ends_with('\n') {
                    text.push('\n');
                }
                text + &entry
            }
            None => format!(
                "version: 1.0\nprovider:\n  name: openfaas\n  gateway: {}\nfunctions:\n{entry}",
                config::gateway(self.gateway.as_deref(), None)
            ),
        };
        std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
        println!(
            "Created {} ({lang}) and added it to {}; deploy it with `graphene up -f {}`",
            dir.display(),
            file.display(),
            file.display()
        );
        Ok(())
    }
}

/// Whether `functions:` is the last top-level key, so an entry can be
/// appended as text (keeping the user's comments and layout).
fn functions_last(text: &str) -> bool {
    text.lines()
        .rfind(|l| !l.is_empty() && !l.starts_with([' ', '\t', '#', '-']))
        .is_some_and(|l| l.starts_with("functions:"))
}
