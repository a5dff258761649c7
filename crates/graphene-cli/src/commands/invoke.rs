use std::io::{Read, Write};

use anyhow::{bail, Context as _};
use clap::Args;
use http_body_util::BodyExt;
use hyper::Method;

use super::Target;

#[derive(Args)]
pub struct Invoke {
    /// The function, as name or name.namespace
    pub name: String,
    /// HTTP method
    #[arg(short = 'm', long, default_value = "POST")]
    pub method: String,
    /// Extra header, as KEY=VALUE (repeatable)
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// Query string (without '?')
    #[arg(long)]
    pub query: Option<String>,
    /// Sub-path below the function
    #[arg(long, default_value = "")]
    pub path: String,
    /// Content type of the body
    #[arg(long, default_value = "text/plain")]
    pub content_type: String,
    /// Queue the call and print its call id (see `graphene job`)
    #[arg(short = 'a', long = "async")]
    pub asynchronous: bool,
    /// With --async: POST the result to this URL when the job ends
    #[arg(long, requires = "asynchronous")]
    pub callback_url: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

impl Invoke {
    pub async fn run(self) -> anyhow::Result<()> {
        let method = Method::from_bytes(self.method.to_ascii_uppercase().as_bytes())
            .with_context(|| format!("--method: {:?} is not an HTTP method", self.method))?;
        let mut body = Vec::new();
        if method != Method::GET && method != Method::HEAD {
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                eprintln!("Reading the request body from stdin; end it with Ctrl-D.");
            }
            std::io::stdin()
                .read_to_end(&mut body)
                .context("reading the body from stdin")?;
        }
        let mut headers = vec![("content-type".to_string(), self.content_type.clone())];
        for h in &self.headers {
            let Some((k, v)) = h.split_once('=') else {
                bail!("--header: {h:?} must be KEY=VALUE");
            };
            headers.push((k.to_string(), v.to_string()));
        }
        let name = match &self.target.namespace {
            Some(ns) if !self.name.contains('.') => format!("{}.{ns}", self.name),
            _ => self.name.clone(),
        };
        let sub = self.path.trim_start_matches('/');
        if let Some(url) = &self.callback_url {
            headers.push(("x-callback-url".to_string(), url.clone()));
        }
        let route = if self.asynchronous {
            "async-function"
        } else {
            "function"
        };
        let mut path = format!("/{route}/{name}");
        if !sub.is_empty() {
            path = format!("{path}/{sub}");
        }
        if let Some(q) = &self.query {
            path = format!("{path}?{q}");
        }
        let client = self.target.client(None)?;
        let resp = client.send(method, &path, body, &headers).await?;
        let status = resp.status();
        if self.asynchronous {
            let id = resp
                .headers()
                .get("x-call-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let body = resp.into_body().collect().await?.to_bytes();
            crate::client::check(status, &body)?;
            println!("{id}");
            eprintln!("Queued; follow it with `graphene job status {id}`");
            return Ok(());
        }
        let layer = resp
            .headers()
            .get("x-graphene-layer")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let out = resp.into_body().collect().await?.to_bytes();
        std::io::stdout().write_all(&out)?;
        if !status.is_success() {
            match layer.as_deref() {
                Some("function") | None => bail!("the function answered {status}"),
                Some(other) => bail!("{status} from the graphene {other}"),
            }
        }
        Ok(())
    }
}
