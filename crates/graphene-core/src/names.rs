//! Name rules: function, namespace and secret names are DNS-1123 labels, as
//! on Kubernetes, so a stack that runs locally also runs on a cluster.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid {kind} name {name:?}: {reason}")]
pub struct NameError {
    pub kind: &'static str,
    pub name: String,
    pub reason: &'static str,
}

/// Checks a DNS-1123 label: 1-63 characters of lower-case letters, digits and
/// '-', starting with a letter and ending with a letter or digit.
pub fn validate(kind: &'static str, name: &str) -> Result<(), NameError> {
    let err = |reason| {
        Err(NameError {
            kind,
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return err("must not be empty");
    }
    if name.len() > 63 {
        return err("must be at most 63 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return err("may contain only lower-case letters, digits and '-'");
    }
    if !name.as_bytes()[0].is_ascii_lowercase() {
        return err("must start with a lower-case letter");
    }
    if name.ends_with('-') {
        return err("must end with a letter or digit");
    }
    Ok(())
}

/// Splits `name.namespace` as used in invocation paths; no dot means the
/// default namespace.
pub fn split_qualified(qualified: &str) -> (&str, Option<&str>) {
    match qualified.split_once('.') {
        Some((name, ns)) => (name, Some(ns)),
        None => (qualified, None),
    }
}

/// One function's identity: the only key graphene uses for a function, in
/// the gateway, the providers, metrics and the store. It prints as
/// `name.namespace`, the form invocation paths and OpenFaaS's metric labels
/// use.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct FunctionRef {
    pub namespace: String,
    pub name: String,
}

impl FunctionRef {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// Checks both parts against the name rules.
    pub fn validate(&self) -> Result<(), NameError> {
        validate("namespace", &self.namespace)?;
        validate("function", &self.name)
    }
}

impl std::fmt::Display for FunctionRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.name, self.namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for ok in ["a", "echo", "sentiment-v2", "f1"] {
            assert_eq!(validate("function", ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn rejects_bad_names_with_reason() {
        let cases = [
            ("", "must not be empty"),
            (
                "Echo",
                "may contain only lower-case letters, digits and '-'",
            ),
            (
                "my_fn",
                "may contain only lower-case letters, digits and '-'",
            ),
            ("1fn", "must start with a lower-case letter"),
            ("fn-", "must end with a letter or digit"),
        ];
        for (name, reason) in cases {
            let e = validate("function", name).unwrap_err();
            assert_eq!(e.reason, reason, "{name}");
        }
        assert!(validate("function", &"a".repeat(64)).is_err());
    }

    #[test]
    fn splits_namespace() {
        assert_eq!(split_qualified("echo"), ("echo", None));
        assert_eq!(split_qualified("echo.team"), ("echo", Some("team")));
        assert_eq!(FunctionRef::new("team", "echo").to_string(), "echo.team");
    }
}
