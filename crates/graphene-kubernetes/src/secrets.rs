//! Secrets in the cluster: one Kubernetes Secret per graphene secret, in
//! the function namespace, named as the secret and holding its value under
//! a key of the same name (the shape faas-netes gives OpenFaaS secrets), so
//! that every gateway replica resolves the same values and `kubectl` can
//! make them:
//!
//! ```sh
//! kubectl -n graphene-fn create secret generic api-key --from-literal=api-key=...
//! kubectl -n graphene-fn label secret api-key graphene.dev/kind=secret
//! ```
//!
//! Only Secrets labelled `graphene.dev/kind=secret` are graphene's: the
//! others in the namespace (a function's own copy of its secrets, image
//! pull secrets, service account tokens) are neither listed nor changed.

use std::collections::BTreeMap;

use graphene_core::provider::BoxFuture;
use graphene_core::store::{SecretStore, StoreError};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::Api;

use crate::is_code;
use crate::manifest::{MANAGED_BY, MANAGER};

/// The label that makes a Secret a graphene secret, and its value.
pub const KIND_LABEL: &str = "graphene.dev/kind";
pub const KIND_SECRET: &str = "secret";
const WRITE_TRIES: usize = 5;

pub struct ClusterSecrets {
    client: kube::Client,
    namespaces: Vec<String>,
}

fn unavailable(what: &str, name: &str, ns: &str) -> impl Fn(kube::Error) -> StoreError {
    crate::store_unavailable(format!("{what} secret {name} in namespace {ns}"))
}

/// Whether a Secret is a graphene secret.
fn ours(s: &core::Secret) -> bool {
    s.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(KIND_LABEL))
        .is_some_and(|v| v == KIND_SECRET)
}

/// A graphene secret's value: under its own name, or its only key.
fn value_of(s: &core::Secret, name: &str) -> Option<Vec<u8>> {
    let data = s.data.as_ref()?;
    match data.get(name) {
        Some(v) => Some(v.0.clone()),
        None if data.len() == 1 => data.values().next().map(|v| v.0.clone()),
        None => None,
    }
}

fn data(name: &str, value: &[u8]) -> BTreeMap<String, ByteString> {
    BTreeMap::from([(name.to_string(), ByteString(value.to_vec()))])
}

impl ClusterSecrets {
    pub fn new(client: kube::Client, namespaces: Vec<String>) -> Self {
        Self { client, namespaces }
    }

    /// The Secrets of a namespace graphene manages.
    fn api(&self, ns: &str) -> Result<Api<core::Secret>, StoreError> {
        match self.namespaces.iter().any(|n| n == ns) {
            true => Ok(Api::namespaced(self.client.clone(), ns)),
            false => Err(StoreError::Invalid(format!(
                "namespace: {ns:?} is not one graphene manages here ({})",
                self.namespaces.join(", ")
            ))),
        }
    }

    /// The graphene secret of that name, if there is one.
    async fn read(&self, ns: &str, name: &str) -> Result<Option<core::Secret>, StoreError> {
        let found = self
            .api(ns)?
            .get_opt(name)
            .await
            .map_err(unavailable("reading", name, ns))?;
        Ok(found.filter(ours))
    }

    async fn create(&self, ns: &str, name: &str, value: &[u8]) -> Result<bool, StoreError> {
        let secret = core::Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                labels: Some(BTreeMap::from([
                    (KIND_LABEL.to_string(), KIND_SECRET.to_string()),
                    (MANAGED_BY.to_string(), MANAGER.to_string()),
                ])),
                ..Default::default()
            },
            data: Some(data(name, value)),
            type_: Some("Opaque".into()),
            ..Default::default()
        };
        match self.api(ns)?.create(&PostParams::default(), &secret).await {
            Ok(_) => Ok(true),
            Err(e) if is_code(&e, 409) => match self.read(ns, name).await? {
                Some(_) => Ok(false),
                None => Err(StoreError::Conflict(format!(
                    "name: a Kubernetes Secret {name} that is not a graphene secret exists in namespace {ns} (label it {KIND_LABEL}={KIND_SECRET} to make it one, or choose another name)"
                ))),
            },
            Err(e) => Err(unavailable("creating", name, ns)(e)),
        }
    }

    /// Replaces the value, guarded by the resource version (retried when
    /// someone else wrote it in between).
    async fn replace(&self, ns: &str, name: &str, value: &[u8]) -> Result<bool, StoreError> {
        let api = self.api(ns)?;
        for _ in 0..WRITE_TRIES {
            let Some(mut s) = self.read(ns, name).await? else {
                return Ok(false);
            };
            s.data = Some(data(name, value));
            s.string_data = None;
            match api.replace(name, &PostParams::default(), &s).await {
                Ok(_) => return Ok(true),
                Err(e) if is_code(&e, 409) => continue,
                Err(e) if is_code(&e, 404) => return Ok(false),
                Err(e) => return Err(unavailable("writing", name, ns)(e)),
            }
        }
        Err(StoreError::Conflict(format!(
            "secret {name} in namespace {ns} kept changing while this gateway wrote it; try again"
        )))
    }
}

impl SecretStore for ClusterSecrets {
    fn namespaces(&self) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        Box::pin(async move { Ok(self.namespaces.clone()) })
    }

    fn names<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        Box::pin(async move {
            let list = self
                .api(namespace)?
                .list(&ListParams::default().labels(&format!("{KIND_LABEL}={KIND_SECRET}")))
                .await
                .map_err(|e| {
                    StoreError::Unavailable(format!(
                        "listing secrets in namespace {namespace}: {e}"
                    ))
                })?;
            let mut names: Vec<String> = list
                .items
                .into_iter()
                .filter_map(|s| s.metadata.name)
                .collect();
            names.sort();
            Ok(names)
        })
    }

    fn get<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        Box::pin(async move {
            Ok(self
                .read(namespace, name)
                .await?
                .and_then(|s| value_of(&s, name)))
        })
    }

    fn put<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        value: &'a [u8],
        replace: bool,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            match replace {
                true => self.replace(namespace, name, value).await,
                false => self.create(namespace, name, value).await,
            }
        })
    }

    fn delete<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            if self.read(namespace, name).await?.is_none() {
                return Ok(false);
            }
            match self
                .api(namespace)?
                .delete(name, &DeleteParams::default())
                .await
            {
                Ok(_) => Ok(true),
                Err(e) if is_code(&e, 404) => Ok(false),
                Err(e) => Err(unavailable("removing", name, namespace)(e)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(labels: &[(&str, &str)], data: &[(&str, &[u8])]) -> core::Secret {
        core::Secret {
            metadata: ObjectMeta {
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn only_labelled_secrets_are_graphene_secrets() {
        assert!(ours(&secret(&[(KIND_LABEL, KIND_SECRET)], &[])));
        assert!(!ours(&secret(&[(MANAGED_BY, MANAGER)], &[])));
        assert!(!ours(&secret(&[(KIND_LABEL, "token")], &[])));
    }

    #[test]
    fn the_value_is_under_the_name_or_the_only_key() {
        let named = secret(&[], &[("api-key", b"v1"), ("other", b"v2")]);
        assert_eq!(value_of(&named, "api-key").unwrap(), b"v1");
        let single = secret(&[], &[("token", b"v3")]);
        assert_eq!(value_of(&single, "api-key").unwrap(), b"v3");
        let ambiguous = secret(&[], &[("a", b"1"), ("b", b"2")]);
        assert_eq!(value_of(&ambiguous, "api-key"), None);
    }
}
