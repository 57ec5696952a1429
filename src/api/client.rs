//! A tonic client over mTLS, for the CLI and the tests.

use std::path::Path;

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

impl Connector {
    /// `identity` is the client's (certificate chain PEM, private key PEM), or none.
    pub fn new(
        server: &str,
        ca_pem: &[u8],
        identity: Option<(&[u8], &[u8])>,
    ) -> Result<Self, Error> {
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
        let mut config = match identity {
            Some((cert_pem, key_pem)) => {
                let chain = crate::pem::parse_certificates(cert_pem)?;
                let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem)
                    .map_err(|e| bad("client private key", &e))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| bad("client certificate", &e))?
            }
            None => builder.with_no_client_auth(),
        };
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
            .map_err(|e| Error::Unavailable(format!("connecting to {}: {e:?}", self.server)))
    }
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
