//! The one error type of the domain, and its one mapping to a gRPC status.
//!
//! Variants say what went wrong in terms a caller can act on. Database, crypto and I/O
//! internals become [`Error::Internal`]: the caller sees a generic message, the operator's
//! log gets the detail (boulder `docs/error-handling.md`).

use tonic::{Code, Status};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The request is malformed or breaks a rule about its content.
    #[error("{0}")]
    InvalidArgument(String),
    /// The CSR could not be accepted (parse, key type, signature).
    #[error("CSR refused: {0}")]
    BadCsr(String),
    /// The caller could not be identified (no, unknown, expired or inactive certificate).
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller is known but may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// A rule about the current state refuses the request (e.g. the device is decommissioned).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The caller is over a limit (concurrency); retrying later may succeed.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The store or another dependency cannot be reached; retrying later may succeed.
    #[error("{0}")]
    Unavailable(String),
    /// A fault inside medid. The string is for the operator's log only, never the caller.
    #[error("internal error: {0}")]
    Internal(String),
    /// The audit log or a stored row is not what medid wrote: changed behind its back
    /// (a missing event, a bad leaf hash, a log that no longer extends its checkpoint, an
    /// unknown stored value). The caller sees an internal error; the operator's log and an
    /// `audit.integrity` event get the detail.
    #[error("integrity violation: {0}")]
    Integrity(String),
}

impl Error {
    pub fn internal(context: &str, err: impl std::fmt::Display) -> Self {
        Error::Internal(format!("{context}: {err}"))
    }

    /// The same error, its message led by `context`.
    pub fn context(self, context: &str) -> Self {
        let led = |m: String| format!("{context}{m}");
        match self {
            Error::InvalidArgument(m) => Error::InvalidArgument(led(m)),
            Error::BadCsr(m) => Error::BadCsr(led(m)),
            Error::Unauthenticated(m) => Error::Unauthenticated(led(m)),
            Error::PermissionDenied(m) => Error::PermissionDenied(led(m)),
            Error::NotFound(m) => Error::NotFound(led(m)),
            Error::AlreadyExists(m) => Error::AlreadyExists(led(m)),
            Error::FailedPrecondition(m) => Error::FailedPrecondition(led(m)),
            Error::ResourceExhausted(m) => Error::ResourceExhausted(led(m)),
            Error::Unavailable(m) => Error::Unavailable(led(m)),
            Error::Internal(m) => Error::Internal(led(m)),
            Error::Integrity(m) => Error::Integrity(led(m)),
        }
    }

    /// Whether retrying the same request later may succeed: the service or the network was
    /// unavailable, a limit was reached, or something failed inside. Every other error is
    /// the service's answer to this request, and asking again gets the same one.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Unavailable(_) | Error::ResourceExhausted(_) | Error::Internal(_)
        )
    }

    /// The outcome word recorded in audit events for a refusal of this kind.
    pub fn audit_outcome(&self) -> crate::audit::Outcome {
        use crate::audit::Outcome;
        match self {
            Error::Unauthenticated(_) | Error::PermissionDenied(_) => Outcome::Denied,
            Error::Internal(_) | Error::Integrity(_) | Error::Unavailable(_) => Outcome::Failed,
            Error::ResourceExhausted(_) => Outcome::Denied,
            _ => Outcome::Refused,
        }
    }
}

impl Error {
    /// The gRPC status code this error is answered with, by its canonical name.
    pub fn code_name(&self) -> &'static str {
        match self {
            Error::InvalidArgument(_) | Error::BadCsr(_) => "INVALID_ARGUMENT",
            Error::Unauthenticated(_) => "UNAUTHENTICATED",
            Error::PermissionDenied(_) => "PERMISSION_DENIED",
            Error::NotFound(_) => "NOT_FOUND",
            Error::AlreadyExists(_) => "ALREADY_EXISTS",
            Error::FailedPrecondition(_) => "FAILED_PRECONDITION",
            Error::ResourceExhausted(_) => "RESOURCE_EXHAUSTED",
            Error::Unavailable(_) => "UNAVAILABLE",
            Error::Internal(_) | Error::Integrity(_) => "INTERNAL",
        }
    }

    /// The HTTP status an HTTP edge (EST) answers with, the counterpart of the gRPC mapping
    /// below. The body is the same human message, except for internal errors.
    pub fn http_status(&self) -> u16 {
        match self {
            Error::InvalidArgument(_) | Error::BadCsr(_) => 400,
            Error::Unauthenticated(_) => 401,
            Error::PermissionDenied(_) => 403,
            Error::NotFound(_) => 404,
            Error::AlreadyExists(_) | Error::FailedPrecondition(_) => 409,
            Error::ResourceExhausted(_) => 429,
            Error::Unavailable(_) => 503,
            Error::Internal(_) | Error::Integrity(_) => 500,
        }
    }

    /// The message a caller may see: everything but internal detail.
    pub fn public_message(&self) -> String {
        match self {
            Error::Internal(_) | Error::Integrity(_) => {
                tracing::error!(detail = %self, "internal error");
                "internal error; the operator's log has details".into()
            }
            other => other.to_string(),
        }
    }
}

impl From<&Error> for Status {
    fn from(err: &Error) -> Status {
        match err {
            Error::InvalidArgument(m) => Status::invalid_argument(m.clone()),
            Error::BadCsr(_) => Status::invalid_argument(err.to_string()),
            Error::Unauthenticated(m) => Status::unauthenticated(m.clone()),
            Error::PermissionDenied(m) => Status::permission_denied(m.clone()),
            Error::NotFound(m) => Status::not_found(m.clone()),
            Error::AlreadyExists(m) => Status::already_exists(m.clone()),
            Error::FailedPrecondition(m) => Status::failed_precondition(m.clone()),
            Error::Unavailable(m) => Status::unavailable(m.clone()),
            Error::ResourceExhausted(m) => Status::resource_exhausted(m.clone()),
            Error::Internal(_) | Error::Integrity(_) => {
                tracing::error!(detail = %err, "internal error");
                Status::new(
                    Code::Internal,
                    "internal error; the operator's log has details",
                )
            }
        }
    }
}

/// A recorded refusal is answered as its error is.
impl From<crate::service::Refused> for Status {
    fn from(refused: crate::service::Refused) -> Status {
        Status::from(refused.error())
    }
}

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        match err {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                tracing::warn!(error = %err, "database unavailable");
                Error::Unavailable("database unavailable; retry later".into())
            }
            other => Error::internal("database", other),
        }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(err: rusqlite::Error) -> Self {
        match err.sqlite_error_code() {
            Some(
                rusqlite::ErrorCode::DatabaseBusy
                | rusqlite::ErrorCode::DatabaseLocked
                | rusqlite::ErrorCode::SystemIoFailure
                | rusqlite::ErrorCode::CannotOpen
                | rusqlite::ErrorCode::DiskFull,
            ) => {
                tracing::warn!(error = %err, "database unavailable");
                Error::Unavailable("database unavailable; retry later".into())
            }
            _ => Error::internal("database", err),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
