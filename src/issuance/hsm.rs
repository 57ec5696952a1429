//! CA keys in a PKCS#11 token (an HSM, or SoftHSMv2 in tests), through `cryptoki`.
//!
//! A [`Token`] is one token of one module, found by its label, logged in with the PIN read
//! from a file. It lends sessions from a pool sized to the signing concurrency (a session is
//! single-threaded on most HSMs). When a call fails the pool is emptied and the next signature
//! opens fresh sessions, finds the token's slot again and logs in again, at most once a second:
//! a token that went away is used again as soon as it is back, without a restart. A
//! [`TokenKey`] signs with a private key that never leaves the token (generated there with
//! `CKA_EXTRACTABLE = false` and `CKA_SENSITIVE = true`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::RvError;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

/// Where Debian and Ubuntu install SoftHSMv2's PKCS#11 module (the bench and the tests use
/// SoftHSM; a deployment names its HSM's module in `[pkcs11] module`).
pub const SOFTHSM_MODULES: [&str; 2] = [
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
];

use crate::error::Error;

/// What the configuration says of the token (`[pkcs11]`, docs/HSM.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSettings {
    /// The PKCS#11 module (shared library) of the HSM's vendor.
    pub module: PathBuf,
    /// The token's label (CKA_LABEL of the token, as `C_GetTokenInfo` gives it).
    pub token_label: String,
    /// A file holding the user PIN (mode 0600 or stricter; one line).
    pub pin_file: PathBuf,
    /// Sessions opened at most at once: signatures beyond it wait for one.
    pub sessions: usize,
}

/// The two kinds of key medid keeps in a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// ECDSA P-256 with SHA-256: the CA keys.
    EcdsaP256,
    /// Ed25519: the audit-signing key.
    Ed25519,
}

impl KeyKind {
    /// CKA_EC_PARAMS: the curve's OBJECT IDENTIFIER, DER.
    fn ec_params(self) -> Vec<u8> {
        match self {
            KeyKind::EcdsaP256 => crate::der::oid(&[1, 2, 840, 10045, 3, 1, 7]),
            KeyKind::Ed25519 => crate::der::oid(&[1, 3, 101, 112]),
        }
    }

    fn key_type(self) -> KeyType {
        match self {
            KeyKind::EcdsaP256 => KeyType::EC,
            KeyKind::Ed25519 => KeyType::EC_EDWARDS,
        }
    }

    fn point_len(self) -> usize {
        match self {
            KeyKind::EcdsaP256 => 65,
            KeyKind::Ed25519 => 32,
        }
    }
}

/// Modules loaded in this process, by path. `C_Initialize` is process-wide and a module is
/// never finalized while medid runs, so every [`Token`] of one module shares its context.
fn module(path: &Path) -> Result<Pkcs11, Error> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut modules = MODULES
        .get_or_init(Default::default)
        .lock()
        .expect("module table lock is never poisoned");
    if let Some(m) = modules.get(path) {
        return Ok(m.clone());
    }
    let pkcs11 = Pkcs11::new(path).map_err(|e| {
        Error::FailedPrecondition(format!(
            "loading the PKCS#11 module {}: {e}",
            path.display()
        ))
    })?;
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) => {}
        Err(cryptoki::error::Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => {
            return Err(Error::Unavailable(format!(
                "initializing the PKCS#11 module {}: {}",
                path.display(),
                describe(&e)
            )))
        }
    }
    modules.insert(path.to_path_buf(), pkcs11.clone());
    Ok(pkcs11)
}

/// A cryptoki error in few words: the return value's name and the function.
fn describe(e: &cryptoki::error::Error) -> String {
    match e {
        cryptoki::error::Error::Pkcs11(rv, function) => format!("{rv:?} from {function:?}"),
        other => other.to_string(),
    }
}

thread_local! {
    /// Why the last token signature on this thread failed: rcgen's signing trait can only
    /// say "remote key error", so [`take_failure`] gives the caller the reason.
    static LAST_FAILURE: RefCell<Option<Error>> = const { RefCell::new(None) };
}

/// The error of the last failed token signature on this thread, if any (and forgets it).
pub fn take_failure() -> Option<Error> {
    LAST_FAILURE.with(|f| f.borrow_mut().take())
}

struct Pool {
    /// The slot holding the token, once found.
    slot: Option<Slot>,
    idle: Vec<Session>,
    /// Sessions lent out now.
    lent: usize,
    /// Bumped on every reset: a session lent before it is closed when returned.
    epoch: u64,
    /// Private-key handles by label, valid for this epoch.
    handles: HashMap<String, ObjectHandle>,
    /// The last failure to reach the token and when: retried at most once a second.
    down: Option<(Instant, String)>,
}

/// One token of one PKCS#11 module, with its session pool.
pub struct Token {
    settings: TokenSettings,
    pkcs11: Pkcs11,
    pin: AuthPin,
    pool: Mutex<Pool>,
    returned: Condvar,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("module", &self.settings.module)
            .field("token_label", &self.settings.token_label)
            .field("pin", &"…")
            .finish()
    }
}

const RETRY_AFTER: Duration = Duration::from_secs(1);

struct Lease<'t> {
    token: &'t Token,
    session: Option<Session>,
    epoch: u64,
    ok: bool,
}

impl std::ops::Deref for Lease<'_> {
    type Target = Session;
    fn deref(&self) -> &Session {
        self.session
            .as_ref()
            .expect("a lease holds its session until dropped")
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut pool = self.token.lock();
        pool.lent -= 1;
        if let Some(session) = self.session.take() {
            if self.ok && self.epoch == pool.epoch {
                pool.idle.push(session);
            }
        }
        self.token.returned.notify_one();
    }
}

impl Token {
    /// Opens the token the settings name: loads the module, finds the token and logs in
    /// once, so a wrong label or PIN is found at start rather than at the first signature.
    pub fn open(settings: &TokenSettings) -> Result<Arc<Self>, Error> {
        let pin = read_pin(&settings.pin_file)?;
        let token = Arc::new(Self {
            pkcs11: module(&settings.module)?,
            settings: TokenSettings {
                sessions: settings.sessions.max(1),
                ..settings.clone()
            },
            pin,
            pool: Mutex::new(Pool {
                slot: None,
                idle: Vec::new(),
                lent: 0,
                epoch: 0,
                handles: HashMap::new(),
                down: None,
            }),
            returned: Condvar::new(),
        });
        drop(token.lease()?);
        Ok(token)
    }

    pub fn label(&self) -> &str {
        &self.settings.token_label
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.pool.lock().expect("token pool lock is never poisoned")
    }

    /// A session, logged in: an idle one, a new one while fewer than `sessions` are open,
    /// or the next one returned.
    fn lease(&self) -> Result<Lease<'_>, Error> {
        let mut pool = self.lock();
        loop {
            if let Some((at, why)) = &pool.down {
                if at.elapsed() < RETRY_AFTER {
                    return Err(self.unavailable(why));
                }
            }
            if let Some(session) = pool.idle.pop() {
                pool.lent += 1;
                return Ok(Lease {
                    token: self,
                    session: Some(session),
                    epoch: pool.epoch,
                    ok: true,
                });
            }
            if pool.lent < self.settings.sessions {
                let epoch = pool.epoch;
                return match self.open_session(&mut pool) {
                    Ok(session) => {
                        pool.down = None;
                        pool.lent += 1;
                        Ok(Lease {
                            token: self,
                            session: Some(session),
                            epoch,
                            ok: true,
                        })
                    }
                    Err(why) => {
                        self.reset(&mut pool, why.clone());
                        Err(self.unavailable(&why))
                    }
                };
            }
            pool = self
                .returned
                .wait(pool)
                .expect("token pool lock is never poisoned");
        }
    }

    fn unavailable(&self, why: &str) -> Error {
        Error::Unavailable(format!(
            "the PKCS#11 token {:?} is unavailable ({why}); issuance resumes when it is back",
            self.settings.token_label
        ))
    }

    fn open_session(&self, pool: &mut Pool) -> Result<Session, String> {
        let slot = match pool.slot {
            Some(slot) => slot,
            None => {
                let slot = match self.find_slot() {
                    Ok(slot) => slot,
                    Err(_) if pool.epoch > 0 => {
                        // A token that went away may not come back to a module that listed
                        // its slots before (SoftHSM does not): start the module afresh, which
                        // also ends every session it had, then look again.
                        idle_sessions_forgotten(&mut pool.idle);
                        self.pkcs11.clone().finalize().map_err(|e| describe(&e))?;
                        self.pkcs11
                            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
                            .map_err(|e| describe(&e))?;
                        tracing::info!(token = %self.settings.token_label, "PKCS#11 module re-initialized to find the token again");
                        self.find_slot()?
                    }
                    Err(why) => return Err(why),
                };
                pool.slot = Some(slot);
                slot
            }
        };
        let session = self
            .pkcs11
            .open_rw_session(slot)
            .map_err(|e| describe(&e))?;
        match session.login(UserType::User, Some(&self.pin)) {
            Ok(()) => {}
            Err(cryptoki::error::Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(cryptoki::error::Error::Pkcs11(
                rv @ (RvError::PinIncorrect | RvError::PinLocked | RvError::PinExpired),
                _,
            )) => {
                return Err(format!("login refused: {rv:?}; check the PIN file"));
            }
            Err(e) => return Err(describe(&e)),
        }
        Ok(session)
    }

    fn find_slot(&self) -> Result<Slot, String> {
        let slots = self
            .pkcs11
            .get_slots_with_token()
            .map_err(|e| describe(&e))?;
        for slot in slots {
            let Ok(info) = self.pkcs11.get_token_info(slot) else {
                continue;
            };
            if info.label().trim_end() == self.settings.token_label {
                return Ok(slot);
            }
        }
        Err("no token with this label in any slot".into())
    }

    /// Forgets every session, the slot and the key handles; the next lease starts afresh.
    fn reset(&self, pool: &mut Pool, why: String) {
        pool.idle.clear();
        pool.slot = None;
        pool.handles.clear();
        pool.epoch += 1;
        pool.down = Some((Instant::now(), why));
    }

    fn failed(&self, lease: &mut Lease<'_>, why: String) -> Error {
        lease.ok = false;
        let mut pool = self.lock();
        if lease.epoch == pool.epoch {
            tracing::warn!(token = %self.settings.token_label, error = %why, "PKCS#11 token call failed; sessions reopen at the next signature");
            self.reset(&mut pool, why.clone());
        }
        self.unavailable(&why)
    }

    fn find_one(
        session: &Session,
        class: ObjectClass,
        label: &str,
    ) -> Result<Option<ObjectHandle>, cryptoki::error::Error> {
        let found = session.find_objects(&[
            Attribute::Class(class),
            Attribute::Label(label.as_bytes().to_vec()),
        ])?;
        Ok(found.into_iter().next())
    }

    /// The private key labelled `label`, by handle, cached for the pool's epoch.
    fn private_handle(&self, lease: &mut Lease<'_>, label: &str) -> Result<ObjectHandle, Error> {
        if let Some(h) = self.lock().handles.get(label) {
            return Ok(*h);
        }
        match Self::find_one(lease, ObjectClass::PRIVATE_KEY, label) {
            Ok(Some(h)) => {
                let mut pool = self.lock();
                if pool.epoch == lease.epoch {
                    pool.handles.insert(label.to_owned(), h);
                }
                Ok(h)
            }
            Ok(None) => Err(Error::FailedPrecondition(format!(
                "the PKCS#11 token {:?} holds no private key labelled {label:?}",
                self.settings.token_label
            ))),
            Err(e) => Err(self.failed(lease, describe(&e))),
        }
    }

    /// Generates a key pair inside the token: the private half sensitive, never extractable,
    /// usable only to sign. Refuses a label the token already holds.
    pub fn generate(self: &Arc<Self>, label: &str, kind: KeyKind) -> Result<TokenKey, Error> {
        let mut lease = self.lease()?;
        for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
            match Self::find_one(&lease, class, label) {
                Ok(None) => {}
                Ok(Some(_)) => {
                    return Err(Error::AlreadyExists(format!(
                        "the PKCS#11 token {:?} already holds a key labelled {label:?}; \
                         remove it with the HSM's own tools or choose other labels",
                        self.settings.token_label
                    )))
                }
                Err(e) => return Err(self.failed(&mut lease, describe(&e))),
            }
        }
        let mechanism = match kind {
            KeyKind::EcdsaP256 => Mechanism::EccKeyPairGen,
            KeyKind::Ed25519 => Mechanism::EccEdwardsKeyPairGen,
        };
        let id = label.as_bytes().to_vec();
        let public = [
            Attribute::Token(true),
            Attribute::KeyType(kind.key_type()),
            Attribute::Private(false),
            Attribute::Verify(true),
            Attribute::EcParams(kind.ec_params()),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id.clone()),
        ];
        let private = [
            Attribute::Token(true),
            Attribute::KeyType(kind.key_type()),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id),
        ];
        if let Err(e) = lease.generate_key_pair(&mechanism, &public, &private) {
            return Err(match e {
                cryptoki::error::Error::Pkcs11(
                    rv @ (RvError::MechanismInvalid
                    | RvError::CurveNotSupported
                    | RvError::DomainParamsInvalid),
                    _,
                ) => Error::FailedPrecondition(format!(
                    "the PKCS#11 token {:?} cannot make a {kind:?} key: {rv:?}",
                    self.settings.token_label
                )),
                e => self.failed(&mut lease, describe(&e)),
            });
        }
        drop(lease);
        self.key(label, kind)
    }

    /// The key labelled `label`, which must already be in the token (its public key object
    /// gives the public key; the private key is found at the first signature).
    pub fn key(self: &Arc<Self>, label: &str, kind: KeyKind) -> Result<TokenKey, Error> {
        let mut lease = self.lease()?;
        let missing = || {
            Error::FailedPrecondition(format!(
                "the PKCS#11 token {:?} holds no {kind:?} public key labelled {label:?}",
                self.settings.token_label
            ))
        };
        let handle = match Self::find_one(&lease, ObjectClass::PUBLIC_KEY, label) {
            Ok(Some(h)) => h,
            Ok(None) => return Err(missing()),
            Err(e) => return Err(self.failed(&mut lease, describe(&e))),
        };
        let attributes = match lease.get_attributes(handle, &[AttributeType::EcPoint]) {
            Ok(a) => a,
            Err(e) => return Err(self.failed(&mut lease, describe(&e))),
        };
        let point = attributes
            .into_iter()
            .find_map(|a| match a {
                Attribute::EcPoint(p) => Some(p),
                _ => None,
            })
            .ok_or_else(missing)?;
        let public = unwrap_point(&point, kind.point_len()).ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "the key labelled {label:?} in the PKCS#11 token {:?} is not a {kind:?} key",
                self.settings.token_label
            ))
        })?;
        drop(lease);
        self.private_handle(&mut self.lease()?, label)?;
        Ok(TokenKey {
            token: self.clone(),
            label: label.to_owned(),
            kind,
            public,
        })
    }

    /// What the token says of the private key labelled `label`: (sensitive, extractable).
    pub fn private_key_flags(&self, label: &str) -> Result<(bool, bool), Error> {
        let mut lease = self.lease()?;
        let handle = self.private_handle(&mut lease, label)?;
        let attributes = lease
            .get_attributes(
                handle,
                &[AttributeType::Sensitive, AttributeType::Extractable],
            )
            .map_err(|e| Error::Internal(describe(&e)))?;
        let (mut sensitive, mut extractable) = (false, true);
        for a in attributes {
            match a {
                Attribute::Sensitive(v) => sensitive = v,
                Attribute::Extractable(v) => extractable = v,
                _ => {}
            }
        }
        Ok((sensitive, extractable))
    }

    fn sign(&self, label: &str, kind: KeyKind, msg: &[u8]) -> Result<Vec<u8>, Error> {
        let mut lease = self.lease()?;
        let handle = self.private_handle(&mut lease, label)?;
        let signed = match kind {
            KeyKind::EcdsaP256 => {
                // CKM_ECDSA over the SHA-256 digest: every PKCS#11 HSM has it, where
                // CKM_ECDSA_SHA256 is optional.
                let digest = ring::digest::digest(&ring::digest::SHA256, msg);
                lease.sign(&Mechanism::Ecdsa, handle, digest.as_ref())
            }
            KeyKind::Ed25519 => lease.sign(
                &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
                handle,
                msg,
            ),
        };
        let raw = match signed {
            Ok(raw) => raw,
            Err(e) => return Err(self.failed(&mut lease, describe(&e))),
        };
        match kind {
            KeyKind::EcdsaP256 if raw.len() == 64 => Ok(crate::der::sequence(&[
                &crate::der::unsigned_integer(&raw[..32]),
                &crate::der::unsigned_integer(&raw[32..]),
            ])),
            KeyKind::Ed25519 if raw.len() == 64 => Ok(raw),
            _ => Err(Error::Internal(format!(
                "the PKCS#11 token {:?} returned a {}-byte {kind:?} signature",
                self.settings.token_label,
                raw.len()
            ))),
        }
    }
}

/// CKA_EC_POINT is a DER OCTET STRING around the point (PKCS#11 2.40); some modules give
/// the bare point.
fn unwrap_point(value: &[u8], len: usize) -> Option<Vec<u8>> {
    if value.len() == len {
        return Some(value.to_vec());
    }
    let mut reader = crate::der::Reader::new(value);
    let octets = reader.expect(crate::der::tag::OCTET_STRING)?;
    (reader.is_empty() && octets.content.len() == len).then(|| octets.content.to_vec())
}

/// Forgets sessions of a module about to be finalized, without closing them (C_Finalize ends
/// them all; closing one afterwards would name a handle that no longer exists).
fn idle_sessions_forgotten(idle: &mut Vec<Session>) {
    for session in idle.drain(..) {
        std::mem::forget(session);
    }
}

fn read_pin(path: &Path) -> Result<AuthPin, Error> {
    // The PIN unlocks every CA key: refused, not merely warned about, when others may read it.
    if let Some(mode) = crate::files::exposed_mode(path) {
        return Err(Error::FailedPrecondition(format!(
            "the PKCS#11 PIN file {} is mode {mode:04o}; make it 0600 (chmod 600)",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::FailedPrecondition(format!(
            "reading the PKCS#11 PIN file {}: {e}",
            path.display()
        ))
    })?;
    let pin = text.trim_end_matches(['\n', '\r']);
    if pin.is_empty() || pin.contains('\n') {
        return Err(Error::FailedPrecondition(format!(
            "the PKCS#11 PIN file {} must hold the PIN on one line",
            path.display()
        )));
    }
    Ok(AuthPin::from(pin.to_owned()))
}

/// A key in a token: signs through it, and knows its public half.
pub struct TokenKey {
    token: Arc<Token>,
    label: String,
    kind: KeyKind,
    /// The uncompressed P-256 point, or the 32 Ed25519 bytes.
    public: Vec<u8>,
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenKey")
            .field("token", &self.token.settings.token_label)
            .field("label", &self.label)
            .field("kind", &self.kind)
            .finish()
    }
}

impl TokenKey {
    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn public_raw(&self) -> &[u8] {
        &self.public
    }

    /// Signs `msg`: a DER ECDSA-Sig-Value, or the 64 bytes of an Ed25519 signature.
    /// Waiting for a session and the token's own work block this
    /// thread, so on the server's runtime the other tasks move to another worker meanwhile.
    pub fn sign_message(&self, msg: &[u8]) -> Result<Vec<u8>, Error> {
        crate::files::blocking(|| self.token.sign(&self.label, self.kind, msg))
    }
}

impl rcgen::PublicKeyData for TokenKey {
    fn der_bytes(&self) -> &[u8] {
        &self.public
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        match self.kind {
            KeyKind::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyKind::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }
}

impl rcgen::SigningKey for TokenKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.sign_message(msg).map_err(|e| {
            LAST_FAILURE.with(|f| *f.borrow_mut() = Some(e));
            rcgen::Error::RemoteKeyError
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec_points_are_read_wrapped_or_bare() {
        let point = [4u8; 65];
        assert_eq!(unwrap_point(&point, 65).as_deref(), Some(&point[..]));
        let wrapped = crate::der::tlv(crate::der::tag::OCTET_STRING, &point);
        assert_eq!(unwrap_point(&wrapped, 65).as_deref(), Some(&point[..]));
        assert_eq!(unwrap_point(&wrapped[..60], 65), None);
        assert_eq!(unwrap_point(&[0u8; 32], 65), None);
        let ed = crate::der::tlv(crate::der::tag::OCTET_STRING, &[7u8; 32]);
        assert_eq!(unwrap_point(&ed, 32).as_deref(), Some(&[7u8; 32][..]));
    }
}
