//! A function's runtime settings, derived from its deployment: the labels and
//! annotations users already write for OpenFaaS, plus graphene's own. One
//! place decides defaults and rejects bad values, naming the field.

use std::time::Duration;

use thiserror::Error;

use crate::api::FunctionDeployment;
use crate::autoscale::{Metric, Policy};
use crate::{duration, names};

pub const LABEL_SCALE_MIN: &str = "com.openfaas.scale.min";
pub const LABEL_SCALE_MAX: &str = "com.openfaas.scale.max";
pub const LABEL_SCALE_TARGET: &str = "com.openfaas.scale.target";
pub const LABEL_SCALE_PROPORTION: &str = "com.openfaas.scale.target-proportion";
pub const LABEL_SCALE_TYPE: &str = "com.openfaas.scale.type";
pub const LABEL_SCALE_ZERO: &str = "com.openfaas.scale.zero";
pub const LABEL_SCALE_ZERO_DURATION: &str = "com.openfaas.scale.zero-duration";
/// The autoscaler's stable window (its panic window is a tenth of it).
pub const LABEL_SCALE_WINDOW: &str = "com.graphene.scale.window";
/// Calls one replica serves at once (on the local runtime, its worker
/// processes). The autoscaler's `capacity` target defaults to it.
pub const ANNOTATION_WORKERS: &str = "com.graphene.workers";
/// `true` lets anyone call the function without a credential.
pub const LABEL_PUBLIC: &str = "com.graphene.public";
/// Annotations a provider reads that reach beyond the function itself (an
/// upstream URL makes the runtime call another host for it): setting one
/// needs `admin` on the function, not just `deploy`.
pub const PRIVILEGED_ANNOTATIONS: &[&str] = &["com.graphene.upstream"];
/// Asynchronous calls: how many attempts, the first and the longest wait
/// between them, and which status codes are worth another attempt.
pub const ANNOTATION_RETRY_ATTEMPTS: &str = "com.openfaas.retry.attempts";
pub const ANNOTATION_RETRY_MIN_BACKOFF: &str = "com.openfaas.retry.min_backoff";
pub const ANNOTATION_RETRY_MAX_BACKOFF: &str = "com.openfaas.retry.max_backoff";
pub const ANNOTATION_RETRY_CODES: &str = "com.openfaas.retry.codes";
/// How many asynchronous calls of the function run at once.
pub const ANNOTATION_ASYNC_CONCURRENCY: &str = "com.graphene.async.concurrency";
pub const DEFAULT_ASYNC_CONCURRENCY: u64 = 4;
/// The function's timeout: the one number a user sets.
pub const ANNOTATION_TIMEOUT: &str = "com.graphene.timeout";

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_WORKERS: u64 = 2;
pub const MAX_WORKERS: u64 = 64;
pub const DEFAULT_MAX_REPLICAS: u64 = 20;
/// No function may ask for more replicas than this (each is a process tree).
pub const MAX_REPLICAS: u64 = 64;
pub const DEFAULT_RPS_TARGET: f64 = 50.0;
/// OpenFaaS's default share of the target for `rps`; `capacity` aims at the
/// full worker count (1.0), so one call on a one-worker replica is no reason
/// to add another.
pub const DEFAULT_PROPORTION: f64 = 0.9;
pub const DEFAULT_ZERO_DURATION: Duration = Duration::from_secs(15 * 60);
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

/// How long a call may wait for a worker when the function already runs
/// all the replicas it may have: a tenth of its timeout, within [0.1 s, 5 s].
pub fn overflow_wait(timeout: Duration) -> Duration {
    (timeout / 10)
        .clamp(Duration::from_millis(100), Duration::from_secs(5))
        .min(timeout)
}

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
    pub scaling: Policy,
    /// Anyone may invoke it without a credential.
    pub public: bool,
    /// `limits.memory`, in bytes, per replica.
    pub memory_limit: Option<u64>,
    /// `limits.cpu`, in thousandths of a CPU, per replica.
    pub cpu_limit: Option<u64>,
    /// `limits.nvidia.com/gpu`: whole GPUs per replica.
    pub gpus: u64,
    /// How asynchronous calls are retried.
    pub retry: RetryPolicy,
    /// Asynchronous calls running at once (apart from synchronous traffic).
    pub async_concurrency: u64,
}

/// When an asynchronous call is tried again: on a status in `codes` (or a
/// timeout or crash, which answer 504/502), up to `attempts` tries in all,
/// waiting `min_backoff`, then twice as long each time, at most
/// `max_backoff`, each wait jittered to between half and all of it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    pub codes: Vec<u16>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 5,
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            codes: vec![429, 500, 502, 503, 504],
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `next` (2 for the first retry), given a
    /// random number in [0, 1).
    pub fn backoff(&self, next: u32, random: f64) -> Duration {
        let doubling = 2f64.powi(next.saturating_sub(2).min(30) as i32);
        let full = (self.min_backoff.as_secs_f64() * doubling).min(self.max_backoff.as_secs_f64());
        Duration::from_secs_f64(full * (0.5 + random.clamp(0.0, 1.0) / 2.0))
    }

    pub fn retries(&self, code: u16) -> bool {
        self.codes.contains(&code)
    }
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
        let get = |key: &str| labels.get(key).or_else(|| annotations.get(key));
        let field = |key: &str| {
            if labels.contains_key(key) {
                format!("labels.{key}")
            } else {
                format!("annotations.{key}")
            }
        };
        let flag = |key: &str, default: bool| -> Result<bool, InvalidField> {
            match get(key).map(|v| v.trim().to_ascii_lowercase()) {
                None => Ok(default),
                Some(v) if v == "true" || v == "1" => Ok(true),
                Some(v) if v == "false" || v == "0" => Ok(false),
                Some(v) => Err(InvalidField::new(
                    field(key),
                    format!("{v:?} must be true or false"),
                )),
            }
        };
        let span =
            |key: &str, default: Duration, max: Duration| -> Result<Duration, InvalidField> {
                let Some(text) = get(key) else {
                    return Ok(default);
                };
                let t = duration::parse(text).map_err(|e| InvalidField::new(field(key), e))?;
                if t < Duration::from_secs(1) || t > max {
                    return Err(InvalidField::new(
                        field(key),
                        format!("{text:?} must be between 1s and {}h", max.as_secs() / 3600),
                    ));
                }
                Ok(t)
            };
        let positive = |key: &str, default: f64, max: f64| -> Result<f64, InvalidField> {
            match get(key) {
                None => Ok(default),
                Some(v) => match v.trim().parse::<f64>() {
                    Ok(x) if x > 0.0 && x <= max => Ok(x),
                    _ => Err(InvalidField::new(
                        field(key),
                        format!("{v:?} must be a number above 0 and at most {max}"),
                    )),
                },
            }
        };
        let metric = match get(LABEL_SCALE_TYPE).map(|v| v.trim().to_ascii_lowercase()) {
            None => Metric::Capacity,
            Some(t) if t == "capacity" => Metric::Capacity,
            Some(t) if t == "rps" => Metric::Rps,
            Some(t) => {
                return Err(InvalidField::new(
                    field(LABEL_SCALE_TYPE),
                    format!("{t:?} is not a scaling type graphene offers (use capacity or rps)"),
                ))
            }
        };
        let default_target = match metric {
            Metric::Capacity => workers as f64,
            Metric::Rps => DEFAULT_RPS_TARGET,
        };
        let target = positive(LABEL_SCALE_TARGET, default_target, 1e6)?;
        let default_proportion = match metric {
            Metric::Capacity => 1.0,
            Metric::Rps => DEFAULT_PROPORTION,
        };
        let proportion = positive(LABEL_SCALE_PROPORTION, default_proportion, 1.0)?;
        // `min: 0` also lets the function rest at zero.
        let zero = flag(LABEL_SCALE_ZERO, false)? || min_replicas == 0;
        let zero_after = span(
            LABEL_SCALE_ZERO_DURATION,
            DEFAULT_ZERO_DURATION,
            MAX_TIMEOUT,
        )?;
        let window = span(
            LABEL_SCALE_WINDOW,
            DEFAULT_WINDOW,
            Duration::from_secs(3600),
        )?;
        let scaling = Policy {
            min: min_replicas,
            max: max_replicas,
            metric,
            target: target * proportion,
            zero_after: zero.then_some(zero_after),
            window,
        };
        let public = flag(LABEL_PUBLIC, false)?;
        let limits = d.limits.clone().unwrap_or_default();
        let memory_limit = Some(limits.memory.trim())
            .filter(|m| !m.is_empty())
            .map(parse_memory)
            .transpose()
            .map_err(|e| InvalidField::new("limits.memory", e))?;
        let cpu_limit = Some(limits.cpu.trim())
            .filter(|c| !c.is_empty())
            .map(parse_cpu)
            .transpose()
            .map_err(|e| InvalidField::new("limits.cpu", e))?;
        let gpus = match limits.gpu.trim() {
            "" => 0,
            n => n.parse::<u64>().map_err(|_| {
                InvalidField::new(
                    "limits.nvidia.com/gpu",
                    format!("{n:?} is not a whole number of GPUs"),
                )
            })?,
        };
        let defaults = RetryPolicy::default();
        let attempts = number(
            ANNOTATION_RETRY_ATTEMPTS,
            defaults.attempts as u64,
            "annotations",
        )?;
        if !(1..=100).contains(&attempts) {
            return Err(InvalidField::new(
                field(ANNOTATION_RETRY_ATTEMPTS),
                "must be between 1 and 100",
            ));
        }
        let wait = |key: &str, default: Duration| -> Result<Duration, InvalidField> {
            match get(key) {
                None => Ok(default),
                Some(text) => {
                    let d = duration::parse(text).map_err(|e| InvalidField::new(field(key), e))?;
                    if d < Duration::from_millis(10) || d > Duration::from_secs(86_400) {
                        return Err(InvalidField::new(
                            field(key),
                            "must be between 10ms and 24h",
                        ));
                    }
                    Ok(d)
                }
            }
        };
        let min_backoff = wait(ANNOTATION_RETRY_MIN_BACKOFF, defaults.min_backoff)?;
        let max_backoff = wait(
            ANNOTATION_RETRY_MAX_BACKOFF,
            defaults.max_backoff.max(min_backoff),
        )?;
        if max_backoff < min_backoff {
            return Err(InvalidField::new(
                field(ANNOTATION_RETRY_MAX_BACKOFF),
                format!("must not be shorter than {ANNOTATION_RETRY_MIN_BACKOFF}"),
            ));
        }
        let codes = match get(ANNOTATION_RETRY_CODES) {
            None => defaults.codes,
            Some(text) => text
                .split([',', ' '])
                .filter(|c| !c.is_empty())
                .map(|c| match c.trim().parse::<u16>() {
                    Ok(n) if (400..=599).contains(&n) => Ok(n),
                    _ => Err(InvalidField::new(
                        field(ANNOTATION_RETRY_CODES),
                        format!("{c:?} is not a status code from 400 to 599 (write e.g. \"429,502,503\")"),
                    )),
                })
                .collect::<Result<_, _>>()?,
        };
        let retry = RetryPolicy {
            attempts: attempts as u32,
            min_backoff,
            max_backoff,
            codes,
        };
        let async_concurrency = number(
            ANNOTATION_ASYNC_CONCURRENCY,
            DEFAULT_ASYNC_CONCURRENCY,
            "annotations",
        )?;
        if !(1..=1000).contains(&async_concurrency) {
            return Err(InvalidField::new(
                field(ANNOTATION_ASYNC_CONCURRENCY),
                "must be between 1 and 1000",
            ));
        }
        Ok(Self {
            min_replicas,
            max_replicas,
            workers,
            timeout,
            scaling,
            public,
            memory_limit,
            cpu_limit,
            gpus,
            retry,
            async_concurrency,
        })
    }
}

/// Kubernetes quantities: `128Mi`, `1Gi`, `500M`, `1000000` bytes.
pub fn parse_memory(text: &str) -> Result<u64, String> {
    let (num, unit) = duration::number_and_unit(text);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a memory size (use e.g. 128Mi or 1Gi)"))?;
    let factor: f64 = match unit {
        "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0f64.powi(4),
        "k" | "K" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        _ => {
            return Err(format!(
                "{text:?} has unknown unit {unit:?} (use Ki, Mi, Gi, Ti, k, M, G or T)"
            ))
        }
    };
    let bytes = value * factor;
    if !(4.0 * 1024.0 * 1024.0..=1e15).contains(&bytes) {
        return Err(format!("{text:?} must be at least 4Mi"));
    }
    Ok(bytes as u64)
}

/// `500m`, `0.5` or `2` CPUs, in thousandths.
pub fn parse_cpu(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let millis = match t.strip_suffix('m') {
        Some(m) => m.parse::<f64>().ok(),
        None => t.parse::<f64>().ok().map(|c| c * 1000.0),
    }
    .filter(|m| m.is_finite() && *m >= 10.0 && *m <= 1_000_000.0)
    .ok_or_else(|| {
        format!("{text:?} is not a CPU amount of at least 10m (use e.g. 500m, 0.5 or 2)")
    })?;
    Ok(millis as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Map;

    #[test]
    fn retry_backoff_doubles_within_bounds() {
        let p = RetryPolicy {
            attempts: 5,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
            codes: vec![500],
        };
        assert_eq!(p.backoff(2, 0.999_999).as_millis(), 99);
        assert_eq!(p.backoff(2, 0.0).as_millis(), 50);
        assert_eq!(p.backoff(3, 0.0).as_millis(), 100);
        assert_eq!(p.backoff(9, 0.0).as_millis(), 250, "capped at max_backoff");
        assert!(p.retries(500) && !p.retries(404));
    }

    #[test]
    fn resource_quantities() {
        assert_eq!(parse_memory("128Mi").unwrap(), 128 << 20);
        assert_eq!(parse_memory("1G").unwrap(), 1_000_000_000);
        assert_eq!(parse_memory("0.5Gi").unwrap(), 512 << 20);
        assert!(parse_memory("1Ki").is_err() && parse_memory("lots").is_err());
        assert!(parse_memory("5Qi").is_err());
        assert_eq!(parse_cpu("500m").unwrap(), 500);
        assert_eq!(parse_cpu("0.25").unwrap(), 250);
        assert_eq!(parse_cpu("2").unwrap(), 2000);
        assert!(parse_cpu("1m").is_err() && parse_cpu("fast").is_err());
    }

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
    fn gpus_are_whole_numbers_in_the_api_and_stack_names() {
        let body =
            r#"{"service":"m","image":"m:1","limits":{"nvidia.com/gpu":"2","memory":"1Gi"}}"#;
        let d: FunctionDeployment = serde_json::from_str(body).unwrap();
        assert_eq!(FunctionSettings::from_deployment(&d).unwrap().gpus, 2);
        let mut half = d.clone();
        half.limits.as_mut().unwrap().gpu = "0.5".into();
        let e = FunctionSettings::from_deployment(&half).unwrap_err();
        assert!(e.to_string().contains("limits.nvidia.com/gpu"), "{e}");
        let none = FunctionSettings::from_deployment(&deployment(&[], &[])).unwrap();
        assert_eq!(none.gpus, 0);
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
    fn scaling_labels() {
        let s = FunctionSettings::from_deployment(&deployment(&[], &[])).unwrap();
        assert_eq!(s.scaling.metric, Metric::Capacity);
        assert_eq!(s.scaling.target, DEFAULT_WORKERS as f64);
        assert_eq!(s.scaling.zero_after, None);
        assert!(s.scaling.enabled());
        let d = deployment(
            &[
                (LABEL_SCALE_TYPE, "rps"),
                (LABEL_SCALE_TARGET, "10"),
                (LABEL_SCALE_PROPORTION, "1"),
                (LABEL_SCALE_ZERO, "true"),
                (LABEL_SCALE_ZERO_DURATION, "2m"),
                (LABEL_SCALE_WINDOW, "6s"),
            ],
            &[],
        );
        let s = FunctionSettings::from_deployment(&d).unwrap();
        assert_eq!(s.scaling.metric, Metric::Rps);
        assert_eq!(s.scaling.target, 10.0);
        assert_eq!(s.scaling.zero_after, Some(Duration::from_secs(120)));
        assert_eq!(s.scaling.window, Duration::from_secs(6));
        // min == max turns the autoscaler off.
        let d = deployment(&[(LABEL_SCALE_MIN, "3"), (LABEL_SCALE_MAX, "3")], &[]);
        assert!(!FunctionSettings::from_deployment(&d)
            .unwrap()
            .scaling
            .enabled());
        for (key, bad) in [
            (LABEL_SCALE_TYPE, "cpu"),
            (LABEL_SCALE_TARGET, "0"),
            (LABEL_SCALE_TARGET, "lots"),
            (LABEL_SCALE_PROPORTION, "1.5"),
            (LABEL_SCALE_ZERO, "yes please"),
            (LABEL_SCALE_ZERO_DURATION, "soon"),
            (LABEL_SCALE_WINDOW, "10ms"),
        ] {
            let e = FunctionSettings::from_deployment(&deployment(&[(key, bad)], &[])).unwrap_err();
            assert_eq!(e.field, format!("labels.{key}"), "{key}={bad}: {e}");
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
