//! The watchdog's settings: OpenFaaS's watchdog environment variables
//! (`port`, `fprocess`, `exec_timeout`, `read_timeout`, `write_timeout`,
//! `max_inflight`, `healthcheck_interval`, `content_type`, `suppress_lock`,
//! `metrics_port`) and graphene's own (`GRAPHENE_*`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use graphene_core::settings::{DEFAULT_WORKERS, MAX_WORKERS};

/// Where `graphene build --oci` puts the built function in the image.
pub const IMAGE_DIR: &str = "/home/app/image";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long calls are still taken after SIGTERM, unless
/// `healthcheck_interval` says: long enough for endpoints to update, short
/// enough to drain within the usual 10-30 s grace period.
const DEFAULT_STOP_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct Config {
    /// The function's name, for log lines and metrics.
    pub name: String,
    pub port: u16,
    pub metrics_port: u16,
    /// The built function (`image.json`, `runner.py`, `function/`, `venv/`).
    pub image_dir: PathBuf,
    /// The command of an exec function, run once per call.
    pub fprocess: String,
    /// A call's limit: past it the worker (or process) is killed and the
    /// caller gets 504.
    pub exec_timeout: Duration,
    /// Reading a request's body.
    pub read_timeout: Duration,
    /// Answering a request, from its start.
    pub write_timeout: Duration,
    /// After SIGTERM, how long calls are still taken (while the load
    /// balancer learns the replica is not ready) before the listener closes.
    pub healthcheck_interval: Duration,
    /// Calls above this many at once get 429 (0: no limit).
    pub max_inflight: usize,
    /// The Content-Type of answers that have none (exec functions' always).
    pub content_type: Option<String>,
    /// Do not write `/tmp/.lock` when ready.
    pub suppress_lock: bool,
    /// Calls one container serves at once (forked workers).
    pub workers: u64,
    /// Fork workers from a warm parent that imported the handler once.
    pub fork: bool,
    /// The environment the function sees.
    pub env: BTreeMap<String, String>,
}

/// A setting that could not be read: which variable, and why.
#[derive(Debug, thiserror::Error)]
#[error("environment variable {name}: {reason}")]
pub struct ConfigError {
    pub name: &'static str,
    pub reason: String,
}

impl Config {
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let env: BTreeMap<String, String> = vars.into_iter().collect();
        let get = |k: &str| env.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
        let duration = |name: &'static str, default: Duration| match get(name) {
            None => Ok(default),
            Some(v) => {
                graphene_core::duration::parse(v).map_err(|reason| ConfigError { name, reason })
            }
        };
        let number = |name: &'static str, default: u64| match get(name) {
            None => Ok(default),
            Some(v) => v.parse::<u64>().map_err(|_| ConfigError {
                name,
                reason: format!("{v:?} is not a whole number"),
            }),
        };
        let flag = |name: &'static str| -> Result<Option<bool>, ConfigError> {
            match get(name) {
                None => Ok(None),
                Some("1" | "true" | "TRUE" | "True" | "yes") => Ok(Some(true)),
                Some("0" | "false" | "FALSE" | "False" | "no") => Ok(Some(false)),
                Some(v) => Err(ConfigError {
                    name,
                    reason: format!("{v:?} is not true or false"),
                }),
            }
        };
        let port = |name: &'static str, default: u64| -> Result<u16, ConfigError> {
            let p = number(name, default)?;
            u16::try_from(p)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| ConfigError {
                    name,
                    reason: format!("{p} is not a TCP port"),
                })
        };
        let write_timeout = duration("write_timeout", DEFAULT_TIMEOUT)?;
        if write_timeout.is_zero() {
            return Err(ConfigError {
                name: "write_timeout",
                reason: "must be over 0s".into(),
            });
        }
        let exec_timeout = duration("exec_timeout", DEFAULT_TIMEOUT)?;
        let workers = number("GRAPHENE_WORKERS", DEFAULT_WORKERS)?;
        if workers == 0 || workers > MAX_WORKERS {
            return Err(ConfigError {
                name: "GRAPHENE_WORKERS",
                reason: format!("must be between 1 and {MAX_WORKERS}"),
            });
        }
        let config = Config {
            name: get("GRAPHENE_FUNCTION").unwrap_or("function").to_string(),
            port: port("port", 8080)?,
            metrics_port: port("metrics_port", 8081)?,
            image_dir: PathBuf::from(get("GRAPHENE_IMAGE_DIR").unwrap_or(IMAGE_DIR)),
            fprocess: get("fprocess")
                .or(get("function_process"))
                .unwrap_or("")
                .to_string(),
            // 0 means no limit in OpenFaaS; here it is the longest allowed.
            exec_timeout: match exec_timeout.is_zero() {
                true => graphene_core::settings::MAX_TIMEOUT,
                false => exec_timeout,
            },
            read_timeout: duration("read_timeout", DEFAULT_TIMEOUT)?,
            write_timeout,
            healthcheck_interval: duration(
                "healthcheck_interval",
                DEFAULT_STOP_WAIT.min(write_timeout),
            )?,
            max_inflight: number("max_inflight", 0)? as usize,
            content_type: get("content_type").map(str::to_string),
            suppress_lock: flag("suppress_lock")?.unwrap_or(false),
            workers,
            fork: flag("GRAPHENE_FORK")?.unwrap_or(true),
            env: env.clone(),
        };
        if config.port == config.metrics_port {
            return Err(ConfigError {
                name: "metrics_port",
                reason: format!("is the same as port ({})", config.port),
            });
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_env(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn defaults_are_openfaas_s() {
        let c = config(&[]).unwrap();
        assert_eq!((c.port, c.metrics_port), (8080, 8081));
        assert_eq!(c.exec_timeout, Duration::from_secs(30));
        assert_eq!(c.healthcheck_interval, Duration::from_secs(5));
        assert_eq!(c.max_inflight, 0);
        assert!(c.fork && !c.suppress_lock);
    }

    #[test]
    fn knobs_take_durations_and_bare_seconds() {
        let c = config(&[
            ("exec_timeout", "2"),
            ("write_timeout", "1500ms"),
            ("max_inflight", "3"),
            ("function_process", "cat"),
        ])
        .unwrap();
        assert_eq!(c.exec_timeout, Duration::from_secs(2));
        // Never longer than answering may take.
        assert_eq!(c.healthcheck_interval, Duration::from_millis(1500));
        assert_eq!(c.max_inflight, 3);
        assert_eq!(c.fprocess, "cat");
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = config(&[("max_inflight", "lots")]).unwrap_err();
        assert_eq!(e.name, "max_inflight");
        let e = config(&[("write_timeout", "0")]).unwrap_err();
        assert_eq!(e.name, "write_timeout");
        let e = config(&[("port", "70000")]).unwrap_err();
        assert!(
            e.to_string().contains("port: 70000 is not a TCP port"),
            "{e}"
        );
        let e = config(&[("GRAPHENE_FORK", "maybe")]).unwrap_err();
        assert_eq!(e.name, "GRAPHENE_FORK");
    }
}
