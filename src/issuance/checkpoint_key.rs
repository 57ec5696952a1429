//! The audit-signing key (Ed25519, not a CA key): signs audit-log checkpoints and nothing else.
//! A PKCS#8 file, or a key in the PKCS#11 token beside the CA keys.

use super::keys::{CaKey, KeyRole, KeySource};
use crate::audit::checkpoint::{key_id, signed_note, Checkpoint};
use crate::error::Error;

pub struct CheckpointSigner {
    key: CaKey,
    public: [u8; 32],
    name: String,
}

impl std::fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointSigner")
            .field("name", &self.name)
            .field("key", &self.key)
            .finish()
    }
}

impl CheckpointSigner {
    /// Loads the key `medid ca init` made (the PKCS#8 PEM file at `path`, or the token's
    /// audit key); `name` is the note's key name and origin.
    pub fn load(keys: &KeySource, path: &std::path::Path, name: String) -> Result<Self, Error> {
        let key = keys.load(KeyRole::Audit, path)?;
        if rcgen::PublicKeyData::algorithm(&key) != &rcgen::PKCS_ED25519 {
            return Err(Error::Internal(format!(
                "{}: not an Ed25519 key",
                path.display()
            )));
        }
        let public = key
            .public_raw()
            .try_into()
            .map_err(|_| Error::Internal(format!("{}: not an Ed25519 key", path.display())))?;
        Ok(Self { key, public, name })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }

    /// The signed note of `checkpoint`.
    pub fn sign(&self, checkpoint: &Checkpoint) -> Result<String, Error> {
        let body = checkpoint.body();
        let sig = self.key.sign_message(body.as_bytes())?;
        Ok(signed_note(
            &body,
            &self.name,
            key_id(&self.name, &self.public),
            &sig,
        ))
    }
}
