//! The EST edge (RFC 7030, with RFC 8951's clarifications): HTTP/1.1 over TLS 1.2+ on its own
//! listener, client certificates verified by the same rustls verifier as gRPC.
//!
//! | path under `/.well-known/est[/<label>]` | client certificate | answer |
//! |---|---|---|
//! | `GET /cacerts` | none needed | the CA certificates, certs-only PKCS#7 |
//! | `GET /csrattrs` | none needed | accepted key types and the serialNumber attribute |
//! | `POST /simpleenroll` | station or device birth | birth or operational certificate |
//! | `POST /simplereenroll` | device operational or gateway | renewal |
//!
//! Requests are `application/pkcs10` (415 otherwise), base64 of the DER CSR with line breaks
//! allowed; Content-Transfer-Encoding is ignored. Certificates come back as base64 of a
//! certs-only CMS SignedData holding just the issued certificate. Errors are `text/plain`.
//! Routing and every rule live in `policy::est` and the shared use cases; this module only
//! speaks HTTP.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use base64::Engine;
use http_body_util::BodyExt;

use super::conn::ConnInfo;
use super::limits::PrincipalLimiter;
use crate::audit::Target;
use crate::der::{self, tag};
use crate::error::Error;
use crate::policy::est::{EstLabel, EstOperation, EstProfile};
use crate::service::{Ca, Refused};

/// The largest request body read: a 16 KiB CSR is under 22 KiB in base64 with line breaks.
const MAX_BODY: usize = 32 * 1024;
/// How long the rest of an oversized body is read (and dropped) before the 413 is sent, so
/// a client still sending sees the answer instead of a reset connection.
const LINGER: Duration = Duration::from_secs(2);
/// At most this much of an oversized body is read while lingering.
const LINGER_BYTES: usize = 8 * 1024 * 1024;
/// An unknown label is quoted in answers and audit reasons up to this many characters.
const LABEL_QUOTE_MAX: usize = 64;

/// What the EST handlers share.
#[derive(Clone)]
pub struct EstState {
    pub ca: Arc<Ca>,
    pub labels: Arc<BTreeMap<String, EstLabel>>,
    pub limiter: Arc<PrincipalLimiter>,
}

pub fn router(state: EstState) -> Router {
    Router::new()
        .route("/.well-known/est/cacerts", get(cacerts))
        .route("/.well-known/est/{label}/cacerts", get(cacerts))
        .route("/.well-known/est/csrattrs", get(csrattrs))
        .route("/.well-known/est/{label}/csrattrs", get(csrattrs))
        .route("/.well-known/est/simpleenroll", post(enroll))
        .route("/.well-known/est/{label}/simpleenroll", post(enroll))
        .route("/.well-known/est/simplereenroll", post(reenroll))
        .route("/.well-known/est/{label}/simplereenroll", post(reenroll))
        .fallback(|| async {
            text(
                StatusCode::NOT_FOUND,
                "not an EST endpoint; see /.well-known/est/cacerts",
            )
        })
        .with_state(state)
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        msg.into() + "\n",
    )
        .into_response()
}

/// The answer to a recorded refusal (only a [`Refused`] can be answered as one).
fn error_response(refused: &Refused) -> Response {
    let err = refused.error();
    let status =
        StatusCode::from_u16(err.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = text(status, err.public_message());
    if matches!(err, Error::Unavailable(_) | Error::ResourceExhausted(_)) {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
    }
    response
}

/// A base64 body on one line, as RFC 8951 §3.2 suggests: some clients (strongSwan 5.9) do not
/// skip line breaks. The Content-Transfer-Encoding header is for clients that predate
/// RFC 8951; newer ones ignore it.
fn base64_response(content_type: &'static str, der: &[u8]) -> Response {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::HeaderName::from_static("content-transfer-encoding"),
                "base64",
            ),
        ],
        body,
    )
        .into_response()
}

/// base64 (standard alphabet) with any ASCII whitespace between characters, padding optional.
pub fn decode_base64_body(body: &[u8]) -> Result<Vec<u8>, Error> {
    let compact: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if compact.is_empty() {
        return Err(Error::BadCsr(
            "the request body is empty; send the base64 of the DER CSR".into(),
        ));
    }
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    engine.decode(&compact).map_err(|e| {
        Error::BadCsr(format!(
            "the body is not base64 of a DER CSR (RFC 7030 §4.2.1): {e}"
        ))
    })
}

/// A certs-only CMS SignedData (RFC 5652 §5; RFC 7030 §4.1.3): no content, no signers, the
/// given certificates, in DER order.
pub fn certs_only(certificates: &[&[u8]]) -> Vec<u8> {
    const SET: u8 = 0x31;
    let signed_data_oid = der::oid(&[1, 2, 840, 113549, 1, 7, 2]);
    let data_oid = der::oid(&[1, 2, 840, 113549, 1, 7, 1]);
    // DER orders the members of a SET OF by their encodings.
    let mut sorted = certificates.to_vec();
    sorted.sort();
    let certs: Vec<u8> = sorted.concat();
    let signed_data = der::sequence(&[
        &der::tlv(tag::INTEGER, &[1]),
        &der::tlv(SET, &[]),
        &der::sequence(&[&data_oid]),
        &der::tlv(tag::context(0), &certs),
        &der::tlv(SET, &[]),
    ]);
    der::sequence(&[&signed_data_oid, &der::tlv(tag::context(0), &signed_data)])
}

/// CsrAttrs (RFC 7030 §4.5.2): the key types medid accepts (EC on P-256 or P-384, Ed25519,
/// RSA), SHA-256 signatures, and the subject serialNumber that factory enrollment reads.
pub fn csr_attributes() -> Vec<u8> {
    use crate::policy::csr::accepted;
    const SET: u8 = 0x31;
    // DER orders a SET OF by encoding.
    let mut curves: Vec<Vec<u8>> = accepted::CURVES
        .iter()
        .map(|(arcs, ..)| der::oid(arcs))
        .collect();
    curves.sort();
    let ec = der::sequence(&[
        &der::oid(accepted::EC_PUBLIC_KEY),
        &der::tlv(SET, &curves.concat()),
    ]);
    der::sequence(&[
        &ec,
        &der::oid(accepted::ED25519),
        &der::oid(accepted::RSA_ENCRYPTION),
        &der::oid(accepted::ECDSA_WITH_SHA256),
        &der::oid(accepted::SHA256_WITH_RSA),
        &der::oid(accepted::SERIAL_NUMBER),
    ])
}

/// Why a label is unknown, naming the configured ones.
fn unknown_label(state: &EstState, name: &str) -> String {
    let known: Vec<&str> = state.labels.keys().map(String::as_str).collect();
    let name = bounded(name, LABEL_QUOTE_MAX);
    if known.is_empty() {
        format!("no EST label {name:?}; none are configured")
    } else {
        format!(
            "no EST label {name:?}; configured labels: {}",
            known.join(", ")
        )
    }
}

/// `text` cut to at most `max` characters, with "…" marking a cut.
fn bounded(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// The 404 of a public endpoint under an unknown label.
fn no_such_label(state: &EstState, name: &str) -> Response {
    text(StatusCode::NOT_FOUND, unknown_label(state, name))
}

async fn cacerts(State(state): State<EstState>, label: Option<Path<String>>) -> Response {
    match label {
        None => cacerts_for(&state, None),
        Some(Path(label)) => match state.labels.get(&label) {
            Some(l) => cacerts_for(&state, Some(l.profile)),
            None => no_such_label(&state, &label),
        },
    }
}

/// The root and the issuing CA of the label's profile; without a label, both issuing CAs.
/// Every generation in service is included, newest first, so a device holds the new CA before
/// its first certificate from it arrives.
fn cacerts_for(state: &EstState, profile: Option<EstProfile>) -> Response {
    let bundle = state.ca.public_trust_bundle();
    let mut certs: Vec<&[u8]> = vec![&bundle.root];
    if profile != Some(EstProfile::DeviceOperational) {
        certs.extend(bundle.device_identity.iter().map(Vec::as_slice));
    }
    if profile != Some(EstProfile::DeviceBirth) {
        certs.extend(bundle.operational.iter().map(Vec::as_slice));
    }
    base64_response("application/pkcs7-mime", &certs_only(&certs))
}

async fn csrattrs(State(state): State<EstState>, label: Option<Path<String>>) -> Response {
    match label {
        Some(Path(label)) if !state.labels.contains_key(&label) => no_such_label(&state, &label),
        _ => base64_response("application/csrattrs", &csr_attributes()),
    }
}

async fn enroll(
    State(state): State<EstState>,
    label: Option<Path<String>>,
    Extension(peer): Extension<ConnInfo>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let label = label.map(|Path(l)| l);
    let op = EstOperation::SimpleEnroll;
    issue(&state, op, label.as_deref(), peer, &headers, body).await
}

async fn reenroll(
    State(state): State<EstState>,
    label: Option<Path<String>>,
    Extension(peer): Extension<ConnInfo>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let label = label.map(|Path(l)| l);
    let op = EstOperation::SimpleReenroll;
    issue(&state, op, label.as_deref(), peer, &headers, body).await
}

/// The media type of a Content-Type value, without parameters, lowercased.
fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// simpleenroll / simplereenroll: authenticate, check the request's form, then hand the CSR to
/// the shared use case. Every refusal after authentication is audited once, under the action
/// the request would have been recorded as. Writes the request's one log line.
async fn issue(
    state: &EstState,
    op: EstOperation,
    label: Option<&str>,
    peer: ConnInfo,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let (started, remote) = (std::time::Instant::now(), peer.remote);
    let mut principal = None;
    let response = issue_as(state, op, label, peer, headers, body, &mut principal).await;
    let method = match op {
        EstOperation::SimpleEnroll => "est/simpleenroll",
        EstOperation::SimpleReenroll => "est/simplereenroll",
    };
    super::metrics::log_request(
        method,
        principal.as_deref(),
        response.status().as_str(),
        started.elapsed(),
        Some(remote),
    );
    response
}

/// [`issue`], noting the caller's principal once authenticated.
async fn issue_as(
    state: &EstState,
    op: EstOperation,
    label: Option<&str>,
    peer: ConnInfo,
    headers: &HeaderMap,
    body: Body,
    principal: &mut Option<String>,
) -> Response {
    let ca = &state.ca;
    let who = match ca.authenticate(peer.leaf(), peer.remote.ip()).await {
        Ok(who) => who,
        Err(e) => return error_response(&e),
    };
    *principal = Some(who.uri.clone());
    let peer_der = peer.leaf().unwrap_or_default();
    let action = op.audit_action(&who);
    let _permit = match state.limiter.try_acquire(&who.uri) {
        Ok(p) => p,
        Err(e) => {
            let e = ca
                .refuse(
                    &who,
                    crate::audit::Action::RequestLimit,
                    &Target::service(),
                    e,
                )
                .await;
            return error_response(&e);
        }
    };
    let label = match label.map(|name| (name, state.labels.get(name))) {
        None => None,
        Some((_, Some(l))) => Some(l),
        Some((name, None)) => {
            let err = Error::NotFound(unknown_label(state, name));
            return error_response(&ca.refuse(&who, action, &Target::uri(&who.uri), err).await);
        }
    };
    let media = media_type(headers);
    if media != "application/pkcs10" {
        let why = format!(
            "EST enrollment requests are application/pkcs10, not {}",
            if media.is_empty() {
                "a request without Content-Type".to_owned()
            } else {
                media
            }
        );
        let err = ca
            .refuse(
                &who,
                action,
                &Target::uri(&who.uri),
                Error::InvalidArgument(why),
            )
            .await;
        return text(StatusCode::UNSUPPORTED_MEDIA_TYPE, err.to_string());
    }
    let bytes = match read_body(headers, body).await {
        Ok(b) => b,
        Err((status, why)) => {
            let err = ca
                .refuse(
                    &who,
                    action,
                    &Target::uri(&who.uri),
                    Error::InvalidArgument(why),
                )
                .await;
            return text(status, err.to_string());
        }
    };
    let csr = match decode_base64_body(&bytes) {
        Ok(der) => der,
        Err(e) => return error_response(&ca.refuse(&who, action, &Target::uri(&who.uri), e).await),
    };
    match ca.est_enroll(&who, peer_der, op, label, csr).await {
        Ok(issued) => base64_response(
            "application/pkcs7-mime; smime-type=certs-only",
            &certs_only(&[&issued.der]),
        ),
        Err(e) => error_response(&e),
    }
}

/// The request body, at most [`MAX_BODY`] bytes. A declared length over the limit is
/// refused before anything is read, so hyper never answers `100 Continue` to it; a body that
/// turns out too long is read on (and dropped) for a moment, so the client is still listening
/// when the 413 arrives rather than seeing its upload reset.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
) -> Result<axum::body::Bytes, (StatusCode, String)> {
    let too_large = || {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is over {MAX_BODY} bytes; a CSR is at most 16 KiB"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    let mut body = body;
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                format!("the request body could not be read: {e}"),
            )
        })?;
        if let Ok(data) = frame.into_data() {
            bytes.extend_from_slice(&data);
            if bytes.len() > MAX_BODY {
                linger(body).await;
                return Err(too_large());
            }
        }
    }
    Ok(bytes.into())
}

/// Reads and drops what remains of `body`, for at most [`LINGER`] and [`LINGER_BYTES`].
async fn linger(mut body: Body) {
    let drain = async {
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len());
            if seen > LINGER_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_bodies_may_be_wrapped_and_unpadded() {
        let der = vec![0x30, 0x03, 0x02, 0x01, 0x05];
        for body in ["MAMCAQU=", "MAMC\r\nAQU=\r\n", " MAMCAQU ", "MA\nMC\nAQU"] {
            assert_eq!(
                decode_base64_body(body.as_bytes()).unwrap(),
                der,
                "{body:?}"
            );
        }
        assert!(decode_base64_body(b"").is_err());
        assert!(decode_base64_body(b"\r\n").is_err());
        assert!(decode_base64_body(b"MAMC*AQU=").is_err());
        // Raw DER is not base64.
        assert!(decode_base64_body(&[0x30, 0x03, 0x02, 0x01, 0x05]).is_err());
    }

    #[test]
    fn certs_only_is_a_signed_data_with_certificates_and_nothing_else() {
        let a = der::sequence(&[&der::tlv(tag::INTEGER, &[2])]);
        let b = der::sequence(&[&der::tlv(tag::INTEGER, &[1])]);
        let p7 = certs_only(&[&a, &b]);
        der::check_strict(&p7, 16).unwrap();
        let mut r = der::Reader::new(&p7);
        let mut ci = r.expect(tag::SEQUENCE).unwrap().reader();
        assert_eq!(
            ci.expect(tag::OID).unwrap().content,
            der::oid_content(&[1, 2, 840, 113549, 1, 7, 2])
        );
        let mut sd = ci
            .expect(tag::context(0))
            .unwrap()
            .reader()
            .expect(tag::SEQUENCE)
            .unwrap()
            .reader();
        assert_eq!(sd.expect(tag::INTEGER).unwrap().content, [1]);
        assert!(sd.expect(0x31).unwrap().content.is_empty());
        sd.expect(tag::SEQUENCE).unwrap();
        let certs = sd.expect(tag::context(0)).unwrap().content;
        // Sorted by encoding: b (…01) before a (…02).
        assert_eq!(certs, [b.as_slice(), a.as_slice()].concat());
        assert!(sd.expect(0x31).unwrap().content.is_empty());
        assert!(sd.is_empty());
    }

    #[test]
    fn csr_attributes_are_der() {
        der::check_strict(&csr_attributes(), 8).unwrap();
    }
}
