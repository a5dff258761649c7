//! graphene-testing: what tests of providers and of the gateway share.
//!
//! [`fake`] is an in-memory [`Provider`](graphene_core::provider::Provider)
//! and [`Builder`](graphene_core::provider::Builder), for gateway tests that
//! need a runtime but no Python. [`conformance`] is the suite every provider
//! is held to: the local runtime runs it in `graphene-local/tests`, the fake
//! in this crate's tests, and a new provider adds a [`conformance::Harness`]
//! and runs it too.

pub mod conformance;
pub mod fake;
