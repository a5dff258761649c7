//! graphene-core: the types every other graphene crate shares, and no I/O.
//!
//! Start with [`api`] (the OpenFaaS-compatible wire shapes of the management
//! API), then [`provider`] (the trait a runtime implements: deploy, scale,
//! invoke, logs), then [`stack`] (the `stack.yml` file the CLI reads).
//! [`names`] and [`settings`] hold the validation rules that the gateway and
//! the CLI both apply, so that a bad name or label is rejected the same way
//! wherever it comes in.

pub mod api;
pub mod autoscale;
pub mod duration;
pub mod histogram;
pub mod names;
pub mod provider;
pub mod settings;
pub mod stack;
pub mod store;
pub mod time;

/// Rewords serde's messages for users: no Rust type names.
pub fn humanize_serde_error(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = rest.find("expected struct ") {
        out.push_str(&rest[..i]);
        out.push_str("expected an object");
        rest = &rest[i + "expected struct ".len()..];
        // Skip the type name and an optional " with N elements".
        let end = rest
            .find(|c: char| !c.is_alphanumeric() && c != '_')
            .unwrap_or(rest.len());
        rest = &rest[end..];
        if let Some(after) = rest.strip_prefix(" with ") {
            if let Some(j) = after.find(" elements") {
                rest = &after[j + " elements".len()..];
            }
        }
    }
    out.push_str(rest);
    for (from, to) in [
        ("expected u64", "expected a whole number"),
        ("expected u16", "expected a whole number"),
        ("expected a sequence", "expected a list"),
        ("expected a map", "expected an object"),
    ] {
        out = out.replace(from, to);
    }
    out
}

/// The namespace a function lands in when none is given (OpenFaaS's default).
pub const DEFAULT_NAMESPACE: &str = "openfaas-fn";

/// Where a function finds its secrets, as files named after each secret.
pub const SECRETS_MOUNT: &str = "/var/openfaas/secrets";

#[cfg(test)]
mod tests {
    #[test]
    fn humanizes() {
        assert_eq!(
            super::humanize_serde_error(
                "invalid type: sequence, expected struct StackFunction at line 3"
            ),
            "invalid type: sequence, expected an object at line 3"
        );
        assert_eq!(
            super::humanize_serde_error(
                "invalid type: string \"x\", expected struct FunctionDeployment with 12 elements"
            ),
            "invalid type: string \"x\", expected an object"
        );
        assert_eq!(
            super::humanize_serde_error("invalid type: string, expected u64"),
            "invalid type: string, expected a whole number"
        );
    }
}
