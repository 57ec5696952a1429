//! `medid audit record-access`: a gateway's script reports device-data accesses, one from the
//! flags (RecordAccess) or a JSON-lines file through the stream (RecordAccessStream), a batch
//! at a time, each acknowledged once durable.

use std::io::BufRead;
use std::path::PathBuf;

use clap::Args;
use serde::Deserialize;
use tokio_stream::StreamExt;

use super::client::{status, Connection};
use crate::error::Error;
use crate::proto::{self, audit_service_client::AuditServiceClient};

#[derive(Debug, Args)]
pub struct AccessArgs {
    #[command(flatten)]
    pub conn: Connection,
    /// A JSON-lines file of accesses (`-`: standard input), sent through the stream in
    /// batches. Each line is an object with the fields of the flags below: `device_uri`, or
    /// `manufacturer_id` and `serial`; `action`, `data_category`, `patient_ref`,
    /// `purpose_of_use`, `outcome`, `user_id`, `user_role`, `occurred_at`, `event_id`,
    /// `resource`.
    #[arg(long, conflicts_with_all = ["device", "manufacturer", "serial"])]
    pub file: Option<PathBuf>,
    /// The device, by URI (or give --manufacturer and --serial).
    #[arg(long)]
    pub device: Option<String>,
    /// The device's manufacturer id (with --serial).
    #[arg(long, requires = "serial")]
    pub manufacturer: Option<String>,
    /// The device's serial number (with --manufacturer).
    #[arg(long, requires = "manufacturer")]
    pub serial: Option<String>,
    /// create, read, update, delete, export or execute.
    #[arg(long, default_value = "read")]
    pub action: String,
    /// vital-signs, waveform, alarms, settings, device-log, firmware, identity or location.
    #[arg(long)]
    pub data_category: Option<String>,
    /// The patient's opaque reference (PHI: recorded in the ledger only, never logged).
    #[arg(long)]
    pub patient: Option<String>,
    /// HL7 v3 ActReason code, required: TREAT, ETREAT, HPAYMT, HOPERAT, PUBHLTH, …
    #[arg(long)]
    pub purpose: Option<String>,
    /// success, minor-failure, serious-failure or major-failure.
    #[arg(long, default_value = "success")]
    pub outcome: String,
    /// The end user behind the gateway (opaque id), if known.
    #[arg(long)]
    pub user_id: Option<String>,
    /// That user's role, if known.
    #[arg(long)]
    pub user_role: Option<String>,
    /// When the access happened, RFC 3339 [default: now].
    #[arg(long)]
    pub occurred_at: Option<String>,
    /// This script's own id for the event (1-64 of A-Z a-z 0-9 . _ -): reported again with
    /// the same id, the access is not recorded twice.
    #[arg(long)]
    pub event_id: Option<String>,
    /// What was reached (a request path; ledger only, like --patient).
    #[arg(long)]
    pub resource: Option<String>,
    /// Accesses per stream batch, with --file (1–10000).
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
}

/// One access, as a JSON line or as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Access {
    device_uri: Option<String>,
    manufacturer_id: Option<String>,
    serial: Option<String>,
    action: Option<String>,
    data_category: Option<String>,
    patient_ref: Option<String>,
    purpose_of_use: Option<String>,
    outcome: Option<String>,
    user_id: Option<String>,
    user_role: Option<String>,
    occurred_at: Option<String>,
    event_id: Option<String>,
    resource: Option<String>,
}

impl Access {
    fn from_flags(a: &AccessArgs) -> Self {
        Self {
            device_uri: a.device.clone(),
            manufacturer_id: a.manufacturer.clone(),
            serial: a.serial.clone(),
            action: Some(a.action.clone()),
            data_category: a.data_category.clone(),
            patient_ref: a.patient.clone(),
            purpose_of_use: a.purpose.clone(),
            outcome: Some(a.outcome.clone()),
            user_id: a.user_id.clone(),
            user_role: a.user_role.clone(),
            occurred_at: a.occurred_at.clone(),
            event_id: a.event_id.clone(),
            resource: a.resource.clone(),
        }
    }

    /// The request; the server checks the rest (categories, purposes, the device).
    fn into_proto(self, now: time::OffsetDateTime) -> Result<proto::AccessEvent, Error> {
        let action = match self.action.as_deref().unwrap_or("read") {
            "create" => proto::AccessAction::Create,
            "read" => proto::AccessAction::Read,
            "update" => proto::AccessAction::Update,
            "delete" => proto::AccessAction::Delete,
            "export" => proto::AccessAction::Export,
            "execute" => proto::AccessAction::Execute,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "action {other:?} is not create, read, update, delete, export or execute"
                )))
            }
        };
        let outcome = match self.outcome.as_deref().unwrap_or("success") {
            "success" => proto::AccessOutcome::Success,
            "minor-failure" => proto::AccessOutcome::MinorFailure,
            "serious-failure" => proto::AccessOutcome::SeriousFailure,
            "major-failure" => proto::AccessOutcome::MajorFailure,
            other => {
                return Err(Error::InvalidArgument(format!(
                "outcome {other:?} is not success, minor-failure, serious-failure or major-failure"
            )))
            }
        };
        let occurred_at = match &self.occurred_at {
            Some(t) => {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                    .map_err(|e| {
                        Error::InvalidArgument(format!(
                            "occurred_at {t:?} is not an RFC 3339 time: {e}"
                        ))
                    })?
            }
            None => now,
        };
        let device = match (self.manufacturer_id, self.serial) {
            (Some(manufacturer_id), Some(serial)) => Some(proto::DeviceRef {
                manufacturer_id,
                serial,
            }),
            (None, None) => None,
            _ => {
                return Err(Error::InvalidArgument(
                    "name the device by manufacturer and serial together".into(),
                ))
            }
        };
        Ok(proto::AccessEvent {
            device_uri: self.device_uri.unwrap_or_default(),
            device,
            user_id: self.user_id.unwrap_or_default(),
            user_role: self.user_role.unwrap_or_default(),
            action: action as i32,
            data_category: self.data_category.unwrap_or_default(),
            patient_ref: self.patient_ref.unwrap_or_default(),
            purpose_of_use: self.purpose_of_use.unwrap_or_default(),
            outcome: outcome as i32,
            occurred_at: Some(prost_types::Timestamp {
                seconds: occurred_at.unix_timestamp(),
                nanos: 0,
            }),
            event_id: self.event_id.unwrap_or_default(),
            resource: self.resource.unwrap_or_default(),
            completed_at: None,
        })
    }
}

/// Reads the accesses of a JSON-lines file, naming the line of the first bad one.
fn read_lines(path: &PathBuf, now: time::OffsetDateTime) -> Result<Vec<proto::AccessEvent>, Error> {
    let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(std::fs::File::open(path).map_err(
            |e| Error::InvalidArgument(format!("reading {}: {e}", path.display())),
        )?))
    };
    let mut events = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line =
            line.map_err(|e| Error::InvalidArgument(format!("reading {}: {e}", path.display())))?;
        if line.trim().is_empty() {
            continue;
        }
        let at =
            |e: String| Error::InvalidArgument(format!("{} line {}: {e}", path.display(), i + 1));
        let access: Access = serde_json::from_str(&line).map_err(|e| at(e.to_string()))?;
        events.push(access.into_proto(now).map_err(|e| at(e.to_string()))?);
    }
    Ok(events)
}

pub async fn run(args: AccessArgs) -> Result<(), Error> {
    let now = time::OffsetDateTime::now_utc();
    let Some(path) = &args.file else {
        let event = Access::from_flags(&args).into_proto(now)?;
        let receipt = AuditServiceClient::new(args.conn.channel().await?)
            .record_access(event)
            .await
            .map_err(status)?
            .into_inner();
        if args.conn.json {
            println!(
                "{}",
                serde_json::json!({"seq": receipt.seq,
                                   "device_decommissioned": receipt.device_decommissioned})
            );
        } else {
            println!("recorded as event {}", receipt.seq);
            if receipt.device_decommissioned {
                println!("note: the device is decommissioned (recorded anyway, and flagged)");
            }
        }
        return Ok(());
    };
    let events = read_lines(path, now)?;
    let batch = args.batch.clamp(1, 10_000);
    let (tx, rx) = tokio::sync::mpsc::channel::<proto::AccessBatch>(1);
    let mut acks = AuditServiceClient::new(args.conn.channel().await?)
        .record_access_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(status)?
        .into_inner();
    let (mut done, mut first, mut last) = (0usize, None, None);
    for chunk in events.chunks(batch) {
        let sent = tx
            .send(proto::AccessBatch {
                events: chunk.to_vec(),
            })
            .await;
        let ack = match (sent, acks.next().await) {
            (Ok(()), Some(Ok(ack))) => ack,
            (_, Some(Err(e))) => {
                let e = status(e);
                return Err(at_batch(e, done, chunk.len()));
            }
            _ => {
                return Err(at_batch(
                    Error::Unavailable("the stream ended before its acknowledgement".into()),
                    done,
                    chunk.len(),
                ))
            }
        };
        first = first.or(ack.seqs.first().copied());
        last = ack.seqs.last().copied().or(last);
        done += chunk.len();
    }
    drop(tx);
    if args.conn.json {
        println!(
            "{}",
            serde_json::json!({"recorded": done, "first_seq": first, "last_seq": last})
        );
    } else {
        match (first, last) {
            (Some(f), Some(l)) => println!("recorded {done} accesses as events {f}–{l}"),
            _ => println!("recorded {done} accesses"),
        }
    }
    Ok(())
}

/// The error of a failed batch, saying which lines were recorded before it (they stay
/// recorded) and which were not.
fn at_batch(e: Error, done: usize, len: usize) -> Error {
    let context = match done {
        0 => "no access was recorded: ".to_owned(),
        _ => format!(
            "accesses 1–{done} were recorded (they stay recorded); {}–{} and after were not: ",
            done + 1,
            done + len
        ),
    };
    e.context(&context)
}
