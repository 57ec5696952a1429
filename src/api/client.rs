//! A tonic client over mTLS, for the CLI and the tests.

use std::path::Path;

use rustls::{AlertDescription, CertificateError};
use tonic::transport::Channel;

use crate::error::Error;

/// PEM material a client presents and trusts.
#[derive(Clone)]
pub struct ClientCredentials {
    /// Trust anchor(s) for the server's certificate (medid's root CA).
    pub ca_pem: Vec<u8>,
    /// The client's certificate (optionally followed by its chain).
    pub cert_pem: Vec<u8>,
    /// The client's private key. Never printed (see `Debug`).
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("key_pem", &"…")
            .finish_non_exhaustive()
    }
}

impl ClientCredentials {
    pub fn from_files(ca: &Path, cert: &Path, key: &Path) -> Result<Self, Error> {
        let read = |p: &Path| {
            std::fs::read(p)
                .map_err(|e| Error::InvalidArgument(format!("reading {}: {e}", p.display())))
        };
        Ok(Self {
            ca_pem: read(ca)?,
            cert_pem: read(cert)?,
            key_pem: read(key)?,
        })
    }
}

/// Connects with server authentication only (no client certificate): for `EnrollWithToken`.
pub async fn connect_without_identity(server: &str, ca_pem: &[u8]) -> Result<Channel, Error> {
    Connector::new(server, ca_pem, None)?.connect().await
}

/// Connects to `server` (e.g. `https://127.0.0.1:7443`) over mTLS. The server's certificate
/// must name `localhost` or the host in the URL.
pub async fn connect(server: &str, creds: &ClientCredentials) -> Result<Channel, Error> {
    Connector::new(
        server,
        &creds.ca_pem,
        Some((&creds.cert_pem, &creds.key_pem)),
    )?
    .connect()
    .await
}

/// Opens connections to one server with one rustls client configuration (TLS 1.3 or 1.2, ring,
/// ALPN h2). Reusing a `Connector` resumes the TLS session on reconnection (the server's
/// session tickets) instead of a full handshake with certificate verification on both sides.
#[derive(Clone)]
pub struct Connector {
    server: String,
    /// The URI tonic sees; TLS is this connector's job, so the scheme is plain.
    endpoint: String,
    addr: String,
    name: rustls_pki_types::ServerName<'static>,
    config: std::sync::Arc<rustls::ClientConfig>,
    /// The local address connections leave from (a multi-homed host); any by default.
    local: Option<std::net::IpAddr>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// A rustls client configuration (TLS 1.3 or 1.2, ring) trusting the certificates of
/// `ca_pem`, with the client identity (certificate chain PEM, private key PEM) when given.
pub fn client_tls_config(
    ca_pem: &[u8],
    identity: Option<(&[u8], &[u8])>,
) -> Result<rustls::ClientConfig, Error> {
    use rustls_pki_types::pem::PemObject;
    let bad =
        |what: &str, e: &dyn std::fmt::Display| Error::InvalidArgument(format!("{what}: {e}"));
    let mut roots = rustls::RootCertStore::empty();
    for cert in crate::pem::parse_certificates(ca_pem)? {
        roots.add(cert).map_err(|e| bad("CA certificate", &e))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(super::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| bad("TLS versions", &e))?
        .with_root_certificates(roots);
    Ok(match identity {
        Some((cert_pem, key_pem)) => {
            let chain = crate::pem::parse_certificates(cert_pem)?;
            let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem)
                .map_err(|e| bad("client private key", &crate::pem::describe_error(&e)))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| bad("client certificate", &e))?
        }
        None => builder.with_no_client_auth(),
    })
}

impl Connector {
    /// `identity` is the client's (certificate chain PEM, private key PEM), or none.
    pub fn new(
        server: &str,
        ca_pem: &[u8],
        identity: Option<(&[u8], &[u8])>,
    ) -> Result<Self, Error> {
        let bad =
            |what: &str, e: &dyn std::fmt::Display| Error::InvalidArgument(format!("{what}: {e}"));
        let mut config = client_tls_config(ca_pem, identity)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        let addr = server
            .split_once("://")
            .map(|(_, rest)| rest)
            .unwrap_or(server)
            .trim_end_matches('/')
            .to_owned();
        let name = rustls_pki_types::ServerName::try_from(host_of(server).to_owned())
            .map_err(|e| bad(&format!("server name in {server:?}"), &e))?;
        Ok(Self {
            server: server.to_owned(),
            endpoint: format!("http://{addr}"),
            addr,
            name,
            config: std::sync::Arc::new(config),
            local: None,
        })
    }

    /// Connections leave from `ip` (for a host with several addresses).
    pub fn with_local_address(mut self, ip: std::net::IpAddr) -> Self {
        self.local = Some(ip);
        self
    }

    /// A new connection (resuming the TLS session when the server offered a ticket before).
    /// Opens one TLS connection as [`Connector::connect`] does, speaks the HTTP/2 preface and
    /// waits (at most 5 s) for the server's first bytes. A server that refuses the client
    /// certificate says so then, with a TLS alert, where a gRPC call would only see its
    /// connection close; the refusal is returned named (`cert`: the certificate's file, for
    /// the message). A server that answers, or does not within the time, is left to the call.
    pub async fn probe(&self, cert: Option<&Path>) -> Result<(), Error> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // The client connection preface (RFC 9113 §3.4): the magic, then an empty SETTINGS.
        const PREFACE: &[u8] =
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
        let failed = |e: std::io::Error| {
            transport_error(&self.server, cert, &e).unwrap_or_else(|| {
                Error::Unavailable(format!("connecting to {}: {}", self.server, chain(&e)))
            })
        };
        let talk = async {
            let tcp = tokio::net::TcpStream::connect(&self.addr).await?;
            let mut tls = tokio_rustls::TlsConnector::from(self.config.clone())
                .connect(self.name.clone(), tcp)
                .await?;
            tls.write_all(PREFACE).await?;
            tls.flush().await?;
            let mut first = [0u8; 9];
            let n = tls.read(&mut first).await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the server closed the connection without a word",
                ));
            }
            Ok(())
        };
        match tokio::time::timeout(std::time::Duration::from_secs(5), talk).await {
            Ok(Ok(())) | Err(_) => Ok(()),
            Ok(Err(e)) => Err(failed(e)),
        }
    }

    pub async fn connect(&self) -> Result<Channel, Error> {
        let (addr, name, config) = (self.addr.clone(), self.name.clone(), self.config.clone());
        let local = self.local;
        let dial = tower::service_fn(move |_: tonic::transport::Uri| {
            let (addr, name, config) = (addr.clone(), name.clone(), config.clone());
            async move {
                let tcp = match local {
                    None => tokio::net::TcpStream::connect(&addr).await?,
                    Some(ip) => dial_from(ip, &addr).await?,
                };
                tcp.set_nodelay(true)?;
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        });
        tonic::transport::Endpoint::from_shared(self.endpoint.clone())
            .map_err(|e| Error::InvalidArgument(format!("server URL {:?}: {e}", self.server)))?
            .connect_with_connector(dial)
            .await
            .map_err(|e| {
                transport_error(&self.server, None, &e).unwrap_or_else(|| {
                    Error::Unavailable(format!("connecting to {}: {}", self.server, chain(&e)))
                })
            })
    }
}

/// A failure to reach or talk to `server`, named by its cause: a refused connection, or a TLS
/// handshake that failed on either side. `cert` is the client certificate offered, if any.
/// `None` when nothing in the chain is recognised.
pub fn transport_error(
    server: &str,
    cert: Option<&Path>,
    err: &(dyn std::error::Error + 'static),
) -> Option<Error> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(s) = source {
        if let Some(tls) = s.downcast_ref::<rustls::Error>() {
            return Some(tls_error(server, cert, tls));
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Some(tls_error(server, cert, tls));
            }
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    return Some(Error::Unavailable(format!(
                        "{server} refused the connection; is `medid serve` running there?"
                    )))
                }
                std::io::ErrorKind::TimedOut => {
                    return Some(Error::Unavailable(format!(
                        "connecting to {server} timed out"
                    )))
                }
                _ => {}
            }
        }
        // Through an HTTP/2 connection the TLS error may survive only as text (the h2 layer
        // keeps an I/O error's kind and message, not the error): the alert's name is in it.
        let text = s.to_string();
        if let Some(name) = text.split("received fatal alert: ").nth(1) {
            let name = name
                .split(|c: char| !c.is_ascii_alphanumeric())
                .next()
                .unwrap_or("");
            let alert = [
                AlertDescription::CertificateRevoked,
                AlertDescription::CertificateExpired,
                AlertDescription::UnknownCA,
                AlertDescription::BadCertificate,
                AlertDescription::CertificateUnknown,
                AlertDescription::DecryptError,
                AlertDescription::CertificateRequired,
            ]
            .into_iter()
            .find(|a| format!("{a:?}") == name);
            if let Some(alert) = alert {
                return Some(tls_error(
                    server,
                    cert,
                    &rustls::Error::AlertReceived(alert),
                ));
            }
        }
        source = s.source();
    }
    None
}

fn tls_error(server: &str, cert: Option<&Path>, e: &rustls::Error) -> Error {
    let ours = || {
        cert.map_or_else(
            || "the client certificate".to_owned(),
            |p| format!("the client certificate {}", p.display()),
        )
    };
    match e {
        rustls::Error::AlertReceived(alert) => {
            let why = match alert {
                AlertDescription::CertificateRevoked => "it is revoked",
                AlertDescription::CertificateExpired => "it has expired or is not valid yet",
                AlertDescription::UnknownCA
                | AlertDescription::BadCertificate
                | AlertDescription::CertificateUnknown
                | AlertDescription::DecryptError => "it is not signed by this medid's CA",
                AlertDescription::CertificateRequired => "the server requires one",
                _ => "the TLS handshake was ended",
            };
            Error::Unauthenticated(format!("{server} refused {}: {why}", ours()))
        }
        rustls::Error::InvalidCertificate(c) => {
            let why = match c {
                CertificateError::Revoked => "is revoked".to_owned(),
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    "has expired".to_owned()
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    "is not valid yet".to_owned()
                }
                CertificateError::UnknownIssuer => {
                    "is not signed by the CA given with --ca".to_owned()
                }
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => {
                    "does not name the host in the URL".to_owned()
                }
                other => format!("was refused ({other:?})"),
            };
            Error::Unauthenticated(format!("the certificate of {server} {why}"))
        }
        other => Error::Unavailable(format!("TLS with {server} failed: {other}")),
    }
}

/// An error and its sources, one after another.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text = format!("{text}: {next}");
        }
        source = s.source();
    }
    text
}

/// A TCP connection to `addr` (host:port) leaving from `ip`.
async fn dial_from(ip: std::net::IpAddr, addr: &str) -> std::io::Result<tokio::net::TcpStream> {
    let mut last = None;
    for target in tokio::net::lookup_host(addr).await? {
        if target.is_ipv4() != ip.is_ipv4() {
            continue;
        }
        let socket = match ip {
            std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.bind(std::net::SocketAddr::new(ip, 0))?;
        match socket.connect(target).await {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::AddrNotAvailable,
            format!("no address of {addr} matches the local address {ip}"),
        )
    }))
}

fn host_of(server: &str) -> &str {
    server
        .split("://")
        .nth(1)
        .and_then(|rest| rest.rsplit_once(':').map(|(h, _)| h).or(Some(rest)))
        .map(|h| h.trim_matches(|c| c == '[' || c == ']'))
        .unwrap_or("localhost")
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn a_refused_connection_and_tls_refusals_are_named() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let e = transport_error("https://h:1", None, &refused).unwrap();
        assert!(matches!(&e, Error::Unavailable(m) if m.contains("is `medid serve` running")));
        let revoked = std::io::Error::other(rustls::Error::AlertReceived(
            AlertDescription::CertificateRevoked,
        ));
        let e = transport_error("https://h:1", Some(Path::new("gw.pem")), &revoked).unwrap();
        assert!(
            matches!(&e, Error::Unauthenticated(m) if m.contains("gw.pem") && m.contains("revoked")),
            "{e:?}"
        );
        assert!(transport_error("s", None, &std::io::Error::other("other")).is_none());
    }
}
