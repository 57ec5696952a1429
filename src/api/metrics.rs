//! `GET /metrics` on the plain-HTTP listener: Prometheus metrics in the OpenMetrics text
//! format, encoded by `prometheus-client`. Values that describe the service's state (the CA
//! certificates in service) are read when scraped, so a scrape always tells the present.
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `medid_ca_not_after_timestamp_seconds` | gauge | `ca`, `standing` | when each CA certificate in service ends (Unix seconds); `standing` is `root`, `current` (signs new certificates) or `previous` (an older generation still answering for what it signed) |
//! | `medid_ca_expiry_warning` | gauge | `ca`, `standing` | 1 while the service warns that this CA certificate ends within `ca_expiry_warning_days` (the root and current generations only), else 0 |

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::error::Error;
use crate::service::Ca;

/// What the OpenMetrics text is served as.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CaLabels {
    ca: String,
    standing: String,
}

/// The metrics text as of now.
pub fn render(ca: &Ca) -> Result<String, Error> {
    let mut registry = Registry::with_prefix("medid");
    let not_after = Family::<CaLabels, Gauge>::default();
    let warning = Family::<CaLabels, Gauge>::default();
    registry.register(
        "ca_not_after_timestamp_seconds",
        "When each CA certificate in service ends, in Unix seconds",
        not_after.clone(),
    );
    registry.register(
        "ca_expiry_warning",
        "1 while the service warns that this CA certificate ends within ca_expiry_warning_days",
        warning.clone(),
    );
    for life in ca.ca_lifetimes() {
        let labels = CaLabels {
            ca: life.ca,
            standing: life.standing.as_str().to_owned(),
        };
        not_after
            .get_or_create(&labels)
            .set(life.not_after.unix_timestamp());
        warning
            .get_or_create(&labels)
            .set(i64::from(life.days_left_when_warned.is_some()));
    }
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .map_err(|e| Error::internal("encoding metrics", e))?;
    Ok(text)
}
