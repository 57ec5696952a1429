//! The audit vocabulary: every kind of event medid writes, with its stable name (the `action`
//! member of the ledger form, hashed, so never renamed) and its coding in the FHIR AuditEvent
//! rendering (DICOM audit event type and subtype, FHIR action code).
//!
//! A name read back from the store that is not here is an integrity fault, not a new kind:
//! only medid writes the ledger. Kinds that earlier releases wrote and this one no longer
//! does stay, marked retired, so old ledgers still read.

use std::fmt;

/// One kind of audit event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    // Registry.
    ManufacturerCreate,
    ManufacturerList,
    PrincipalIssue,
    PrincipalBootstrap,
    PrincipalEvict,
    TokenCreate,
    // Devices and certificates.
    DeviceEnroll,
    DeviceRead,
    DeviceList,
    DeviceRotationRead,
    DeviceDecommission,
    CertificateRenew,
    CertificateRevoke,
    CertificateStatus,
    CertificateExpiringList,
    // Public material and the CA itself.
    TrustBundle,
    CrlGet,
    CrlSign,
    CaRollover,
    /// A root CRL put in service (issuing CAs the root revoked, or a re-signed CRL).
    CaRootCrl,
    PkiBind,
    ServiceCertificateAdopt,
    ServiceCertificateRenew,
    OcspResponderIssue,
    // Device data and the ledger.
    DataAccess,
    AuditQuery,
    AuditExport,
    AuditCheckpointRead,
    AuditProofRead,
    AuditIntegrity,
    AuditArchive,
    // Refusals that are not of one operation.
    RequestLimit,
    AuthRefusedAggregate,
    // Retired: written by earlier releases, read from their ledgers.
    CertificateReserve,
    CertificateAbandon,
    AuthAuthenticate,
}

/// A DICOM (DCM) or HL7 coding: system, code, display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coding {
    pub system: &'static str,
    pub code: &'static str,
    pub display: &'static str,
}

pub const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
/// medid's own code system: the action names, as the last subtype of every rendered event.
pub const MEDID_ACTIONS: &str = "https://medid.dev/fhir/CodeSystem/audit-action";

const fn dcm(code: &'static str, display: &'static str) -> Coding {
    Coding {
        system: DCM,
        code,
        display,
    }
}

const QUERY: Coding = dcm("110112", "Query");
const SECURITY_ALERT: Coding = dcm("110113", "Security Alert");
const AUDIT_LOG_USED: Coding = dcm("110101", "Audit Log Used");
const EXPORT: Coding = dcm("110106", "Export");
const USER_AUTHENTICATION: Coding = dcm("110114", "User Authentication");
const SECURITY_CONFIGURATION: Coding = dcm("110129", "Security Configuration");
const SECURITY_ROLES_CHANGED: Coding = dcm("110136", "Security Roles Changed");
const USER_SECURITY_ATTRIBUTES_CHANGED: Coding = dcm("110137", "User security Attributes Changed");
const OBJECT_SECURITY_ATTRIBUTES_CHANGED: Coding =
    dcm("110135", "Object Security Attributes Changed");
const NODE_AUTHENTICATION: Coding = dcm("110126", "Node Authentication");
const LOGIN: Coding = dcm("110122", "Login");
const RESTRICTED_FUNCTION: Coding = dcm("110132", "Use of Restricted Function");

/// The FHIR AuditEvent `action` code: create, read, update, delete, execute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FhirAction {
    Create,
    Read,
    Update,
    Delete,
    Execute,
}

impl FhirAction {
    pub fn code(self) -> &'static str {
        match self {
            FhirAction::Create => "C",
            FhirAction::Read => "R",
            FhirAction::Update => "U",
            FhirAction::Delete => "D",
            FhirAction::Execute => "E",
        }
    }
}

/// How an action is coded in FHIR: its event type, the DICOM subtype if one fits (medid's own
/// action code follows it in every case), and the FHIR action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FhirCoding {
    pub event_type: Coding,
    pub subtype: Option<Coding>,
    pub action: FhirAction,
}

impl Action {
    pub const ALL: [Action; 36] = [
        Action::ManufacturerCreate,
        Action::ManufacturerList,
        Action::PrincipalIssue,
        Action::PrincipalBootstrap,
        Action::PrincipalEvict,
        Action::TokenCreate,
        Action::DeviceEnroll,
        Action::DeviceRead,
        Action::DeviceList,
        Action::DeviceRotationRead,
        Action::DeviceDecommission,
        Action::CertificateRenew,
        Action::CertificateRevoke,
        Action::CertificateStatus,
        Action::CertificateExpiringList,
        Action::TrustBundle,
        Action::CrlGet,
        Action::CrlSign,
        Action::CaRollover,
        Action::CaRootCrl,
        Action::PkiBind,
        Action::ServiceCertificateAdopt,
        Action::ServiceCertificateRenew,
        Action::OcspResponderIssue,
        Action::DataAccess,
        Action::AuditQuery,
        Action::AuditExport,
        Action::AuditCheckpointRead,
        Action::AuditProofRead,
        Action::AuditIntegrity,
        Action::AuditArchive,
        Action::RequestLimit,
        Action::AuthRefusedAggregate,
        Action::CertificateReserve,
        Action::CertificateAbandon,
        Action::AuthAuthenticate,
    ];

    /// The stable name, as recorded and hashed.
    pub fn name(self) -> &'static str {
        match self {
            Action::ManufacturerCreate => "manufacturer.create",
            Action::ManufacturerList => "manufacturer.list",
            Action::PrincipalIssue => "principal.issue",
            Action::PrincipalBootstrap => "principal.bootstrap",
            Action::PrincipalEvict => "principal.evict",
            Action::TokenCreate => "token.create",
            Action::DeviceEnroll => "device.enroll",
            Action::DeviceRead => "device.read",
            Action::DeviceList => "device.list",
            Action::DeviceRotationRead => "device.rotation.read",
            Action::DeviceDecommission => "device.decommission",
            Action::CertificateRenew => "certificate.renew",
            Action::CertificateRevoke => "certificate.revoke",
            Action::CertificateStatus => "certificate.status",
            Action::CertificateExpiringList => "certificate.expiring.list",
            Action::TrustBundle => "trust.bundle",
            Action::CrlGet => "crl.get",
            Action::CrlSign => "crl.sign",
            Action::CaRollover => "ca.rollover",
            Action::CaRootCrl => "ca.root.crl",
            Action::PkiBind => "pki.bind",
            Action::ServiceCertificateAdopt => "service.certificate.adopt",
            Action::ServiceCertificateRenew => "service.certificate.renew",
            Action::OcspResponderIssue => "ocsp.responder.issue",
            Action::DataAccess => "data.access",
            Action::AuditQuery => "audit.query",
            Action::AuditExport => "audit.export",
            Action::AuditCheckpointRead => "audit.checkpoint.read",
            Action::AuditProofRead => "audit.proof.read",
            Action::AuditIntegrity => "audit.integrity",
            Action::AuditArchive => "audit.archive",
            Action::RequestLimit => "request.limit",
            Action::AuthRefusedAggregate => "auth.refused.aggregate",
            Action::CertificateReserve => "certificate.reserve",
            Action::CertificateAbandon => "certificate.abandon",
            Action::AuthAuthenticate => "auth.authenticate",
        }
    }

    /// The action of a stored name (one `match`: exports decode every row).
    pub fn parse(name: &str) -> Option<Action> {
        Some(match name {
            "manufacturer.create" => Action::ManufacturerCreate,
            "manufacturer.list" => Action::ManufacturerList,
            "principal.issue" => Action::PrincipalIssue,
            "principal.bootstrap" => Action::PrincipalBootstrap,
            "principal.evict" => Action::PrincipalEvict,
            "token.create" => Action::TokenCreate,
            "device.enroll" => Action::DeviceEnroll,
            "device.read" => Action::DeviceRead,
            "device.list" => Action::DeviceList,
            "device.rotation.read" => Action::DeviceRotationRead,
            "device.decommission" => Action::DeviceDecommission,
            "certificate.renew" => Action::CertificateRenew,
            "certificate.revoke" => Action::CertificateRevoke,
            "certificate.status" => Action::CertificateStatus,
            "certificate.expiring.list" => Action::CertificateExpiringList,
            "trust.bundle" => Action::TrustBundle,
            "crl.get" => Action::CrlGet,
            "crl.sign" => Action::CrlSign,
            "ca.rollover" => Action::CaRollover,
            "ca.root.crl" => Action::CaRootCrl,
            "pki.bind" => Action::PkiBind,
            "service.certificate.adopt" => Action::ServiceCertificateAdopt,
            "service.certificate.renew" => Action::ServiceCertificateRenew,
            "ocsp.responder.issue" => Action::OcspResponderIssue,
            "data.access" => Action::DataAccess,
            "audit.query" => Action::AuditQuery,
            "audit.export" => Action::AuditExport,
            "audit.checkpoint.read" => Action::AuditCheckpointRead,
            "audit.proof.read" => Action::AuditProofRead,
            "audit.integrity" => Action::AuditIntegrity,
            "audit.archive" => Action::AuditArchive,
            "request.limit" => Action::RequestLimit,
            "auth.refused.aggregate" => Action::AuthRefusedAggregate,
            "certificate.reserve" => Action::CertificateReserve,
            "certificate.abandon" => Action::CertificateAbandon,
            "auth.authenticate" => Action::AuthAuthenticate,
            _ => return None,
        })
    }

    /// Written by earlier releases only.
    pub fn is_retired(self) -> bool {
        matches!(
            self,
            Action::CertificateReserve | Action::CertificateAbandon | Action::AuthAuthenticate
        )
    }

    /// Whether a success is recorded. Reads of public material and of metadata that holds no
    /// patient data (listings, statuses, CRLs, checkpoints, proofs) are recorded only when
    /// refused, so that a gateway polling a CRL does not grow the ledger; device-data access,
    /// exports, searches and every change are recorded either way.
    pub fn audited_on_success(self) -> bool {
        !matches!(
            self,
            Action::ManufacturerList
                | Action::DeviceRead
                | Action::DeviceList
                | Action::DeviceRotationRead
                | Action::CertificateStatus
                | Action::CertificateExpiringList
                | Action::TrustBundle
                | Action::CrlGet
                | Action::AuditCheckpointRead
                | Action::AuditProofRead
                | Action::RequestLimit
                | Action::AuthRefusedAggregate
                | Action::AuditIntegrity
        )
    }

    /// The FHIR coding of this action. Device-data access has its own IHE BALP rendering
    /// (RESTful operation); this is what the rendering uses for everything else, and for a
    /// refused access report, which accessed nothing.
    pub fn fhir(self) -> FhirCoding {
        use FhirAction::{Create, Delete, Execute, Read, Update};
        let (event_type, subtype, action) = match self {
            Action::ManufacturerCreate => (SECURITY_ALERT, Some(SECURITY_CONFIGURATION), Create),
            Action::PrincipalIssue | Action::PrincipalBootstrap => {
                (SECURITY_ALERT, Some(SECURITY_ROLES_CHANGED), Create)
            }
            Action::PrincipalEvict => (SECURITY_ALERT, Some(SECURITY_ROLES_CHANGED), Delete),
            Action::TokenCreate => (SECURITY_ALERT, Some(SECURITY_CONFIGURATION), Create),
            Action::DeviceEnroll
            | Action::CertificateRenew
            | Action::CertificateReserve
            | Action::ServiceCertificateAdopt
            | Action::ServiceCertificateRenew
            | Action::OcspResponderIssue => (
                SECURITY_ALERT,
                Some(USER_SECURITY_ATTRIBUTES_CHANGED),
                Create,
            ),
            Action::DeviceDecommission | Action::CertificateRevoke | Action::CertificateAbandon => {
                (
                    SECURITY_ALERT,
                    Some(USER_SECURITY_ATTRIBUTES_CHANGED),
                    Update,
                )
            }
            Action::CrlSign => (
                SECURITY_ALERT,
                Some(OBJECT_SECURITY_ATTRIBUTES_CHANGED),
                Create,
            ),
            Action::CaRollover | Action::CaRootCrl | Action::PkiBind => {
                (SECURITY_ALERT, Some(SECURITY_CONFIGURATION), Update)
            }
            Action::ManufacturerList
            | Action::DeviceRead
            | Action::DeviceList
            | Action::DeviceRotationRead
            | Action::CertificateStatus
            | Action::CertificateExpiringList
            | Action::TrustBundle
            | Action::CrlGet => (QUERY, None, Execute),
            Action::DataAccess => (SECURITY_ALERT, Some(RESTRICTED_FUNCTION), Execute),
            Action::AuditQuery | Action::AuditCheckpointRead | Action::AuditProofRead => {
                (AUDIT_LOG_USED, None, Read)
            }
            Action::AuditExport => (EXPORT, None, Read),
            Action::AuditIntegrity => (SECURITY_ALERT, None, Execute),
            // The events went to a bundle, then their rows were dropped: a change to the log.
            Action::AuditArchive => (SECURITY_ALERT, Some(SECURITY_CONFIGURATION), Delete),
            Action::RequestLimit => (SECURITY_ALERT, Some(RESTRICTED_FUNCTION), Execute),
            Action::AuthRefusedAggregate => (SECURITY_ALERT, Some(NODE_AUTHENTICATION), Execute),
            Action::AuthAuthenticate => (USER_AUTHENTICATION, Some(LOGIN), Execute),
        };
        FhirCoding {
            event_type,
            subtype,
            action,
        }
    }
}

/// What a reported access did to device data (the `access_action` detail of `data.access`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataAction {
    Create,
    Read,
    Update,
    Delete,
    Export,
    /// An operation on the data (a FHIR `$operation`, a posted search, a command).
    Execute,
}

impl DataAction {
    pub const ALL: [DataAction; 6] = [
        DataAction::Create,
        DataAction::Read,
        DataAction::Update,
        DataAction::Delete,
        DataAction::Export,
        DataAction::Execute,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DataAction::Create => "create",
            DataAction::Read => "read",
            DataAction::Update => "update",
            DataAction::Delete => "delete",
            DataAction::Export => "export",
            DataAction::Execute => "execute",
        }
    }

    pub fn parse(name: &str) -> Option<DataAction> {
        DataAction::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The FHIR RESTful interaction and AuditEvent action of the access (IHE BALP): an export
    /// reads the data.
    pub fn fhir(self) -> (&'static str, FhirAction) {
        match self {
            DataAction::Create => ("create", FhirAction::Create),
            DataAction::Read | DataAction::Export => ("read", FhirAction::Read),
            DataAction::Update => ("update", FhirAction::Update),
            DataAction::Delete => ("delete", FhirAction::Delete),
            DataAction::Execute => ("operation", FhirAction::Execute),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl serde::Serialize for Action {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_has_one_distinct_name_that_parses_back() {
        let mut names: Vec<&str> = Action::ALL.iter().map(|a| a.name()).collect();
        for a in Action::ALL {
            assert_eq!(Action::parse(a.name()), Some(a));
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Action::ALL.len());
        assert_eq!(Action::parse("device.enrol"), None);
    }

    #[test]
    fn changes_are_security_alerts_with_a_dicom_subtype_and_reads_are_not() {
        for a in Action::ALL {
            let c = a.fhir();
            assert_eq!(c.event_type.system, DCM, "{a}");
            if matches!(
                c.action,
                FhirAction::Create | FhirAction::Update | FhirAction::Delete
            ) {
                assert_eq!(c.event_type.code, "110113", "{a}");
                assert!(c.subtype.is_some(), "{a}");
            }
        }
        assert_eq!(Action::AuditExport.fhir().event_type.code, "110106");
        assert_eq!(Action::DeviceList.fhir().action, FhirAction::Execute);
    }
}
