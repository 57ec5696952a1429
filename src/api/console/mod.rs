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

mod chart;

use super::conn::ConnInfo;
use crate::audit::{Action, Outcome};
use crate::domain::{Principal, Role};
use crate::error::Error;
use crate::service::{Ca, Refused};
use crate::store::ledger::AuditQuery;
use crate::store::registry::{DeviceQuery, DeviceState};
use crate::store::stats::Bucket;

/// Events per page of the audit search.
const PAGE: u32 = 50;

const CSS: &str = include_str!("console.css");
const VERIFY_JS: &str = include_str!("verify.js");

pub fn router(ca: Arc<Ca>) -> Router {
    Router::new()
        .route("/", get(overview))
        .route("/audit", get(audit_search))
        .route("/audit/export", get(audit_export))
        .route("/audit/event/{seq}", get(event_page))
        .route("/devices", get(devices_page))
        .route("/devices/{manufacturer}/{serial}", get(device_page))
        .route("/flags", get(flags_page))
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
         <a class=\"skip\" href=\"#main\">Skip to content</a>\
         <header><strong>medid console</strong><nav aria-label=\"Main\"><a href=\"/\">Overview</a> · \
         <a href=\"/devices\">Devices</a> · <a href=\"/audit\">Audit search</a> · \
         <a href=\"/flags\">Flags</a></nav>{who}</header>\
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
    body.push_str(&inventory_section(&ca, &who).await);
    if who.role == Role::Auditor {
        body.push_str(&activity_section(&ca, &who).await);
        body.push_str(
            "<p><a href=\"/audit\">Search the audit trail</a>: by time, device, actor, action, \
             patient reference and outcome; each event links to its page, where this browser \
             verifies its inclusion in the signed log.</p>",
        );
    }
    page(Some(&who), "Overview", &body)
}

/// The overview's inventory: devices by state, certificates ending soon, revocations of the
/// last day, and a histogram of the next month's certificate end dates.
async fn inventory_section(ca: &Ca, who: &Principal) -> String {
    let counts = match ca.inventory_counts(who).await {
        Ok(c) => c,
        Err(r) => {
            return format!(
                "<section><h2>Inventory</h2><p class=\"fail\" role=\"alert\">{}</p></section>",
                esc(&r.error().to_string())
            )
        }
    };
    let state = |s: DeviceState| {
        counts
            .devices_by_state
            .iter()
            .find(|(k, _)| *k == s)
            .map_or(0, |(_, n)| *n)
    };
    let mut out = format!(
        "<section aria-labelledby=\"inventory\"><h2 id=\"inventory\">Inventory</h2><div class=\"cards\">\
         <div class=\"card\"><div class=\"n\" id=\"devices-active\">{}</div>\
         <a href=\"/devices?state=active\">devices in service</a></div>\
         <div class=\"card\"><div class=\"n\" id=\"devices-decommissioned\">{}</div>\
         <a href=\"/devices?state=decommissioned\">devices decommissioned</a></div>\
         <div class=\"card\"><div class=\"n\" id=\"ending-7\">{}</div>certificates ending within 7 days \
         (<span id=\"ending-30\">{}</span> within 30)</div>\
         <div class=\"card\"><div class=\"n\" id=\"revoked-day\">{}</div>certificates revoked in the last 24 hours</div>\
         </div>",
        state(DeviceState::Active),
        state(DeviceState::Decommissioned),
        counts.ending_7_days,
        counts.ending_30_days,
        counts.revoked_last_day,
    );
    if let Ok(days) = ca.certificates_ending_by_day(who).await {
        let today = ca.clock.now().unix_timestamp().div_euclid(DAY) * DAY;
        let buckets: Vec<Bucket> = days
            .iter()
            .map(|(start, n)| Bucket {
                start: *start,
                events: *n,
                accesses: 0,
                unsuccessful: 0,
            })
            .collect();
        out.push_str(&chart::bars(&chart::Series {
            id: "chart-ending",
            title: "Certificates by the day they end, next 30 days",
            unit: "active certificates end",
            bars: dense(
                &buckets,
                today,
                today + (crate::service::inventory::ENDING_DAYS + 1) * DAY,
                DAY,
                |b| b.events,
            ),
            class: "bar",
        }));
    }
    out.push_str("</section>");
    out
}

/// The overview's activity over the last 30 days: access events and refusals a day. One
/// search of the log (recorded as one `audit.query` event).
async fn activity_section(ca: &Ca, who: &Principal) -> String {
    let now = ca.clock.now().unix_timestamp();
    let from = (now - 29 * DAY).div_euclid(DAY) * DAY;
    let query = AuditQuery {
        from: time::OffsetDateTime::from_unix_timestamp(from).ok(),
        ..AuditQuery::default()
    };
    let buckets = match ca
        .search_audit(who, query.clone(), 0, 1, Some((DAY, query)))
        .await
    {
        Ok((_, _, b)) => b,
        Err(r) => {
            return format!(
                "<section><h2>Activity</h2><p class=\"fail\" role=\"alert\">{}</p></section>",
                esc(&r.error().to_string())
            )
        }
    };
    let end = now.div_euclid(DAY) * DAY + DAY;
    let flags = match ca
        .flag_counts(who, ca.clock.now() - time::Duration::days(1))
        .await
    {
        Ok(counts) => {
            let total: u64 = counts.iter().map(|(_, n)| n).sum();
            let by_kind = counts
                .iter()
                .map(|(k, n)| format!("<a href=\"/flags?kind={k}\">{n} {k}</a>", k = k.as_str()))
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "<div class=\"cards\"><div class=\"card\"><div class=\"n\" id=\"flags-day\">{total}</div>\
                 <a href=\"/flags\">access-anomaly flags</a> for accesses of the last 24 hours{}</div></div>",
                if by_kind.is_empty() {
                    String::new()
                } else {
                    format!(": {by_kind}")
                }
            )
        }
        Err(r) => format!(
            "<p class=\"fail\" role=\"alert\">{}</p>",
            esc(&r.error().to_string())
        ),
    };
    format!(
        "<section aria-labelledby=\"activity\"><h2 id=\"activity\">Activity, last 30 days</h2>{flags}{}{}</section>",
        chart::bars(&chart::Series {
            id: "chart-access",
            title: "Access events a day",
            unit: "access events",
            bars: dense(&buckets, from, end, DAY, |b| b.accesses),
            class: "bar",
        }),
        chart::bars(&chart::Series {
            id: "chart-refused",
            title: "Refusals a day (refused, denied or failed)",
            unit: "refusals",
            bars: dense(&buckets, from, end, DAY, |b| b.unsuccessful),
            class: "bar-refused",
        }),
    )
}

/// Seconds in a day.
const DAY: i64 = 86_400;

/// A bucket's label: its day, or its hour for buckets shorter than a day.
fn bucket_label(start: i64, seconds: i64) -> String {
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp(start) else {
        return start.to_string();
    };
    let (y, m, d, h) = (t.year(), t.month() as u8, t.day(), t.hour());
    match seconds {
        s if s < DAY => format!("{y:04}-{m:02}-{d:02} {h:02}:00"),
        s if s == DAY => format!("{y:04}-{m:02}-{d:02}"),
        _ => format!("week of {y:04}-{m:02}-{d:02}"),
    }
}

/// Every bucket from `from` (rounded down) to `to` (exclusive), the sparse `buckets` filled in
/// and the missing ones zero, as labelled bars.
fn dense(
    buckets: &[Bucket],
    from: i64,
    to: i64,
    seconds: i64,
    pick: fn(&Bucket) -> u64,
) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut t = from.div_euclid(seconds) * seconds;
    let mut it = buckets.iter().peekable();
    while t < to && out.len() < 1_000 {
        while it.peek().is_some_and(|b| b.start < t) {
            it.next();
        }
        let v = it.peek().filter(|b| b.start == t).map_or(0, |b| pick(b));
        out.push((bucket_label(t, seconds), v));
        t += seconds;
    }
    out
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

/// The fields given, but `position` (a page's place), as `key=value` pairs escaped for an
/// `href`: a link to another page of the same search.
fn given(p: &Params, position: &str) -> Vec<String> {
    p.iter()
        .filter(|(k, v)| k.as_str() != position && !v.is_empty())
        .map(|(k, v)| format!("{}={}", esc(k), esc(&crate::domain::percent_encode(v))))
        .collect()
}

/// A search page whose filters could not be read: the form again, the reason, 400.
fn bad_filter(who: &Principal, title: &str, form: &str, e: &Error) -> Response {
    let mut r = page(
        Some(who),
        title,
        &format!(
            "{form}<p class=\"fail\" role=\"alert\">{}</p>",
            esc(&e.to_string())
        ),
    );
    *r.status_mut() = StatusCode::BAD_REQUEST;
    r
}

/// The field `key` read with `parse`, if given; an error naming the value when it is not
/// `what`.
fn parsed<T>(
    p: &Params,
    key: &str,
    parse: impl Fn(&str) -> Option<T>,
    what: &str,
) -> Result<Option<T>, Error> {
    param(p, key)
        .map(|v| {
            parse(v).ok_or_else(|| {
                Error::InvalidArgument(format!("{} is not {what}", crate::domain::quote(v)))
            })
        })
        .transpose()
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
    let action = parsed(p, "action", Action::parse, "an audit action")?;
    let outcome = parsed(
        p,
        "outcome",
        Outcome::parse,
        "success, refused, denied or failed",
    )?;
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
        Err(e) => return bad_filter(&who, "Audit search", &filter_form(&p), &e),
    };
    let after = param(&p, "after")
        .and_then(|a| a.parse::<i64>().ok())
        .unwrap_or(0);
    // The chart covers the filter's time range, or the last 30 days when it has none.
    let now = ca.clock.now().unix_timestamp();
    let chart_from = query
        .from
        .map_or(now - 29 * DAY, |t| t.unix_timestamp())
        .max(now - 3650 * DAY);
    let chart_to = query.to.map_or(now, |t| t.unix_timestamp()).min(now) + 1;
    let seconds = match chart_to - chart_from {
        span if span <= 2 * DAY => 3_600,
        span if span <= 400 * DAY => DAY,
        _ => 7 * DAY,
    };
    let mut counted = query.clone();
    counted.from = time::OffsetDateTime::from_unix_timestamp(chart_from).ok();
    let (events, next, buckets) = match ca
        .search_audit(&who, query, after, PAGE, Some((seconds, counted)))
        .await
    {
        Ok(found) => found,
        Err(r) => return refused(&who, r),
    };
    let mut body = filter_form(&p);
    let filters = given(&p, "after");
    let with = |extra: &str| {
        let mut q = filters.clone();
        q.push(extra.to_owned());
        q.join("&amp;")
    };
    let _ = write!(
        body,
        "<p class=\"downloads\">Download exactly these events, every page: \
         <a id=\"download-bundle\" href=\"/audit/export?{}\" download>verifiable bundle (JSON lines)</a> · \
         <a id=\"download-csv\" href=\"/audit/export?{}\" download>CSV</a> · \
         <a id=\"download-fhir\" href=\"/audit/export?{}\" download>FHIR AuditEvents (NDJSON)</a>. \
         The bundle carries each event's inclusion proof and the signed checkpoint: check it with \
         <code>medid audit verify</code>. The CSV and FHIR files are views of the same events, each \
         with its sequence number (and the CSV with its leaf hash) to find it in the bundle.</p>",
        with("format=jsonl"),
        with("format=csv"),
        with("format=fhir"),
    );
    body.push_str(&chart::bars(&chart::Series {
        id: "chart-matching",
        title: "Matching events over time",
        unit: "matching events",
        bars: dense(&buckets, chart_from, chart_to, seconds, |b| b.events),
        class: "bar",
    }));
    if buckets.iter().any(|b| b.unsuccessful > 0) {
        body.push_str(&chart::bars(&chart::Series {
            id: "chart-matching-refused",
            title: "Of those, refused, denied or failed",
            unit: "unsuccessful events",
            bars: dense(&buckets, chart_from, chart_to, seconds, |b| b.unsuccessful),
            class: "bar-refused",
        }));
    }
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
        let _ = write!(
            body,
            "<p><a id=\"next\" href=\"/audit?{}\">Next page</a></p>",
            with(&format!("after={next}"))
        );
    }
    page(Some(&who), "Audit search", &body)
}

/// `GET /audit/export?format=jsonl|csv|fhir&<filters>`: every event the search's filters
/// match, streamed as the verifiable bundle (the same as `medid audit export`) or rendered as
/// CSV or FHIR NDJSON. The export is audited (`audit.export`) before any data leaves.
async fn audit_export(
    State(ca): State<Arc<Ca>>,
    Extension(peer): Extension<ConnInfo>,
    RawQuery(raw): RawQuery,
) -> Response {
    use crate::audit::render::{self, View};
    let p = form(raw.as_deref().unwrap_or(""));
    let who = match caller(&ca, &peer).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let bad = |e: Error| {
        let mut r = refused_page(Some(&who), &e);
        *r.status_mut() = StatusCode::BAD_REQUEST;
        r
    };
    let (view, kind, ext) = match param(&p, "format").unwrap_or("jsonl") {
        "jsonl" => (None, "application/jsonl", "jsonl"),
        "csv" => (Some(View::Csv), "text/csv; charset=utf-8", "csv"),
        "fhir" => (Some(View::Fhir), "application/fhir+ndjson", "ndjson"),
        other => {
            return bad(Error::InvalidArgument(format!(
                "{} is not jsonl, csv or fhir",
                crate::domain::quote(other)
            )))
        }
    };
    let query = match query_of(&p) {
        Ok(q) => q,
        Err(e) => return bad(e),
    };
    let lines = match ca.export(&who, query, 0).await {
        Ok(rx) => rx,
        Err(r) => return refused(&who, r),
    };
    let first = view.filter(|v| *v == View::Csv).map(|_| render::CSV_HEADER);
    // Each bundle line in order; a failure part-way ends the body with an error, so the
    // download fails visibly instead of stopping short.
    let state = (lines, String::new(), first);
    let body = futures_util::stream::unfold(state, move |(mut rx, mut origin, first)| async move {
        if let Some(header) = first {
            return Some((Ok(format!("{header}\n")), (rx, origin, None)));
        }
        loop {
            let line = match rx.recv().await? {
                Ok(line) => line,
                Err(r) => {
                    let e = std::io::Error::other(r.error().to_string());
                    return Some((Err(e), (rx, origin, None)));
                }
            };
            let out = match view {
                None => Some(line),
                Some(v) => serde_json::from_str::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|json| render::bundle_line(v, &json, &mut origin)),
            };
            if let Some(out) = out {
                return Some((Ok(out + "\n"), (rx, origin, None)));
            }
        }
    });
    let stamp = ca.clock.now().unix_timestamp();
    let mut r = axum::body::Body::from_stream(body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"medid-audit-{stamp}.{ext}\""
    )) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
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

/// Flags per page.
const FLAG_PAGE: i64 = 50;

/// `GET /flags`: the access-anomaly flags, newest first, each with the event behind it and
/// why it was raised (docs/CONSOLE.md). Auditors only; a view recorded as `audit.query`.
async fn flags_page(
    State(ca): State<Arc<Ca>>,
    Extension(peer): Extension<ConnInfo>,
    RawQuery(raw): RawQuery,
) -> Response {
    use crate::policy::anomaly::FlagKind;
    use crate::store::anomaly::FlagQuery;
    let p = form(raw.as_deref().unwrap_or(""));
    let who = match caller(&ca, &peer).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let kind = match parsed(&p, "kind", FlagKind::parse, "a kind of flag") {
        Ok(k) => k,
        Err(e) => {
            let mut r = refused_page(Some(&who), &e);
            *r.status_mut() = StatusCode::BAD_REQUEST;
            return r;
        }
    };
    let query = FlagQuery {
        kind,
        device_uri: param(&p, "device").map(str::to_owned),
        before: param(&p, "before")
            .and_then(|b| b.parse().ok())
            .unwrap_or(0),
        limit: FLAG_PAGE,
    };
    let (flags, next) = match ca.access_flags(&who, query).await {
        Ok(found) => found,
        Err(r) => return refused(&who, r),
    };
    let mut kinds = String::from("<option value=\"\">any</option>");
    for k in FlagKind::ALL {
        let selected = if kind == Some(k) { " selected" } else { "" };
        let _ = write!(kinds, "<option{selected}>{}</option>", k.as_str());
    }
    let mut body = format!(
        "<form class=\"filters\" method=\"get\" action=\"/flags\" role=\"search\">\
         <label for=\"g-kind\">Kind<select id=\"g-kind\" name=\"kind\">{kinds}</select></label>\
         <label for=\"g-device\">Device URI<input id=\"g-device\" name=\"device\" type=\"text\" value=\"{}\"></label>\
         <div><button type=\"submit\">Show</button></div></form>",
        esc(param(&p, "device").unwrap_or("")),
    );
    body.push_str("<details><summary>What each flag means</summary><dl>");
    for k in FlagKind::ALL {
        let _ = write!(
            body,
            "<dt>{}</dt><dd>{}</dd>",
            k.as_str(),
            esc(&k.describe(&ca.anomaly))
        );
    }
    let _ = write!(
        body,
        "</dl><p>Flags are computed as access events arrive, in the order of the log, from \
         counts kept per device; hours and days are {} (<code>[anomaly]</code> in the \
         configuration).</p></details>",
        esc(&ca.anomaly.zone())
    );
    if flags.is_empty() {
        body.push_str("<p id=\"flags\">No flag.</p>");
    } else {
        body.push_str(
            "<table id=\"flags\"><caption>Flags, newest first</caption><thead><tr>\
             <th scope=\"col\">Event</th><th scope=\"col\">Access at</th><th scope=\"col\">Flag</th>\
             <th scope=\"col\">Device</th><th scope=\"col\">User</th><th scope=\"col\">Why</th></tr></thead><tbody>",
        );
        for f in &flags {
            let device = esc(&crate::domain::percent_encode(&f.device_uri));
            // The events behind it: the event, and for a busy day that day's accesses.
            let behind = if f.kind == FlagKind::Volume {
                let day = bucket_label(f.occurred_at.unix_timestamp().div_euclid(DAY) * DAY, DAY);
                format!(
                    " (<a href=\"/audit?device={device}&amp;action=data.access&amp;from={day}&amp;to={day}\">that day's accesses</a>)"
                )
            } else {
                String::new()
            };
            let _ = write!(
                body,
                "<tr><td><a href=\"/audit/event/{seq}\">{seq}</a></td><td>{}</td><td class=\"flag\">{}</td>\
                 <td><a href=\"/audit?device={device}&amp;action=data.access\"><code>{}</code></a></td><td>{}</td><td>{}{behind}</td></tr>",
                esc(&rfc3339(f.occurred_at)),
                f.kind.as_str(),
                esc(&f.device_uri),
                esc(f.user_id.as_deref().unwrap_or("—")),
                esc(&f.explanation),
                seq = f.seq,
            );
        }
        body.push_str("</tbody></table>");
    }
    if let Some(before) = next {
        let mut q = given(&p, "before");
        q.push(format!("before={before}"));
        let _ = write!(
            body,
            "<p><a id=\"next\" href=\"/flags?{}\">Older flags</a></p>",
            q.join("&amp;")
        );
    }
    page(Some(&who), "Access-anomaly flags", &body)
}

/// Devices per page of the inventory.
const DEVICE_PAGE: u32 = 50;

fn rfc3339(t: time::OffsetDateTime) -> String {
    crate::audit::ledger::rfc3339(t).unwrap_or_default()
}

fn device_query_of(p: &Params) -> Result<DeviceQuery, Error> {
    let state = parsed(p, "state", DeviceState::parse, "active or decommissioned")?;
    let manufacturer = param(p, "manufacturer")
        .map(crate::domain::ManufacturerId::parse)
        .transpose()?;
    let serial_prefix = param(p, "serial").map(str::to_owned);
    if serial_prefix
        .as_ref()
        .is_some_and(|s| s.chars().count() > 64)
    {
        return Err(Error::InvalidArgument(
            "a serial is at most 64 characters".into(),
        ));
    }
    Ok(DeviceQuery {
        manufacturer,
        model: param(p, "model").map(str::to_owned),
        state,
        serial_prefix,
        page_size: DEVICE_PAGE,
        page_token: param(p, "page").map(str::to_owned),
    })
}

fn device_form(p: &Params) -> String {
    let field = |key: &str, label: &str| {
        format!(
            "<label for=\"d-{key}\">{label}<input id=\"d-{key}\" name=\"{key}\" type=\"text\" value=\"{}\"></label>",
            esc(param(p, key).unwrap_or(""))
        )
    };
    let mut states = String::from("<option value=\"\">any</option>");
    for st in ["active", "decommissioned"] {
        let selected = if param(p, "state") == Some(st) {
            " selected"
        } else {
            ""
        };
        let _ = write!(states, "<option{selected}>{st}</option>");
    }
    format!(
        "<form class=\"filters\" method=\"get\" action=\"/devices\" role=\"search\">{}{}{}\
         <label for=\"d-state\">State<select id=\"d-state\" name=\"state\">{states}</select></label>\
         <div><button type=\"submit\">Search</button></div></form>",
        field("serial", "Serial starts with"),
        field("manufacturer", "Manufacturer"),
        field("model", "Model"),
    )
}

fn device_href(manufacturer: &str, serial: &str) -> String {
    format!(
        "/devices/{}/{}",
        crate::domain::percent_encode(manufacturer),
        crate::domain::percent_encode(serial)
    )
}

/// `GET /devices`: the inventory, searched and filtered, a page at a time (the same listing
/// and roles as `ListDevices`).
async fn devices_page(
    State(ca): State<Arc<Ca>>,
    Extension(peer): Extension<ConnInfo>,
    RawQuery(raw): RawQuery,
) -> Response {
    let p = form(raw.as_deref().unwrap_or(""));
    let who = match caller(&ca, &peer).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let query = match device_query_of(&p) {
        Ok(q) => q,
        Err(e) => return bad_filter(&who, "Devices", &device_form(&p), &e),
    };
    let (devices, next) = match ca.list_devices(&who, query).await {
        Ok(found) => found,
        Err(r) => return refused(&who, r),
    };
    let mut body = device_form(&p);
    if devices.is_empty() {
        body.push_str("<p id=\"devices\">No device matches.</p>");
    } else {
        body.push_str(
            "<table id=\"devices\"><caption>Devices, by manufacturer and serial</caption><thead><tr>\
             <th scope=\"col\">Serial</th><th scope=\"col\">Manufacturer</th><th scope=\"col\">Model</th>\
             <th scope=\"col\">State</th><th scope=\"col\">Enrolled</th><th scope=\"col\">URI</th></tr></thead><tbody>",
        );
        for d in &devices {
            let _ = write!(
                body,
                "<tr><td><a href=\"{}\">{}</a></td><td>{}</td><td>{}</td><td class=\"state-{}\">{}</td><td>{}</td><td><code>{}</code></td></tr>",
                esc(&device_href(&d.manufacturer_id, &d.serial)),
                esc(&d.serial),
                esc(&d.manufacturer_id),
                esc(&d.model),
                d.state.as_str(),
                d.state.as_str(),
                esc(&rfc3339(d.enrolled_at)),
                esc(&d.uri),
            );
        }
        body.push_str("</tbody></table>");
    }
    if let Some(next) = next {
        let mut q = given(&p, "page");
        q.push(format!(
            "page={}",
            esc(&crate::domain::percent_encode(&next))
        ));
        let _ = write!(
            body,
            "<p><a id=\"next\" href=\"/devices?{}\">Next page</a></p>",
            q.join("&amp;")
        );
    }
    page(Some(&who), "Devices", &body)
}

/// `GET /devices/{manufacturer}/{serial}`: the device, its certificates and rotation status
/// (as `GetRotationStatus`) and, for auditors, its access history of the last 30 days (a
/// search of the log, recorded as one `audit.query` event).
async fn device_page(
    State(ca): State<Arc<Ca>>,
    Extension(peer): Extension<ConnInfo>,
    Path((manufacturer, serial)): Path<(String, String)>,
) -> Response {
    let who = match caller(&ca, &peer).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let manufacturer = match crate::domain::ManufacturerId::parse(&manufacturer) {
        Ok(m) => m,
        Err(e) => return refused_page(Some(&who), &e),
    };
    let status = match ca.rotation_status(&who, manufacturer, &serial).await {
        Ok(s) => s,
        Err(r) => return refused(&who, r),
    };
    let d = &status.device;
    let mut body = format!(
        "<table><caption>The device</caption><tbody>\
         <tr><th scope=\"row\">URI</th><td><code>{}</code></td></tr>\
         <tr><th scope=\"row\">Manufacturer</th><td>{}</td></tr>\
         <tr><th scope=\"row\">Serial</th><td>{}</td></tr>\
         <tr><th scope=\"row\">Model</th><td>{}</td></tr>\
         <tr><th scope=\"row\">UDI-DI</th><td>{}</td></tr>\
         <tr><th scope=\"row\">State</th><td id=\"device-state\">{}</td></tr>\
         <tr><th scope=\"row\">Enrolled</th><td>{}</td></tr>\
         <tr><th scope=\"row\">Birth certificate</th><td><code>{}</code></td></tr>\
         </tbody></table>",
        esc(&d.uri),
        esc(&d.manufacturer_id),
        esc(&d.serial),
        esc(&d.model),
        esc(d.udi_di.as_deref().unwrap_or("—")),
        d.state.as_str(),
        esc(&rfc3339(d.enrolled_at)),
        esc(&d.birth_serial.to_hex()),
    );
    let rotation = match (&status.current, status.overdue) {
        (_, true) => "<span class=\"fail\">overdue</span>: the renewal window is open, or the device has no valid operational certificate although it had one".to_owned(),
        (Some(c), false) => format!(
            "<span class=\"pass\">current</span>: operational certificate <code>{}</code> valid until {}{}",
            esc(&c.serial.to_hex()),
            esc(&rfc3339(c.not_after)),
            status
                .renew_after
                .map(|t| format!(", renewal due after {}", esc(&rfc3339(t))))
                .unwrap_or_default()
        ),
        (None, false) => "no operational certificate yet (birth certificate only)".to_owned(),
    };
    let _ = write!(
        body,
        "<h2>Rotation</h2><p id=\"rotation\">{rotation}</p>\
         <table id=\"certificates\"><caption>Its certificates, oldest first</caption><thead><tr>\
         <th scope=\"col\">Serial</th><th scope=\"col\">Issuer</th><th scope=\"col\">Profile</th>\
         <th scope=\"col\">Valid from</th><th scope=\"col\">Until</th><th scope=\"col\">State</th></tr></thead><tbody>"
    );
    for (c, state) in &status.history {
        let revoked = c
            .revoked_at
            .map(|t| format!(" at {}", esc(&rfc3339(t))))
            .unwrap_or_default();
        let _ = write!(
            body,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{state}{revoked}</td></tr>",
            esc(&c.serial.to_hex()),
            esc(&c.issuer.label()),
            esc(&c.profile.to_string()),
            esc(&rfc3339(c.not_before)),
            esc(&rfc3339(c.not_after)),
        );
    }
    body.push_str("</tbody></table>");
    if who.role == Role::Auditor {
        body.push_str(&device_access(&ca, &who, &d.uri).await);
    } else {
        body.push_str(
            "<h2>Access history</h2><p>Only auditors read the audit trail, so the access \
             history is on an auditor's view of this page.</p>",
        );
    }
    page(Some(&who), &format!("Device {}", d.serial), &body)
}

/// A device's access events of the last 30 days: a chart by day and the first page.
async fn device_access(ca: &Ca, who: &Principal, uri: &str) -> String {
    let now = ca.clock.now().unix_timestamp();
    let from = (now - 29 * DAY).div_euclid(DAY) * DAY;
    let query = AuditQuery {
        from: time::OffsetDateTime::from_unix_timestamp(from).ok(),
        device_uri: Some(uri.to_owned()),
        action: Some(Action::DataAccess),
        ..AuditQuery::default()
    };
    let (events, next, buckets) = match ca
        .search_audit(who, query.clone(), 0, PAGE, Some((DAY, query)))
        .await
    {
        Ok(found) => found,
        Err(r) => {
            return format!(
                "<h2>Access history</h2><p class=\"fail\" role=\"alert\">{}</p>",
                esc(&r.error().to_string())
            )
        }
    };
    let mut out = format!(
        "<h2>Access history, last 30 days</h2>{}",
        chart::bars(&chart::Series {
            id: "chart-device-access",
            title: "Access events to this device a day",
            unit: "access events",
            bars: dense(&buckets, from, now.div_euclid(DAY) * DAY + DAY, DAY, |b| b
                .accesses),
            class: "bar",
        })
    );
    if events.is_empty() {
        out.push_str("<p id=\"access\">No access to this device in the last 30 days.</p>");
    } else {
        out.push_str(
            "<table id=\"access\"><caption>Access events, oldest first</caption><thead><tr>\
             <th scope=\"col\">Seq</th><th scope=\"col\">Recorded</th><th scope=\"col\">Reported by</th>\
             <th scope=\"col\">User</th><th scope=\"col\">Patient</th><th scope=\"col\">Outcome</th></tr></thead><tbody>",
        );
        for e in &events {
            let seq = e["seq"].as_i64().unwrap_or(0);
            let detail = |k: &str| e["detail"][k].as_str().unwrap_or("").to_owned();
            let _ = write!(
                out,
                "<tr><td><a href=\"/audit/event/{seq}\">{seq}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(e["recorded_at"].as_str().unwrap_or("")),
                esc(e["actor"]["uri"].as_str().unwrap_or("")),
                esc(&detail("user_id")),
                esc(&detail("patient_ref")),
                esc(e["outcome"].as_str().unwrap_or("")),
            );
        }
        out.push_str("</tbody></table>");
    }
    let _ = write!(
        out,
        "<p><a id=\"device-audit\" href=\"/audit?device={}&amp;action=data.access\">{}</a></p>",
        esc(&crate::domain::percent_encode(uri)),
        if next.is_some() {
            "More: every access event of this device"
        } else {
            "Every access event of this device, in the audit search"
        }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// WCAG 2.x contrast ratio of two `#rrggbb` colours.
    fn contrast(a: &str, b: &str) -> f64 {
        fn luminance(hex: &str) -> f64 {
            let c = |i: usize| {
                let v = f64::from(u8::from_str_radix(&hex[i..i + 2], 16).unwrap()) / 255.0;
                if v <= 0.03928 {
                    v / 12.92
                } else {
                    ((v + 0.055) / 1.055).powf(2.4)
                }
            };
            0.2126 * c(1) + 0.7152 * c(3) + 0.0722 * c(5)
        }
        let (x, y) = (luminance(a), luminance(b));
        (x.max(y) + 0.05) / (x.min(y) + 0.05)
    }

    /// The colours in console.css: text at least 4.5:1 against its background (WCAG AA),
    /// chart bars at least 3:1 (non-text contrast).
    #[test]
    fn the_colours_meet_wcag_aa_contrast() {
        // `--name: #rgb;` or `--name: #rrggbb;` in the :root rule, as #rrggbb.
        let var = |name: &str| {
            let at = CSS.find(&format!("--{name}: ")).expect(name) + name.len() + 4;
            let hex = &CSS[at..at + CSS[at..].find(';').expect("a declaration ends")];
            match hex.len() {
                4 => hex[1..]
                    .chars()
                    .flat_map(|c| [c, c])
                    .fold("#".to_owned(), |mut s, c| {
                        s.push(c);
                        s
                    }),
                7 => hex.to_owned(),
                _ => panic!("--{name} is not #rgb or #rrggbb: {hex}"),
            }
        };
        let (fg, bg) = (var("fg"), var("bg"));
        for text in ["muted", "link", "pass", "fail", "warn"] {
            let c = var(text);
            assert!(
                contrast(&c, &bg) >= 4.5,
                "--{text} on white: {:.2}",
                contrast(&c, &bg)
            );
        }
        assert!(contrast(&fg, &bg) >= 7.0);
        // Header and buttons: white on the dark blue; table heads: text on their grey.
        assert!(CSS.contains("background: #1c2b3a; color: #fff"));
        assert!(contrast("#ffffff", "#1c2b3a") >= 4.5);
        assert!(CSS.contains("th { background: #eef1f4; }"));
        assert!(contrast(&fg, "#eef1f4") >= 4.5);
        assert!(CSS.contains("pre { background: #f4f6f8;"));
        assert!(
            contrast(&var("link"), "#f4f6f8") >= 4.5,
            "links in the downloads box"
        );
        assert!(CSS.contains("svg.chart .bar { fill: #1f5f99; }"));
        assert!(contrast("#1f5f99", &bg) >= 3.0);
        assert!(contrast(&var("fail"), &bg) >= 3.0);
    }

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
