//! One module per `graphene` verb, and the options they share.

pub mod build;
pub mod deploy;
pub mod describe;
pub mod grant;
pub mod history;
pub mod install;
pub mod invoke;
pub mod job;
pub mod list;
pub mod login;
pub mod logs;
pub mod new;
pub mod registry;
pub mod rm;
pub mod rollback;
pub mod scale;
pub mod secret;
pub mod serve;
pub mod token;
pub mod up;
pub mod watchdog;

use std::path::PathBuf;

use clap::Args;

use crate::client::Client;
use crate::config;
use crate::stackfile::{self, StackFile};

/// Which gateway to talk to.
#[derive(Args, Debug, Clone, Default)]
pub struct Target {
    /// Gateway URL [default: $GRAPHENE_URL, the stack file's provider.gateway, http://127.0.0.1:8080]
    #[arg(short = 'g', long, global = true)]
    pub gateway: Option<String>,
    /// Namespace [default: the stack file's, or openfaas-fn]
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
}

impl Target {
    pub fn client(&self, from_stack: Option<&str>) -> anyhow::Result<Client> {
        let url = config::gateway(self.gateway.as_deref(), from_stack);
        let token = config::token(&url);
        Client::new(&url, token)
    }

    /// `?namespace=...` when one was given.
    pub fn ns_query(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("?namespace={}", encode(ns)),
            None => String::new(),
        }
    }
}

/// The stack file options of build, deploy and up.
#[derive(Args, Debug, Clone)]
pub struct StackArgs {
    /// Stack file [default: stack.yml]
    #[arg(short = 'f', long = "yaml")]
    pub file: Option<PathBuf>,
    /// Only this function of the stack file
    #[arg(long)]
    pub filter: Option<String>,
}

impl StackArgs {
    pub fn load(&self) -> anyhow::Result<StackFile> {
        StackFile::load(&stackfile::default_path(self.file.clone()))
    }
}

/// Percent-encodes a query value.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
