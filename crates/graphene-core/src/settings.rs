//! A function's runtime settings, derived from its deployment: the labels and
//! annotations users already write for OpenFaaS, plus graphene's own. One
//! place decides defaults and rejects bad values, naming the field.

use std::time::Duration;

use thiserror::Error;

use crate::api::FunctionDeployment;
use crate::{duration, names};

pub const LABEL_SCALE_MIN: &str = "com.openfaas.scale.min";
pub const LABEL_SCALE_MAX: &str = "com.openfaas.scale.max";
/// Worker processes per Python replica, forked after the handler imported.
pub const ANNOTATION_WORKERS: &str = "com.graphene.workers";
/// An HTTP service that serves the function's calls instead of a built image.
pub const ANNOTATION_UPSTREAM: &str = "com.graphene.upstream";
/// The function's timeout: the one number a user sets.
pub const ANNOTATION_TIMEOUT: &str = "com.graphene.timeout";

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_WORKERS: u64 = 2;
pub const MAX_WORKERS: u64 = 64;
pub const DEFAULT_MAX_REPLICAS: u64 = 20;
/// No function may ask for more replicas than this (each is a process tree).
pub const MAX_REPLICAS: u64 = 64;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("{field}: {reason}")]
pub struct InvalidField {
    pub field: String,
    pub reason: String,
}

impl InvalidField {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct FunctionSettings {
    pub min_replicas: u64,
    pub max_replicas: u64,
    pub workers: u64,
    pub timeout: Duration,
    /// `http://host:port[/prefix]` when calls go to an existing HTTP service.
    pub upstream: Option<String>,
}

impl FunctionSettings {
    /// Validates a deployment and derives its settings.
    pub fn from_deployment(d: &FunctionDeployment) -> Result<Self, InvalidField> {
        names::validate("function", &d.service)
            .map_err(|e| InvalidField::new("service", e.to_string()))?;
        if !d.namespace.is_empty() {
            names::validate("namespace", &d.namespace)
                .map_err(|e| InvalidField::new("namespace", e.to_string()))?;
        }
        for s in &d.secrets {
            names::validate("secret", s)
                .map_err(|e| InvalidField::new("secrets", e.to_string()))?;
        }
        for k in d.env_vars.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(InvalidField::new(
                    format!("envVars.{k}"),
                    "environment variable names must be non-empty and contain no '=' or NUL",
                ));
            }
        }
        let labels = d.labels.clone().unwrap_or_default();
        let annotations = d.annotations.clone().unwrap_or_default();
        let number = |key: &str, default: u64, field: &str| -> Result<u64, InvalidField> {
            match labels.get(key).or_else(|| annotations.get(key)) {
                None => Ok(default),
                Some(v) => v.trim().parse::<u64>().map_err(|_| {
                    InvalidField::new(
                        format!("{field}.{key}"),
                        format!("{v:?} is not a whole number"),
                    )
                }),
            }
        };
        let min_replicas = number(LABEL_SCALE_MIN, 1, "labels")?;
        let max_replicas = number(LABEL_SCALE_MAX, DEFAULT_MAX_REPLICAS, "labels")?;
        for (value, key) in [
            (min_replicas, LABEL_SCALE_MIN),
            (max_replicas, LABEL_SCALE_MAX),
        ] {
            if value > MAX_REPLICAS {
                return Err(InvalidField::new(
                    format!("labels.{key}"),
                    format!("{value} is above the limit of {MAX_REPLICAS} replicas per function"),
                ));
            }
        }
        if max_replicas < min_replicas {
            return Err(InvalidField::new(
                format!("labels.{LABEL_SCALE_MAX}"),
                format!("max ({max_replicas}) is below min ({min_replicas})"),
            ));
        }
        let workers = number(ANNOTATION_WORKERS, DEFAULT_WORKERS, "annotations")?;
        if workers == 0 || workers > MAX_WORKERS {
            return Err(InvalidField::new(
                format!("annotations.{ANNOTATION_WORKERS}"),
                format!("must be between 1 and {MAX_WORKERS}"),
            ));
        }
        let timeout_field = match (
            annotations.get(ANNOTATION_TIMEOUT),
            d.env_vars.get("exec_timeout"),
        ) {
            (Some(t), _) => Some((format!("annotations.{ANNOTATION_TIMEOUT}"), t)),
            (None, Some(t)) => Some(("envVars.exec_timeout".to_string(), t)),
            (None, None) => None,
        };
        let timeout = match timeout_field {
            None => DEFAULT_TIMEOUT,
            Some((field, text)) => {
                let t = duration::parse(text).map_err(|e| InvalidField::new(field.clone(), e))?;
                if t.is_zero() || t > MAX_TIMEOUT {
                    return Err(InvalidField::new(
                        field,
                        format!(
                            "{text:?} must be greater than zero and at most {}h",
                            MAX_TIMEOUT.as_secs() / 3600
                        ),
                    ));
                }
                t
            }
        };
        let upstream = match annotations.get(ANNOTATION_UPSTREAM) {
            None => None,
            Some(u) => {
                let rest = u.strip_prefix("http://").ok_or_else(|| {
                    InvalidField::new(
                        format!("annotations.{ANNOTATION_UPSTREAM}"),
                        format!("{u:?} must be an http:// URL"),
                    )
                })?;
                let host = rest.split('/').next().unwrap_or("");
                if host.is_empty() || host.contains(['?', '#', ' ', '@']) {
                    return Err(InvalidField::new(
                        format!("annotations.{ANNOTATION_UPSTREAM}"),
                        format!("{u:?} has no valid host"),
                    ));
                }
                Some(u.clone())
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
            min_replicas,
            max_replicas,
            workers,
            timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Map;

    fn deployment(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> FunctionDeployment {
        let map = |kv: &[(&str, &str)]| -> Map {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        FunctionDeployment {
            service: "echo".into(),
            image: "echo:latest".into(),
            labels: Some(map(labels)),
            annotations: Some(map(annotations)),
            ..Default::default()
        }
    }

    #[test]
    fn defaults() {
        let s = FunctionSettings::from_deployment(&deployment(&[], &[])).unwrap();
        assert_eq!(s.min_replicas, 1);
        assert_eq!(s.workers, DEFAULT_WORKERS);
        assert_eq!(s.timeout, DEFAULT_TIMEOUT);
    }

    #[test]
    fn reads_labels_and_annotations() {
        let d = deployment(
            &[(LABEL_SCALE_MIN, "2"), (LABEL_SCALE_MAX, "4")],
            &[(ANNOTATION_WORKERS, "3"), (ANNOTATION_TIMEOUT, "2s")],
        );
        let s = FunctionSettings::from_deployment(&d).unwrap();
        assert_eq!((s.min_replicas, s.max_replicas, s.workers), (2, 4, 3));
        assert_eq!(s.timeout, Duration::from_secs(2));
    }

    #[test]
    fn upstream_must_be_http() {
        let ok = deployment(&[], &[(ANNOTATION_UPSTREAM, "http://127.0.0.1:9000/v1")]);
        assert_eq!(
            FunctionSettings::from_deployment(&ok)
                .unwrap()
                .upstream
                .as_deref(),
            Some("http://127.0.0.1:9000/v1")
        );
        for bad in ["ftp://x", "http:///path", "127.0.0.1:80"] {
            let e =
                FunctionSettings::from_deployment(&deployment(&[], &[(ANNOTATION_UPSTREAM, bad)]))
                    .unwrap_err();
            assert_eq!(e.field, "annotations.com.graphene.upstream", "{bad}");
        }
    }

    #[test]
    fn names_the_bad_field() {
        let e = FunctionSettings::from_deployment(&deployment(&[(LABEL_SCALE_MIN, "two")], &[]))
            .unwrap_err();
        assert_eq!(e.field, "labels.com.openfaas.scale.min");
        let e = FunctionSettings::from_deployment(&deployment(&[(LABEL_SCALE_MAX, "100000")], &[]))
            .unwrap_err();
        assert_eq!(e.field, "labels.com.openfaas.scale.max");
        assert!(e.reason.contains("limit of 64"), "{}", e.reason);
        let e = FunctionSettings::from_deployment(&deployment(&[], &[(ANNOTATION_TIMEOUT, "48h")]))
            .unwrap_err();
        assert_eq!(e.field, "annotations.com.graphene.timeout");
        assert!(e.reason.contains("\"48h\" must be"), "{}", e.reason);
        let mut d = deployment(&[], &[]);
        d.image = String::new();
        assert_eq!(
            FunctionSettings::from_deployment(&d).unwrap_err().field,
            "image"
        );
        let e = FunctionSettings::from_deployment(&deployment(&[], &[(ANNOTATION_WORKERS, "0")]))
            .unwrap_err();
        assert_eq!(e.field, "annotations.com.graphene.workers");
        let mut d = deployment(&[], &[]);
        d.service = "Bad_Name".into();
        assert_eq!(
            FunctionSettings::from_deployment(&d).unwrap_err().field,
            "service"
        );
    }
}
