//! RESTful ATNA: FHIR AuditEvents to an Audit Record Repository's FHIR endpoint, as
//! transaction Bundles posted over HTTPS (HTTP/1.1, rustls, mutual TLS when configured). What
//! is posted and when is [`crate::service::feed`]'s business.

use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{json, Value};
use tokio::net::TcpStream;

use crate::error::Error;

/// The largest response body read (an OperationOutcome or a transaction-response Bundle).
const MAX_RESPONSE: usize = 4 * 1024 * 1024;

/// A transaction Bundle putting each AuditEvent at `AuditEvent/<its id>`: a repeat of an
/// event already stored replaces it with itself, so a batch sent twice stores each event
/// once.
pub fn transaction(events: Vec<Value>) -> Value {
    let entries: Vec<Value> = events
        .into_iter()
        .map(|event| {
            let id = event["id"].as_str().unwrap_or_default().to_owned();
            json!({
                "fullUrl": format!("urn:uuid:{}", uuid_for(&id)),
                "resource": event,
                "request": {"method": "PUT", "url": format!("AuditEvent/{id}")},
            })
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

/// A name-based UUID (RFC 9562 version 8 layout over SHA-256) for an entry's fullUrl: the
/// same event always gets the same one.
fn uuid_for(id: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d.as_ref()[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = crate::domain::hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Where the FHIR endpoint is and how to reach it.
#[derive(Clone)]
pub struct FhirEndpoint {
    url: String,
    addr: String,
    host: String,
    path: String,
    name: rustls_pki_types::ServerName<'static>,
    config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for FhirEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FhirEndpoint")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl FhirEndpoint {
    /// `url` is the FHIR base (`https://host[:port]/path`); `ca_pem` trusts its certificate;
    /// `identity` is medid's client certificate chain and key, when the endpoint asks for one.
    pub fn new(url: &str, ca_pem: &[u8], identity: Option<(&[u8], &[u8])>) -> Result<Self, Error> {
        let bad = |why: &str| Error::InvalidArgument(format!("atna_rest.url {url:?}: {why}"));
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| bad("must be https://"))?;
        let (authority, path) = match rest.split_once('/') {
            Some((a, p)) => (a, format!("/{}", p.trim_end_matches('/'))),
            None => (rest, String::new()),
        };
        if authority.is_empty() {
            return Err(bad("no host"));
        }
        let host = match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(v6).to_owned(),
            None => authority
                .rsplit_once(':')
                .map_or(authority, |(h, _)| h)
                .to_owned(),
        };
        let addr = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            && !authority.ends_with(']')
        {
            authority.to_owned()
        } else {
            format!("{authority}:443")
        };
        let mut config = super::client::client_tls_config(ca_pem, identity)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = rustls_pki_types::ServerName::try_from(host.clone())
            .map_err(|e| bad(&e.to_string()))?;
        Ok(Self {
            url: url.to_owned(),
            addr,
            host: authority.to_owned(),
            path,
            name,
            config: Arc::new(config),
        })
    }

    /// Posts `bundle` to the base URL. Ok once the endpoint answered 2xx; any other answer
    /// or failure is UNAVAILABLE with what it said.
    pub async fn post(&self, bundle: &Value) -> Result<(), Error> {
        let failed =
            |why: String| Error::Unavailable(format!("the FHIR endpoint {}: {why}", self.url));
        let tcp = TcpStream::connect(&self.addr)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(self.name.clone(), tcp)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| failed(e.to_string()))?;
        let driver = tokio::spawn(conn);
        let body =
            serde_json::to_vec(bundle).map_err(|e| Error::internal("encoding a Bundle", e))?;
        let path = if self.path.is_empty() {
            "/"
        } else {
            &self.path
        };
        let request = http::Request::post(path)
            .header(http::header::HOST, &self.host)
            .header(http::header::CONTENT_TYPE, "application/fhir+json")
            .header(http::header::ACCEPT, "application/fhir+json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| Error::internal("building the request", e))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let status = response.status();
        let answer = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        driver.abort();
        if status.is_success() {
            return Ok(());
        }
        let said = String::from_utf8_lossy(&answer);
        Err(failed(format!(
            "answered {status}: {}",
            said.chars().take(300).collect::<String>()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transaction_puts_each_event_at_its_id() {
        let b = transaction(vec![json!({"resourceType": "AuditEvent", "id": "medid-7"})]);
        assert_eq!(b["type"], "transaction");
        assert_eq!(b["entry"][0]["request"]["method"], "PUT");
        assert_eq!(b["entry"][0]["request"]["url"], "AuditEvent/medid-7");
        let full = b["entry"][0]["fullUrl"].as_str().unwrap();
        assert_eq!(
            full,
            transaction(vec![json!({"id": "medid-7"})])["entry"][0]["fullUrl"]
        );
        assert_eq!(full.len(), "urn:uuid:".len() + 36);
    }

    #[test]
    fn endpoints_are_https_urls() {
        let ca = b"";
        let refused = |url: &str| FhirEndpoint::new(url, ca, None).unwrap_err().to_string();
        assert!(refused("http://arr/fhir").contains("must be https://"));
        assert!(refused("https:///fhir").contains("no host"));
    }
}
