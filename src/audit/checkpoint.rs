//! Checkpoints: a C2SP `tlog-checkpoint` (origin, tree size, root hash) in a C2SP `signed-note`
//! with one Ed25519 signature by the audit key. Parsing and verification here are pure and need
//! only the note text and the public key, so an auditor can check them offline.
//!
//! ```text
//! medid.local/audit
//! 42
//! 3DkOTvfX…=
//!
//! — medid.local/audit q6pdnMxn…
//! ```

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::digest::{digest, SHA256};
use ring::signature::{UnparsedPublicKey, ED25519};

use super::merkle::Hash;

/// A checkpoint's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    /// The note text: three lines, each ending in a newline.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        )
    }
}

/// C2SP signed-note key ID for an Ed25519 key: SHA-256(name ‖ 0x0A ‖ 0x01 ‖ key)[:4].
pub fn key_id(name: &str, public_key: &[u8; 32]) -> [u8; 4] {
    let mut input = Vec::with_capacity(name.len() + 34);
    input.extend_from_slice(name.as_bytes());
    input.push(b'\n');
    input.push(0x01);
    input.extend_from_slice(public_key);
    digest(&SHA256, &input).as_ref()[..4]
        .try_into()
        .expect("4 bytes")
}

/// The signed note for `body` with one signature line.
pub fn signed_note(body: &str, name: &str, key_id: [u8; 4], signature: &[u8]) -> String {
    let mut sig = key_id.to_vec();
    sig.extend_from_slice(signature);
    format!("{body}\n\u{2014} {name} {}\n", B64.encode(sig))
}

/// Why a note was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("the checkpoint is not a well-formed signed note: {0}")]
    Malformed(&'static str),
    #[error("no signature by the audit key named {0:?} with the expected key ID")]
    NoKnownSignature(String),
    #[error("bad signature: the checkpoint was not signed by this audit key")]
    BadSignature,
}

/// Verifies a signed note with `public_key` under `name` and parses its checkpoint.
pub fn verify(note: &str, name: &str, public_key: &[u8; 32]) -> Result<Checkpoint, NoteError> {
    if note.chars().any(|c| c.is_control() && c != '\n') {
        return Err(NoteError::Malformed("control characters"));
    }
    let split = note
        .rfind("\n\n")
        .ok_or(NoteError::Malformed("no blank line before the signatures"))?;
    let body = &note[..=split];
    let signatures = &note[split + 2..];
    let wanted = key_id(name, public_key);
    let mut verified = false;
    for line in signatures.lines() {
        let rest = line
            .strip_prefix("\u{2014} ")
            .ok_or(NoteError::Malformed("signature line without em dash"))?;
        let (sig_name, sig_b64) = rest
            .split_once(' ')
            .ok_or(NoteError::Malformed("signature line without key name"))?;
        let raw = B64
            .decode(sig_b64)
            .map_err(|_| NoteError::Malformed("signature is not base64"))?;
        if sig_name != name || raw.len() < 4 || raw[..4] != wanted {
            continue; // another key's signature: ignored, as C2SP requires
        }
        UnparsedPublicKey::new(&ED25519, public_key)
            .verify(body.as_bytes(), &raw[4..])
            .map_err(|_| NoteError::BadSignature)?;
        verified = true;
    }
    if !verified {
        return Err(NoteError::NoKnownSignature(name.to_owned()));
    }
    parse_body(body)
}

fn parse_body(body: &str) -> Result<Checkpoint, NoteError> {
    let mut lines = body.lines();
    let origin = lines
        .next()
        .filter(|l| !l.is_empty())
        .ok_or(NoteError::Malformed("no origin"))?;
    let size = lines
        .next()
        .and_then(|l| l.parse::<u64>().ok())
        .ok_or(NoteError::Malformed("tree size is not a decimal number"))?;
    let root: Hash = lines
        .next()
        .and_then(|l| B64.decode(l).ok())
        .and_then(|b| b.try_into().ok())
        .ok_or(NoteError::Malformed("root hash is not 32 bytes of base64"))?;
    Ok(Checkpoint {
        origin: origin.to_owned(),
        size,
        root,
    })
}

/// The raw 32-byte Ed25519 key from a PEM `PUBLIC KEY` (SubjectPublicKeyInfo).
pub fn public_key_from_pem(pem: &str) -> Option<[u8; 32]> {
    use x509_parser::prelude::FromDer;
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = B64.decode(b64.trim()).ok()?;
    let (rest, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&der).ok()?;
    if !rest.is_empty() || spki.algorithm.algorithm.to_id_string() != "1.3.101.112" {
        return None;
    }
    spki.subject_public_key.data.as_ref().try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    fn key() -> (Ed25519KeyPair, [u8; 32]) {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let k = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let public: [u8; 32] = k.public_key().as_ref().try_into().unwrap();
        (k, public)
    }

    #[test]
    fn a_signed_checkpoint_round_trips_and_any_change_is_detected() {
        let (k, public) = key();
        let cp = Checkpoint {
            origin: "medid.local/audit".into(),
            size: 42,
            root: [7; 32],
        };
        let body = cp.body();
        let sig = k.sign(body.as_bytes());
        let note = signed_note(
            &body,
            "medid.local/audit",
            key_id("medid.local/audit", &public),
            sig.as_ref(),
        );
        assert_eq!(verify(&note, "medid.local/audit", &public).unwrap(), cp);
        let tampered = note.replacen("\n42\n", "\n43\n", 1);
        assert_eq!(
            verify(&tampered, "medid.local/audit", &public),
            Err(NoteError::BadSignature)
        );
        let (_, other) = key();
        assert!(matches!(
            verify(&note, "medid.local/audit", &other),
            Err(NoteError::NoKnownSignature(_))
        ));
        assert!(verify("garbage", "medid.local/audit", &public).is_err());
    }
}
