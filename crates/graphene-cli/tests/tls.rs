//! TLS with the real binary: a CA made in the test signs the gateway's
//! certificate; the CLI trusts it through GRAPHENE_CA; HTTP/2 and HTTP/1.1
//! are negotiated by ALPN; a new certificate is picked up without dropping
//! open connections; `--tls-self-signed` works for development.

mod util;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use util::{eventually, Server};

struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

fn ca() -> Ca {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "graphene test CA");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca { cert, key }
}

/// A server certificate for 127.0.0.1 signed by `ca`, written as PEM.
fn issue(ca: &Ca, name: &str, cert_path: &Path, key_path: &Path) -> Vec<u8> {
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    // Key first, then the certificate: the server reloads once both changed.
    std::fs::write(key_path, key.serialize_pem()).unwrap();
    std::fs::write(cert_path, cert.pem()).unwrap();
    cert.der().to_vec()
}

fn client_config(ca_pem: &Path, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca_pem).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn connect(url: &str, ca_pem: &Path, alpn: &[&[u8]]) -> std::io::Result<Tls> {
    let addr = url.trim_start_matches("https://").to_string();
    let tcp = tokio::net::TcpStream::connect(&addr).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    tokio_rustls::TlsConnector::from(client_config(ca_pem, alpn))
        .connect(name, tcp)
        .await
}

/// One HTTP/1.1 request on an open connection; the status line back.
async fn healthz(conn: &mut Tls) -> String {
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = conn.read(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    text.lines().next().unwrap_or("").to_string()
}

fn served_cert(conn: &Tls) -> Vec<u8> {
    conn.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[test]
fn https_with_a_private_ca_http2_and_reload_without_dropping_connections() {
    let dir = tempdir();
    let (ca_pem, cert, key) = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    let ca = ca();
    std::fs::write(&ca_pem, ca.cert.pem()).unwrap();
    let first = issue(&ca, "first", &cert, &key);
    let mut s = Server::start_with(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    assert!(s.url.starts_with("https://"), "{}", s.url);
    s.ca = Some(ca_pem.clone());

    // The CLI over HTTPS, trusting the CA; without it, a clear error.
    s.function("echo", "python3", "def handle(req):\n    return req\n", "");
    s.ok(&["up"]);
    let out = s.cli_stdin(&["invoke", "echo"], b"over tls");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "over tls");
    let out = std::process::Command::new(util::BIN)
        .args(["list"])
        .env("GRAPHENE_URL", &s.url)
        .env("GRAPHENE_TOKEN", s.token())
        .env_remove("GRAPHENE_CA")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("UnknownIssuer") && err.contains("GRAPHENE_CA"),
        "{err}"
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // ALPN offers HTTP/2 and HTTP/1.1.
        let h2 = connect(&s.url, &ca_pem, &[b"h2"]).await.unwrap();
        assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let mut old = connect(&s.url, &ca_pem, &[b"http/1.1"]).await.unwrap();
        assert_eq!(served_cert(&old), first);
        assert!(healthz(&mut old).await.contains("200"));

        // A new certificate: new connections get it, the open one lives on.
        let second = issue(&ca, "second", &cert, &key);
        let mut deadline = 100;
        loop {
            let conn = connect(&s.url, &ca_pem, &[b"http/1.1"]).await.unwrap();
            if served_cert(&conn) == second {
                break;
            }
            deadline -= 1;
            assert!(deadline > 0, "the new certificate was never served");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            healthz(&mut old).await.contains("200"),
            "the open connection survived"
        );

        // A broken pair keeps the current certificate.
        std::fs::write(&key, "not a key").unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let conn = connect(&s.url, &ca_pem, &[b"http/1.1"]).await.unwrap();
        assert_eq!(served_cert(&conn), second);
    });
    eventually("the reload to be logged", Duration::from_secs(5), || {
        s.log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("keeping the current TLS certificate"))
            .then_some(())
    });
    // Plain HTTP to the TLS port gets no answer.
    assert!(ureq::get(&s.url.replace("https://", "http://"))
        .timeout(Duration::from_secs(3))
        .call()
        .is_err());
}

#[test]
fn self_signed_mode_for_development() {
    let s = Server::start_with(&["--tls-self-signed"]);
    assert!(s.url.starts_with("https://"));
    let cert = s.state.join("tls/cert.pem");
    assert!(cert.exists());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(s.state.join("tls/key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "the key is private");
    // util sets GRAPHENE_CA to the generated certificate.
    assert!(s.ok(&["list"]).contains("Function"));
    // The same certificate after a restart.
    let before = std::fs::read(&cert).unwrap();
    let s = s.kill_and_restart();
    assert_eq!(std::fs::read(&cert).unwrap(), before);
    assert!(s.ok(&["list"]).contains("Function"));
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "graphene-tls-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
