//! What `graphene install kubernetes` puts into a cluster: the `Function`
//! resource definition, the namespaces, the gateway's service account with
//! namespaced Roles only (nothing cluster-wide), the gateway Deployment
//! and Service, a NetworkPolicy that lets only the gateway reach function
//! pods, and the admin credential as a Secret.

use serde_json::{json, Value};

use crate::functions::{GROUP, KIND, PLURAL, VERSION};
use crate::manifest::{MANAGED_BY, MANAGER, WATCHDOG_PORT};

#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// Where the gateway runs.
    pub namespace: String,
    /// Where functions run (each gets a Role and a NetworkPolicy).
    pub functions_namespaces: Vec<String>,
    pub replicas: u32,
    /// The gateway's image (one with `graphene` built with the Kubernetes
    /// provider as its entrypoint).
    pub image: String,
    /// `nats://host:port` to keep asynchronous jobs in, shared by every
    /// gateway replica.
    pub nats: Option<String>,
    /// The admin credential every gateway replica accepts.
    pub admin_token: String,
    /// Run NATS JetStream in the gateway's namespace from this image, for
    /// the gateways' jobs (instead of `nats`).
    pub nats_image: Option<String>,
}

/// The in-cluster NATS' name, and where the gateways reach it.
const NATS_APP: &str = "graphene-nats";
const NATS_PORT: u16 = 4222;

impl InstallOptions {
    /// The NATS URL the gateways use: the one given, or the one installed.
    pub fn queue(&self) -> Option<String> {
        match &self.nats_image {
            Some(_) => Some(format!(
                "nats://{NATS_APP}.{}.svc:{NATS_PORT}",
                self.namespace
            )),
            None => self.nats.clone(),
        }
    }
}

/// Labels of the gateway's pods.
const GATEWAY_APP: &str = "graphene-gateway";
/// Marks the gateway's namespace for the functions' NetworkPolicy.
pub const GATEWAY_NAMESPACE_LABEL: &str = "graphene.dev/gateway";
const PORT: u16 = 8080;
/// The state directory is made by the gateway inside an emptyDir (whose
/// own mode it may not change).
const STATE_VOLUME: &str = "/var/lib/graphene";
const STATE_DIR: &str = "/var/lib/graphene/state";
const ADMIN_DIR: &str = "/etc/graphene/admin";
/// The Secret holding the admin credential.
pub const ADMIN_SECRET: &str = "graphene-admin";

impl InstallOptions {
    pub fn validate(&self) -> Result<(), String> {
        for ns in std::iter::once(&self.namespace).chain(&self.functions_namespaces) {
            graphene_core::names::validate("namespace", ns).map_err(|e| e.to_string())?;
        }
        if self.functions_namespaces.contains(&self.namespace) {
            return Err(format!(
                "--functions-namespace: {} is the gateway's own namespace; functions run in namespaces of their own",
                self.namespace
            ));
        }
        if self.replicas == 0 {
            return Err("--replicas: at least 1".into());
        }
        if self.image.trim().is_empty() {
            return Err("--image: the gateway's image is needed".into());
        }
        if self.nats.is_some() && self.nats_image.is_some() {
            return Err(
                "--with-nats: installs a NATS for the gateways; leave out --nats (a NATS you run)"
                    .into(),
            );
        }
        if let Some(url) = &self.nats {
            if !url.starts_with("nats://") {
                return Err(format!("--nats: {url:?} is not a nats:// URL"));
            }
        }
        Ok(())
    }
}

/// The `Function` custom resource definition.
pub fn function_crd() -> Value {
    let string = json!({ "type": "string" });
    let strings = json!({ "type": "array", "items": { "type": "string" } });
    let map = json!({ "type": "object", "additionalProperties": { "type": "string" } });
    let resources = json!({
        "type": "object",
        "properties": { "memory": string, "cpu": string, "nvidia.com/gpu": string },
    });
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": format!("{PLURAL}.{GROUP}"),
            "labels": { MANAGED_BY: MANAGER },
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": format!("{KIND}List"),
                "plural": PLURAL,
                "singular": "function",
                "shortNames": ["fn"],
            },
            "versions": [{
                "name": VERSION,
                "served": true,
                "storage": true,
                "additionalPrinterColumns": [
                    { "name": "Image", "type": "string", "jsonPath": ".spec.image" },
                    { "name": "Revision", "type": "integer", "jsonPath": ".status.revisions[0].revision" },
                    { "name": "State", "type": "string", "jsonPath": ".status.revisions[0].state" },
                    { "name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp" },
                ],
                "schema": { "openAPIV3Schema": {
                    "type": "object",
                    "description": "A graphene function: spec is the body of POST /system/functions; status is the registry's (revisions, rollout states, the replica count).",
                    "properties": {
                        "spec": {
                            "type": "object",
                            "required": ["image"],
                            "properties": {
                                "service": string,
                                "namespace": string,
                                "image": string,
                                "envProcess": string,
                                "envVars": map,
                                "constraints": strings,
                                "secrets": strings,
                                "labels": map,
                                "annotations": map,
                                "limits": resources,
                                "requests": resources,
                                "readOnlyRootFilesystem": { "type": "boolean" },
                            },
                        },
                        "status": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": true,
                        },
                    },
                }},
            }],
        },
    })
}

/// Every object, in the order they can be applied.
pub fn manifests(o: &InstallOptions) -> Vec<Value> {
    let labels = json!({ "app": GATEWAY_APP, MANAGED_BY: MANAGER });
    let mut out = vec![function_crd()];
    out.push(json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": { "name": o.namespace, "labels": { GATEWAY_NAMESPACE_LABEL: "true", MANAGED_BY: MANAGER } },
    }));
    for ns in &o.functions_namespaces {
        out.push(json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": { "name": ns, "labels": { MANAGED_BY: MANAGER } },
        }));
    }
    out.push(json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": { "name": "graphene", "namespace": o.namespace, "labels": labels },
    }));
    for ns in &o.functions_namespaces {
        out.push(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": { "name": "graphene", "namespace": ns, "labels": labels },
            "rules": function_namespace_rules(),
        }));
        out.push(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": { "name": "graphene", "namespace": ns, "labels": labels },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "graphene" },
            "subjects": [{ "kind": "ServiceAccount", "name": "graphene", "namespace": o.namespace }],
        }));
        out.push(json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": { "name": "graphene-functions", "namespace": ns, "labels": labels },
            "spec": {
                "podSelector": { "matchLabels": { MANAGED_BY: MANAGER } },
                "policyTypes": ["Ingress"],
                "ingress": [{
                    "from": [{
                        "namespaceSelector": { "matchLabels": { GATEWAY_NAMESPACE_LABEL: "true" } },
                        "podSelector": { "matchLabels": { "app": GATEWAY_APP } },
                    }],
                    "ports": [{ "protocol": "TCP", "port": WATCHDOG_PORT }],
                }],
            },
        }));
    }
    // The gateways' own objects: tokens (Secrets), grants and the audit
    // trail (ConfigMaps), and the Lease that elects the one running the
    // autoscaler.
    let own = ["get", "list", "watch", "create", "delete"];
    out.push(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": { "name": "graphene-gateway", "namespace": o.namespace, "labels": labels },
        "rules": [
            { "apiGroups": [""], "resources": ["secrets", "configmaps"], "verbs": own },
            { "apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"] },
            {
                "apiGroups": ["coordination.k8s.io"],
                "resources": ["leases"],
                "resourceNames": [crate::lease::LEASE],
                "verbs": ["get", "update"],
            },
        ],
    }));
    out.push(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": { "name": "graphene-gateway", "namespace": o.namespace, "labels": labels },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "graphene-gateway" },
        "subjects": [{ "kind": "ServiceAccount", "name": "graphene", "namespace": o.namespace }],
    }));
    out.push(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": { "name": ADMIN_SECRET, "namespace": o.namespace, "labels": labels },
        "type": "Opaque",
        "stringData": { "admin-token": o.admin_token },
    }));
    let mut env = vec![
        json!({ "name": "GRAPHENE_FUNCTIONS_NAMESPACE", "value": o.functions_namespaces.join(",") }),
        json!({ "name": "GRAPHENE_LISTEN", "value": format!("0.0.0.0:{PORT}") }),
        json!({ "name": "GRAPHENE_ADMIN_TOKEN_FILE", "value": format!("{ADMIN_DIR}/admin-token") }),
        json!({ "name": "GRAPHENE_GATEWAY_NAMESPACE", "value": o.namespace }),
        json!({ "name": "POD_IP", "valueFrom": { "fieldRef": { "fieldPath": "status.podIP" } } }),
        json!({ "name": "GRAPHENE_ADVERTISE_URL", "value": format!("http://$(POD_IP):{PORT}") }),
    ];
    if let Some(url) = o.queue() {
        env.push(json!({ "name": "GRAPHENE_QUEUE", "value": url }));
    }
    let probe = json!({ "httpGet": { "path": "/healthz", "port": PORT }, "periodSeconds": 2 });
    out.push(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": GATEWAY_APP, "namespace": o.namespace, "labels": labels },
        "spec": {
            "replicas": o.replicas,
            "selector": { "matchLabels": { "app": GATEWAY_APP } },
            "strategy": { "type": "RollingUpdate", "rollingUpdate": { "maxSurge": 1, "maxUnavailable": 0 } },
            "template": {
                "metadata": { "labels": labels },
                "spec": {
                    "serviceAccountName": "graphene",
                    "enableServiceLinks": false,
                    "securityContext": { "runAsNonRoot": true, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001 },
                    "containers": [{
                        "name": "gateway",
                        "image": o.image,
                        "args": ["serve", "--provider", "kubernetes", "--state-dir", STATE_DIR],
                        "env": env,
                        "ports": [{ "name": "http", "containerPort": PORT, "protocol": "TCP" }],
                        "readinessProbe": probe,
                        "livenessProbe": probe,
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "capabilities": { "drop": ["ALL"] },
                        },
                        "volumeMounts": [
                            { "name": "state", "mountPath": STATE_VOLUME },
                            { "name": "admin", "mountPath": ADMIN_DIR, "readOnly": true },
                            { "name": "tmp", "mountPath": "/tmp" },
                        ],
                    }],
                    "volumes": [
                        { "name": "state", "emptyDir": {} },
                        { "name": "admin", "secret": { "secretName": ADMIN_SECRET, "defaultMode": 0o440 } },
                        { "name": "tmp", "emptyDir": {} },
                    ],
                },
            },
        },
    }));
    out.push(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": "gateway", "namespace": o.namespace, "labels": labels },
        "spec": {
            "selector": { "app": GATEWAY_APP },
            "ports": [{ "name": "http", "port": PORT, "targetPort": PORT, "protocol": "TCP" }],
        },
    }));
    if let Some(image) = &o.nats_image {
        out.extend(nats(o, image));
    }
    out
}

/// NATS JetStream for the gateways' jobs: one pod whose store is a
/// persistent volume (jobs outlive the pod), reachable from the gateway's
/// pods only.
fn nats(o: &InstallOptions, image: &str) -> Vec<Value> {
    let labels = json!({ "app": NATS_APP, MANAGED_BY: MANAGER });
    vec![
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": { "name": NATS_APP, "namespace": o.namespace, "labels": labels },
            "spec": {
                "selector": { "app": NATS_APP },
                "ports": [{ "name": "client", "port": NATS_PORT, "targetPort": NATS_PORT, "protocol": "TCP" }],
            },
        }),
        json!({
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": { "name": NATS_APP, "namespace": o.namespace, "labels": labels },
            "spec": {
                "serviceName": NATS_APP,
                "replicas": 1,
                "selector": { "matchLabels": { "app": NATS_APP } },
                "template": {
                    "metadata": { "labels": labels },
                    "spec": {
                        "automountServiceAccountToken": false,
                        "enableServiceLinks": false,
                        "securityContext": { "runAsNonRoot": true, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000 },
                        "containers": [{
                            "name": "nats",
                            "image": image,
                            "args": ["--jetstream", "--store_dir", "/data", "--http_port", "8222"],
                            "ports": [
                                { "name": "client", "containerPort": NATS_PORT, "protocol": "TCP" },
                                { "name": "monitor", "containerPort": 8222, "protocol": "TCP" },
                            ],
                            "readinessProbe": { "httpGet": { "path": "/healthz?js-enabled-only=true", "port": 8222 }, "periodSeconds": 5 },
                            "securityContext": {
                                "allowPrivilegeEscalation": false,
                                "readOnlyRootFilesystem": true,
                                "capabilities": { "drop": ["ALL"] },
                            },
                            "volumeMounts": [{ "name": "data", "mountPath": "/data" }],
                        }],
                    },
                },
                "volumeClaimTemplates": [{
                    "metadata": { "name": "data" },
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": { "requests": { "storage": "1Gi" } },
                    },
                }],
            },
        }),
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": { "name": NATS_APP, "namespace": o.namespace, "labels": labels },
            "spec": {
                "podSelector": { "matchLabels": { "app": NATS_APP } },
                "policyTypes": ["Ingress"],
                "ingress": [{
                    "from": [{ "podSelector": { "matchLabels": { "app": GATEWAY_APP } } }],
                    "ports": [{ "protocol": "TCP", "port": NATS_PORT }],
                }],
            },
        }),
    ]
}

/// What the gateway may do in a function namespace, and nothing more.
pub fn function_namespace_rules() -> Value {
    let write = [
        "get", "list", "watch", "create", "update", "patch", "delete",
    ];
    json!([
        { "apiGroups": [GROUP], "resources": [PLURAL], "verbs": write },
        { "apiGroups": ["apps"], "resources": ["deployments"], "verbs": write },
        { "apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["get", "update", "patch"] },
        { "apiGroups": [""], "resources": ["services"], "verbs": ["get", "create", "update", "patch", "delete"] },
        { "apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "create", "update", "patch", "delete"] },
        { "apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"] },
        { "apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"] },
    ])
}

/// Applies one of [`manifests`] with server-side apply (field manager
/// `graphene`); answers with what it applied, e.g. `Deployment
/// graphene/graphene-gateway`. The admin credential's Secret is kept when
/// it exists: the gateway replicas that run read it at their start, and a
/// new value would part them from the replicas started after.
pub async fn apply(client: &kube::Client, manifest: &Value) -> Result<String, String> {
    use kube::api::{DynamicObject, Patch, PatchParams};
    use kube::core::{ApiResource, GroupVersionKind};
    let api_version = manifest["apiVersion"].as_str().unwrap_or_default();
    let kind = manifest["kind"].as_str().unwrap_or_default();
    let name = manifest["metadata"]["name"].as_str().unwrap_or_default();
    let namespace = manifest["metadata"]["namespace"].as_str();
    let plural = match kind {
        "CustomResourceDefinition" => "customresourcedefinitions",
        "Namespace" => "namespaces",
        "ServiceAccount" => "serviceaccounts",
        "Role" => "roles",
        "RoleBinding" => "rolebindings",
        "NetworkPolicy" => "networkpolicies",
        "Secret" => "secrets",
        "Deployment" => "deployments",
        "StatefulSet" => "statefulsets",
        "Service" => "services",
        other => return Err(format!("no way to apply a {other}")),
    };
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let resource =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
    let api: kube::Api<DynamicObject> = match namespace {
        Some(ns) => kube::Api::namespaced_with(client.clone(), ns, &resource),
        None => kube::Api::all_with(client.clone(), &resource),
    };
    let what = match namespace {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    };
    if kind == "Secret" && name == ADMIN_SECRET {
        let existing = api
            .get_opt(name)
            .await
            .map_err(|e| format!("reading {what}: {e}"))?;
        if existing.is_some() {
            return Ok(format!("{what} (kept: it exists)"));
        }
    }
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(manifest),
    )
    .await
    .map_err(|e| format!("applying {what}: {e}"))?;
    Ok(what)
}

/// Waits (up to 30 s) until the cluster serves the Function resource.
pub async fn established(client: &kube::Client) -> Result<(), String> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: kube::Api<CustomResourceDefinition> = kube::Api::all(client.clone());
    let name = format!("{PLURAL}.{GROUP}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let crd = api
            .get_opt(&name)
            .await
            .map_err(|e| format!("reading {name}: {e}"))?;
        let ready = crd
            .and_then(|c| c.status)
            .and_then(|s| s.conditions)
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
        if ready {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("{name} was not established within 30 s"));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> InstallOptions {
        InstallOptions {
            namespace: "graphene".into(),
            functions_namespaces: vec!["graphene-fn".into()],
            replicas: 2,
            image: "registry.local/graphene:1".into(),
            nats: Some("nats://nats.graphene:4222".into()),
            admin_token: "t0ken".into(),
            nats_image: None,
        }
    }

    #[test]
    fn nats_can_come_with_the_install_for_the_gateways_only() {
        let mut o = options();
        o.nats = None;
        o.nats_image = Some("nats:2.10-alpine".into());
        o.validate().unwrap();
        let all = manifests(&o);
        let set = all.iter().find(|m| m["kind"] == "StatefulSet").unwrap();
        let pod = &set["spec"]["template"]["spec"];
        assert_eq!(pod["containers"][0]["image"], "nats:2.10-alpine");
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            set["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
            "1Gi"
        );
        let policy = all
            .iter()
            .find(|m| m["kind"] == "NetworkPolicy" && m["metadata"]["name"] == "graphene-nats")
            .unwrap();
        assert_eq!(
            policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["app"],
            "graphene-gateway"
        );
        let gateway = all.iter().find(|m| m["kind"] == "Deployment").unwrap();
        let env = &gateway["spec"]["template"]["spec"]["containers"][0]["env"];
        assert!(env
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "GRAPHENE_QUEUE"
                && e["value"] == "nats://graphene-nats.graphene.svc:4222"));
        o.nats = Some("nats://elsewhere:4222".into());
        assert!(o.validate().unwrap_err().starts_with("--with-nats"));
    }

    #[test]
    fn nothing_cluster_wide_but_the_resource_definition() {
        let all = manifests(&options());
        let kinds: Vec<&str> = all.iter().map(|m| m["kind"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "CustomResourceDefinition",
                "Namespace",
                "Namespace",
                "ServiceAccount",
                "Role",
                "RoleBinding",
                "NetworkPolicy",
                "Role",
                "RoleBinding",
                "Secret",
                "Deployment",
                "Service"
            ]
        );
        assert!(!kinds.iter().any(|k| k.starts_with("Cluster")));
        let role = &all[4];
        assert_eq!(role["metadata"]["namespace"], "graphene-fn");
        let binding = &all[5];
        assert_eq!(binding["subjects"][0]["namespace"], "graphene");
        // In its own namespace: its objects and its Lease, nothing else.
        let own = &all[7];
        assert_eq!(own["metadata"]["namespace"], "graphene");
        let rules = own["rules"].as_array().unwrap();
        assert_eq!(rules[0]["resources"], json!(["secrets", "configmaps"]));
        assert!(!rules[0]["verbs"]
            .as_array()
            .unwrap()
            .contains(&json!("update")));
        assert!(rules[1..]
            .iter()
            .all(|r| r["resources"] == json!(["leases"])));
        assert_eq!(rules[2]["resourceNames"], json!(["graphene-gateway"]));
    }

    #[test]
    fn the_gateway_runs_replicated_locked_down_and_probed() {
        let all = manifests(&options());
        let d = all.iter().find(|m| m["kind"] == "Deployment").unwrap();
        assert_eq!(d["spec"]["replicas"], 2);
        let pod = &d["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        let env: Vec<(&str, &str)> = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| Some((e["name"].as_str()?, e["value"].as_str()?)))
            .collect();
        assert!(env.contains(&("GRAPHENE_QUEUE", "nats://nats.graphene:4222")));
        assert!(env.contains(&("GRAPHENE_FUNCTIONS_NAMESPACE", "graphene-fn")));
        assert!(env.contains(&("GRAPHENE_GATEWAY_NAMESPACE", "graphene")));
        assert!(env.contains(&("GRAPHENE_ADVERTISE_URL", "http://$(POD_IP):8080")));
    }

    #[test]
    fn bad_options_name_the_flag() {
        let mut o = options();
        o.functions_namespaces = vec!["graphene".into()];
        assert!(o
            .validate()
            .unwrap_err()
            .starts_with("--functions-namespace"));
        let mut o = options();
        o.replicas = 0;
        assert!(o.validate().unwrap_err().starts_with("--replicas"));
        let mut o = options();
        o.nats = Some("http://x".into());
        assert!(o.validate().unwrap_err().starts_with("--nats"));
        let mut o = options();
        o.functions_namespaces = vec!["Bad_NS".into()];
        assert!(o.validate().unwrap_err().contains("Bad_NS"));
        assert!(options().validate().is_ok());
    }
}
