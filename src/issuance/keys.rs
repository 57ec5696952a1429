//! Where the CA keys and the audit-signing key live, behind one signing type: PKCS#8 files in
//! the PKI directory (the development default) or a PKCS#11 token ([`super::hsm`]).

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rcgen::KeyPair;
use serde::{Deserialize, Serialize};

use super::hsm::{KeyKind, Token, TokenKey, TokenSettings};
use super::{IssuerId, IssuerName};
use crate::error::Error;

/// The labels of medid's keys in a token. Generation N ≥ 2 of an issuing CA is the
/// generation-1 label followed by `-N`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeyLabels {
    pub root: String,
    pub device_identity: String,
    pub operational: String,
    pub audit: String,
}

impl Default for KeyLabels {
    fn default() -> Self {
        Self {
            root: "medid-root".into(),
            device_identity: "medid-device-identity".into(),
            operational: "medid-operational".into(),
            audit: "medid-audit".into(),
        }
    }
}

impl KeyLabels {
    pub fn issuing(&self, id: IssuerId) -> String {
        let base = match id.name {
            IssuerName::DeviceIdentity => &self.device_identity,
            IssuerName::Operational => &self.operational,
        };
        match id.generation {
            1 => base.clone(),
            n => format!("{base}-{n}"),
        }
    }
}

/// What `pki.json` records of where its keys are, so that a PKI whose keys are in a token is
/// never looked for in files, nor the reverse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", tag = "store", deny_unknown_fields)]
pub enum KeyCustody {
    /// PKCS#8 PEM files of mode 0600 in the PKI directory.
    #[default]
    Files,
    /// A PKCS#11 token, by its label.
    Pkcs11 { token_label: String },
}

/// Where to find (and make) the keys of one PKI.
#[derive(Clone)]
pub enum KeySource {
    Files,
    Token {
        token: Arc<Token>,
        labels: KeyLabels,
        /// The root key's own token (`[pkcs11.root]`, in a key ceremony's configuration);
        /// without it the root key is in `token` too.
        root: Option<Arc<Token>>,
    },
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Files => f.write_str("Files"),
            KeySource::Token {
                token,
                labels,
                root,
            } => f
                .debug_struct("Token")
                .field("token", &token.label())
                .field("labels", labels)
                .field("root", &root.as_ref().map(|t| t.label().to_owned()))
                .finish(),
        }
    }
}

/// Which key of the PKI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRole {
    Root,
    Issuing(IssuerId),
    Audit,
}

impl KeySource {
    /// The source the configuration names: a token when `[pkcs11]` is set.
    pub fn open(pkcs11: Option<&(TokenSettings, KeyLabels)>) -> Result<Self, Error> {
        match pkcs11 {
            None => Ok(KeySource::Files),
            Some((settings, labels)) => Ok(KeySource::Token {
                token: Token::open(settings)?,
                labels: labels.clone(),
                root: None,
            }),
        }
    }

    /// The same source with the root key on a token of its own (opened and logged in).
    pub fn with_root_token(self, settings: &TokenSettings) -> Result<Self, Error> {
        match self {
            KeySource::Files => Err(Error::InvalidArgument(
                "[pkcs11.root] needs [pkcs11]: the root's token is for a PKI whose keys are in tokens"
                    .into(),
            )),
            KeySource::Token { token, labels, .. } => Ok(KeySource::Token {
                token,
                labels,
                root: Some(Token::open(settings)?),
            }),
        }
    }

    /// The label of the token that holds `role`'s key, when keys are in tokens.
    pub fn holder(&self, role: KeyRole) -> Option<&str> {
        self.token_for(role).map(|t| t.label())
    }

    /// The token that holds `role`'s key.
    fn token_for(&self, role: KeyRole) -> Option<&Arc<Token>> {
        match (self, role) {
            (KeySource::Files, _) => None,
            (
                KeySource::Token {
                    root: Some(root), ..
                },
                KeyRole::Root,
            ) => Some(root),
            (KeySource::Token { token, .. }, _) => Some(token),
        }
    }

    /// What `pki.json` records for a PKI made from this source.
    pub fn custody(&self) -> KeyCustody {
        match self {
            KeySource::Files => KeyCustody::Files,
            KeySource::Token { token, .. } => KeyCustody::Pkcs11 {
                token_label: token.label().to_owned(),
            },
        }
    }

    /// Refuses a source that is not where `custody` says the PKI in `dir` keeps its keys.
    pub fn check(&self, custody: &KeyCustody, dir: &Path) -> Result<(), Error> {
        match (custody, self) {
            (KeyCustody::Files, KeySource::Files) => Ok(()),
            (KeyCustody::Pkcs11 { token_label }, KeySource::Token { token, .. })
                if token.label() == token_label =>
            {
                Ok(())
            }
            (KeyCustody::Pkcs11 { token_label }, _) => Err(Error::FailedPrecondition(format!(
                "the CA keys of the PKI in {} are in the PKCS#11 token {token_label:?}; \
                 configure [pkcs11] with that token_label",
                dir.display()
            ))),
            (KeyCustody::Files, KeySource::Token { .. }) => {
                Err(Error::FailedPrecondition(format!(
                    "the CA keys of the PKI in {} are files, not in a PKCS#11 token; \
                     remove [pkcs11] from the configuration, or make a new PKI with it",
                    dir.display()
                )))
            }
        }
    }

    fn label(labels: &KeyLabels, role: KeyRole) -> String {
        match role {
            KeyRole::Root => labels.root.clone(),
            KeyRole::Issuing(id) => labels.issuing(id),
            KeyRole::Audit => labels.audit.clone(),
        }
    }

    fn kind(role: KeyRole) -> KeyKind {
        match role {
            KeyRole::Audit => KeyKind::Ed25519,
            _ => KeyKind::EcdsaP256,
        }
    }

    /// A new key for `role`: generated in memory (the caller keeps it with [`CaKey::keep`]),
    /// or inside the token, where it stays.
    pub fn generate(&self, role: KeyRole) -> Result<CaKey, Error> {
        match self {
            KeySource::Files => {
                let alg = match Self::kind(role) {
                    KeyKind::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
                    KeyKind::Ed25519 => &rcgen::PKCS_ED25519,
                };
                KeyPair::generate_for(alg)
                    .map(|k| CaKey::File(Box::new(k)))
                    .map_err(|e| Error::internal("generating a key", e))
            }
            KeySource::Token { labels, .. } => self
                .token_for(role)
                .expect("a token source has a token for every role")
                .generate(&Self::label(labels, role), Self::kind(role))
                .map(CaKey::Token),
        }
    }

    /// The existing key of `role`: from `file` (PKCS#8 PEM), or from the token by its label.
    pub fn load(&self, role: KeyRole, file: &Path) -> Result<CaKey, Error> {
        match self {
            KeySource::Files => {
                let pem = std::fs::read_to_string(file)
                    .map_err(|e| Error::Internal(format!("reading {}: {e}", file.display())))?;
                KeyPair::from_pem(&pem)
                    .map(|k| CaKey::File(Box::new(k)))
                    .map_err(|e| Error::Internal(format!("{}: {e}", file.display())))
            }
            KeySource::Token { labels, .. } => self
                .token_for(role)
                .expect("a token source has a token for every role")
                .key(&Self::label(labels, role), Self::kind(role))
                .map(CaKey::Token),
        }
    }

    /// True when `role`'s key is in hand: its file exists, or the token holds its label.
    pub fn has(&self, role: KeyRole, file: &Path) -> bool {
        match self {
            KeySource::Files => file.exists(),
            KeySource::Token { .. } => self.load(role, file).is_ok(),
        }
    }

    /// The token, when keys are in one.
    pub fn token(&self) -> Option<(&Arc<Token>, &KeyLabels)> {
        match self {
            KeySource::Files => None,
            KeySource::Token { token, labels, .. } => Some((token, labels)),
        }
    }
}

/// A CA (or audit-signing) key: a key pair in memory, or a key in a token.
pub enum CaKey {
    /// Boxed: a key pair is several times the size of a token handle.
    File(Box<KeyPair>),
    Token(TokenKey),
}

impl fmt::Debug for CaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CaKey::File(_) => f.write_str("CaKey::File(…)"),
            CaKey::Token(k) => write!(f, "CaKey::Token({:?})", k.label()),
        }
    }
}

impl CaKey {
    /// The raw public key: the uncompressed P-256 point, or the 32 Ed25519 bytes.
    pub fn public_raw(&self) -> &[u8] {
        match self {
            CaKey::File(k) => k.public_key_raw(),
            CaKey::Token(k) => k.public_raw(),
        }
    }

    /// Writes a file key to `path` (0600, atomically); a token key stays where it is.
    pub fn keep(&self, path: &Path) -> Result<(), Error> {
        match self {
            CaKey::File(k) => super::bootstrap::write_private(path, &k.serialize_pem()),
            CaKey::Token(_) => Ok(()),
        }
    }

    /// Signs `msg` (for the audit key: a checkpoint note's body).
    pub fn sign_message(&self, msg: &[u8]) -> Result<Vec<u8>, Error> {
        match self {
            CaKey::File(k) => {
                rcgen::SigningKey::sign(k.as_ref(), msg).map_err(|e| Error::internal("signing", e))
            }
            CaKey::Token(k) => k.sign_message(msg),
        }
    }
}

impl rcgen::PublicKeyData for CaKey {
    fn der_bytes(&self) -> &[u8] {
        match self {
            CaKey::File(k) => k.der_bytes(),
            CaKey::Token(k) => k.der_bytes(),
        }
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            CaKey::File(k) => k.algorithm(),
            CaKey::Token(k) => k.algorithm(),
        }
    }
}

impl rcgen::SigningKey for CaKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        match self {
            CaKey::File(k) => k.sign(msg),
            CaKey::Token(k) => k.sign(msg),
        }
    }
}

/// The error of a failed signature: the token's own when the token failed (UNAVAILABLE, with
/// its reason), an internal error otherwise.
pub fn signing_error(what: &str, e: rcgen::Error) -> Error {
    match e {
        rcgen::Error::RemoteKeyError => super::hsm::take_failure()
            .unwrap_or_else(|| Error::internal(what, rcgen::Error::RemoteKeyError)),
        e => Error::internal(what, e),
    }
}
