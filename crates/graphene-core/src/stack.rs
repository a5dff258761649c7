//! `stack.yml`, version 1.0, as faas-cli reads it. Parsing is pure: the CLI
//! reads the files and hands their text here. Type errors carry the YAML line;
//! validation errors name the function and field and, where it can be found,
//! the line; unknown fields become warnings rather than being dropped
//! silently.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer};

use crate::api::{FunctionDeployment, FunctionResources, Map};
use crate::names;

/// The function templates built into graphene.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// OpenFaaS classic: `handle(req: str) -> str`.
    Python3,
    /// OpenFaaS `handle(event, context)` returning a dict or a string.
    Python3Http,
    /// Any command: body on stdin, stdout is the response, a process per call.
    Exec,
}

impl Lang {
    pub const ALL: [Lang; 3] = [Lang::Python3, Lang::Python3Http, Lang::Exec];

    pub fn as_str(self) -> &'static str {
        match self {
            Lang::Python3 => "python3",
            Lang::Python3Http => "python3-http",
            Lang::Exec => "exec",
        }
    }

    pub fn parse(text: &str) -> Result<Lang, String> {
        Lang::ALL
            .into_iter()
            .find(|l| l.as_str() == text)
            .ok_or_else(|| {
                let known: Vec<_> = Lang::ALL.iter().map(|l| l.as_str()).collect();
                format!("unknown lang {text:?} (known: {})", known.join(", "))
            })
    }

    pub fn is_python(self) -> bool {
        matches!(self, Lang::Python3 | Lang::Python3Http)
    }
}

impl fmt::Display for Lang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackError {
    pub line: Option<usize>,
    pub field: String,
    pub reason: String,
}

impl fmt::Display for StackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.field.is_empty()) {
            (Some(l), false) => write!(f, "line {l}: {}: {}", self.field, self.reason),
            (Some(l), true) => write!(f, "line {l}: {}", self.reason),
            (None, false) => write!(f, "{}: {}", self.field, self.reason),
            (None, true) => f.write_str(&self.reason),
        }
    }
}

impl std::error::Error for StackError {}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Stack {
    #[serde(default, deserialize_with = "scalar_string")]
    pub version: String,
    #[serde(default)]
    pub provider: Provider,
    #[serde(default)]
    pub functions: BTreeMap<String, StackFunction>,
    /// How `graphene build` makes images.
    #[serde(default)]
    pub build: BuildSettings,
}

/// The stack file's `build` section: how functions become images.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct BuildSettings {
    /// Build OCI images (pushed to a registry, for Kubernetes) instead of
    /// images on the gateway's local runtime.
    #[serde(default)]
    pub oci: bool,
    /// The base image per template (`python3`, `python3-http`, `exec`).
    #[serde(default, deserialize_with = "scalar_map")]
    pub base: Map,
    /// The OCI builder to use: buildah, podman or docker (default: the first
    /// found).
    #[serde(default)]
    pub builder: Option<String>,
    /// Push images to their registry after building.
    #[serde(default)]
    pub push: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Provider {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub gateway: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StackFunction {
    #[serde(default)]
    pub lang: Option<String>,
    #[serde(default)]
    pub handler: Option<String>,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub fprocess: Option<String>,
    #[serde(default, deserialize_with = "scalar_map")]
    pub environment: Map,
    #[serde(default)]
    pub environment_file: Vec<String>,
    #[serde(default)]
    pub secrets: Vec<String>,
    #[serde(default, deserialize_with = "scalar_map")]
    pub labels: Map,
    #[serde(default, deserialize_with = "scalar_map")]
    pub annotations: Map,
    #[serde(default)]
    pub limits: Option<FunctionResources>,
    #[serde(default)]
    pub requests: Option<FunctionResources>,
    #[serde(default)]
    pub constraints: Vec<String>,
    #[serde(default)]
    pub readonly_root_filesystem: bool,
    #[serde(default)]
    pub skip_build: bool,
}

const TOP_FIELDS: &[&str] = &["version", "provider", "functions", "configuration", "build"];
const BUILD_FIELDS: &[&str] = &["oci", "base", "builder", "push"];
const PROVIDER_FIELDS: &[&str] = &["name", "gateway", "network"];
const FUNCTION_FIELDS: &[&str] = &[
    "lang",
    "handler",
    "image",
    "namespace",
    "fprocess",
    "environment",
    "environment_file",
    "secrets",
    "labels",
    "annotations",
    "limits",
    "requests",
    "constraints",
    "readonly_root_filesystem",
    "skip_build",
    "build_args",
    "build_options",
    "platforms",
];

/// A parsed stack file and the warnings it produced.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub stack: Stack,
    pub warnings: Vec<String>,
}

/// Parses and validates a stack file's text.
pub fn parse(text: &str) -> Result<Parsed, StackError> {
    let stack: Stack = serde_yaml::from_str(text).map_err(|e| {
        let line = e.location().map(|l| l.line());
        let mut reason = crate::humanize_serde_error(&e.to_string());
        // serde_yaml appends " at line L column C"; the line is shown in front.
        if let Some(i) = reason.find(" at line ") {
            reason.truncate(i);
        }
        StackError {
            line,
            field: String::new(),
            reason,
        }
    })?;
    let warnings = unknown_fields(text);
    if !stack.version.is_empty() && stack.version != "1.0" {
        return Err(StackError {
            line: locate(text, &["version"]),
            field: "version".into(),
            reason: format!(
                "unsupported version {:?} (graphene reads version 1.0)",
                stack.version
            ),
        });
    }
    for lang in stack.build.base.keys() {
        Lang::parse(lang).map_err(|e| StackError {
            line: locate(text, &["build", "base", lang]),
            field: format!("build.base.{lang}"),
            reason: e,
        })?;
    }
    for (name, f) in &stack.functions {
        let err = |field: &str, reason: String| StackError {
            line: locate(text, &["functions", name, field])
                .or_else(|| locate(text, &["functions", name])),
            field: if field.is_empty() {
                format!("functions.{name}")
            } else {
                format!("functions.{name}.{field}")
            },
            reason,
        };
        names::validate("function", name).map_err(|e| err("", e.to_string()))?;
        if let Some(ns) = &f.namespace {
            names::validate("namespace", ns).map_err(|e| err("namespace", e.to_string()))?;
        }
        for s in &f.secrets {
            names::validate("secret", s).map_err(|e| err("secrets", e.to_string()))?;
        }
        match &f.lang {
            Some(lang) => {
                let lang = Lang::parse(lang).map_err(|e| err("lang", e))?;
                if f.handler.as_deref().unwrap_or("").is_empty() {
                    return Err(err(
                        "handler",
                        "is required when lang is set (the function's folder)".into(),
                    ));
                }
                if lang == Lang::Exec && f.fprocess.as_deref().unwrap_or("").trim().is_empty() {
                    return Err(err(
                        "fprocess",
                        "is required for lang exec (the command to run per call)".into(),
                    ));
                }
            }
            None if f.image.as_deref().unwrap_or("").is_empty() => {
                return Err(err(
                    "lang",
                    "is required unless the function names a built image".into(),
                ));
            }
            None => {}
        }
    }
    Ok(Parsed { stack, warnings })
}

impl StackFunction {
    /// The image name: the one given, or `<name>:latest`.
    pub fn image_name(&self, name: &str) -> String {
        match &self.image {
            Some(i) if !i.is_empty() => i.clone(),
            _ => format!("{name}:latest"),
        }
    }

    /// The deployment request for this function; `environment` must already
    /// include any environment files.
    pub fn deployment(&self, name: &str) -> FunctionDeployment {
        FunctionDeployment {
            service: name.to_string(),
            image: self.image_name(name),
            namespace: self.namespace.clone().unwrap_or_default(),
            env_process: self.fprocess.clone().unwrap_or_default(),
            env_vars: self.environment.clone(),
            constraints: self.constraints.clone(),
            secrets: self.secrets.clone(),
            labels: Some(self.labels.clone()),
            annotations: Some(self.annotations.clone()),
            limits: self.limits.clone(),
            requests: self.requests.clone(),
            read_only_root_filesystem: self.readonly_root_filesystem,
        }
    }
}

/// Parses an `environment_file` (a YAML file with an `environment:` map).
pub fn parse_environment_file(text: &str) -> Result<Map, StackError> {
    #[derive(Deserialize)]
    struct EnvFile {
        #[serde(default, deserialize_with = "scalar_map")]
        environment: Map,
    }
    serde_yaml::from_str::<EnvFile>(text)
        .map(|f| f.environment)
        .map_err(|e| StackError {
            line: e.location().map(|l| l.line()),
            field: "environment".into(),
            reason: e.to_string(),
        })
}

fn unknown_fields(text: &str) -> Vec<String> {
    let Ok(serde_yaml::Value::Mapping(top)) = serde_yaml::from_str::<serde_yaml::Value>(text)
    else {
        return Vec::new();
    };
    let mut warnings = Vec::new();
    let mut check = |map: &serde_yaml::Mapping, known: &[&str], path: &[&str]| {
        for key in map.keys().filter_map(|k| k.as_str()) {
            if !known.contains(&key) {
                let mut full: Vec<&str> = path.to_vec();
                full.push(key);
                let at = locate(text, &full)
                    .map(|l| format!("line {l}: "))
                    .unwrap_or_default();
                warnings.push(format!("{at}unknown field {} ignored", full.join(".")));
            }
        }
    };
    check(&top, TOP_FIELDS, &[]);
    if let Some(serde_yaml::Value::Mapping(p)) = top.get("provider") {
        check(p, PROVIDER_FIELDS, &["provider"]);
    }
    if let Some(serde_yaml::Value::Mapping(b)) = top.get("build") {
        check(b, BUILD_FIELDS, &["build"]);
    }
    if let Some(serde_yaml::Value::Mapping(fns)) = top.get("functions") {
        for (name, f) in fns {
            if let (Some(name), serde_yaml::Value::Mapping(f)) = (name.as_str(), f) {
                check(f, FUNCTION_FIELDS, &["functions", name]);
            }
        }
    }
    warnings
}

/// Finds the 1-based line of a nested key by walking indentation: each key
/// of `path` must appear, in order, deeper than the one before.
pub fn locate(text: &str, path: &[&str]) -> Option<usize> {
    let mut depth: Option<usize> = None;
    let mut want = path.iter();
    let mut key = want.next()?;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        if let Some(d) = depth {
            if indent <= d {
                return None; // left the parent's block without finding the key
            }
        }
        let bare = trimmed.trim_start_matches("- ");
        let name = bare
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .trim_matches(['"', '\'']);
        if name == *key && bare.contains(':') {
            depth = Some(indent);
            match want.next() {
                Some(next) => key = next,
                None => return Some(i + 1),
            }
        }
    }
    None
}

/// Map values may be written as numbers or booleans; they are strings to us.
fn scalar_map<'de, D: Deserializer<'de>>(d: D) -> Result<Map, D::Error> {
    let raw: Option<BTreeMap<String, serde_yaml::Value>> = Option::deserialize(d)?;
    raw.unwrap_or_default()
        .into_iter()
        .map(|(k, v)| {
            scalar_text(&v).map(|s| (k.clone(), s)).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "value of {k:?} must be a string, number or boolean"
                ))
            })
        })
        .collect()
}

fn scalar_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let v = serde_yaml::Value::deserialize(d)?;
    scalar_text(&v).ok_or_else(|| serde::de::Error::custom("must be a string or number"))
}

fn scalar_text(v: &serde_yaml::Value) -> Option<String> {
    match v {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        serde_yaml::Value::Null => Some(String::new()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "version: 1.0
provider:
  name: openfaas
  gateway: http://127.0.0.1:8080
functions:
  echo:
    lang: python3
    handler: ./echo
    environment:
      RAW_BODY: true
      retries: 3
    labels:
      com.openfaas.scale.min: 2
    colour: blue
";

    #[test]
    fn parses_and_warns_about_unknown_fields() {
        let p = parse(GOOD).unwrap();
        let f = &p.stack.functions["echo"];
        assert_eq!(f.lang.as_deref(), Some("python3"));
        assert_eq!(f.environment["RAW_BODY"], "true");
        assert_eq!(f.labels["com.openfaas.scale.min"], "2");
        assert_eq!(f.image_name("echo"), "echo:latest");
        assert_eq!(
            p.warnings,
            vec!["line 14: unknown field functions.echo.colour ignored".to_string()]
        );
        assert_eq!(p.stack.provider.gateway, "http://127.0.0.1:8080");
    }

    #[test]
    fn errors_name_line_and_field() {
        let cases = [
            (
                GOOD.replace("  echo:", "  Echo:"),
                "line 6: functions.Echo: invalid function name",
            ),
            (
                GOOD.replace("lang: python3", "lang: cobol"),
                "line 7: functions.echo.lang: unknown lang \"cobol\"",
            ),
            (
                GOOD.replace("    handler: ./echo\n", ""),
                "functions.echo.handler: is required",
            ),
            (
                GOOD.replace("version: 1.0", "version: 2.0"),
                "line 1: version: unsupported version",
            ),
            (
                GOOD.replace("    colour: blue\n", "    secrets: [Bad]\n"),
                "line 14: functions.echo.secrets: invalid secret name",
            ),
            (
                GOOD.replace("lang: python3", "lang: exec"),
                "functions.echo.fprocess: is required for lang exec",
            ),
            (
                GOOD.replace("RAW_BODY: true", "RAW_BODY: [1]"),
                "functions.echo: value of \"RAW_BODY\" must be",
            ),
            (
                "functions:\n  echo:\n    lang: [\n".to_string(),
                "line 3: functions.echo.lang: invalid type",
            ),
        ];
        for (text, want) in cases {
            let e = parse(&text).unwrap_err().to_string();
            assert!(
                e.starts_with(want) || e.contains(want),
                "got {e:?}, want {want:?}"
            );
        }
    }

    #[test]
    fn environment_file() {
        let env = parse_environment_file("environment:\n  a: 1\n  b: x\n").unwrap();
        assert_eq!(env["a"], "1");
        assert!(parse_environment_file("environment: [").is_err());
    }
}
