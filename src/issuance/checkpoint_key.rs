//! The audit-signing key (Ed25519, not a CA key): signs audit-log checkpoints and nothing else.

use ring::signature::{Ed25519KeyPair, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivatePkcs8KeyDer;

use crate::audit::checkpoint::{key_id, signed_note, Checkpoint};
use crate::error::Error;

pub struct CheckpointSigner {
    key: Ed25519KeyPair,
    name: String,
}

impl std::fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointSigner")
            .field("name", &self.name)
            .field("key", &"…")
            .finish()
    }
}

impl CheckpointSigner {
    /// Loads the PKCS#8 PEM key `medid ca init` wrote; `name` is the note's key name and origin.
    pub fn load(path: &std::path::Path, name: String) -> Result<Self, Error> {
        let der = PrivatePkcs8KeyDer::from_pem_file(path).map_err(|e| {
            Error::Internal(format!(
                "{}: {}",
                path.display(),
                crate::pem::describe_error(&e)
            ))
        })?;
        let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der())
            .map_err(|e| Error::Internal(format!("{}: not an Ed25519 key: {e}", path.display())))?;
        Ok(Self { key, name })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.key
            .public_key()
            .as_ref()
            .try_into()
            .expect("Ed25519 public keys are 32 bytes")
    }

    /// The signed note of `checkpoint`.
    pub fn sign(&self, checkpoint: &Checkpoint) -> String {
        let body = checkpoint.body();
        let sig = self.key.sign(body.as_bytes());
        signed_note(
            &body,
            &self.name,
            key_id(&self.name, &self.public_key()),
            sig.as_ref(),
        )
    }
}
