//! `medid audit`: export the audit trail, verify a bundle offline, fetch a checkpoint.

use std::io::Write;
use std::path::PathBuf;

use clap::{Subcommand, ValueEnum};
use futures_util::StreamExt;

use super::client::{status, Connection};
use crate::audit::{ledger, render, verify};
use crate::error::Error;
use crate::proto::{self, audit_service_client::AuditServiceClient};

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Format {
    /// The verifiable bundle itself (JSON lines).
    Jsonl,
    /// CSV, safe to open in a spreadsheet; the bundle is written beside it.
    Csv,
    /// FHIR R4 AuditEvent NDJSON; the bundle is written beside it.
    Fhir,
}

// Parsed once per process; the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Export events (role auditor) as a verifiable bundle, CSV or FHIR.
    Export {
        #[command(flatten)]
        conn: Connection,
        #[arg(long, value_enum, default_value = "jsonl")]
        format: Format,
        #[arg(long)]
        out: PathBuf,
        /// RFC 3339 time range.
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        /// Device URI.
        #[arg(long)]
        device: Option<String>,
        #[arg(long)]
        manufacturer: Option<String>,
        /// Actor URI.
        #[arg(long)]
        actor: Option<String>,
        /// Action, e.g. data.access, device.enroll, certificate.revoke.
        #[arg(long)]
        action: Option<String>,
        /// success, refused, denied or failed.
        #[arg(long)]
        outcome: Option<String>,
        /// Patient reference (PHI: sent to the server, not recorded in the export event).
        #[arg(long)]
        patient: Option<String>,
        /// An earlier checkpoint note: the bundle then carries a consistency proof from it.
        #[arg(long)]
        previous_checkpoint: Option<PathBuf>,
    },
    /// Verify a bundle offline: leaf hashes, tree, checkpoint signature, consistency.
    Verify {
        bundle: PathBuf,
        /// The audit public key (PEM).
        #[arg(long, default_value = "certs-dev/audit-signing.pub")]
        key: PathBuf,
        /// An earlier signed checkpoint note kept outside medid.
        #[arg(long)]
        previous_checkpoint: Option<PathBuf>,
    },
    /// Print the current signed checkpoint (admin, auditor, gateway).
    Checkpoint {
        #[command(flatten)]
        conn: Connection,
        /// Also write the note to this file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn read(path: &PathBuf) -> Result<String, Error> {
    std::fs::read_to_string(path)
        .map_err(|e| Error::InvalidArgument(format!("reading {}: {e}", path.display())))
}

fn timestamp(s: &Option<String>) -> Result<Option<prost_types::Timestamp>, Error> {
    s.as_ref()
        .map(|s| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map(|t| prost_types::Timestamp {
                    seconds: t.unix_timestamp(),
                    nanos: 0,
                })
                .map_err(|e| Error::InvalidArgument(format!("{s:?} is not an RFC 3339 time: {e}")))
        })
        .transpose()
}

pub async fn run(cmd: AuditCommand) -> Result<(), Error> {
    match cmd {
        AuditCommand::Verify {
            bundle,
            key,
            previous_checkpoint,
        } => {
            let public =
                crate::audit::checkpoint::public_key_from_pem(&read(&key)?).ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "{} is not an Ed25519 public key (PEM)",
                        key.display()
                    ))
                })?;
            let previous = previous_checkpoint.as_ref().map(read).transpose()?;
            // Read as a stream: memory stays flat however many events the bundle holds.
            let file = std::fs::File::open(&bundle).map_err(|e| {
                Error::InvalidArgument(format!("reading {}: {e}", bundle.display()))
            })?;
            let reader = std::io::BufReader::with_capacity(1 << 20, file);
            match verify::verify_reader(reader, &public, previous.as_deref()) {
                Ok(r) => {
                    println!(
                        "OK: {} events verified against the signed checkpoint of {} (tree size {}{}){}",
                        r.events,
                        r.origin,
                        r.tree_size,
                        if r.filtered { ", filtered export: each event proven by inclusion" } else { ", complete" },
                        r.consistent_with
                            .map(|s| format!("; consistent with the earlier checkpoint of size {s}"))
                            .unwrap_or_default()
                    );
                    Ok(())
                }
                Err(f) => Err(Error::FailedPrecondition(format!(
                    "verification FAILED ({}): {f}",
                    f.kind()
                ))),
            }
        }
        AuditCommand::Checkpoint { conn, out } => {
            let cp = AuditServiceClient::new(conn.channel().await?)
                .get_checkpoint(proto::GetCheckpointRequest {})
                .await
                .map_err(status)?
                .into_inner();
            print!("{}", cp.note);
            if let Some(out) = out {
                crate::files::write_atomic(
                    &out,
                    cp.note.as_bytes(),
                    crate::files::Access::Private,
                )?;
            }
            Ok(())
        }
        AuditCommand::Export {
            conn,
            format,
            out,
            from,
            to,
            device,
            manufacturer,
            actor,
            action,
            outcome,
            patient,
            previous_checkpoint,
        } => {
            let previous_tree_size = match &previous_checkpoint {
                Some(p) => read(p)?
                    .lines()
                    .nth(1)
                    .and_then(|l| l.parse::<u64>().ok())
                    .ok_or_else(|| {
                        Error::InvalidArgument(format!("{} is not a checkpoint note", p.display()))
                    })?,
                None => 0,
            };
            let filter = proto::AuditFilter {
                from: timestamp(&from)?,
                to: timestamp(&to)?,
                device_uri: device.unwrap_or_default(),
                manufacturer_id: manufacturer.unwrap_or_default(),
                actor_uri: actor.unwrap_or_default(),
                action: action.unwrap_or_default(),
                outcome: outcome.unwrap_or_default(),
                patient_ref: patient.unwrap_or_default(),
            };
            let mut lines = AuditServiceClient::new(conn.channel().await?)
                .export_audit(proto::ExportAuditRequest {
                    filter: Some(filter),
                    previous_tree_size,
                })
                .await
                .map_err(status)?
                .into_inner();
            let bundle_path = if format == Format::Jsonl {
                out.clone()
            } else {
                out.with_extension("bundle.jsonl")
            };
            let create = |p: &PathBuf| crate::files::create_private(p).map(std::io::BufWriter::new);
            let io = |e: std::io::Error| Error::Internal(format!("writing export: {e}"));
            let mut bundle = create(&bundle_path)?;
            let mut rendering = if format == Format::Jsonl {
                None
            } else {
                Some(create(&out)?)
            };
            if let (Format::Csv, Some(w)) = (format, rendering.as_mut()) {
                writeln!(w, "{}", render::CSV_HEADER).map_err(io)?;
            }
            let mut origin = String::new();
            let mut count = 0u64;
            let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
            while let Some(line) = lines.next().await {
                let line = line.map_err(status)?.json;
                writeln!(bundle, "{line}").map_err(io)?;
                let v: serde_json::Value = serde_json::from_str(&line)
                    .map_err(|e| Error::Internal(format!("bad bundle line: {e}")))?;
                match v.get("type").and_then(|t| t.as_str()) {
                    Some("header") => origin = v["origin"].as_str().unwrap_or_default().to_owned(),
                    Some("event") => {
                        count += 1;
                        if let (Some(w), Some((seq, e))) =
                            (rendering.as_mut(), ledger::from_json(&v["event"]))
                        {
                            let rendered = match format {
                                Format::Csv => render::csv_row(
                                    seq,
                                    &e,
                                    v["leaf_hash"].as_str().unwrap_or_default(),
                                ),
                                _ => render::fhir_audit_event(seq, &e, &origin).to_string(),
                            };
                            writeln!(w, "{rendered}").map_err(io)?;
                        }
                        if progress && count % 1000 == 0 {
                            eprint!("\rexported {count} events");
                        }
                    }
                    _ => {}
                }
            }
            bundle.flush().map_err(io)?;
            if let Some(mut w) = rendering {
                w.flush().map_err(io)?;
            }
            if progress {
                eprint!("\r");
            }
            println!("exported {count} events to {}", out.display());
            if format != Format::Jsonl {
                println!("verifiable bundle: {}", bundle_path.display());
            }
            Ok(())
        }
    }
}
