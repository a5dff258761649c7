use std::path::Path;

use anyhow::{bail, Context as _};
use clap::Args;
use graphene_core::api::BuildResult;
use graphene_core::stack::Lang;
use hyper::Method;

use super::{encode, StackArgs, Target};
use crate::client::{self, Client};
use crate::stackfile::StackFile;

#[derive(Args)]
pub struct Build {
    #[command(flatten)]
    pub stack: StackArgs,
    #[command(flatten)]
    pub target: Target,
}

impl Build {
    pub async fn run(self) -> anyhow::Result<()> {
        let file = self.stack.load()?;
        let client = self.target.client(Some(&file.stack.provider.gateway))?;
        build_all(&client, &file, self.stack.filter.as_deref()).await
    }
}

/// Builds every selected function that has a `lang` (and no `skip_build`).
pub async fn build_all(
    client: &Client,
    file: &StackFile,
    filter: Option<&str>,
) -> anyhow::Result<()> {
    for (name, f) in file.select(filter)? {
        let Some(lang) = f.lang.as_deref() else {
            continue;
        };
        if f.skip_build {
            continue;
        }
        let lang = Lang::parse(lang).map_err(anyhow::Error::msg)?;
        let dir = file.handler_dir(name, f)?;
        let image = f.image_name(name);
        eprintln!("[{name}] building {image} from {} ({lang})", dir.display());
        let archive = pack(&dir).with_context(|| format!("packing {}", dir.display()))?;
        let path = format!("/system/build?image={}&lang={}", encode(&image), lang);
        let resp = client
            .send(
                Method::POST,
                &path,
                archive,
                &[("content-type".into(), "application/x-tar".into())],
            )
            .await?;
        let resp = client::success(resp).await?;
        let mut result: Option<BuildResult> = None;
        client::for_each_line(resp, |line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
            if let Some(log) = v.get("log").and_then(|l| l.as_str()) {
                eprintln!("[{name}] {log}");
            } else if let Some(r) = v.get("result") {
                result = serde_json::from_value(r.clone()).ok();
            }
            Ok(())
        })
        .await?;
        match result {
            Some(r) if r.ok => eprintln!(
                "[{name}] built {} ({}{})",
                r.image,
                r.digest,
                if r.cached { ", unchanged" } else { "" }
            ),
            Some(r) => bail!("building {name} failed: {}", r.error),
            None => bail!("building {name}: the gateway ended the build stream without a result"),
        }
    }
    Ok(())
}

/// Packs a function folder as a tar, leaving out caches and local
/// environments.
fn pack(dir: &Path) -> anyhow::Result<Vec<u8>> {
    fn walk(b: &mut tar::Builder<Vec<u8>>, base: &Path, dir: &Path) -> anyhow::Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name();
            if [".venv", "venv", "__pycache__", ".git", "build"]
                .iter()
                .any(|s| name == *s)
            {
                continue;
            }
            let path = e.path();
            let rel = path.strip_prefix(base)?;
            let kind = e.file_type()?;
            if kind.is_dir() {
                walk(b, base, &path)?;
            } else if kind.is_file() {
                b.append_path_with_name(&path, rel)?;
            }
        }
        Ok(())
    }
    let mut b = tar::Builder::new(Vec::new());
    walk(&mut b, dir, dir)?;
    Ok(b.into_inner()?)
}
