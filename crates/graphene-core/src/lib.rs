//! graphene-core: the types every other graphene crate shares, and no I/O.
//!
//! Start with [`api`] (the OpenFaaS-compatible wire shapes of the management
//! API), then [`provider`] (the trait a runtime implements: deploy, scale,
//! invoke, logs), then [`stack`] (the `stack.yml` file the CLI reads).
//! [`names`] and [`settings`] hold the validation rules that the gateway and
//! the CLI both apply, so that a bad name or label is rejected the same way
//! wherever it comes in.

pub mod api;
pub mod duration;
pub mod names;
pub mod provider;
pub mod settings;
pub mod stack;
pub mod time;

/// The namespace a function lands in when none is given (OpenFaaS's default).
pub const DEFAULT_NAMESPACE: &str = "openfaas-fn";

/// Where a function finds its secrets, as files named after each secret.
pub const SECRETS_MOUNT: &str = "/var/openfaas/secrets";
