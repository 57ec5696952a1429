//! Typed audit events: one for every state change and every refused request, written in the
//! same transaction as the change it records (no audit, no action).
//!
//! Events never carry private keys, tokens or secrets: only identifiers, hashes and reasons.
//! The tamper-evident Merkle ledger, checkpoints and exports build on these rows.

pub mod action;
pub mod checkpoint;
pub mod jcs;
pub mod ledger;
pub mod merkle;
pub mod render;
pub mod target;
pub mod verify;

use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::domain::Principal;
use crate::error::Error;
pub use action::Action;
pub use target::Target;

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Refused for its content or the current state (bad CSR, duplicate serial, …).
    Refused,
    /// Refused because of who asked (unauthenticated, wrong role or scope).
    Denied,
    /// Failed inside medid.
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Refused => "refused",
            Outcome::Denied => "denied",
            Outcome::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        Some(match s {
            "success" => Outcome::Success,
            "refused" => Outcome::Refused,
            "denied" => Outcome::Denied,
            "failed" => Outcome::Failed,
            _ => return None,
        })
    }
}

/// Who acted: a principal, or a caller that could not be identified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub uri: String,
    pub role: String,
}

impl Actor {
    pub fn of(p: &Principal) -> Self {
        Self {
            uri: p.uri.clone(),
            role: p.role.as_str().to_owned(),
        }
    }

    /// The service itself (bootstrap, recovery).
    pub fn system() -> Self {
        Self {
            uri: "medid:system".into(),
            role: "system".into(),
        }
    }

    /// A caller whose certificate could not be mapped to a principal, named by the SHA-256
    /// fingerprint of the certificate it presented.
    pub fn unidentified(fingerprint: Option<&str>) -> Self {
        Self {
            uri: match fingerprint {
                Some(fp) => format!("cert:sha256:{fp}"),
                None => "anonymous".into(),
            },
            role: "none".into(),
        }
    }
}

/// One audit event, before the store gives it its sequence number.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    pub recorded_at: OffsetDateTime,
    pub actor: Actor,
    pub action: Action,
    pub target: String,
    pub outcome: Outcome,
    pub reason: Option<String>,
    pub detail: Map<String, Value>,
}

impl AuditEvent {
    pub fn new(recorded_at: OffsetDateTime, actor: Actor, action: Action, target: Target) -> Self {
        Self {
            recorded_at,
            actor,
            action,
            target: target.into_string(),
            outcome: Outcome::Success,
            reason: None,
            detail: Map::new(),
        }
    }

    /// Adds a detail field. Callers pass identifiers and hashes, never secrets.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.detail.insert(key.to_owned(), value.into());
        self
    }

    /// Turns this into the record of a refusal for `err`. Internal details stay in the
    /// operator's log; the event records the caller-visible reason.
    pub fn refused(mut self, err: &Error) -> Self {
        self.outcome = err.audit_outcome();
        self.reason = Some(match err {
            Error::Internal(_) => "internal error".to_owned(),
            other => other.to_string(),
        });
        self
    }
}

/// A stored audit event.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub seq: i64,
    pub event: AuditEvent,
}
