use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::bail;
use bytes::Bytes;
use clap::Args;
use graphene_core::api::{Event, EventKind, RolloutState};
use http_body_util::BodyExt;
use hyper::{Method, StatusCode};

use super::build::OciArgs;
use super::{encode, StackArgs, Target};
use crate::client::{self, Client};
use crate::stackfile::StackFile;
use graphene_core::api::REVISION_HEADER;

#[derive(Args)]
pub struct Deploy {
    #[command(flatten)]
    pub stack: StackArgs,
    /// Seconds to wait for each function's handler to import (0: don't wait)
    #[arg(long, default_value_t = 60)]
    pub wait: u64,
    #[command(flatten)]
    pub target: Target,
}

impl Deploy {
    pub async fn run(self) -> anyhow::Result<()> {
        self.run_with(None).await
    }

    /// Deploys, after building first when `build` is given (`graphene
    /// up`). OCI images are pushed and deployed by digest.
    pub async fn run_with(self, build: Option<&OciArgs>) -> anyhow::Result<()> {
        let file = self.stack.load()?;
        let client = self.target.client(Some(&file.stack.provider.gateway))?;
        let filter = self.stack.filter.as_deref();
        let images = match build {
            None => BTreeMap::new(),
            Some(oci) if oci.shrinkwrap.is_some() => {
                bail!("--shrinkwrap only writes build contexts: use it with `graphene build`")
            }
            // A cluster pulls images from their registry: they are pushed.
            Some(oci) if oci.wanted(&file) => super::build::build_oci(&file, filter, oci, true)
                .await
                .map_err(|e| e.context("nothing was deployed"))?,
            Some(_) => {
                super::build::build_all(&client, &file, filter)
                    .await
                    .map_err(|e| e.context("nothing was deployed"))?;
                BTreeMap::new()
            }
        };
        deploy_all(
            &client,
            &file,
            filter,
            &images,
            &self.target,
            Duration::from_secs(self.wait),
        )
        .await
    }
}

/// A function deployed, and the revision its deploy made (or found).
pub struct Deployed {
    pub name: String,
    pub namespace: String,
    pub revision: Option<u64>,
}

/// Sends one deploy-like request; returns the revision the gateway named.
pub async fn send_for_revision(
    client: &Client,
    method: Method,
    path: &str,
    body: Vec<u8>,
) -> anyhow::Result<(StatusCode, Option<u64>, Bytes)> {
    let json = [("content-type".to_string(), "application/json".to_string())];
    let resp = client.send(method, path, body, &json).await?;
    let status = resp.status();
    let revision = resp
        .headers()
        .get(REVISION_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let answer = resp.into_body().collect().await?.to_bytes();
    Ok((status, revision, answer))
}

/// Deploys the selected functions: an update if they exist, else a create
/// (as faas-cli does).
pub async fn deploy_all(
    client: &Client,
    file: &StackFile,
    filter: Option<&str>,
    images: &BTreeMap<String, String>,
    target: &Target,
    wait: Duration,
) -> anyhow::Result<()> {
    let mut deployed = Vec::new();
    for (name, f) in file.select(filter)? {
        if f.lang.is_some() {
            file.handler_dir(name, f)?;
        }
        let mut spec = f.deployment(name);
        if let Some(image) = images.get(name) {
            spec.image = image.clone();
        }
        if let Some(ns) = &target.namespace {
            spec.namespace = ns.clone();
        }
        let body = serde_json::to_vec(&spec)?;
        let (mut status, mut revision, mut answer) =
            send_for_revision(client, Method::PUT, "/system/functions", body.clone()).await?;
        if status == StatusCode::NOT_FOUND {
            (status, revision, answer) =
                send_for_revision(client, Method::POST, "/system/functions", body).await?;
        }
        if let Err(e) = client::check(status, &answer) {
            bail!("deploying {name}: {e}");
        }
        let ns = if spec.namespace.is_empty() {
            String::new()
        } else {
            format!(".{}", spec.namespace)
        };
        let rev = revision.map_or(String::new(), |r| format!(" (revision {r})"));
        println!("Deployed {name}{rev}: {}/function/{name}{ns}", client.base);
        deployed.push(Deployed {
            name: name.clone(),
            namespace: spec.namespace.clone(),
            revision,
        });
    }
    if wait.is_zero() {
        return Ok(());
    }
    let mut failed = 0;
    for d in &deployed {
        if !wait_for_rollout(client, d, wait).await? {
            failed += 1;
        }
    }
    if failed > 0 {
        bail!("{failed} function(s) failed to start; a previous version, if any, keeps serving");
    }
    Ok(())
}

/// Follows the gateway's events until the revision a deploy made is ready
/// or failed (or a newer one replaced it). False when it failed.
pub async fn wait_for_rollout(
    client: &Client,
    d: &Deployed,
    wait: Duration,
) -> anyhow::Result<bool> {
    let Some(revision) = d.revision else {
        return Ok(true); // a gateway that does not number revisions
    };
    let mut path = format!("/system/events?name={}", encode(&d.name));
    if !d.namespace.is_empty() {
        path.push_str(&format!("&namespace={}", encode(&d.namespace)));
    }
    let name = d.name.as_str();
    let follow = async {
        let resp = client::success(client.send(Method::GET, &path, Vec::new(), &[]).await?).await?;
        let mut ok = true;
        let decided = client::until_line(resp, |line| {
            let Ok(e) = serde_json::from_str::<Event>(line) else {
                return Ok(false);
            };
            if e.kind == EventKind::Removed {
                bail!("{name} was removed while starting");
            }
            let Some(latest) = e.revision else {
                return Ok(false);
            };
            if latest.revision > revision {
                eprintln!("{name}: revision {revision} was replaced by revision {} meanwhile", latest.revision);
                return Ok(true);
            }
            if latest.revision < revision {
                return Ok(false);
            }
            match latest.state {
                RolloutState::Progressing => Ok(false),
                RolloutState::Ready => {
                    match e.replicas {
                        Some(0) => eprintln!("{name} is ready (revision {revision}, at zero replicas; the next call wakes it)"),
                        _ => eprintln!("{name} is ready (revision {revision})"),
                    }
                    Ok(true)
                }
                RolloutState::Failed => {
                    let what = match latest.reason.strip_prefix("the handler failed to import: ") {
                        Some(r) => format!("failed to import its handler: {r}"),
                        None => format!("failed: {}", latest.reason),
                    };
                    eprintln!("error: {name} {what} (revision {revision})\n  (see `graphene logs {name}`)");
                    match e.serving {
                        Some(s) => eprintln!("  revision {s} keeps serving"),
                        None => eprintln!("  no earlier revision serves it"),
                    }
                    ok = false;
                    Ok(true)
                }
            }
        })
        .await?;
        if !decided {
            bail!("the gateway closed the event stream while {name} was starting");
        }
        Ok::<_, anyhow::Error>(ok)
    };
    match tokio::time::timeout(wait, follow).await {
        Ok(result) => result,
        Err(_) => {
            eprintln!(
                "{name} is still starting after {}s; follow it with `graphene logs {name} --follow`",
                wait.as_secs()
            );
            Ok(true)
        }
    }
}
