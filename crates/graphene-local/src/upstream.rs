//! Functions served by an HTTP service that runs elsewhere (annotation
//! `com.graphene.upstream`): graphene adds its routing, headers, timeouts and
//! metrics in front of, say, an existing model server.

use bytes::Bytes;
use graphene_core::provider::{Invocation, InvocationResult, ProviderError};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

pub struct Upstream {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Upstream {
    /// `base` is an `http://host:port[/prefix]` URL, already validated.
    pub fn new(base: &str) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self {
            base: base.trim_end_matches('/').to_string(),
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    pub async fn call(
        &self,
        function: &str,
        call: Invocation,
        deadline: Instant,
        timeout: std::time::Duration,
    ) -> Result<InvocationResult, ProviderError> {
        let mut uri = format!("{}{}", self.base, call.path);
        if !call.query.is_empty() {
            uri.push('?');
            uri.push_str(&call.query);
        }
        let mut req = hyper::Request::builder()
            .method(call.method.as_str())
            .uri(&uri);
        for (k, v) in &call.headers {
            if !k.eq_ignore_ascii_case("host") {
                req = req.header(k, v);
            }
        }
        let req = req
            .body(Full::new(call.body))
            .map_err(|e| ProviderError::Invalid(format!("request can't be forwarded: {e}")))?;
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let headers = resp
                .headers()
                .iter()
                .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
                .collect();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>(InvocationResult {
                status,
                headers,
                body,
            })
        };
        match tokio::time::timeout_at(deadline, exchange).await {
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
