//! The plain-HTTP listener for what relying parties fetch without a client certificate
//! (RFC 5280 CRL distribution points, RFC 6960 OCSP, AIA caIssuers), plus health and readiness.
//!
//! | path | answer |
//! |---|---|
//! | `GET /crl/{issuer}.crl` | current CRL, DER, `application/pkix-crl` |
//! | `GET /crl/root.crl` | the root's CRL (the issuing CAs it revoked), DER |
//! | `GET /ca/{root,device-identity,operational}.der` | CA certificate, DER, `application/pkix-cert` |
//!
//! `{issuer}` is an issuing-CA generation's label: `device-identity`, `operational`, and after
//! a rollover `operational-2`, … (`/ca/operational-2.der` likewise).
//! | `POST /ocsp/{issuer}` (`application/ocsp-request`) | OCSP response, `application/ocsp-response` |
//! | `GET /ocsp/{issuer}/{base64 request}` | the same (RFC 6960 Appendix A.1) |
//! | `GET /healthz`, `GET /readyz` | liveness; readiness (the database answers and the service is not draining), with a line per ATNA feed (connected, events behind) |
//! | `GET /metrics` | Prometheus metrics, OpenMetrics text ([`super::metrics`]) |

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;

use crate::der::{tag, Reader};
use crate::issuance::ocsp::HashAlg;
use crate::issuance::IssuerId;
use crate::service::publish::{CertId, OcspQuery};
use crate::service::Ca;

/// OCSP requests and anything else posted here are small; refuse more before reading it.
const MAX_BODY: usize = 16 * 1024;
/// CertIDs answered in one OCSP request.
const MAX_CERT_IDS: usize = 32;

/// `stopping` turns true when the service begins to drain; `/readyz` then answers 503.
pub fn router(
    ca: Arc<Ca>,
    stopping: tokio::sync::watch::Receiver<bool>,
    exporter: super::metrics::Exporter,
) -> Router {
    Router::new()
        .route("/crl/{file}", get(crl))
        .route("/ca/{file}", get(ca_cert))
        .route("/ocsp", post(ocsp_post))
        .route("/ocsp/{issuer}", post(ocsp_post_issuer))
        .route("/ocsp/{issuer}/{*request}", get(ocsp_get))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(move |state| metrics(state, exporter.clone())),
        )
        .route("/readyz", get(move |state| ready(state, stopping.clone())))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(ca)
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        msg.into() + "\n",
    )
        .into_response()
}

fn der(content_type: &'static str, body: Vec<u8>, max_age: i64) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (header::CACHE_CONTROL, format!("max-age={}", max_age.max(0))),
        ],
        body,
    )
        .into_response()
}

/// A loaded issuing-CA generation named by its label.
fn issuer_named(ca: &Ca, label: &str) -> Option<IssuerId> {
    IssuerId::parse(label).filter(|id| ca.authority.issuer_cert(*id).is_ok())
}

async fn crl(State(ca): State<Arc<Ca>>, Path(file): Path<String>) -> Response {
    if file == "root.crl" {
        return match ca.authority.root_crl() {
            Some(crl) => {
                let age = (crl.next_update - ca.clock.now()).whole_seconds();
                der("application/pkix-crl", crl.der, age.min(3600))
            }
            None => text(
                StatusCode::NOT_FOUND,
                "this PKI has no root CRL in its directory (root.crl); its root publishes one elsewhere",
            ),
        };
    }
    let Some(issuer) = file
        .strip_suffix(".crl")
        .and_then(|label| issuer_named(&ca, label))
    else {
        return text(
            StatusCode::NOT_FOUND,
            "no such CRL; try /crl/device-identity.crl or /crl/operational.crl",
        );
    };
    match ca.current_crl(issuer).await {
        Ok(crl) => {
            let age = (crl.next_update - ca.clock.now()).whole_seconds();
            der("application/pkix-crl", crl.der, age.min(3600))
        }
        Err(e) => {
            tracing::warn!(error = %e, "serving CRL");
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "CRL unavailable; retry later",
            )
        }
    }
}

async fn ca_cert(State(ca): State<Arc<Ca>>, Path(file): Path<String>) -> Response {
    let body = match file.strip_suffix(".der") {
        Some("root") => Some(ca.authority.root().der.to_vec()),
        Some(label) => issuer_named(&ca, label)
            .and_then(|id| ca.authority.issuer_cert(id).ok())
            .map(|c| c.der.to_vec()),
        None => None,
    };
    match body {
        Some(body) => der("application/pkix-cert", body, 86_400),
        None => text(StatusCode::NOT_FOUND, "no such CA certificate"),
    }
}

async fn metrics(State(ca): State<Arc<Ca>>, exporter: super::metrics::Exporter) -> Response {
    match super::metrics::render(&ca, &exporter).await {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, super::metrics::CONTENT_TYPE)],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "rendering metrics");
            text(StatusCode::INTERNAL_SERVER_ERROR, "metrics unavailable")
        }
    }
}

async fn ready(
    State(ca): State<Arc<Ca>>,
    stopping: tokio::sync::watch::Receiver<bool>,
) -> Response {
    if *stopping.borrow() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "draining: shutting down");
    }
    match ca.store.ping().await {
        // The audit feeds are reported, not judged: a repository that is down does not make
        // the CA unready (the ledger keeps what the feed owes).
        Ok(()) => {
            let mut body = String::from("ready");
            for feed in &ca.atna {
                let status = feed.status();
                let behind = match feed.lag(&ca).await {
                    Ok(n) => format!("{n} events behind"),
                    Err(_) => "lag unknown".into(),
                };
                body.push_str(&format!(
                    "\natna {}: {}, {behind}{}",
                    feed.destination(),
                    if status.connected {
                        "connected"
                    } else {
                        "disconnected"
                    },
                    status
                        .last_error
                        .map(|e| format!(" (last error: {e})"))
                        .unwrap_or_default()
                ));
            }
            text(StatusCode::OK, body)
        }
        Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "database unavailable"),
    }
}

async fn ocsp_post(State(ca): State<Arc<Ca>>, headers: HeaderMap, body: Bytes) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.eq_ignore_ascii_case("application/ocsp-request") {
        return text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "OCSP requests are POSTed as application/ocsp-request",
        );
    }
    ocsp_answer(&ca, &body).await
}

async fn ocsp_post_issuer(
    state: State<Arc<Ca>>,
    Path(issuer): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if issuer_named(&state.0, &issuer).is_none() {
        return text(StatusCode::NOT_FOUND, "no such OCSP responder");
    }
    ocsp_post(state, headers, body).await
}

async fn ocsp_get(
    State(ca): State<Arc<Ca>>,
    Path((issuer, request)): Path<(String, String)>,
) -> Response {
    if issuer_named(&ca, &issuer).is_none() {
        return text(StatusCode::NOT_FOUND, "no such OCSP responder");
    }
    // The path is already percent-decoded; what remains is standard base64.
    let cleaned: String = request.chars().filter(|c| !c.is_whitespace()).collect();
    match base64::engine::general_purpose::STANDARD.decode(cleaned) {
        Ok(der) if der.len() <= MAX_BODY => ocsp_answer(&ca, &der).await,
        _ => der(
            "application/ocsp-response",
            crate::issuance::ocsp::error_response(
                crate::issuance::ocsp::ErrorStatus::MalformedRequest,
            ),
            0,
        ),
    }
}

async fn ocsp_answer(ca: &Ca, request: &[u8]) -> Response {
    let answer = ca.ocsp(parse_ocsp_request(request)).await;
    der("application/ocsp-response", answer, 0)
}

/// Parses an OCSPRequest (RFC 6960 §4.1.1). None if it is not one (strict DER).
pub fn parse_ocsp_request(der: &[u8]) -> Option<OcspQuery> {
    let mut top = Reader::new(der);
    let request = top.expect(tag::SEQUENCE)?;
    if !top.is_empty() {
        return None;
    }
    let mut request = request.reader();
    let tbs = request.expect(tag::SEQUENCE)?;
    // optionalSignature [0] may follow; medid does not require signed requests.
    let _ = request.optional(tag::context(0));
    if !request.is_empty() {
        return None;
    }
    let mut tbs = tbs.reader();
    if let Some(version) = tbs.optional(tag::context(0)) {
        if version.content != [tag::INTEGER, 1, 0] {
            return None; // only v1
        }
    }
    let _ = tbs.optional(tag::context(1)); // requestorName
    let mut list = tbs.expect(tag::SEQUENCE)?.reader();
    let mut nonce = None;
    if let Some(exts) = tbs.optional(tag::context(2)) {
        nonce = find_nonce(exts.content)?;
    }
    if !tbs.is_empty() {
        return None;
    }
    let mut cert_ids = Vec::new();
    while !list.is_empty() {
        if cert_ids.len() == MAX_CERT_IDS {
            return None;
        }
        let mut single = list.expect(tag::SEQUENCE)?.reader();
        let cert_id = single.expect(tag::SEQUENCE)?;
        let _ = single.optional(tag::context(0));
        if !single.is_empty() {
            return None;
        }
        cert_ids.push(parse_cert_id(cert_id.raw, cert_id.reader())?);
    }
    Some(OcspQuery { cert_ids, nonce })
}

fn parse_cert_id(raw: &[u8], mut r: Reader<'_>) -> Option<CertId> {
    let mut alg = r.expect(tag::SEQUENCE)?.reader();
    let oid = alg.expect(tag::OID)?;
    let _ = alg.optional(tag::NULL);
    let hash = HashAlg::from_oid(oid.content)?;
    let name_hash = r.expect(tag::OCTET_STRING)?.content.to_vec();
    let key_hash = r.expect(tag::OCTET_STRING)?.content.to_vec();
    let serial = r.expect(tag::INTEGER)?.content;
    if !r.is_empty() || serial.is_empty() || serial[0] & 0x80 != 0 {
        return None;
    }
    let start = serial.iter().position(|b| *b != 0).unwrap_or(serial.len());
    Some(CertId {
        der: raw.to_vec(),
        hash,
        issuer_name_hash: name_hash,
        issuer_key_hash: key_hash,
        serial: serial[start..].to_vec(),
    })
}

/// The nonce extension's value, if present. Outer None: malformed extensions.
fn find_nonce(explicit: &[u8]) -> Option<Option<Vec<u8>>> {
    let mut outer = Reader::new(explicit);
    let mut exts = outer.expect(tag::SEQUENCE)?.reader();
    let nonce_oid = crate::der::oid_content(crate::issuance::ocsp::OID_OCSP_NONCE);
    let mut nonce = None;
    while !exts.is_empty() {
        let mut ext = exts.expect(tag::SEQUENCE)?.reader();
        let oid = ext.expect(tag::OID)?;
        let _ = ext.optional(tag::BOOLEAN);
        let value = ext.expect(tag::OCTET_STRING)?;
        if oid.content == nonce_oid.as_slice() {
            nonce = Some(value.content.to_vec());
        }
    }
    Some(nonce)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_ocsp_requests_are_none_and_never_panic() {
        assert!(parse_ocsp_request(&[]).is_none());
        assert!(parse_ocsp_request(b"garbage").is_none());
        assert!(parse_ocsp_request(&[0x30, 0x00]).is_none());
        // Every prefix of a plausible request.
        let cert_id = crate::der::sequence(&[
            &crate::der::sequence(&[&crate::der::oid(&[1, 3, 14, 3, 2, 26]), &[5, 0]]),
            &crate::der::tlv(tag::OCTET_STRING, &[1; 20]),
            &crate::der::tlv(tag::OCTET_STRING, &[2; 20]),
            &crate::der::unsigned_integer(&[0x42; 16]),
        ]);
        let req = crate::der::sequence(&[&crate::der::sequence(&[&crate::der::sequence(&[
            &crate::der::sequence(&[&cert_id]),
        ])])]);
        let parsed = parse_ocsp_request(&req).expect("well-formed request parses");
        assert_eq!(parsed.cert_ids.len(), 1);
        assert_eq!(parsed.cert_ids[0].serial, vec![0x42; 16]);
        for len in 0..req.len() {
            assert!(parse_ocsp_request(&req[..len]).is_none());
        }
    }
}
