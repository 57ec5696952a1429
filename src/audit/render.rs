//! Human and interchange renderings of exported events: CSV (safe against spreadsheet formula
//! injection) and FHIR R4 AuditEvent (NDJSON), coded after IHE BALP. Both are views of the
//! verifiable JSON-lines bundle, which stays the record of truth.

use serde_json::{json, Value};

use super::action::{Action, Coding, DataAction, DCM, MEDID_ACTIONS};
use super::{AuditEvent, Outcome};

pub const CSV_HEADER: &str = "seq,recorded_at,actor_uri,actor_role,action,target,outcome,reason,\
access_action,data_category,purpose_of_use,patient_ref,user_id,device_decommissioned,leaf_hash";

/// A CSV cell: always quoted; a value a spreadsheet would run as a formula (leading `=`, `+`,
/// `-`, `@`, tab or carriage return) is prefixed with `'` (OWASP CSV injection guidance).
pub fn csv_cell(s: &str) -> String {
    let guarded = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    format!("\"{}\"", guarded.replace('"', "\"\""))
}

fn detail(e: &AuditEvent, key: &str) -> String {
    match e.detail.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

pub fn csv_row(seq: i64, e: &AuditEvent, leaf_hash: &str) -> String {
    let recorded = super::ledger::rfc3339(e.recorded_at).unwrap_or_default();
    [
        seq.to_string(),
        recorded,
        e.actor.uri.clone(),
        e.actor.role.clone(),
        e.action.name().to_owned(),
        e.target.clone(),
        e.outcome.as_str().to_owned(),
        e.reason.clone().unwrap_or_default(),
        detail(e, "access_action"),
        detail(e, "data_category"),
        detail(e, "purpose_of_use"),
        detail(e, "patient_ref"),
        detail(e, "user_id"),
        detail(e, "device_decommissioned"),
        leaf_hash.to_owned(),
    ]
    .iter()
    .map(|c| csv_cell(c))
    .collect::<Vec<_>>()
    .join(",")
}

fn coding(system: &str, code: &str, display: &str) -> Value {
    json!({"system": system, "code": code, "display": display})
}

fn coded(c: Coding) -> Value {
    coding(c.system, c.code, c.display)
}

/// FHIR has no empty strings: an element whose value would be `""` is left out.
fn put(object: &mut Value, key: &str, value: &str) {
    if !value.is_empty() {
        object[key] = value.into();
    }
}

/// An agent: its type, who (by identifier), its name when it has one, whether it asked.
fn agent(uri: &str, name: &str, requestor: bool, ty: Value) -> Value {
    let mut a = json!({"type": {"coding": [ty]}, "requestor": requestor});
    if !uri.is_empty() {
        a["who"] = json!({"identifier": {"value": uri}});
    }
    put(&mut a, "name", name);
    a
}

/// An entity by identifier, when it has one.
fn entity(id: &str, ty: Value) -> Value {
    let mut e = json!({"type": ty});
    if !id.is_empty() {
        e["what"] = json!({"identifier": {"value": id}});
    }
    e
}

/// One FHIR R4 AuditEvent for event `seq`, with every required element (type, recorded,
/// agent[].requestor, source.observer).
pub fn fhir_audit_event(seq: i64, e: &AuditEvent, observer: &str) -> Value {
    let recorded = super::ledger::rfc3339(e.recorded_at).unwrap_or_default();
    let outcome = match e.outcome {
        Outcome::Success => "0",
        Outcome::Refused | Outcome::Denied => "4",
        Outcome::Failed => "8",
    };
    let mut event = json!({
        "resourceType": "AuditEvent",
        "id": format!("medid-{seq}"),
        "recorded": recorded,
        "outcome": outcome,
        "source": {
            "observer": {"display": "medid", "identifier": {"value": observer}},
            "type": [coding("http://terminology.hl7.org/CodeSystem/security-source-type", "4", "Application Server")]
        },
    });
    if let Some(reason) = &e.reason {
        put(&mut event, "outcomeDesc", reason);
    }
    // A refused report accessed nothing: it is rendered as the refusal it is, below.
    match e.action {
        Action::DataAccess if e.outcome == Outcome::Success => {
            // IHE BALP: a client (the gateway) read device data on behalf of a user.
            let access = DataAction::parse(&detail(e, "access_action")).unwrap_or(DataAction::Read);
            let (interaction, action) = access.fhir();
            event["type"] = coding(
                "http://terminology.hl7.org/CodeSystem/audit-event-type",
                "rest",
                "RESTful Operation",
            );
            event["subtype"] = json!([coding(
                "http://hl7.org/fhir/restful-interaction",
                interaction,
                interaction
            )]);
            event["action"] = action.code().into();
            let purpose = detail(e, "purpose_of_use");
            if !purpose.is_empty() {
                event["purposeOfEvent"] = json!([{"coding": [coding("http://terminology.hl7.org/CodeSystem/v3-ActReason", &purpose, &purpose)]}]);
            }
            let mut agents = vec![
                agent(
                    &e.actor.uri,
                    "gateway",
                    false,
                    coding(DCM, "110152", "Destination Role ID"),
                ),
                agent(
                    &e.target,
                    "device",
                    false,
                    coding(DCM, "110153", "Source Role ID"),
                ),
            ];
            let user = detail(e, "user_id");
            if !user.is_empty() {
                agents.push(agent(
                    &user,
                    &detail(e, "user_role"),
                    true,
                    coding(
                        "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                        "IRCP",
                        "information recipient",
                    ),
                ));
            } else {
                agents[0]["requestor"] = true.into();
            }
            event["agent"] = Value::Array(agents);
            let mut data = entity(
                &e.target,
                coding(
                    "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                    "2",
                    "System Object",
                ),
            );
            data["role"] = coding(
                "http://terminology.hl7.org/CodeSystem/object-role",
                "4",
                "Domain Resource",
            );
            put(&mut data, "description", &detail(e, "data_category"));
            let mut entities = vec![data];
            let patient = detail(e, "patient_ref");
            if !patient.is_empty() {
                entities.push(json!({
                    "what": {"identifier": {"value": patient}},
                    "type": coding("http://terminology.hl7.org/CodeSystem/audit-entity-type", "1", "Person"),
                    "role": coding("http://terminology.hl7.org/CodeSystem/object-role", "1", "Patient"),
                }));
            }
            event["entity"] = Value::Array(entities);
        }
        action => {
            let fhir = action.fhir();
            event["type"] = coded(fhir.event_type);
            event["action"] = fhir.action.code().into();
            let mut subtypes: Vec<Value> = fhir.subtype.into_iter().map(coded).collect();
            subtypes.push(coding(MEDID_ACTIONS, action.name(), action.name()));
            event["subtype"] = Value::Array(subtypes);
            event["agent"] = json!([agent(
                &e.actor.uri,
                &e.actor.role,
                true,
                coding(DCM, "110150", "Application")
            )]);
            event["entity"] = json!([entity(
                &e.target,
                coding(
                    "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                    "2",
                    "System Object"
                )
            )]);
        }
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_like_cells_are_defused_and_quotes_doubled() {
        assert_eq!(csv_cell("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_cell("+1"), "\"'+1\"");
        assert_eq!(csv_cell("@SUM(A1)"), "\"'@SUM(A1)\"");
        assert_eq!(csv_cell("-2"), "\"'-2\"");
        assert_eq!(csv_cell("plain, text"), "\"plain, text\"");
    }

    #[test]
    fn fhir_events_carry_every_required_r4_element() {
        let e = AuditEvent::new(
            time::macros::datetime!(2026-11-23 12:00:00 UTC),
            super::super::Actor::system(),
            crate::audit::Action::DataAccess,
            crate::audit::Target::uri("spiffe://t/device/acme/1"),
        )
        .with("access_action", "read")
        .with("purpose_of_use", "TREAT")
        .with("patient_ref", "p-1")
        .with("data_category", "vital-signs");
        let v = fhir_audit_event(3, &e, "medid.local/audit");
        assert_eq!(v["resourceType"], "AuditEvent");
        assert!(v["type"]["code"].is_string() && v["recorded"].is_string());
        assert!(v["source"]["observer"].is_object());
        for a in v["agent"].as_array().unwrap() {
            assert!(a["requestor"].is_boolean());
        }
        assert_eq!(v["action"], "R");
        assert_eq!(v["entity"][1]["role"]["code"], "1");
    }

    /// Every string in `v`, with its path, that FHIR would refuse for being empty.
    fn empty_strings(v: &Value, path: &str, out: &mut Vec<String>) {
        match v {
            Value::String(s) if s.is_empty() => out.push(path.to_owned()),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    empty_strings(item, &format!("{path}[{i}]"), out);
                }
            }
            Value::Object(map) => {
                for (k, item) in map {
                    empty_strings(item, &format!("{path}.{k}"), out);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn absent_fields_are_left_out_and_a_refused_report_is_a_security_alert() {
        let at = time::macros::datetime!(2026-11-23 12:00:00 UTC);
        let bare = AuditEvent::new(
            at,
            super::super::Actor::system(),
            crate::audit::Action::DataAccess,
            crate::audit::Target::uri("spiffe://t/device/acme/1"),
        )
        .with("user_id", "nurse-1");
        let refused = AuditEvent::new(
            at,
            super::super::Actor::system(),
            crate::audit::Action::DataAccess,
            crate::audit::Target::uri(""),
        )
        .refused(&crate::error::Error::PermissionDenied(String::new()));
        for e in [&bare, &refused] {
            let v = fhir_audit_event(1, e, "medid.local/audit");
            let mut empty = Vec::new();
            empty_strings(&v, "", &mut empty);
            assert!(empty.is_empty(), "{empty:?} in {v}");
        }
        let v = fhir_audit_event(1, &refused, "medid.local/audit");
        assert_eq!(v["type"]["code"], "110113", "{v}");
        assert_eq!(v["agent"].as_array().unwrap().len(), 1);
    }
}

/// What a bundle is rendered as, beside the bundle itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Csv,
    Fhir,
}

/// Renders one line of a verifiable bundle as `view`: an event line gives its CSV row or
/// FHIR AuditEvent; the header line sets `origin` (the FHIR observer) and gives nothing, as
/// do the proof, checkpoint and end lines.
pub fn bundle_line(view: View, line: &serde_json::Value, origin: &mut String) -> Option<String> {
    match line.get("type").and_then(|t| t.as_str()) {
        Some("header") => {
            *origin = line["origin"].as_str().unwrap_or_default().to_owned();
            None
        }
        Some("event") => {
            let (seq, e) = super::ledger::from_json(&line["event"])?;
            Some(match view {
                View::Csv => csv_row(seq, &e, line["leaf_hash"].as_str().unwrap_or_default()),
                View::Fhir => fhir_audit_event(seq, &e, origin).to_string(),
            })
        }
        _ => None,
    }
}
