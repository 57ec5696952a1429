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

/// A PEM parse failure in words, quoting the offending line as text (the parser's own message
/// prints it as a list of byte values).
pub fn describe_error(e: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error as E;
    let quote = |line: &[u8]| {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end();
        match text.chars().count() {
            0..=64 => format!("{text:?}"),
            _ => format!("{:?}…", text.chars().take(64).collect::<String>()),
        }
    };
    match e {
        E::MissingSectionEnd { end_marker } => format!(
            "the PEM block never ends: no \"-----END {}-----\" line",
            String::from_utf8_lossy(end_marker).trim()
        ),
        E::IllegalSectionStart { line } => {
            format!("malformed PEM BEGIN line {}", quote(line))
        }
        E::Base64Decode(detail) => format!("the PEM body is not valid base64 ({detail})"),
        E::Io(io) => format!("reading PEM: {io}"),
        E::NoItemsFound => "no PEM block of the expected kind".into(),
        E::SectionTooLarge => "a PEM block larger than 256 MB".into(),
        other => other.to_string(),
    }
}

/// All certificates in a PEM text, in order.
pub fn parse_certificates(text: &[u8]) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            Error::InvalidArgument(format!("bad PEM certificate: {}", describe_error(&e)))
        })?;
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
        Some(Err(e)) => {
            return Err(Error::BadCsr(format!(
                "PEM is malformed: {}",
                describe_error(&e)
            )))
        }
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

/// A CRL given as DER, or as a PEM `X509 CRL` block (the first).
pub fn crl_der(bytes: &[u8]) -> Result<Vec<u8>, Error> {
    use rustls_pki_types::pem::PemObject;
    let text_start = bytes.iter().position(|b| !b.is_ascii_whitespace());
    if !text_start.is_some_and(|i| bytes[i..].starts_with(b"-----BEGIN")) {
        return Ok(bytes.to_vec());
    }
    rustls_pki_types::CertificateRevocationListDer::from_pem_slice(bytes)
        .map(|der| der.as_ref().to_vec())
        .map_err(|e| Error::InvalidArgument(format!("bad PEM CRL: {}", describe_error(&e))))
}
