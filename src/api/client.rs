//! A tonic client over mTLS, for the CLI and the tests.

use std::path::Path;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

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
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(host_of(server));
    open(server, tls).await
}

/// Connects to `server` (e.g. `https://127.0.0.1:7443`) over mTLS. The server's certificate
/// must name `localhost` or the host in the URL.
pub async fn connect(server: &str, creds: &ClientCredentials) -> Result<Channel, Error> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&creds.ca_pem))
        .identity(Identity::from_pem(&creds.cert_pem, &creds.key_pem))
        .domain_name(host_of(server));
    open(server, tls).await
}

async fn open(server: &str, tls: ClientTlsConfig) -> Result<Channel, Error> {
    Channel::from_shared(server.to_owned())
        .map_err(|e| Error::InvalidArgument(format!("server URL {server:?}: {e}")))?
        .tls_config(tls)
        .map_err(|e| Error::InvalidArgument(format!("TLS configuration: {e}")))?
        .connect()
        .await
        .map_err(|e| Error::Unavailable(format!("connecting to {server}: {e:?}")))
}

fn host_of(server: &str) -> &str {
    server
        .split("://")
        .nth(1)
        .and_then(|rest| rest.rsplit_once(':').map(|(h, _)| h).or(Some(rest)))
        .map(|h| h.trim_matches(|c| c == '[' || c == ']'))
        .unwrap_or("localhost")
}
