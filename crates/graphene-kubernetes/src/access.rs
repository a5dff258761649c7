//! API tokens, grants and the audit trail in the cluster, in the gateway's
//! namespace, so that a token made through one gateway replica is known to
//! all of them and a revocation reaches every one at once (each watches):
//!
//! - a token is a Secret `graphene-token-<name>` (its hash, owner, creation
//!   and expiry; never the token);
//! - a grant is a ConfigMap `graphene-grant-<id>`;
//! - each audit line is a ConfigMap `graphene-audit-<time>-<random>`; the
//!   newest [`AUDIT_KEPT`] are kept.
//!
//! All carry `graphene.dev/kind` (`token`, `grant`, `audit`). A token's
//! grants are written after it and removed after it, so a half-done change
//! never leaves a token with more than it was given.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::StreamExt;
use graphene_core::api::AuditEntry;
use graphene_core::provider::BoxFuture;
use graphene_core::store::{AccessChanges, AccessStore, StoreError, StoredGrant, StoredToken};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;

use crate::manifest::{MANAGED_BY, MANAGER};
use crate::secrets::KIND_LABEL;
use crate::{is_code, store_unavailable as unavailable};

/// Audit lines kept in the cluster; older ones are removed.
pub const AUDIT_KEPT: usize = 5000;
/// Every this many audit lines, the oldest beyond [`AUDIT_KEPT`] go.
const PRUNE_EVERY: u64 = 100;
const TOKEN: &str = "token";
const GRANT: &str = "grant";
const AUDIT: &str = "audit";

pub struct ClusterAccess {
    secrets: Api<core::Secret>,
    config_maps: Api<core::ConfigMap>,
    namespace: String,
    written: AtomicU64,
    /// Tells this gateway's audit lines from others' written at the same
    /// instant.
    writer: u32,
}

fn meta(name: String, kind: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        labels: Some(BTreeMap::from([
            (KIND_LABEL.to_string(), kind.to_string()),
            (MANAGED_BY.to_string(), MANAGER.to_string()),
        ])),
        ..Default::default()
    }
}

fn of_kind(kind: &str) -> ListParams {
    ListParams::default().labels(&format!("{KIND_LABEL}={kind}"))
}

fn token_name(name: &str) -> String {
    format!("graphene-token-{name}")
}

fn grant_name(id: &str) -> String {
    format!("graphene-grant-{id}")
}

/// A record as the one JSON value its object holds.
fn data_of<T: serde::Serialize>(value: &T) -> BTreeMap<String, String> {
    BTreeMap::from([(
        "record".to_string(),
        serde_json::to_string(value).expect("a record serialises"),
    )])
}

fn record_of<T: serde::de::DeserializeOwned>(
    data: Option<&BTreeMap<String, String>>,
    what: &str,
) -> Option<T> {
    let parsed = data
        .and_then(|d| d.get("record"))
        .map(|r| serde_json::from_str(r));
    match parsed {
        Some(Ok(v)) => Some(v),
        Some(Err(e)) => {
            tracing::warn!("{what}: {e}; left out");
            None
        }
        None => None,
    }
}

impl ClusterAccess {
    /// Kept in `namespace` (the gateway's own).
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Self {
            secrets: Api::namespaced(client.clone(), namespace),
            config_maps: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            written: AtomicU64::new(0),
            writer: {
                use std::hash::{BuildHasher, Hasher};
                std::collections::hash_map::RandomState::new()
                    .build_hasher()
                    .finish() as u32
            },
        }
    }

    async fn put_grant(&self, g: &StoredGrant) -> Result<(), StoreError> {
        let cm = core::ConfigMap {
            metadata: meta(grant_name(&g.id), GRANT),
            data: Some(data_of(g)),
            ..Default::default()
        };
        self.config_maps
            .create(&PostParams::default(), &cm)
            .await
            .map(drop)
            .map_err(unavailable(format!(
                "writing grant {} in namespace {}",
                g.id, self.namespace
            )))
    }

    async fn write_audit(&self, e: &AuditEntry) -> Result<(), StoreError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let seq = self.written.load(Ordering::Relaxed);
        let cm = core::ConfigMap {
            metadata: meta(
                format!("graphene-audit-{nanos:020}-{:08x}{seq:x}", self.writer),
                AUDIT,
            ),
            data: Some(data_of(e)),
            ..Default::default()
        };
        self.config_maps
            .create(&PostParams::default(), &cm)
            .await
            .map_err(unavailable(format!(
                "writing the audit trail in namespace {}",
                self.namespace
            )))?;
        if self.written.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.prune_audit().await;
        }
        Ok(())
    }

    /// Audit object names, oldest first (their names sort by time).
    async fn audit_names(&self) -> Result<Vec<String>, StoreError> {
        let list = self
            .config_maps
            .list_metadata(&of_kind(AUDIT))
            .await
            .map_err(unavailable(format!(
                "reading the audit trail in namespace {}",
                self.namespace
            )))?;
        let mut names: Vec<String> = list
            .items
            .into_iter()
            .filter_map(|m| m.metadata.name)
            .collect();
        names.sort();
        Ok(names)
    }

    async fn prune_audit(&self) {
        let Ok(names) = self.audit_names().await else {
            return;
        };
        let excess = names.len().saturating_sub(AUDIT_KEPT);
        for name in &names[..excess] {
            let _ = self
                .config_maps
                .delete(name, &DeleteParams::default())
                .await;
        }
    }

    /// The grants made to `principal`, by object name.
    async fn grants_of(&self, principal: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .grant_objects()
            .await?
            .into_iter()
            .filter(|(_, g)| g.principal == principal)
            .map(|(name, _)| name)
            .collect())
    }

    async fn grant_objects(&self) -> Result<Vec<(String, StoredGrant)>, StoreError> {
        self.records(GRANT, "grants").await
    }

    /// The records of the ConfigMaps of one kind, by object name.
    async fn records<T: serde::de::DeserializeOwned>(
        &self,
        kind: &str,
        what: &str,
    ) -> Result<Vec<(String, T)>, StoreError> {
        let list = self
            .config_maps
            .list(&of_kind(kind))
            .await
            .map_err(unavailable(format!(
                "reading {what} in namespace {}",
                self.namespace
            )))?;
        Ok(list
            .items
            .into_iter()
            .filter_map(|cm| {
                let name = cm.metadata.name.clone()?;
                let record = record_of(cm.data.as_ref(), &format!("ConfigMap {name}"))?;
                Some((name, record))
            })
            .collect())
    }

    async fn delete_config_map(&self, name: &str) -> Result<bool, StoreError> {
        match self
            .config_maps
            .delete(name, &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_code(&e, 404) => Ok(false),
            Err(e) => Err(unavailable(format!("removing {name}"))(e)),
        }
    }
}

/// A watch event that may change tokens or grants.
fn tick<K>(e: Result<watcher::Event<K>, watcher::Error>) -> Option<()> {
    match e {
        Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone) => {
            Some(())
        }
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(error = %e, "watching tokens and grants");
            None
        }
    }
}

impl AccessStore for ClusterAccess {
    fn tokens(&self) -> BoxFuture<'_, Result<Vec<StoredToken>, StoreError>> {
        Box::pin(async move {
            let list = self
                .secrets
                .list(&of_kind(TOKEN))
                .await
                .map_err(unavailable(format!(
                    "reading tokens in namespace {}",
                    self.namespace
                )))?;
            Ok(list
                .items
                .into_iter()
                .filter_map(|s| {
                    let name = s.metadata.name.clone().unwrap_or_default();
                    let data: Option<BTreeMap<String, String>> = s.data.map(|d| {
                        d.into_iter()
                            .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                            .collect()
                    });
                    record_of(data.as_ref(), &format!("Secret {name}"))
                })
                .collect())
        })
    }

    fn grants(&self) -> BoxFuture<'_, Result<Vec<StoredGrant>, StoreError>> {
        Box::pin(async move {
            let mut all: Vec<StoredGrant> = self
                .grant_objects()
                .await?
                .into_iter()
                .map(|(_, g)| g)
                .collect();
            all.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
            Ok(all)
        })
    }

    fn create_token<'a>(
        &'a self,
        token: &'a StoredToken,
        grants: &'a [StoredGrant],
        entry: &'a AuditEntry,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let secret = core::Secret {
                metadata: meta(token_name(&token.name), TOKEN),
                data: Some(
                    data_of(token)
                        .into_iter()
                        .map(|(k, v)| (k, ByteString(v.into_bytes())))
                        .collect(),
                ),
                type_: Some("Opaque".into()),
                ..Default::default()
            };
            match self.secrets.create(&PostParams::default(), &secret).await {
                Ok(_) => {}
                Err(e) if is_code(&e, 409) => return Ok(false),
                Err(e) => {
                    return Err(unavailable(format!(
                        "writing token {} in namespace {}",
                        token.name, self.namespace
                    ))(e))
                }
            }
            for g in grants {
                self.put_grant(g).await?;
            }
            self.write_audit(entry).await?;
            Ok(true)
        })
    }

    fn revoke_token<'a>(
        &'a self,
        name: &'a str,
        entry: &'a AuditEntry,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            match self
                .secrets
                .delete(&token_name(name), &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                Err(e) if is_code(&e, 404) => return Ok(false),
                Err(e) => return Err(unavailable(format!("revoking token {name}"))(e)),
            }
            for g in self.grants_of(&format!("token:{name}")).await? {
                self.delete_config_map(&g).await?;
            }
            self.write_audit(entry).await?;
            Ok(true)
        })
    }

    fn add_grant<'a>(
        &'a self,
        grant: &'a StoredGrant,
        entry: &'a AuditEntry,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.put_grant(grant).await?;
            self.write_audit(entry).await
        })
    }

    fn remove_grant<'a>(
        &'a self,
        id: &'a str,
        entry: &'a AuditEntry,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            if !self.delete_config_map(&grant_name(id)).await? {
                return Ok(false);
            }
            self.write_audit(entry).await?;
            Ok(true)
        })
    }

    fn audit<'a>(&'a self, entry: &'a AuditEntry) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.write_audit(entry))
    }

    fn audit_trail(&self, limit: usize) -> BoxFuture<'_, Result<Vec<AuditEntry>, StoreError>> {
        Box::pin(async move {
            let mut lines: Vec<(String, AuditEntry)> =
                self.records(AUDIT, "the audit trail").await?;
            lines.sort_by(|a, b| b.0.cmp(&a.0));
            Ok(lines.into_iter().take(limit).map(|(_, e)| e).collect())
        })
    }

    fn changes(&self) -> Option<AccessChanges> {
        let tokens = watcher(
            self.secrets.clone(),
            watcher::Config::default().labels(&format!("{KIND_LABEL}={TOKEN}")),
        )
        .default_backoff()
        .filter_map(|e| futures_util::future::ready(tick(e)));
        let grants = watcher(
            self.config_maps.clone(),
            watcher::Config::default().labels(&format!("{KIND_LABEL}={GRANT}")),
        )
        .default_backoff()
        .filter_map(|e| futures_util::future::ready(tick(e)));
        Some(Box::pin(futures_util::stream::select(tokens, grants)))
    }
}
