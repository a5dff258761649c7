//! What a function is made of in the cluster, from a deployment: a
//! Deployment of its image (the `graphene watchdog` contract: readiness on
//! `/_/ready`, liveness on `/_/health`), a Service, and a Secret with the
//! secrets it names, mounted at `/var/openfaas/secrets`. Pure functions, so
//! that what graphene asks of the cluster is tested without one.

use std::collections::BTreeMap;

use graphene_core::names::FunctionRef;
use graphene_core::provider::{Deployment, ProviderError};
use k8s_openapi::api::apps::v1 as apps;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;

/// The label faas-netes puts on a function's objects and pods.
pub const FUNCTION_LABEL: &str = "faas_function";
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGER: &str = "graphene";
/// The registry revision a pod runs.
pub const REVISION_LABEL: &str = "graphene.dev/revision";
/// The port `graphene watchdog` (and of-watchdog) serves calls on.
pub const WATCHDOG_PORT: i32 = 8080;
/// The user functions run as when the image does not say a numeric one.
const RUN_AS: i64 = 10001;

pub fn secret_name(f: &FunctionRef) -> String {
    format!("{}-graphene-secrets", f.name)
}

fn selector(f: &FunctionRef) -> BTreeMap<String, String> {
    BTreeMap::from([
        (FUNCTION_LABEL.to_string(), f.name.clone()),
        (MANAGED_BY.to_string(), MANAGER.to_string()),
    ])
}

fn meta(f: &FunctionRef, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(f.namespace.clone()),
        labels: Some(selector(f)),
        ..Default::default()
    }
}

/// Whether `text` is a valid label value (63 characters of `[A-Za-z0-9_.-]`,
/// starting and ending alphanumeric; empty is allowed).
fn label_value(text: &str) -> bool {
    text.is_empty()
        || (text.len() <= 63
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && text.as_bytes()[0].is_ascii_alphanumeric()
            && text.as_bytes()[text.len() - 1].is_ascii_alphanumeric())
}

/// Whether `key` is a valid label or annotation key: `[prefix/]name`.
fn label_key(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.'))
    }) && !name.is_empty()
        && label_value(name)
}

/// Checks an image reference's form (`[registry[:port]/]path[:tag][@digest]`,
/// lower-case path): a malformed one would only fail in the cluster.
pub fn image_reference(image: &str) -> Result<(), ProviderError> {
    let bad = |why: &str| {
        Err(ProviderError::Invalid(format!(
            "image: {image:?} is not an image reference ({why})"
        )))
    };
    let (name, digest) = match image.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (image, None),
    };
    if let Some(d) = digest {
        let ok = d.split_once(':').is_some_and(|(alg, hex)| {
            !alg.is_empty() && hex.len() >= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())
        });
        if !ok {
            return bad("the digest must be algorithm:hex, e.g. sha256:...");
        }
    }
    if name.is_empty() || name.len() > 255 {
        return bad("empty or too long");
    }
    let (host, path) = match name.split_once('/') {
        Some((h, p)) if h.contains(['.', ':']) || h == "localhost" => (Some(h), p),
        _ => (None, name),
    };
    if host.is_some_and(|h| {
        !h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
    }) {
        return bad("the registry host has characters a host can't");
    }
    let (path, tag) = match path.rsplit_once(':') {
        Some((p, t)) => (p, Some(t)),
        None => (path, None),
    };
    if tag.is_some_and(|t| {
        t.is_empty()
            || t.len() > 128
            || !t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    }) {
        return bad("the tag may hold letters, digits, _ . and -");
    }
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            })
            && c.as_bytes()[0].is_ascii_alphanumeric()
    };
    if !path.split('/').all(component_ok) {
        return bad("path components are lower-case letters, digits and . _ -");
    }
    Ok(())
}

/// `constraints` as a node selector: `key=value`, `key==value` or
/// `key == value` (faas-cli's form).
pub fn node_selector(constraints: &[String]) -> Result<BTreeMap<String, String>, ProviderError> {
    let mut out = BTreeMap::new();
    for c in constraints {
        let (k, v) = c
            .split_once("==")
            .or_else(|| c.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim()))
            .filter(|(k, v)| label_key(k) && label_value(v))
            .ok_or_else(|| {
                ProviderError::Invalid(format!(
                    "constraints: {c:?} is not a node label constraint (write key=value, e.g. kubernetes.io/arch=amd64)"
                ))
            })?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

fn quantities(
    r: Option<&graphene_core::api::FunctionResources>,
) -> Option<BTreeMap<String, Quantity>> {
    let r = r?;
    let mut out = BTreeMap::new();
    for (name, value) in [
        ("memory", Some(r.memory.as_str())),
        ("cpu", Some(r.cpu.as_str())),
        // An extended resource: its request is its limit.
        ("nvidia.com/gpu", Some(r.gpu.as_str())),
    ] {
        if let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) {
            out.insert(name.to_string(), Quantity(v.to_string()));
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The function's Deployment: one container of its image, non-root with
/// every capability dropped and no service-account token, rolled out one
/// new pod at a time and never below the replicas that serve.
pub fn deployment(
    d: &Deployment,
    fork: bool,
    pull_secrets: &[String],
) -> Result<apps::Deployment, ProviderError> {
    let f = &d.function;
    let spec = &d.spec;
    if spec.image.trim().is_empty() {
        return Err(ProviderError::Invalid("image: is required".into()));
    }
    let timeout = d.settings.timeout.as_secs().max(1);
    let mut env: Vec<core::EnvVar> = spec.env_vars.iter().map(|(k, v)| env_var(k, v)).collect();
    for (k, v) in [
        ("GRAPHENE_FUNCTION", f.name.clone()),
        ("GRAPHENE_WORKERS", d.settings.workers.to_string()),
        ("GRAPHENE_FORK", fork.to_string()),
        ("exec_timeout", format!("{timeout}s")),
        // The answer may take the whole timeout, plus the watchdog's own.
        ("write_timeout", format!("{}s", timeout + 5)),
        ("read_timeout", format!("{}s", timeout + 5)),
        // The gateway stops routing to a pod as soon as it terminates; this
        // covers other clients of the Service.
        ("healthcheck_interval", "2s".to_string()),
    ] {
        if !spec.env_vars.contains_key(k) {
            env.push(env_var(k, &v));
        }
    }
    if !spec.env_process.trim().is_empty() {
        env.push(env_var("fprocess", &spec.env_process));
    }
    let mut mounts = vec![core::VolumeMount {
        name: "tmp".into(),
        mount_path: "/tmp".into(),
        ..Default::default()
    }];
    let mut volumes = vec![core::Volume {
        name: "tmp".into(),
        empty_dir: Some(core::EmptyDirVolumeSource::default()),
        ..Default::default()
    }];
    if !d.secrets.is_empty() {
        mounts.push(core::VolumeMount {
            name: "secrets".into(),
            mount_path: graphene_core::SECRETS_MOUNT.into(),
            read_only: Some(true),
            ..Default::default()
        });
        volumes.push(core::Volume {
            name: "secrets".into(),
            secret: Some(core::SecretVolumeSource {
                secret_name: Some(secret_name(f)),
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let probe = |path: &str, period: i32, failures: i32| core::Probe {
        http_get: Some(core::HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(WATCHDOG_PORT),
            ..Default::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(failures),
        ..Default::default()
    };
    let limits = spec.limits.as_ref();
    let requests = spec.requests.as_ref();
    let container = core::Container {
        name: f.name.clone(),
        image: Some(spec.image.clone()),
        env: Some(env),
        ports: Some(vec![core::ContainerPort {
            name: Some("http".into()),
            container_port: WATCHDOG_PORT,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        readiness_probe: Some(probe("/_/ready", 1, 2)),
        liveness_probe: Some(probe("/_/health", 10, 3)),
        resources: Some(core::ResourceRequirements {
            limits: quantities(limits),
            requests: quantities(requests),
            ..Default::default()
        }),
        security_context: Some(core::SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(core::Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            read_only_root_filesystem: Some(spec.read_only_root_filesystem),
            ..Default::default()
        }),
        volume_mounts: Some(mounts),
        // A container that fails says why: its last log lines (an import
        // error's traceback) when it wrote no message of its own.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    };
    let mut pod_labels = selector(f);
    pod_labels.insert(REVISION_LABEL.into(), d.revision.to_string());
    let mut labels = selector(f);
    for (k, v) in spec.labels.iter().flatten() {
        if label_key(k) && label_value(v) && !labels.contains_key(k) {
            labels.insert(k.clone(), v.clone());
            pod_labels.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    let annotations: BTreeMap<String, String> = spec
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| label_key(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok(apps::Deployment {
        metadata: ObjectMeta {
            labels: Some(labels),
            annotations: Some(annotations.clone()),
            ..meta(f, f.name.clone())
        },
        spec: Some(apps::DeploymentSpec {
            replicas: Some(d.replicas.min(i32::MAX as u64) as i32),
            revision_history_limit: Some(2),
            selector: LabelSelector {
                match_labels: Some(selector(f)),
                ..Default::default()
            },
            strategy: Some(apps::DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(apps::RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: core::PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(annotations),
                    ..Default::default()
                }),
                spec: Some(core::PodSpec {
                    containers: vec![container],
                    volumes: Some(volumes),
                    automount_service_account_token: Some(false),
                    image_pull_secrets: Some(
                        pull_secrets
                            .iter()
                            .map(|name| core::LocalObjectReference { name: name.clone() })
                            .collect(),
                    )
                    .filter(|v: &Vec<_>| !v.is_empty()),
                    enable_service_links: Some(false),
                    node_selector: Some(node_selector(&spec.constraints)?)
                        .filter(|s| !s.is_empty()),
                    security_context: Some(core::PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(RUN_AS),
                        run_as_group: Some(RUN_AS),
                        // Secret files belong to this group (mode 0440).
                        fs_group: Some(RUN_AS),
                        ..Default::default()
                    }),
                    termination_grace_period_seconds: Some(timeout as i64 + 10),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn env_var(name: &str, value: &str) -> core::EnvVar {
    core::EnvVar {
        name: name.to_string(),
        value: Some(value.to_string()),
        ..Default::default()
    }
}

/// A ClusterIP Service in front of the function's pods, as faas-netes
/// makes one (the gateway itself balances over the pods directly).
pub fn service(f: &FunctionRef) -> core::Service {
    core::Service {
        metadata: meta(f, f.name.clone()),
        spec: Some(core::ServiceSpec {
            selector: Some(selector(f)),
            ports: Some(vec![core::ServicePort {
                name: Some("http".into()),
                port: WATCHDOG_PORT,
                target_port: Some(IntOrString::Int(WATCHDOG_PORT)),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The Secret holding the values of the secrets the function names, one
/// key per secret.
pub fn secret(f: &FunctionRef, secrets: &[(String, Vec<u8>)]) -> core::Secret {
    core::Secret {
        metadata: meta(f, secret_name(f)),
        data: Some(
            secrets
                .iter()
                .map(|(k, v)| (k.clone(), ByteString(v.clone())))
                .collect(),
        ),
        type_: Some("Opaque".into()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use graphene_core::api::{FunctionDeployment, FunctionResources};
    use graphene_core::settings::FunctionSettings;

    fn deployment_of(spec: FunctionDeployment, secrets: Vec<(String, Vec<u8>)>) -> Deployment {
        Deployment {
            function: FunctionRef::new("team-fn", &spec.service),
            revision: 7,
            settings: FunctionSettings::from_deployment(&spec).unwrap(),
            spec,
            image_digest: String::new(),
            secrets,
            replicas: 2,
        }
    }

    #[test]
    fn a_function_becomes_a_locked_down_deployment_of_its_image() {
        let spec = FunctionDeployment {
            service: "sentiment".into(),
            image: "registry.example.com/team/sentiment@sha256:ab".into(),
            env_process: String::new(),
            env_vars: [("MODEL".to_string(), "small".to_string())].into(),
            constraints: vec!["kubernetes.io/arch == amd64".into()],
            labels: Some(
                [
                    ("com.openfaas.scale.max".to_string(), "4".to_string()),
                    ("bad label".to_string(), "x".to_string()),
                ]
                .into(),
            ),
            limits: Some(FunctionResources {
                memory: "256Mi".into(),
                cpu: "500m".into(),
                gpu: "1".into(),
            }),
            read_only_root_filesystem: true,
            ..Default::default()
        };
        let d = deployment(
            &deployment_of(spec, vec![("key".into(), b"v".to_vec())]),
            true,
            &["registry-login".to_string()],
        )
        .unwrap();
        let json = serde_json::to_value(&d).unwrap();
        let pod = &json["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        assert_eq!(json["metadata"]["namespace"], "team-fn");
        assert_eq!(json["metadata"]["labels"]["faas_function"], "sentiment");
        assert_eq!(json["metadata"]["labels"]["com.openfaas.scale.max"], "4");
        assert!(json["metadata"]["labels"].get("bad label").is_none());
        assert_eq!(json["spec"]["replicas"], 2);
        assert_eq!(
            json["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
            0
        );
        assert_eq!(
            json["spec"]["template"]["metadata"]["labels"][REVISION_LABEL],
            "7"
        );
        assert_eq!(c["image"], "registry.example.com/team/sentiment@sha256:ab");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/_/ready");
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/_/health");
        assert_eq!(c["resources"]["limits"]["memory"], "256Mi");
        assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], "1");
        assert!(c["resources"].get("requests").is_none());
        assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(pod["automountServiceAccountToken"], false);
        assert_eq!(pod["imagePullSecrets"][0]["name"], "registry-login");
        assert_eq!(pod["securityContext"]["fsGroup"], 10001);
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(pod["nodeSelector"]["kubernetes.io/arch"], "amd64");
        let env: Vec<(String, String)> = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap().into(),
                    e["value"].as_str().unwrap().into(),
                )
            })
            .collect();
        assert!(env.contains(&("MODEL".into(), "small".into())));
        assert!(env.contains(&("exec_timeout".into(), "30s".into())));
        let mounts = c["volumeMounts"].as_array().unwrap();
        assert!(mounts.iter().any(|m| m["mountPath"] == "/tmp"));
        assert!(mounts
            .iter()
            .any(|m| m["mountPath"] == "/var/openfaas/secrets"));
        let s = serde_json::to_value(secret(
            &FunctionRef::new("team-fn", "sentiment"),
            &[("key".into(), b"v".to_vec())],
        ))
        .unwrap();
        assert_eq!(s["data"]["key"], "dg==");
        assert_eq!(s["metadata"]["name"], "sentiment-graphene-secrets");
    }

    #[test]
    fn image_references_are_checked_before_the_cluster_sees_them() {
        for good in [
            "figlet",
            "ghcr.io/openfaas/figlet:latest",
            "127.0.0.1:5000/team/x:1.0@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "localhost/a_b/c-d:v1.2",
        ] {
            image_reference(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in ["", "Upper/Case", "a b", "x:", "x@sha256:zz", "r.io/a//b"] {
            assert!(image_reference(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn constraints_must_be_node_labels() {
        assert_eq!(
            node_selector(&["a.b/c=d".into(), "x == y".into()]).unwrap(),
            BTreeMap::from([("a.b/c".into(), "d".into()), ("x".into(), "y".into())])
        );
        let e = node_selector(&["gpu".into()]).unwrap_err();
        assert!(e.to_string().starts_with("constraints: \"gpu\""), "{e}");
    }
}
