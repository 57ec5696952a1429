//! The compliance console: read-only HTML pages on an HTTPS listener of their own,
//! authenticated by client certificate like every other call (docs/CONSOLE.md). Pages are
//! rendered here, with no JavaScript build step; the one script (`verify.js`) checks an
//! event's inclusion proof and signed checkpoint in the browser. Every page that shows audit
//! data goes through the same use cases as gRPC, so it is authorised by role and recorded as
//! an audit event (`audit.query`, `audit.checkpoint.read`, `audit.proof.read`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Extension, Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http::{header, HeaderValue, StatusCode};

use super::conn::ConnInfo;
use crate::audit::{Action, Outcome};
use crate::domain::{Principal, Role};
use crate::error::Error;
use crate::service::{Ca, Refused};
use crate::store::ledger::AuditQuery;

/// Events per page of the audit search.
const PAGE: u32 = 50;

const CSS: &str = include_str!("console.css");
const VERIFY_JS: &str = include_str!("verify.js");

pub fn router(ca: Arc<Ca>) -> Router {
    Router::new()
        .route("/", get(overview))
        .route("/audit", get(audit_search))
        .route("/audit/event/{seq}", get(event_page))
        .route(
            "/static/console.css",
            get(|| async { asset("text/css; charset=utf-8", CSS) }),
        )
        .route(
            "/static/verify.js",
            get(|| async { asset("text/javascript; charset=utf-8", VERIFY_JS) }),
        )
        .with_state(ca)
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

/// Escapes text for HTML element content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Text for a `<script type="application/json">` element: `<` escaped so that no `</script>`
/// can end it early.
fn script_json(v: &serde_json::Value) -> String {
    v.to_string().replace('<', "\\u003c")
}

/// A whole page: header with navigation and the caller, then `body`.
fn page(who: Option<&Principal>, title: &str, body: &str) -> Response {
    let who = who
        .map(|w| {
            format!(
                "<span class=\"who\">Signed in by certificate as <strong>{}</strong> ({})</span>",
                esc(&w.uri),
                esc(w.role.as_str())
            )
        })
        .unwrap_or_default();
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · medid console</title>\
         <link rel=\"stylesheet\" href=\"/static/console.css\"></head><body>\
         <header><strong>medid console</strong><nav aria-label=\"Main\"><a href=\"/\">Overview</a> · \
         <a href=\"/audit\">Audit search</a></nav>{who}</header>\
         <main id=\"main\"><h1>{title}</h1>{body}</main></body></html>",
        title = esc(title),
    );
    let mut r = html.into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // Only this origin's script and style; no frames; nothing cached (audit data).
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn refused_page(who: Option<&Principal>, e: &Error) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = page(
        who,
        "Refused",
        &format!(
            "<p class=\"fail\" role=\"alert\">{}</p><p>Status {}.</p>",
            esc(&e.to_string()),
            status.as_u16()
        ),
    );
    *r.status_mut() = status;
    r
}

/// The caller, authenticated by its client certificate as on every gRPC call. A browser with
/// no certificate gets 401 and is counted with the other unauthenticated refusals.
async fn caller(ca: &Ca, peer: &ConnInfo) -> Result<Principal, Response> {
    match ca.authenticate(peer.leaf(), peer.remote.ip()).await {
        Ok(who) => Ok(who),
        Err(refused) => {
            let mut r = refused_page(None, refused.error());
            if peer.leaf().is_none() {
                *r.status_mut() = StatusCode::UNAUTHORIZED;
            }
            Err(r)
        }
    }
}

fn refused(who: &Principal, r: Refused) -> Response {
    refused_page(Some(who), r.error())
}

async fn overview(State(ca): State<Arc<Ca>>, Extension(peer): Extension<ConnInfo>) -> Response {
    let who = match caller(&ca, &peer).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let mut body = String::new();
    // The ledger: its size and the last signed checkpoint, checked by the service.
    match ca.signed_checkpoint(&who).await {
        Ok((cp, _note)) => {
            let (damaged, checked_at) = ca.integrity_state().await;
            let intact = !damaged;
            let checked = checked_at
                .and_then(|t| crate::audit::ledger::rfc3339(t).ok())
                .unwrap_or_else(|| "not yet since the start".into());
            let _ = write!(
                body,
                "<section aria-labelledby=\"ledger\"><h2 id=\"ledger\">Audit ledger</h2><div class=\"cards\">\
                 <div class=\"card\"><div class=\"n\" id=\"ledger-size\">{}</div>events in the log</div>\
                 <div class=\"card\"><div class=\"n\">{}</div>events covered by the checkpoint just signed<br>\
                 root <code>{}</code></div>\
                 <div class=\"card\"><div class=\"n {}\" id=\"integrity\">{}</div>whole-log check, last run {}</div>\
                 </div></section>",
                cp.size,
                cp.size,
                esc(&crate::domain::hex(&cp.root)),
                if intact { "pass" } else { "fail" },
                if intact { "intact" } else { "DAMAGED" },
                esc(&checked),
            );
        }
        Err(r) => {
            let _ = write!(
                body,
                "<section><h2>Audit ledger</h2><p class=\"fail\" role=\"alert\">{}</p></section>",
                esc(&r.error().to_string())
            );
        }
    }
    if who.role == Role::Auditor {
        body.push_str(
            "<p><a href=\"/audit\">Search the audit trail</a>: by time, device, actor, action, \
             patient reference and outcome; each event links to its page, where this browser \
             verifies its inclusion in the signed log.</p>",
        );
    }
    page(Some(&who), "Overview", &body)
}

/// The search form's fields, as given.
type Params = BTreeMap<String, String>;

/// Decodes `application/x-www-form-urlencoded` (a GET form's query): `+` is a space, `%XX` a
/// byte; a pair that is not UTF-8 is dropped. A repeated key keeps its last value.
fn form(raw: &str) -> Params {
    fn decode(s: &str) -> Option<String> {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' => {
                    let h = s.get(i + 1..i + 3)?;
                    out.push(u8::from_str_radix(h, 16).ok()?);
                    i += 2;
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8(out).ok()
    }
    raw.split('&')
        .filter(|kv| !kv.is_empty())
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            Some((decode(k)?, decode(v)?))
        })
        .collect()
}

fn param<'a>(p: &'a Params, key: &str) -> Option<&'a str> {
    p.get(key).map(|s| s.trim()).filter(|s| !s.is_empty())
}

/// A date (`2026-12-03`, from a date input: the day's start, or its end for `to`) or an
/// RFC 3339 time.
fn when(s: &str, end_of_day: bool) -> Result<time::OffsetDateTime, Error> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t);
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let day = time::Date::parse(s, &format).map_err(|_| {
        Error::InvalidArgument(format!(
            "{} is not a date (2026-12-03) or an RFC 3339 time",
            crate::domain::quote(s)
        ))
    })?;
    let t = if end_of_day {
        day.with_hms(23, 59, 59).expect("23:59:59 is a time")
    } else {
        day.midnight()
    };
    Ok(t.assume_utc())
}

fn query_of(p: &Params) -> Result<AuditQuery, Error> {
    let action = param(p, "action")
        .map(|a| {
            Action::parse(a).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "{} is not an audit action",
                    crate::domain::quote(a)
                ))
            })
        })
        .transpose()?;
    let outcome = param(p, "outcome")
        .map(|o| {
            Outcome::parse(o).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "{} is not success, refused, denied or failed",
                    crate::domain::quote(o)
                ))
            })
        })
        .transpose()?;
    Ok(AuditQuery {
        from: param(p, "from").map(|s| when(s, false)).transpose()?,
        to: param(p, "to").map(|s| when(s, true)).transpose()?,
        device_uri: param(p, "device").map(str::to_owned),
        manufacturer: param(p, "manufacturer").map(str::to_owned),
        actor_uri: param(p, "actor").map(str::to_owned),
        action,
        outcome,
        patient_ref: param(p, "patient").map(str::to_owned),
    })
}

fn filter_form(p: &Params) -> String {
    let field = |key: &str, label: &str, kind: &str| {
        format!(
            "<label for=\"f-{key}\">{label}<input id=\"f-{key}\" name=\"{key}\" type=\"{kind}\" value=\"{}\"></label>",
            esc(param(p, key).unwrap_or(""))
        )
    };
    let mut actions = String::from("<option value=\"\">any</option>");
    for a in Action::ALL {
        let selected = if param(p, "action") == Some(a.name()) {
            " selected"
        } else {
            ""
        };
        let _ = write!(actions, "<option{selected}>{}</option>", a.name());
    }
    let mut outcomes = String::from("<option value=\"\">any</option>");
    for o in ["success", "refused", "denied", "failed"] {
        let selected = if param(p, "outcome") == Some(o) {
            " selected"
        } else {
            ""
        };
        let _ = write!(outcomes, "<option{selected}>{o}</option>");
    }
    format!(
        "<form class=\"filters\" method=\"get\" action=\"/audit\" role=\"search\">{}{}{}{}{}\
         <label for=\"f-action\">Action<select id=\"f-action\" name=\"action\">{actions}</select></label>\
         <label for=\"f-outcome\">Outcome<select id=\"f-outcome\" name=\"outcome\">{outcomes}</select></label>\
         <div><button type=\"submit\">Search</button></div></form>",
        field("from", "From (date or RFC 3339)", "text"),
        field("to", "To (date or RFC 3339)", "text"),
        field("device", "Device URI", "text"),
        field("actor", "Actor URI", "text"),
        field("patient", "Patient reference", "text"),
    )
}

async fn audit_search(
    State(ca): State<Arc<Ca>>,
    Extension(peer): Extension<ConnInfo>,
    RawQuery(raw): RawQuery,
) -> Response {
    let p = form(raw.as_deref().unwrap_or(""));
    let who = match caller(&ca, &peer).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let query = match query_of(&p) {
        Ok(q) => q,
        Err(e) => {
            let mut r = page(
                Some(&who),
                "Audit search",
                &format!(
                    "{}<p class=\"fail\" role=\"alert\">{}</p>",
                    filter_form(&p),
                    esc(&e.to_string())
                ),
            );
            *r.status_mut() = StatusCode::BAD_REQUEST;
            return r;
        }
    };
    let after = param(&p, "after")
        .and_then(|a| a.parse::<i64>().ok())
        .unwrap_or(0);
    let (events, next) = match ca.query_audit(&who, query, after, PAGE).await {
        Ok(found) => found,
        Err(r) => return refused(&who, r),
    };
    let mut body = filter_form(&p);
    if events.is_empty() {
        body.push_str("<p id=\"results\">No event matches.</p>");
    } else {
        body.push_str(
            "<table id=\"results\"><caption>Matching events, oldest first</caption><thead><tr>\
             <th scope=\"col\">Seq</th><th scope=\"col\">Recorded</th><th scope=\"col\">Action</th>\
             <th scope=\"col\">Actor</th><th scope=\"col\">Target</th><th scope=\"col\">Outcome</th></tr></thead><tbody>",
        );
        for e in &events {
            let s = |k: &str| e[k].as_str().unwrap_or("").to_owned();
            let seq = e["seq"].as_i64().unwrap_or(0);
            let _ = write!(
                body,
                "<tr><td><a href=\"/audit/event/{seq}\">{seq}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&s("recorded_at")),
                esc(&s("action")),
                esc(e["actor"]["uri"].as_str().unwrap_or("")),
                esc(&s("target")),
                esc(&s("outcome")),
            );
        }
        body.push_str("</tbody></table>");
    }
    if let Some(next) = next {
        let mut q: Vec<String> = p
            .iter()
            .filter(|(k, v)| k.as_str() != "after" && !v.is_empty())
            .map(|(k, v)| format!("{}={}", esc(k), esc(&crate::domain::percent_encode(v))))
            .collect();
        q.push(format!("after={next}"));
        let _ = write!(
            body,
            "<p><a id=\"next\" href=\"/audit?{}\">Next page</a></p>",
            q.join("&amp;")
        );
    }
    page(Some(&who), "Audit search", &body)
}

async fn event_page(
    State(ca): State<Arc<Ca>>,
    Extension(peer): Extension<ConnInfo>,
    Path(seq): Path<i64>,
) -> Response {
    let who = match caller(&ca, &peer).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    // The event as the log holds it now (a view, recorded like any query).
    let event = match ca
        .query_audit(&who, AuditQuery::default(), seq - 1, 1)
        .await
    {
        Ok((events, _)) => events.into_iter().find(|e| e["seq"].as_i64() == Some(seq)),
        Err(r) => return refused(&who, r),
    };
    let Some(event) = event else {
        let mut r = page(
            Some(&who),
            "Event",
            &format!("<p class=\"fail\" role=\"alert\">The log has no event {seq}.</p>"),
        );
        *r.status_mut() = StatusCode::NOT_FOUND;
        return r;
    };
    // A checkpoint to prove it against: one signed now, or, if the log no longer checks out,
    // the newest one medid signed earlier.
    let note = match ca.signed_checkpoint(&who).await {
        Ok((cp, note)) if cp.size >= seq as u64 => Some((cp, note)),
        _ => ca.latest_known_checkpoint().await.ok().flatten(),
    };
    let Some((cp, note)) = note.filter(|(cp, _)| cp.size >= seq as u64) else {
        return page(
            Some(&who),
            &format!("Event {seq}"),
            "<p class=\"unknown\">No signed checkpoint covers this event yet; reload in a few seconds.</p>",
        );
    };
    let (leaf, proof) = match ca.inclusion_proof(&who, seq, cp.size).await {
        Ok(p) => p,
        Err(r) => return refused(&who, r),
    };
    let signer = &ca.ledger.signer;
    use base64::Engine as _;
    let data = serde_json::json!({
        "leaf_hash": crate::domain::hex(&leaf),
        "proof": proof.iter().map(|h| crate::domain::hex(h)).collect::<Vec<_>>(),
        "checkpoint": note,
        "key_name": signer.name(),
        "public_key": base64::engine::general_purpose::STANDARD.encode(signer.public_key()),
    });
    let mut rows = String::new();
    for key in [
        "seq",
        "recorded_at",
        "action",
        "outcome",
        "target",
        "reason",
    ] {
        let v = match &event[key] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => "—".into(),
            other => other.to_string(),
        };
        let _ = write!(
            rows,
            "<tr><th scope=\"row\">{key}</th><td>{}</td></tr>",
            esc(&v)
        );
    }
    let _ = write!(
        rows,
        "<tr><th scope=\"row\">actor</th><td>{} ({})</td></tr>",
        esc(event["actor"]["uri"].as_str().unwrap_or("")),
        esc(event["actor"]["role"].as_str().unwrap_or(""))
    );
    if let Some(detail) = event["detail"].as_object() {
        for (k, v) in detail {
            let v = v
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| v.to_string());
            let _ = write!(
                rows,
                "<tr><th scope=\"row\">detail.{}</th><td>{}</td></tr>",
                esc(k),
                esc(&v)
            );
        }
    }
    let body = format!(
        "<table><caption>The event as the log holds it</caption><tbody>{rows}</tbody></table>\
         <section aria-labelledby=\"verify\" aria-live=\"polite\"><h2 id=\"verify\">Verified in this browser</h2>\
         <p>This page's own script recomputes the event's leaf hash from the event above, follows the \
         inclusion proof to the root, and checks the checkpoint's Ed25519 signature with the audit key \
         <code>{key}</code> (compare it with the <code>audit-signing.pub</code> you hold).</p>\
         <table><tbody>\
         <tr><th scope=\"row\">Verdict</th><td id=\"verdict\" data-result=\"pending\">checking…</td></tr>\
         <tr><th scope=\"row\">Leaf hash</th><td id=\"leaf\" data-result=\"pending\">checking…</td></tr>\
         <tr><th scope=\"row\">Inclusion</th><td id=\"root\" data-result=\"pending\">checking…</td></tr>\
         <tr><th scope=\"row\">Checkpoint signature</th><td id=\"signature\" data-result=\"pending\">checking…</td></tr>\
         </tbody></table></section>\
         <h2>Signed checkpoint</h2><pre>{note}</pre>\
         <h2>Canonical event</h2><pre id=\"canonical\">{canonical}</pre>\
         <script type=\"application/json\" id=\"event-json\">{event_json}</script>\
         <script type=\"application/json\" id=\"proof-data\">{data_json}</script>\
         <script src=\"/static/verify.js\"></script>",
        key = esc(&base64::engine::general_purpose::STANDARD.encode(signer.public_key())),
        note = esc(&note),
        canonical = esc(&String::from_utf8_lossy(
            &crate::audit::jcs::canonical(&event).unwrap_or_default()
        )),
        event_json = script_json(&event),
        data_json = script_json(&data),
    );
    page(Some(&who), &format!("Event {seq}"), &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_for_html_and_scripts() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(
            script_json(&serde_json::json!({"x": "</script><b>"})),
            "{\"x\":\"\\u003c/script>\\u003cb>\"}"
        );
    }

    #[test]
    fn dates_and_times_are_read_and_bad_ones_named() {
        assert_eq!(
            when("2026-12-03", false).unwrap(),
            time::macros::datetime!(2026-12-03 00:00 UTC)
        );
        assert_eq!(
            when("2026-12-03", true).unwrap(),
            time::macros::datetime!(2026-12-03 23:59:59 UTC)
        );
        assert_eq!(
            when("2026-12-03T10:00:00Z", true).unwrap(),
            time::macros::datetime!(2026-12-03 10:00 UTC)
        );
        assert!(when("yesterday", false)
            .unwrap_err()
            .to_string()
            .contains("yesterday"));
        let mut p = Params::new();
        p.insert("action".into(), "data.sneak".into());
        assert!(query_of(&p).is_err());
        let f = form("device=spiffe%3A%2F%2Fm%2Fdevice%2Fa%2F1&patient=Patient+7&bad=%ZZ&after=");
        assert_eq!(f["device"], "spiffe://m/device/a/1");
        assert_eq!(f["patient"], "Patient 7");
        assert!(!f.contains_key("bad"));
        assert_eq!(param(&f, "after"), None);
    }
}
