//! PEM encoding and decoding of DER objects (RFC 7468).

use base64::Engine;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};

use crate::error::Error;

/// Encodes DER as PEM with the given label, lines of 64 characters.
pub fn encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

pub fn certificate(der: &[u8]) -> String {
    encode("CERTIFICATE", der)
}

/// All certificates in a PEM text, in order.
pub fn parse_certificates(text: &[u8]) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::InvalidArgument(format!("bad PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(Error::InvalidArgument("no PEM certificate found".into()));
    }
    Ok(certs)
}

/// A CSR given as DER, or as exactly one PEM `CERTIFICATE REQUEST` block.
pub fn csr_der(bytes: &[u8]) -> Result<Vec<u8>, Error> {
    let text_start = bytes.iter().position(|b| !b.is_ascii_whitespace());
    let looks_pem = text_start.is_some_and(|i| bytes[i..].starts_with(b"-----BEGIN"));
    if !looks_pem {
        return Ok(bytes.to_vec());
    }
    let mut blocks = CertificateSigningRequestDer::pem_slice_iter(bytes);
    let first = match blocks.next() {
        Some(Ok(der)) => der,
        Some(Err(e)) => return Err(Error::BadCsr(format!("PEM is malformed: {e}"))),
        None => {
            return Err(Error::BadCsr(
                "PEM holds no complete CERTIFICATE REQUEST block".into(),
            ))
        }
    };
    if blocks.next().is_some() {
        return Err(Error::BadCsr(
            "PEM holds more than one CERTIFICATE REQUEST block; send exactly one".into(),
        ));
    }
    Ok(first.as_ref().to_vec())
}
