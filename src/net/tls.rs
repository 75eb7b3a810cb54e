//! TLS 1.3 with rustls on the `ring` provider (NET-3): server and client
//! configurations from PEM files, the client's connect, and throwaway
//! development certificates (`safhire dev-cert`).

use super::error::{NetError, NetErrorKind};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// The client's TLS stream.
pub type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;

/// Largest PEM file read.
const MAX_PEM: u64 = 1 << 20;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(what: &str) -> impl Fn(rustls::Error) -> NetError + '_ {
    move |e| NetError::local(NetErrorKind::Tls(format!("{what}: {e}")))
}

fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>, NetError> {
    let name = path.display();
    let len = std::fs::metadata(path)
        .map_err(|e| NetError::config(format!("{what} {name}: cannot be read: {}", e.kind())))?
        .len();
    if len > MAX_PEM {
        return Err(NetError::config(format!(
            "{what} {name}: {len} bytes, more than the limit of {MAX_PEM}"
        )));
    }
    std::fs::read(path)
        .map_err(|e| NetError::config(format!("{what} {name}: cannot be read: {}", e.kind())))
}

/// Every certificate in a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, NetError> {
    let pem = read_pem(path, "certificate file")?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| NetError::config(format!("certificate file {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(NetError::config(format!(
            "certificate file {}: no CERTIFICATE block",
            path.display()
        )));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file. Errors
/// never quote the file's contents.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, NetError> {
    let pem = read_pem(path, "key file")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        NetError::config(format!(
            "key file {}: no usable private key ({})",
            path.display(),
            match e {
                rustls::pki_types::pem::Error::NoItemsFound => "no PRIVATE KEY block",
                _ => "malformed PEM",
            }
        ))
    })
}

/// The server's TLS 1.3 configuration: its certificate chain and key.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, NetError> {
    let chain = load_certs(cert)?;
    let key = load_key(key)?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error("TLS configuration"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(tls_error("the certificate and key"))?;
    Ok(Arc::new(config))
}

/// The client's TLS 1.3 configuration: servers are trusted when their
/// chain leads to a certificate of the CA file.
pub fn client_config(ca: &Path) -> Result<Arc<rustls::ClientConfig>, NetError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots
            .add(cert)
            .map_err(|e| NetError::config(format!("CA file {}: {e}", ca.display())))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error("TLS configuration"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Connects to `addr` and runs the TLS handshake, checking the server's
/// certificate against `server_name` (a DNS name or an IP address), all
/// within `timeout` (NET-3).
pub async fn connect(
    addr: &str,
    server_name: &str,
    config: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<ClientStream, NetError> {
    let name = ServerName::try_from(server_name.to_owned()).map_err(|_| {
        NetError::config(format!(
            "--server-name {server_name:?} is not a DNS name or an IP address"
        ))
    })?;
    let run = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| NetError::io("connecting to the server", e))?;
        let _ = tcp.set_nodelay(true);
        tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| {
                NetError::peer(NetErrorKind::Tls(format!("handshake with the server: {e}")))
            })
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| NetError::timeout("connecting to the server"))?
}

/// A throwaway certificate authority and a server certificate it signed,
/// as PEM (`safhire dev-cert`). For tests and trials only: the CA's key is
/// not kept, and the certificates do not expire before 4096.
#[derive(Debug)]
pub struct DevCert {
    /// The CA certificate: the client's `--ca` file.
    pub ca_pem: String,
    /// The server certificate: the server's `--cert` file.
    pub cert_pem: String,
    /// The server's private key (PKCS#8): the server's `--key` file.
    pub key_pem: String,
}

/// Makes a [`DevCert`] whose server certificate is valid for `names` (DNS
/// names or IP addresses).
pub fn dev_cert(names: &[String]) -> Result<DevCert, NetError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let failed = |e: rcgen::Error| NetError::config(format!("making the certificates: {e}"));
    if names.is_empty() {
        return Err(NetError::config("a certificate needs at least one name"));
    }
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "safhire development CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().map_err(failed)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(failed)?;

    let mut server = CertificateParams::new(names.to_vec()).map_err(failed)?;
    server
        .distinguished_name
        .push(DnType::CommonName, names[0].as_str());
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().map_err(failed)?;
    let issuer = Issuer::new(ca, ca_key);
    let cert = server.signed_by(&key, &issuer).map_err(failed)?;
    Ok(DevCert {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}
