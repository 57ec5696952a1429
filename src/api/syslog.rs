//! Syslog over mutually authenticated TLS to an Audit Record Repository (IHE ITI-20): RFC 5424
//! messages, RFC 5425 transport (octet-counting framing, one TLS connection kept open).
//! What the messages carry and when they are sent is [`crate::service::feed`]'s business.

use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::error::Error;

/// RFC 5424 PRI of every message: facility 10 (security/authorization, "authpriv"), severity
/// 5 (notice), as IHE ATNA asks: 10 × 8 + 5.
const PRI: u8 = 85;

/// The structured-data element naming the ledger entry (an enterprise number reserved for
/// documentation, RFC 5612: the element is medid's own).
const SD_ID: &str = "medid@32473";

/// One RFC 5424 message: `<85>1 TIMESTAMP HOSTNAME APP-NAME - MSGID [medid@32473 seq="N"] MSG`.
/// `timestamp` is RFC 3339 (UTC); HOSTNAME and APP-NAME are printable US-ASCII without spaces
/// (anything else is replaced by `_`, an empty one by `-`, RFC 5424 §6.2).
pub fn message(
    timestamp: &str,
    hostname: &str,
    app: &str,
    msgid: &str,
    seq: i64,
    msg: &str,
) -> String {
    format!(
        "<{PRI}>1 {timestamp} {} {} - {} [{SD_ID} seq=\"{seq}\"] {msg}",
        header_field(hostname, 255),
        header_field(app, 48),
        header_field(msgid, 32),
    )
}

fn header_field(value: &str, max: usize) -> String {
    let clean: String = value
        .chars()
        .map(|c| if ('!'..='~').contains(&c) { c } else { '_' })
        .take(max)
        .collect();
    if clean.is_empty() {
        "-".into()
    } else {
        clean
    }
}

/// RFC 5425 §4.3 octet-counting: `MSG-LEN SP SYSLOG-MSG`.
pub fn frame(message: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(message.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(message.as_bytes());
}

/// Where the repository is and how to authenticate to it.
#[derive(Clone)]
pub struct SyslogTls {
    addr: String,
    name: rustls_pki_types::ServerName<'static>,
    config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for SyslogTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyslogTls")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl SyslogTls {
    /// `addr` is host:port; `name` the name the repository's certificate must carry;
    /// `ca_pem` its trust anchors; `identity` medid's certificate chain and key (PEM).
    pub fn new(
        addr: &str,
        name: &str,
        ca_pem: &[u8],
        identity: (&[u8], &[u8]),
    ) -> Result<Self, Error> {
        let config = super::client::client_tls_config(ca_pem, Some(identity))?;
        let name = rustls_pki_types::ServerName::try_from(name.to_owned())
            .map_err(|e| Error::InvalidArgument(format!("syslog server name {name:?}: {e}")))?;
        Ok(Self {
            addr: addr.to_owned(),
            name,
            config: Arc::new(config),
        })
    }

    /// A new connection: TCP, then the TLS handshake in both directions.
    pub async fn connect(&self) -> Result<SyslogConnection, Error> {
        let failed = |e: std::io::Error| {
            Error::Unavailable(format!("the syslog repository at {}: {e}", self.addr))
        };
        let tcp = TcpStream::connect(&self.addr).await.map_err(failed)?;
        let _ = tcp.set_nodelay(true);
        let tls = tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(self.name.clone(), tcp)
            .await
            .map_err(failed)?;
        Ok(SyslogConnection {
            tls,
            addr: self.addr.clone(),
        })
    }
}

/// An open connection to the repository.
pub struct SyslogConnection {
    tls: tokio_rustls::client::TlsStream<TcpStream>,
    addr: String,
}

impl SyslogConnection {
    /// Writes framed messages and flushes them to the socket. Syslog has no acknowledgement:
    /// a write that returns is in the kernel's buffers, not necessarily at the repository.
    pub async fn send(&mut self, frames: &[u8]) -> Result<(), Error> {
        let failed = |e: std::io::Error| {
            Error::Unavailable(format!(
                "writing to the syslog repository at {}: {e}",
                self.addr
            ))
        };
        self.tls.write_all(frames).await.map_err(failed)?;
        self.tls.flush().await.map_err(failed)
    }
}

impl SyslogConnection {
    /// Resolves when the repository closes the connection or it fails (a repository never
    /// writes on it): the error to reconnect with.
    pub async fn closed(&mut self) -> Error {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 512];
        loop {
            match self.tls.read(&mut buf).await {
                Ok(0) => {
                    return Error::Unavailable(format!(
                        "the syslog repository at {} closed the connection",
                        self.addr
                    ))
                }
                Ok(_) => continue,
                Err(e) => {
                    return Error::Unavailable(format!(
                        "the connection to the syslog repository at {}: {e}",
                        self.addr
                    ))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_rfc5424_and_frames_count_octets() {
        let m = message(
            "2026-12-03T10:00:00Z",
            "pki host",
            "medid",
            "IHE+FHIR",
            7,
            "{\"é\":1}",
        );
        assert_eq!(
            m,
            "<85>1 2026-12-03T10:00:00Z pki_host medid - IHE+FHIR [medid@32473 seq=\"7\"] {\"é\":1}"
        );
        let mut out = Vec::new();
        frame(&m, &mut out);
        let (len, rest) = std::str::from_utf8(&out).unwrap().split_once(' ').unwrap();
        assert_eq!(
            len.parse::<usize>().unwrap(),
            rest.len(),
            "octets, not characters"
        );
        assert_eq!(
            message("t", "", "", "", 1, "x"),
            "<85>1 t - - - - [medid@32473 seq=\"1\"] x"
        );
    }
}
