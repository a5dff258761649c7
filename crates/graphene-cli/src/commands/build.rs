use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::Args;
use graphene_core::api::BuildResult;
use hyper::Method;

use super::{encode, StackArgs, Target};
use crate::client::{self, Client};
use crate::oci;
use crate::stackfile::StackFile;

#[derive(Args)]
pub struct Build {
    #[command(flatten)]
    pub stack: StackArgs,
    #[command(flatten)]
    pub oci: OciArgs,
    #[command(flatten)]
    pub target: Target,
}

/// How OCI images are built (`--oci`), beside the stack file's `build`.
#[derive(Args, Debug, Clone, Default)]
pub struct OciArgs {
    /// Build OCI images with a builder on this machine (buildah, podman or
    /// docker), not on the gateway [default: the stack file's build.oci]
    #[arg(long)]
    pub oci: bool,
    /// The base image of every function [default: the stack file's
    /// build.base for its template, else an official slim Python image]
    #[arg(long, value_name = "IMAGE")]
    pub base: Option<String>,
    /// buildah, podman or docker [default: build.builder, else the first
    /// installed]
    #[arg(long, value_name = "NAME")]
    pub builder: Option<String>,
    /// Only write each function's build context (Containerfile and files)
    /// to DIR/<function>, for another builder (BuildKit, kaniko)
    #[arg(long, value_name = "DIR")]
    pub shrinkwrap: Option<PathBuf>,
    /// Push each image to its registry and print its digest [default:
    /// build.push]
    #[arg(long)]
    pub push: bool,
}

impl OciArgs {
    /// Whether images are OCI images, from the flag or the stack file.
    pub fn wanted(&self, file: &StackFile) -> bool {
        self.oci || self.shrinkwrap.is_some() || file.stack.build.oci
    }
}

impl Build {
    pub async fn run(self) -> anyhow::Result<()> {
        let file = self.stack.load()?;
        let filter = self.stack.filter.as_deref();
        if self.oci.wanted(&file) {
            let push = self.oci.push || file.stack.build.push;
            build_oci(&file, filter, &self.oci, push).await?;
            return Ok(());
        }
        let client = self.target.client(Some(&file.stack.provider.gateway))?;
        build_all(&client, &file, filter).await
    }
}

/// Builds every selected function that has a `lang` into an OCI image (or
/// only writes its build context, with `--shrinkwrap`); with `push`,
/// pushes it. Returns, per function pushed, its image by digest.
pub async fn build_oci(
    file: &StackFile,
    filter: Option<&str>,
    opts: &OciArgs,
    push: bool,
) -> anyhow::Result<BTreeMap<String, String>> {
    let settings = &file.stack.build;
    let builder = match &opts.shrinkwrap {
        Some(_) => None,
        None => Some(oci::Builder::find(
            opts.builder.as_deref().or(settings.builder.as_deref()),
        )?),
    };
    let mut pushed = BTreeMap::new();
    for (name, f, lang, dir) in file.buildable(filter)? {
        let function = oci::Function {
            name,
            spec: f,
            lang,
            dir,
            image: f.image_name(name),
            base: opts
                .base
                .clone()
                .or_else(|| settings.base.get(lang.as_str()).cloned())
                .unwrap_or_else(|| oci::DEFAULT_BASE.to_string()),
        };
        if push && !function.image.contains('/') {
            bail!(
                "functions.{name}.image: {:?} names no registry to push to \
                 (write e.g. registry.example.com/team/{name}:1.0)",
                function.image
            );
        }
        let prefix = format!("[{name}] ");
        let Some(builder) = builder else {
            let out = opts
                .shrinkwrap
                .as_ref()
                .expect("no builder only when shrinkwrapping")
                .join(name);
            oci::write_context(&function, &out)?;
            eprintln!(
                "{prefix}wrote the build context of {} to {} (build it with: buildah build -t {} {})",
                function.image,
                out.display(),
                function.image,
                out.display()
            );
            continue;
        };
        let context =
            std::env::temp_dir().join(format!("graphene-oci-{}-{name}", std::process::id()));
        eprintln!(
            "{prefix}building {} from {} ({lang}) on {} with {}",
            function.image,
            function.dir.display(),
            function.base,
            builder.program()
        );
        let built = async {
            oci::write_context(&function, &context)?;
            builder.build(&context, &function.image, &prefix).await
        }
        .await;
        let _ = std::fs::remove_dir_all(&context);
        built.with_context(|| format!("building {name}"))?;
        eprintln!("{prefix}built {}", function.image);
        if push {
            let digest = builder
                .push(&function.image, &prefix)
                .await
                .with_context(|| format!("pushing {name}"))?;
            let reference = oci::by_digest(&function.image, &digest);
            println!("{name}: pushed {reference}");
            pushed.insert(name.clone(), reference);
        }
    }
    Ok(pushed)
}

/// Builds every selected function that has a `lang` (and no `skip_build`).
pub async fn build_all(
    client: &Client,
    file: &StackFile,
    filter: Option<&str>,
) -> anyhow::Result<()> {
    for (name, f, lang, dir) in file.buildable(filter)? {
        let image = f.image_name(name);
        eprintln!("[{name}] building {image} from {} ({lang})", dir.display());
        let archive =
            crate::files::pack(&dir).with_context(|| format!("packing {}", dir.display()))?;
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
