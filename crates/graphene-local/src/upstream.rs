//! Functions served by an HTTP service that runs elsewhere (annotation
//! `com.graphene.upstream`): graphene adds its routing, headers, timeouts and
//! metrics in front of, say, an existing model server.
//!
//! Connections are kept in a small pool and driven by the task of the call
//! that uses them (no connection task, no channel between tasks), so a
//! proxied call costs little more than the two socket round trips.

use std::sync::Mutex;

use bytes::Bytes;
use graphene_core::provider::{Invocation, InvocationResult, ProviderError};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

type Conn = (
    SendRequest<Full<Bytes>>,
    Connection<TokioIo<TcpStream>, Full<Bytes>>,
);

/// Idle connections kept per upstream.
const MAX_IDLE: usize = 256;

pub struct Upstream {
    base: String,
    authority: String,
    prefix: String,
    idle: Mutex<Vec<Conn>>,
}

impl Upstream {
    /// `base` is an `http://host:port[/prefix]` URL, already validated.
    pub fn new(base: &str) -> Self {
        let base = base.trim_end_matches('/').to_string();
        let rest = base.strip_prefix("http://").unwrap_or(&base);
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let authority = if authority.contains(':') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Self {
            prefix: prefix.to_string(),
            authority,
            base,
            idle: Mutex::new(Vec::new()),
        }
    }

    async fn connect(&self) -> Result<Conn, String> {
        let stream = TcpStream::connect(&self.authority)
            .await
            .map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())
    }

    fn request(&self, call: &Invocation) -> Result<hyper::Request<Full<Bytes>>, ProviderError> {
        let mut uri =
            String::with_capacity(self.prefix.len() + call.path.len() + call.query.len() + 1);
        uri.push_str(&self.prefix);
        uri.push_str(&call.path);
        if !call.query.is_empty() {
            uri.push('?');
            uri.push_str(&call.query);
        }
        let mut req = hyper::Request::builder()
            .method(call.method.as_str())
            .uri(uri)
            .header(hyper::header::HOST, &self.authority);
        for (k, v) in &call.headers {
            if !k.eq_ignore_ascii_case("host") {
                req = req.header(k, v);
            }
        }
        req.body(Full::new(call.body.clone()))
            .map_err(|e| ProviderError::Invalid(format!("request can't be forwarded: {e}")))
    }

    /// One exchange on one connection, driving the connection meanwhile.
    /// Returns the connection when it can be reused.
    async fn exchange(
        mut conn: Conn,
        req: hyper::Request<Full<Bytes>>,
    ) -> Result<(InvocationResult, Option<Conn>), (String, bool)> {
        let (sender, driver) = &mut conn;
        // The connection only moves on while it is polled, so wait for it to
        // be ready while driving it.
        let ready = tokio::select! {
            r = sender.ready() => r.is_ok(),
            _ = &mut *driver => false,
        };
        if !ready {
            return Err(("connection closed".into(), true));
        }
        let sent = sender.send_request(req);
        tokio::pin!(sent);
        let resp = tokio::select! {
            r = &mut sent => r.map_err(|e| {
                let retry = e.is_canceled() || e.is_closed() || e.is_incomplete_message();
                (e.to_string(), retry)
            })?,
            r = &mut *driver => return Err((match r {
                Ok(()) => "the upstream closed the connection".to_string(),
                Err(e) => e.to_string(),
            }, true)),
        };
        let status = resp.status().as_u16();
        let reusable = !resp
            .headers()
            .get(hyper::header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let headers = resp
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        let collected = resp.into_body().collect();
        tokio::pin!(collected);
        let body = tokio::select! {
            b = &mut collected => b.map_err(|e| (e.to_string(), false))?.to_bytes(),
            r = &mut *driver => match r {
                Ok(()) => collected.await.map_err(|e| (e.to_string(), false))?.to_bytes(),
                Err(e) => return Err((e.to_string(), false)),
            },
        };
        Ok((
            InvocationResult {
                status,
                headers,
                body,
            },
            reusable.then_some(conn),
        ))
    }

    pub async fn call(
        &self,
        function: &str,
        call: Invocation,
        deadline: Instant,
        timeout: std::time::Duration,
    ) -> Result<InvocationResult, ProviderError> {
        let attempt = async {
            // A pooled connection may have been closed by the upstream while
            // idle; such a failure is retried once on a fresh connection.
            let pooled = self.idle.lock().expect("pool lock").pop();
            let fresh = pooled.is_none();
            let conn = match pooled {
                Some(c) => c,
                None => self.connect().await?,
            };
            let outcome =
                match Self::exchange(conn, self.request(&call).map_err(|e| e.to_string())?).await {
                    Err((_, true)) if !fresh => {
                        let conn = self.connect().await?;
                        Self::exchange(conn, self.request(&call).map_err(|e| e.to_string())?).await
                    }
                    other => other,
                };
            let (result, reusable) = outcome.map_err(|(e, _)| e)?;
            if let Some(conn) = reusable {
                let mut idle = self.idle.lock().expect("pool lock");
                if idle.len() < MAX_IDLE {
                    idle.push(conn);
                }
            }
            Ok::<_, String>(result)
        };
        match tokio::time::timeout_at(deadline, attempt).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(ProviderError::Upstream(format!(
                "function {function}: upstream {} failed: {e}",
                self.base
            ))),
            Err(_) => Err(ProviderError::Timeout(format!(
                "function {function}: upstream {} did not answer within the function's timeout ({timeout:?})",
                self.base
            ))),
        }
    }
}
