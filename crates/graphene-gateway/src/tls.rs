//! TLS for the gateway (rustls): a certificate and key from PEM files,
//! reloaded when either file changes (connections already open keep the
//! certificate they started with), or a self-signed certificate made once
//! for development. HTTP/2 and HTTP/1.1 are offered through ALPN.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;

/// How often the certificate files are checked for changes.
const RELOAD_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The configuration new connections get; swapped when the files change.
pub struct Tls {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
}

impl Tls {
    pub fn open(files: TlsFiles) -> anyhow::Result<Arc<Self>> {
        let config = load(&files)?;
        Ok(Arc::new(Self {
            files,
            current: RwLock::new(config),
        }))
    }

    pub fn config(&self) -> Arc<ServerConfig> {
        self.current.read().expect("tls lock").clone()
    }

    /// Watches the files and reloads them when they change; a pair that
    /// does not load (half written, mismatched) leaves the current one.
    pub fn watch(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let mut seen = stamps(&self.files);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RELOAD_EVERY).await;
                let Some(tls) = weak.upgrade() else { break };
                let now = stamps(&tls.files);
                if now == seen {
                    continue;
                }
                match load(&tls.files) {
                    Ok(config) => {
                        *tls.current.write().expect("tls lock") = config;
                        seen = now;
                        tracing::info!(cert = %tls.files.cert.display(), "reloaded the TLS certificate");
                    }
                    Err(e) => {
                        tracing::warn!("keeping the current TLS certificate: {e:#}");
                    }
                }
            }
        });
    }
}

fn stamps(files: &TlsFiles) -> [Option<SystemTime>; 2] {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    [modified(&files.cert), modified(&files.key)]
}

fn load(files: &TlsFiles) -> anyhow::Result<Arc<ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .with_context(|| format!("reading the certificate {}", files.cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing the certificate {}", files.cert.display()))?;
    if certs.is_empty() {
        bail!("{} holds no PEM certificate", files.cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("reading the private key {}", files.key.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| {
            format!(
                "the key {} does not match the certificate {}",
                files.key.display(),
                files.cert.display()
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A development certificate for `names` (and localhost), made once in
/// `dir` and kept: clients can trust `cert.pem`.
pub fn self_signed(dir: &Path, names: &[String]) -> anyhow::Result<TlsFiles> {
    let files = TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    if files.cert.exists() && files.key.exists() {
        return Ok(files);
    }
    std::fs::create_dir_all(dir)?;
    let mut all = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    all.extend(names.iter().cloned());
    all.dedup();
    let made = rcgen::generate_simple_self_signed(all).context("making a certificate")?;
    std::fs::write(&files.cert, made.cert.pem())?;
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&files.key)?;
        f.write_all(made.key_pair.serialize_pem().as_bytes())?;
    }
    Ok(files)
}
