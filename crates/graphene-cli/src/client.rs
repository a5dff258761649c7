//! The CLI's HTTP client for the gateway: a base URL and a credential.

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use graphene_http::HttpsConnector;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client as Hyper;
use hyper_util::rt::TokioExecutor;

pub struct Client {
    pub base: String,
    token: Option<String>,
    http: Hyper<HttpsConnector, Full<Bytes>>,
}

/// A PEM file of certificates the CLI trusts besides the public roots (a
/// private CA, or a gateway's self-signed certificate).
pub const CA_ENV: &str = "GRAPHENE_CA";

impl Client {
    pub fn new(base: &str, token: Option<String>) -> anyhow::Result<Self> {
        let ca = std::env::var_os(CA_ENV).map(std::path::PathBuf::from);
        Self::with_ca(base, token, ca.as_deref())
    }

    pub fn with_ca(
        base: &str,
        token: Option<String>,
        ca: Option<&std::path::Path>,
    ) -> anyhow::Result<Self> {
        let base = base.trim_end_matches('/').to_string();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            bail!("{base}: the gateway URL must start with http:// or https://");
        }
        let connector = graphene_http::https_connector(ca, CA_ENV)?;
        Ok(Self {
            base,
            token,
            http: Hyper::builder(TokioExecutor::new()).build(connector),
        })
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: impl Into<Bytes>,
        headers: &[(String, String)],
    ) -> anyhow::Result<Response<Incoming>> {
        let mut req = Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let req = req
            .body(Full::new(body.into()))
            .context("building the request")?;
        self.http.request(req).await.map_err(|e| {
            // The root cause (refused, certificate not trusted, ...).
            let mut cause: &dyn std::error::Error = &e;
            while let Some(next) = cause.source() {
                cause = next;
            }
            let hint = if cause.to_string().contains("certificate") {
                format!("; to trust a private CA or a self-signed gateway, set {CA_ENV} to its PEM certificate")
            } else {
                "; is `graphene serve` running?".to_string()
            };
            anyhow!(
                "could not reach the gateway at {}: {cause}{hint}",
                self.base
            )
        })
    }

    /// A request to another server (an OIDC issuer): an absolute URL, no
    /// gateway credential; `basic` is sent as HTTP basic auth.
    pub async fn fetch(
        &self,
        method: Method,
        url: &str,
        form: Option<&[(&str, &str)]>,
        basic: Option<(&str, &str)>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let mut req = Request::builder()
            .method(method)
            .uri(url)
            .header("accept", "application/json");
        if let Some((user, pass)) = basic {
            use base64::Engine;
            let pair = format!("{}:{}", form_encode(user), form_encode(pass));
            req = req.header(
                "authorization",
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ),
            );
        }
        let body = match form {
            Some(fields) => {
                req = req.header("content-type", "application/x-www-form-urlencoded");
                fields
                    .iter()
                    .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
                    .collect::<Vec<_>>()
                    .join("&")
            }
            None => String::new(),
        };
        let req = req
            .body(Full::new(Bytes::from(body)))
            .with_context(|| format!("{url}: not a usable URL"))?;
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| anyhow!("could not reach {url}: {e}"))?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }

    /// Sends a request and reads the whole answer.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: impl Into<Bytes>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let resp = self
            .send(
                method,
                path,
                body,
                &[("content-type".into(), "application/json".into())],
            )
            .await?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .context("reading the gateway's answer")?
            .to_bytes();
        Ok((status, bytes))
    }

    /// Like `call`, failing with the gateway's message on a non-2xx answer.
    pub async fn expect(
        &self,
        method: Method,
        path: &str,
        body: impl Into<Bytes>,
    ) -> anyhow::Result<Bytes> {
        let (status, bytes) = self.call(method, path, body).await?;
        check(status, &bytes)?;
        Ok(bytes)
    }
}

pub fn check(status: StatusCode, body: &[u8]) -> anyhow::Result<()> {
    if status.is_success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(body).trim().to_string();
    if status == StatusCode::UNAUTHORIZED {
        bail!("{text} (401)\n{}", crate::config::credential_hint());
    }
    bail!("{text} ({status})")
}

/// The response itself when it is a success; its message as an error if not.
pub async fn success(resp: Response<Incoming>) -> anyhow::Result<Response<Incoming>> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    check(status, &body)?;
    unreachable!("check fails on a non-success status")
}

/// Reads a streamed body line by line.
pub async fn for_each_line(
    resp: Response<Incoming>,
    mut f: impl FnMut(&str) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    until_line(resp, |line| f(line).map(|()| false))
        .await
        .map(|_| ())
}

/// Reads a streamed body line by line until `f` says it is done (true);
/// returns whether it was.
pub async fn until_line(
    resp: Response<Incoming>,
    mut f: impl FnMut(&str) -> anyhow::Result<bool>,
) -> anyhow::Result<bool> {
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.context("reading the gateway's stream")?;
        if let Some(data) = frame.data_ref() {
            buf.extend_from_slice(data);
            while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                if f(String::from_utf8_lossy(&line[..line.len() - 1]).as_ref())? {
                    return Ok(true);
                }
            }
        }
    }
    if !buf.is_empty() {
        return f(String::from_utf8_lossy(&buf).as_ref());
    }
    Ok(false)
}

/// `application/x-www-form-urlencoded` escaping.
fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
