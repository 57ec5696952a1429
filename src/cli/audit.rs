//! `medid audit`: export the audit trail, verify a bundle offline, fetch a checkpoint.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use futures_util::StreamExt;

use super::client::{status, Connection};
use crate::audit::{checkpoint, merkle, render, verify};
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
        /// What to write to --out.
        #[arg(long, value_enum, default_value = "jsonl")]
        format: Format,
        /// The file to write (mode 0600); for csv and fhir the bundle goes beside it as
        /// FILE.bundle.jsonl.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        filter: FilterArgs,
        /// An earlier checkpoint note: the bundle then carries a consistency proof from it.
        #[arg(long)]
        previous_checkpoint: Option<PathBuf>,
    },
    /// Verify a bundle offline: leaf hashes, tree, checkpoint signature, consistency.
    Verify {
        /// The bundle file (`medid audit export`).
        bundle: PathBuf,
        /// The audit public key (PEM).
        #[arg(long, default_value = "certs-dev/audit-signing.pub")]
        key: PathBuf,
        /// An earlier signed checkpoint note kept outside medid.
        #[arg(long)]
        previous_checkpoint: Option<PathBuf>,
    },
    /// The full integrity check, on the database itself (run it where the database is; the
    /// service may keep running): every event's leaf hash re-derived from its members, every
    /// stored tree node from the leaves, every signed checkpoint's root and signature. Prints
    /// progress on stderr; stops at the first bad entry and names it (exit status 1).
    Fsck {
        #[command(flatten)]
        db: DatabaseArgs,
        /// A checkpoint note kept outside the database (for example the checkpoint
        /// directory's latest.note), checked against the log too; repeat for several.
        #[arg(long)]
        checkpoint: Vec<PathBuf>,
    },
    /// Retention: write the events recorded before --before, up to a signed checkpoint, to a
    /// bundle that `medid audit verify` checks on its own; read it back and verify it; then
    /// drop their rows from the database, keeping the stored Merkle tree, so proofs and
    /// consistency across the archived range still verify. Run it where the database is; the
    /// service may keep running. Keep the bundle (and its copies) for the retention period.
    Archive {
        #[command(flatten)]
        db: DatabaseArgs,
        /// Archive events recorded before this time (RFC 3339).
        #[arg(long)]
        before: String,
        /// The bundle to write (mode 0600); must not exist yet.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the current signed checkpoint (admin, auditor, gateway).
    Checkpoint {
        #[command(flatten)]
        conn: Connection,
        /// Also write the note to this file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Query the audit trail (role auditor): matching events, oldest first, one per line.
    Query {
        #[command(flatten)]
        conn: Connection,
        #[command(flatten)]
        filter: FilterArgs,
        /// Events asked for per request (1–1000).
        #[arg(long, default_value_t = 100)]
        page_size: u32,
        /// Stop after this many events [default: all that match].
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Report device-data accesses (role gateway): one from the flags, or a JSON-lines file
    /// through the stream, each acknowledged once durable.
    RecordAccess(super::access::AccessArgs),
    /// Fetch an inclusion proof for event SEQ and verify it here against a signed checkpoint
    /// (admin, auditor, gateway).
    ProveInclusion {
        #[command(flatten)]
        conn: Connection,
        /// The event's sequence number.
        #[arg(long)]
        seq: i64,
        /// A checkpoint note kept earlier: prove the event is in that tree [default: the
        /// current checkpoint, fetched and verified].
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// The audit public key (PEM) the checkpoint must be signed with.
        #[arg(long, default_value = "certs-dev/audit-signing.pub")]
        audit_key: PathBuf,
    },
    /// Fetch the current checkpoint and a consistency proof from a checkpoint kept earlier,
    /// and verify here that today's log extends it: nothing recorded then was changed or
    /// removed (admin, auditor, gateway).
    ProveConsistency {
        #[command(flatten)]
        conn: Connection,
        /// The checkpoint note kept earlier.
        #[arg(long)]
        since: PathBuf,
        /// The audit public key (PEM) both checkpoints must be signed with.
        #[arg(long, default_value = "certs-dev/audit-signing.pub")]
        audit_key: PathBuf,
    },
}

/// The database a local command works on, and the audit key its checkpoints are signed with.
#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// The service's TOML configuration file (its database_url is used).
    #[arg(long, env = "MEDID_CONFIG")]
    config: Option<PathBuf>,
    /// sqlite://PATH or postgres://…, instead of the configuration's.
    #[arg(long, env = "MEDID_DATABASE_URL")]
    database_url: Option<String>,
    /// The audit public key (PEM) the checkpoints must be signed with.
    #[arg(long, default_value = "certs-dev/audit-signing.pub")]
    key: PathBuf,
}

/// Which events: every flag given must match.
#[derive(Debug, Clone, Args)]
pub struct FilterArgs {
    /// Events recorded at or after this time (RFC 3339).
    #[arg(long)]
    pub from: Option<String>,
    /// Events recorded at or before this time (RFC 3339).
    #[arg(long)]
    pub to: Option<String>,
    /// Device URI.
    #[arg(long)]
    pub device: Option<String>,
    /// Events about this manufacturer's devices and stations.
    #[arg(long)]
    pub manufacturer: Option<String>,
    /// Actor URI.
    #[arg(long)]
    pub actor: Option<String>,
    /// Action, e.g. data.access, device.enroll, certificate.revoke.
    #[arg(long)]
    pub action: Option<String>,
    /// success, refused, denied or failed.
    #[arg(long)]
    pub outcome: Option<String>,
    /// Patient reference (PHI: sent to the server, not recorded in the export event).
    #[arg(long)]
    pub patient: Option<String>,
}

impl FilterArgs {
    fn to_proto(&self) -> Result<proto::AuditFilter, Error> {
        Ok(proto::AuditFilter {
            from: timestamp(&self.from)?,
            to: timestamp(&self.to)?,
            device_uri: self.device.clone().unwrap_or_default(),
            manufacturer_id: self.manufacturer.clone().unwrap_or_default(),
            actor_uri: self.actor.clone().unwrap_or_default(),
            action: self.action.clone().unwrap_or_default(),
            outcome: self.outcome.clone().unwrap_or_default(),
            patient_ref: self.patient.clone().unwrap_or_default(),
        })
    }
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

/// The audit public key in `path`.
fn audit_key(path: &PathBuf) -> Result<[u8; 32], Error> {
    crate::audit::checkpoint::public_key_from_pem(&read(path)?).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{} is not an Ed25519 public key (PEM)",
            path.display()
        ))
    })
}

/// Verifies a signed checkpoint note with `key`; its origin (first line) names the key.
fn verified(note: &str, key: &[u8; 32], what: &str) -> Result<checkpoint::Checkpoint, Error> {
    let origin = note.lines().next().unwrap_or_default();
    checkpoint::verify(note, origin, key)
        .map_err(|e| Error::FailedPrecondition(format!("verification FAILED: {what}: {e}")))
}

fn hash_of(bytes: &[u8], what: &str) -> Result<merkle::Hash, Error> {
    bytes.try_into().map_err(|_| {
        Error::Internal(format!(
            "the server sent a {what} of {} bytes, not 32",
            bytes.len()
        ))
    })
}

fn hashes(list: &[Vec<u8>]) -> Result<Vec<merkle::Hash>, Error> {
    list.iter().map(|h| hash_of(h, "proof hash")).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn current_checkpoint(
    client: &mut AuditServiceClient<tonic::transport::Channel>,
) -> Result<String, Error> {
    Ok(client
        .get_checkpoint(proto::GetCheckpointRequest {})
        .await
        .map_err(status)?
        .into_inner()
        .note)
}

/// One line of `audit query` as text: seq, time, action, outcome, actor, target.
fn event_line(v: &serde_json::Value) -> String {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    format!(
        "{:>8} {} {:<26} {:<8} {} -> {}",
        v["seq"],
        text(&v["recorded_at"]),
        text(&v["action"]),
        text(&v["outcome"]),
        text(&v["actor"]["uri"]),
        text(&v["target"])
    )
}

/// The database of `config` (or `database_url`), which must exist.
async fn open_database(db: &DatabaseArgs) -> Result<crate::store::Store, Error> {
    let mut config = match &db.config {
        Some(path) => crate::config::Config::from_file(path)?,
        None => crate::config::Config::default(),
    };
    if let Some(url) = &db.database_url {
        config.database_url = url.clone();
    }
    let store = match config.database()? {
        crate::config::Database::Sqlite(path) => {
            if !path.exists() {
                return Err(Error::InvalidArgument(format!(
                    "no database at {}",
                    path.display()
                )));
            }
            crate::store::Store::open_sqlite(&path).await?
        }
        crate::config::Database::Postgres(url) => crate::store::Store::open_url(&url).await?,
    };
    Ok(store)
}

async fn fsck(db: &DatabaseArgs, checkpoints: &[PathBuf]) -> Result<(), Error> {
    let public = audit_key(&db.key)?;
    let outside = checkpoints
        .iter()
        .map(read)
        .collect::<Result<Vec<_>, _>>()?;
    let store = open_database(db).await?;
    let started = std::time::Instant::now();
    let mut reported = 0u64;
    let report = crate::service::fsck::fsck(&store, &public, &outside, |done, total| {
        if done - reported >= 1_000_000 || done == total {
            reported = done;
            let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-9);
            eprintln!("fsck: {done} of {total} events checked ({rate:.0}/s)");
        }
    })
    .await;
    match report {
        Ok(r) => {
            println!(
                "OK: {} events, {} stored tree nodes and {} signed checkpoints re-derived and \
                 verified in {:.1} s{}",
                r.events,
                r.nodes,
                r.checkpoints,
                started.elapsed().as_secs_f64(),
                if r.archived > 0 {
                    format!(" (events 1..={} are archived)", r.archived)
                } else {
                    String::new()
                }
            );
            Ok(())
        }
        Err(Error::Integrity(damage)) => {
            Err(Error::FailedPrecondition(format!("fsck FAILED: {damage}")))
        }
        Err(e) => Err(e),
    }
}

async fn archive(db: &DatabaseArgs, before: &str, out: &std::path::Path) -> Result<(), Error> {
    use crate::service::archive::Stage;
    let public = audit_key(&db.key)?;
    let before =
        time::OffsetDateTime::parse(before, &time::format_description::well_known::Rfc3339)
            .map_err(|e| {
                Error::InvalidArgument(format!("--before {before}: not an RFC 3339 time: {e}"))
            })?;
    if out.exists() {
        return Err(Error::InvalidArgument(format!(
            "{} exists; an archive bundle is never overwritten",
            out.display()
        )));
    }
    let store = open_database(db).await?;
    let started = std::time::Instant::now();
    let mut reported = 0u64;
    let report = crate::service::archive::archive(
        &store,
        &public,
        before,
        out,
        crate::clock::Clock::now(&crate::clock::SystemClock),
        |stage| match stage {
            Stage::Written(done, total) => {
                if done - reported >= 1_000_000 || done == total {
                    reported = done;
                    eprintln!("archive: {done} of {total} events written");
                }
            }
            Stage::Verified => eprintln!("archive: {} read back and verified", out.display()),
            Stage::Dropped(n) => {
                if n % 1_000_000 < 20_000 {
                    eprintln!("archive: {n} rows dropped");
                }
            }
        },
    )
    .await?;
    println!(
        "OK: events {}..={} archived to {} ({} bytes, SHA-256 {}), {} rows dropped, in {:.1} s",
        report.first_seq,
        report.last_seq,
        out.display(),
        report.bytes,
        report.bundle_sha256,
        report.dropped,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

pub async fn run(cmd: AuditCommand) -> Result<(), Error> {
    match cmd {
        AuditCommand::Archive { db, before, out } => archive(&db, &before, &out).await,
        AuditCommand::RecordAccess(args) => super::access::run(args).await,
        AuditCommand::Query {
            conn,
            filter,
            page_size,
            limit,
        } => {
            let mut client = AuditServiceClient::new(conn.channel().await?);
            let filter = filter.to_proto()?;
            let (mut token, mut shown) = (String::new(), 0u64);
            loop {
                let page = client
                    .query_audit(proto::QueryAuditRequest {
                        filter: Some(filter.clone()),
                        page_size,
                        page_token: token,
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                for json in &page.events_json {
                    if limit.is_some_and(|l| shown >= l) {
                        return Ok(());
                    }
                    let line = if conn.json {
                        json.clone()
                    } else {
                        let v: serde_json::Value = serde_json::from_str(json).map_err(|e| {
                            Error::Internal(format!(
                                "the server sent an event that is not JSON: {e}"
                            ))
                        })?;
                        event_line(&v)
                    };
                    // A reader that has gone (`| head`) ends the listing.
                    if !super::print_line(&line)? {
                        return Ok(());
                    }
                    shown += 1;
                }
                if page.next_page_token.is_empty() {
                    return Ok(());
                }
                token = page.next_page_token;
            }
        }
        AuditCommand::ProveInclusion {
            conn,
            seq,
            checkpoint: kept,
            audit_key: key_path,
        } => {
            let key = audit_key(&key_path)?;
            let mut client = AuditServiceClient::new(conn.channel().await?);
            let note = match &kept {
                Some(path) => read(path)?,
                None => current_checkpoint(&mut client).await?,
            };
            let tree = verified(&note, &key, "the checkpoint")?;
            let proof = client
                .get_inclusion_proof(proto::GetInclusionProofRequest {
                    seq,
                    tree_size: tree.size,
                })
                .await
                .map_err(status)?
                .into_inner();
            let leaf = hash_of(&proof.leaf_hash, "leaf hash")?;
            let path = hashes(&proof.proof)?;
            let index = u64::try_from(seq - 1).map_err(|_| {
                Error::InvalidArgument(format!("--seq must be 1 or more (got {seq})"))
            })?;
            if proof.tree_size != tree.size
                || !merkle::verify_inclusion(index, tree.size, &leaf, &path, &tree.root)
            {
                return Err(Error::FailedPrecondition(format!(
                    "verification FAILED: the proof does not place event {seq} in the signed tree of size {}",
                    tree.size
                )));
            }
            if conn.json {
                println!(
                    "{}",
                    serde_json::json!({"seq": seq, "tree_size": tree.size, "origin": tree.origin,
                                       "leaf_hash": hex(&leaf), "root_hash": hex(&tree.root),
                                       "verified": true})
                );
            } else {
                println!(
                    "OK: event {seq} (leaf hash {}) is in the tree of size {} signed by {}",
                    hex(&leaf),
                    tree.size,
                    tree.origin
                );
            }
            Ok(())
        }
        AuditCommand::ProveConsistency {
            conn,
            since,
            audit_key: key_path,
        } => {
            let key = audit_key(&key_path)?;
            let old = verified(&read(&since)?, &key, "the earlier checkpoint")?;
            let mut client = AuditServiceClient::new(conn.channel().await?);
            let new = verified(
                &current_checkpoint(&mut client).await?,
                &key,
                "the current checkpoint",
            )?;
            if new.origin != old.origin {
                return Err(Error::FailedPrecondition(format!(
                    "verification FAILED: the checkpoints are of two logs ({} and {})",
                    old.origin, new.origin
                )));
            }
            let proof = client
                .get_consistency_proof(proto::GetConsistencyProofRequest {
                    old_size: old.size,
                    new_size: new.size,
                })
                .await
                .map_err(status)?
                .into_inner();
            let path = hashes(&proof.proof)?;
            if !merkle::verify_consistency(old.size, new.size, &old.root, &new.root, &path) {
                return Err(Error::FailedPrecondition(format!(
                    "verification FAILED: the log of size {} does not extend the earlier checkpoint of size {}",
                    new.size, old.size
                )));
            }
            if conn.json {
                println!(
                    "{}",
                    serde_json::json!({"old_size": old.size, "new_size": new.size,
                                       "origin": new.origin, "consistent": true})
                );
            } else {
                println!(
                    "OK: the log of size {} signed by {} extends the checkpoint of size {}",
                    new.size, new.origin, old.size
                );
            }
            Ok(())
        }
        AuditCommand::Fsck { db, checkpoint } => fsck(&db, &checkpoint).await,
        AuditCommand::Verify {
            bundle,
            key,
            previous_checkpoint,
        } => {
            let public = audit_key(&key)?;
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
                    if r.archived_through > 0 {
                        println!(
                            "events 1..={} are archived: the bundle carries their compact range",
                            r.archived_through
                        );
                    }
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
            if conn.json {
                use base64::Engine;
                let root = base64::engine::general_purpose::STANDARD.encode(&cp.root_hash);
                println!(
                    "{}",
                    serde_json::json!({"tree_size": cp.tree_size, "root_hash": root, "note": cp.note})
                );
            } else {
                print!("{}", cp.note);
            }
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
            filter,
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
            let filter = filter.to_proto()?;
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
                if v.get("type").and_then(|t| t.as_str()) == Some("event") {
                    count += 1;
                    if progress && count % 1000 == 0 {
                        eprint!("\rexported {count} events");
                    }
                }
                let view = match format {
                    Format::Jsonl => None,
                    Format::Csv => Some(render::View::Csv),
                    Format::Fhir => Some(render::View::Fhir),
                };
                if let (Some(w), Some(view)) = (rendering.as_mut(), view) {
                    if let Some(rendered) = render::bundle_line(view, &v, &mut origin) {
                        writeln!(w, "{rendered}").map_err(io)?;
                    }
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
