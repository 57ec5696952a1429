//! How the command line reports a failure: `error: CODE: message` (or, with `--json`, one JSON
//! object on stderr), and an exit status by class, so a script can tell "not found" from
//! "denied" from "try again later" without reading the text.
//!
//! | exit | class | codes |
//! |---|---|---|
//! | 0 | success (`status`: the certificate is good) | |
//! | 1 | internal error | INTERNAL |
//! | 2 | usage (unknown option, missing argument) | |
//! | 3 | `serve`: stopped, but the drain deadline closed connections | |
//! | 4 | not found | NOT_FOUND |
//! | 5 | denied or unauthenticated | PERMISSION_DENIED, UNAUTHENTICATED |
//! | 6 | conflict with the current state | ALREADY_EXISTS, FAILED_PRECONDITION |
//! | 7 | invalid input | INVALID_ARGUMENT |
//! | 8 | unavailable or over a limit: retry later | UNAVAILABLE, RESOURCE_EXHAUSTED |
//! | 10 | `status`: the certificate is revoked | |
//! | 11 | `status`: the certificate is unknown to medid | |

use serde_json::json;

use crate::error::Error;

pub const EXIT_INTERNAL: u8 = 1;
pub const EXIT_NOT_FOUND: u8 = 4;
pub const EXIT_DENIED: u8 = 5;
pub const EXIT_CONFLICT: u8 = 6;
pub const EXIT_INVALID: u8 = 7;
pub const EXIT_UNAVAILABLE: u8 = 8;
pub const EXIT_REVOKED: u8 = 10;
pub const EXIT_UNKNOWN: u8 = 11;

/// The exit status of a failure of this kind.
pub fn exit_status(e: &Error) -> u8 {
    match e {
        Error::NotFound(_) => EXIT_NOT_FOUND,
        Error::Unauthenticated(_) | Error::PermissionDenied(_) => EXIT_DENIED,
        Error::AlreadyExists(_) | Error::FailedPrecondition(_) => EXIT_CONFLICT,
        Error::InvalidArgument(_) | Error::BadCsr(_) => EXIT_INVALID,
        Error::Unavailable(_) | Error::ResourceExhausted(_) => EXIT_UNAVAILABLE,
        Error::Internal(_) | Error::Integrity(_) => EXIT_INTERNAL,
    }
}

/// The one line (or JSON object) a failure is reported as.
pub fn report(e: &Error, json: bool) -> String {
    let message = match e {
        // The server's internal errors arrive as their public message; a local one keeps
        // its detail, which is the operator's own.
        Error::Internal(detail) => detail.clone(),
        other => other.to_string(),
    };
    if json {
        json!({"error": {"code": e.code_name(), "message": message, "exit": exit_status(e)}})
            .to_string()
    } else {
        format!("error: {}: {message}", e.code_name())
    }
}

/// Whether the command line asked for JSON output (`--json` is a global flag).
pub fn wants_json(args: &[String]) -> bool {
    args.iter()
        .take_while(|a| *a != "--")
        .any(|a| a == "--json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_has_its_exit_status_and_code_in_the_line() {
        let cases = [
            (Error::NotFound("x".into()), 4, "NOT_FOUND"),
            (Error::PermissionDenied("x".into()), 5, "PERMISSION_DENIED"),
            (Error::Unauthenticated("x".into()), 5, "UNAUTHENTICATED"),
            (Error::AlreadyExists("x".into()), 6, "ALREADY_EXISTS"),
            (
                Error::FailedPrecondition("x".into()),
                6,
                "FAILED_PRECONDITION",
            ),
            (Error::InvalidArgument("x".into()), 7, "INVALID_ARGUMENT"),
            (Error::BadCsr("x".into()), 7, "INVALID_ARGUMENT"),
            (Error::Unavailable("x".into()), 8, "UNAVAILABLE"),
            (
                Error::ResourceExhausted("x".into()),
                8,
                "RESOURCE_EXHAUSTED",
            ),
            (Error::Internal("x".into()), 1, "INTERNAL"),
        ];
        for (e, exit, code) in cases {
            assert_eq!(exit_status(&e), exit, "{e:?}");
            assert!(
                report(&e, false).starts_with(&format!("error: {code}: ")),
                "{e:?}"
            );
            let v: serde_json::Value = serde_json::from_str(&report(&e, true)).unwrap();
            assert_eq!(v["error"]["code"], code);
            assert_eq!(v["error"]["exit"], exit);
        }
    }

    #[test]
    fn json_is_asked_for_before_a_double_dash_only() {
        let args = |s: &[&str]| s.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        assert!(wants_json(&args(&["medid", "device", "get", "--json"])));
        assert!(!wants_json(&args(&["medid", "x", "--", "--json"])));
    }
}
