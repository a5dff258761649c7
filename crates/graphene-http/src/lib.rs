//! graphene-http: the HTTP client pieces the CLI and the server share,
//! without the server: [`https_connector`] and [`client`] (TLS with the
//! public roots plus an optional private CA, used by the CLI, OIDC discovery
//! and job callbacks), and [`forward`], the HTTP/1.1 forwarder that passes
//! calls to an HTTP service (the local runtime's upstreams; a network
//! provider's pods).

pub mod forward;

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::CertificateDer;

pub type HttpsConnector = hyper_rustls::HttpsConnector<HttpConnector>;

/// An HTTPS (or plain HTTP) client connector that trusts the public roots
/// and, if given, the PEM certificates in `ca`; `what` names the setting in
/// error messages.
pub fn https_connector(ca: Option<&Path>, what: &str) -> anyhow::Result<HttpsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| anyhow!("{what}: could not read {}: {e}", path.display()))?;
        if certs.is_empty() {
            bail!("{what}: {} holds no PEM certificate", path.display());
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| anyhow!("{what}: {}: {e}", path.display()))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .build())
}

/// A pooled HTTP(S) client over [`https_connector`]; `ca` as there.
pub fn client<B>(ca: Option<&Path>) -> anyhow::Result<Client<HttpsConnector, B>>
where
    B: hyper::body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connector = https_connector(ca, "ca")?;
    Ok(Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector))
}
