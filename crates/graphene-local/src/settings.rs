//! The settings only the local runtime understands, read from a function's
//! labels and annotations: forking from a warm parent, the network policy,
//! an upstream HTTP service instead of an image, and the wait queue. Bad
//! values are rejected with the field and the reason, as core's settings are.

use graphene_core::api::FunctionDeployment;
use graphene_core::settings::{InvalidField, ANNOTATION_WORKERS};

/// `false` starts every replica as its own Python process that imports the
/// handler, for handlers that are not safe to fork after import.
pub const ANNOTATION_FORK: &str = "com.graphene.fork";
/// How many calls may wait for a worker before new ones are turned away.
pub const ANNOTATION_QUEUE: &str = "com.graphene.queue";
/// An HTTP service that serves the function's calls instead of a built image
/// (one of core's privileged annotations).
pub const ANNOTATION_UPSTREAM: &str = graphene_core::settings::PRIVILEGED_ANNOTATIONS[0];
/// `none` cuts the function off the network (it still answers calls).
pub const ANNOTATION_NETWORK: &str = "com.graphene.network";

pub const DEFAULT_QUEUE: u64 = 1024;
pub const MAX_QUEUE: u64 = 100_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalSettings {
    /// `http://host:port[/prefix]` when calls go to an existing HTTP service.
    pub upstream: Option<String>,
    /// Replicas are forked from a warm parent that imported the handler.
    pub fork: bool,
    /// Calls that may wait for a worker at once.
    pub queue: u64,
    /// Whether the function's processes may use the network.
    pub network: bool,
}

impl LocalSettings {
    /// Reads and checks the local settings; `workers` is core's concurrency
    /// per replica, which must be 1 without fork.
    pub fn from_deployment(d: &FunctionDeployment, workers: u64) -> Result<Self, InvalidField> {
        let labels = d.labels.clone().unwrap_or_default();
        let annotations = d.annotations.clone().unwrap_or_default();
        let get = |key: &str| labels.get(key).or_else(|| annotations.get(key));
        let field = |key: &str| match labels.contains_key(key) {
            true => format!("labels.{key}"),
            false => format!("annotations.{key}"),
        };
        let upstream = match annotations.get(ANNOTATION_UPSTREAM) {
            None => None,
            Some(u) => {
                let bad = |reason: String| InvalidField::new(field(ANNOTATION_UPSTREAM), reason);
                let rest = u
                    .strip_prefix("http://")
                    .ok_or_else(|| bad(format!("{u:?} must be an http:// URL")))?;
                let host = rest.split('/').next().unwrap_or("");
                if host.is_empty() || host.contains(['?', '#', ' ', '@']) {
                    return Err(bad(format!("{u:?} has no valid host")));
                }
                Some(u.clone())
            }
        };
        let fork = match get(ANNOTATION_FORK).map(|v| v.trim().to_ascii_lowercase()) {
            None => true,
            Some(v) if v == "true" || v == "1" => true,
            Some(v) if v == "false" || v == "0" => false,
            Some(v) => {
                return Err(InvalidField::new(
                    field(ANNOTATION_FORK),
                    format!("{v:?} must be true or false"),
                ))
            }
        };
        if !fork && workers > 1 {
            return Err(InvalidField::new(
                format!("annotations.{ANNOTATION_WORKERS}"),
                format!(
                    "must be 1 when {ANNOTATION_FORK} is false (each replica is then one process; add replicas for concurrency)"
                ),
            ));
        }
        let queue = match get(ANNOTATION_QUEUE) {
            None => DEFAULT_QUEUE,
            Some(v) => match v.trim().parse::<u64>() {
                Ok(n) if (1..=MAX_QUEUE).contains(&n) => n,
                _ => {
                    return Err(InvalidField::new(
                        field(ANNOTATION_QUEUE),
                        format!("must be between 1 and {MAX_QUEUE}"),
                    ))
                }
            },
        };
        let network = match get(ANNOTATION_NETWORK).map(|v| v.trim().to_ascii_lowercase()) {
            None => true,
            Some(v) if v == "all" => true,
            Some(v) if v == "none" => false,
            Some(v) => {
                return Err(InvalidField::new(
                    field(ANNOTATION_NETWORK),
                    format!("{v:?} is not a network policy (use all or none)"),
                ))
            }
        };
        if upstream.is_none() && d.image.trim().is_empty() {
            return Err(InvalidField::new(
                "image",
                "is required (the image built by `graphene build`)",
            ));
        }
        Ok(Self {
            upstream,
            fork,
            queue,
            network,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(annotations: &[(&str, &str)]) -> FunctionDeployment {
        FunctionDeployment {
            service: "echo".into(),
            image: "echo:latest".into(),
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn defaults() {
        let s = LocalSettings::from_deployment(&deployment(&[]), 2).unwrap();
        assert!(s.fork && s.network && s.upstream.is_none());
        assert_eq!(s.queue, DEFAULT_QUEUE);
    }

    #[test]
    fn names_the_bad_field() {
        let e = LocalSettings::from_deployment(&deployment(&[(ANNOTATION_FORK, "false")]), 2)
            .unwrap_err();
        assert_eq!(e.field, "annotations.com.graphene.workers");
        let e =
            LocalSettings::from_deployment(&deployment(&[(ANNOTATION_QUEUE, "0")]), 2).unwrap_err();
        assert_eq!(e.field, "annotations.com.graphene.queue");
        let e = LocalSettings::from_deployment(&deployment(&[(ANNOTATION_NETWORK, "some")]), 2)
            .unwrap_err();
        assert_eq!(e.field, "annotations.com.graphene.network");
        let mut d = deployment(&[]);
        d.image = String::new();
        assert_eq!(
            LocalSettings::from_deployment(&d, 2).unwrap_err().field,
            "image"
        );
    }

    #[test]
    fn upstream_must_be_http() {
        let ok = deployment(&[(ANNOTATION_UPSTREAM, "http://127.0.0.1:9000/v1")]);
        assert_eq!(
            LocalSettings::from_deployment(&ok, 2)
                .unwrap()
                .upstream
                .as_deref(),
            Some("http://127.0.0.1:9000/v1")
        );
        for bad in ["ftp://x", "http:///path", "127.0.0.1:80"] {
            let e = LocalSettings::from_deployment(&deployment(&[(ANNOTATION_UPSTREAM, bad)]), 2)
                .unwrap_err();
            assert_eq!(e.field, "annotations.com.graphene.upstream", "{bad}");
        }
    }
}
