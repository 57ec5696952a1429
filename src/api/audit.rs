//! `AuditService`: access events from gateways, checkpoints and proofs, exports and queries.

use std::pin::Pin;

use futures_util::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::Api;
use crate::audit::action::DataAction;
use crate::audit::{Action, Outcome, Target};
use crate::domain::{quote, ManufacturerId};
use crate::error::Error;
use crate::proto::{self, audit_service_server::AuditService};
use crate::service::ledger::{AccessInput, DeviceLocator, DATA_CATEGORIES, PURPOSES};
use crate::store::ledger::AuditQuery;

/// Access events in one streamed batch, at most.
const MAX_BATCH: usize = 10_000;

fn short(what: &str, s: &str, max: usize) -> Result<Option<String>, Error> {
    if s.is_empty() {
        return Ok(None);
    }
    if s.chars().count() > max || s.chars().any(char::is_control) {
        return Err(Error::InvalidArgument(format!(
            "{what} must be at most {max} characters without control characters"
        )));
    }
    Ok(Some(s.to_owned()))
}

fn access_input(e: proto::AccessEvent) -> Result<AccessInput, Error> {
    let device = match (e.device_uri.as_str(), e.device) {
        ("", Some(d)) => DeviceLocator::Serial {
            manufacturer: ManufacturerId::parse(&d.manufacturer_id)?,
            serial: d.serial,
        },
        (uri, None) if !uri.is_empty() => DeviceLocator::Uri(uri.to_owned()),
        _ => {
            return Err(Error::InvalidArgument(
                "name the device by device_uri or by manufacturer and serial (one of them)".into(),
            ))
        }
    };
    let action = match proto::AccessAction::try_from(e.action) {
        Ok(proto::AccessAction::Create) => DataAction::Create,
        Ok(proto::AccessAction::Read) => DataAction::Read,
        Ok(proto::AccessAction::Update) => DataAction::Update,
        Ok(proto::AccessAction::Delete) => DataAction::Delete,
        Ok(proto::AccessAction::Export) => DataAction::Export,
        Ok(proto::AccessAction::Execute) => DataAction::Execute,
        _ => {
            return Err(Error::InvalidArgument(
                "action must be create, read, update, delete, export or execute".into(),
            ))
        }
    };
    if !DATA_CATEGORIES.contains(&e.data_category.as_str()) {
        return Err(Error::InvalidArgument(format!(
            "data_category {} is not one of {}",
            quote(&e.data_category),
            DATA_CATEGORIES.join(", ")
        )));
    }
    if !PURPOSES.contains(&e.purpose_of_use.as_str()) {
        return Err(Error::InvalidArgument(format!(
            "purpose_of_use {} is not an accepted HL7 v3 ActReason code ({})",
            quote(&e.purpose_of_use),
            PURPOSES.join(", ")
        )));
    }
    let outcome_code = match proto::AccessOutcome::try_from(e.outcome) {
        Ok(proto::AccessOutcome::Success) => 0,
        Ok(proto::AccessOutcome::MinorFailure) => 4,
        Ok(proto::AccessOutcome::SeriousFailure) => 8,
        Ok(proto::AccessOutcome::MajorFailure) => 12,
        _ => return Err(Error::InvalidArgument("outcome is required".into())),
    };
    let occurred_at = e
        .occurred_at
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.seconds).ok())
        .ok_or_else(|| Error::InvalidArgument("occurred_at is required".into()))?;
    let completed_at = e
        .completed_at
        .map(|t| {
            time::OffsetDateTime::from_unix_timestamp(t.seconds)
                .ok()
                .filter(|at| *at >= occurred_at)
                .ok_or_else(|| {
                    Error::InvalidArgument("completed_at must not be before occurred_at".into())
                })
        })
        .transpose()?;
    let event_id = short("event_id", &e.event_id, 64)?;
    if let Some(id) = &event_id {
        if !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(Error::InvalidArgument(
                "event_id must be 1-64 of A-Z, a-z, 0-9, '.', '_' and '-'".into(),
            ));
        }
    }
    Ok(AccessInput {
        device,
        user_id: short("user_id", &e.user_id, 512)?,
        user_role: short("user_role", &e.user_role, 128)?,
        action,
        data_category: e.data_category,
        patient_ref: short("patient_ref", &e.patient_ref, 256)?,
        purpose_of_use: e.purpose_of_use,
        outcome_code,
        occurred_at,
        completed_at,
        event_id,
        resource: short("resource", &e.resource, 512)?,
    })
}

fn audit_query(f: Option<proto::AuditFilter>) -> Result<AuditQuery, Error> {
    let Some(f) = f else {
        return Ok(AuditQuery::default());
    };
    let time = |t: Option<prost_types::Timestamp>| {
        t.map(|t| {
            time::OffsetDateTime::from_unix_timestamp(t.seconds)
                .map_err(|_| Error::InvalidArgument("timestamp out of range".into()))
        })
        .transpose()
    };
    let text = |s: String| (!s.is_empty()).then_some(s);
    let action = text(f.action)
        .map(|name| {
            Action::parse(&name).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "action {} is not an audit action; docs/AUDIT.md lists them",
                    quote(&name)
                ))
            })
        })
        .transpose()?;
    let outcome = text(f.outcome)
        .map(|name| {
            Outcome::parse(&name).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "outcome {} is not one of success, refused, denied, failed",
                    quote(&name)
                ))
            })
        })
        .transpose()?;
    Ok(AuditQuery {
        from: time(f.from)?,
        to: time(f.to)?,
        device_uri: text(f.device_uri),
        manufacturer: text(f.manufacturer_id),
        actor_uri: text(f.actor_uri),
        action,
        outcome,
        patient_ref: text(f.patient_ref),
    })
}

impl Api {
    /// The audit target of a reported access: the device it names, parsed or not.
    fn access_target(&self, e: &proto::AccessEvent) -> Target {
        match (&e.device, e.device_uri.as_str()) {
            (Some(d), _) => Target::device(self.td(), &d.manufacturer_id, &d.serial),
            (None, "") => Target::devices(),
            (None, uri) => Target::device_uri(self.td(), uri),
        }
    }
}

type LineStream = Pin<Box<dyn Stream<Item = Result<proto::BundleLine, Status>> + Send>>;
type AckStream = Pin<Box<dyn Stream<Item = Result<proto::AccessBatchAck, Status>> + Send>>;

#[tonic::async_trait]
impl AuditService for Api {
    async fn record_access(
        &self,
        request: Request<proto::AccessEvent>,
    ) -> Result<Response<proto::AccessReceipt>, Status> {
        let who = self.caller(&request).await?;
        let event = request.into_inner();
        let target = self.access_target(&event);
        let input = self
            .parse(
                &who,
                crate::audit::Action::DataAccess,
                &target,
                access_input(event),
            )
            .await?;
        let done = self.ca.record_access(&who, vec![input]).await?;
        let (seq, decommissioned) = done[0];
        Ok(Response::new(proto::AccessReceipt {
            seq,
            device_decommissioned: decommissioned,
        }))
    }

    type RecordAccessStreamStream = AckStream;

    async fn record_access_stream(
        &self,
        request: Request<Streaming<proto::AccessBatch>>,
    ) -> Result<Response<AckStream>, Status> {
        let who = self.caller(&request).await?;
        let mut batches = request.into_inner();
        let api = self.clone();
        let acks = async_stream(move |tx| async move {
            while let Some(batch) = batches.next().await {
                let batch = match batch {
                    Ok(b) => b,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                if batch.events.len() > MAX_BATCH {
                    let err =
                        Error::InvalidArgument(format!("a batch holds at most {MAX_BATCH} events"));
                    let _ = tx
                        .send(Err(api
                            .ca
                            .refuse(
                                &who,
                                crate::audit::Action::DataAccess,
                                &Target::devices(),
                                err,
                            )
                            .await
                            .into()))
                        .await;
                    return;
                }
                let inputs: Result<Vec<_>, _> =
                    batch.events.into_iter().map(access_input).collect();
                let inputs = match inputs {
                    Ok(i) => i,
                    Err(e) => {
                        let _ = tx
                            .send(Err(api
                                .ca
                                .refuse(
                                    &who,
                                    crate::audit::Action::DataAccess,
                                    &Target::devices(),
                                    e,
                                )
                                .await
                                .into()))
                            .await;
                        return;
                    }
                };
                match api.ca.record_access(&who, inputs).await {
                    Ok(done) => {
                        let ack = proto::AccessBatchAck {
                            seqs: done.into_iter().map(|(s, _)| s).collect(),
                        };
                        if tx.send(Ok(ack)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(acks))
    }

    async fn get_checkpoint(
        &self,
        request: Request<proto::GetCheckpointRequest>,
    ) -> Result<Response<proto::SignedCheckpoint>, Status> {
        let who = self.caller(&request).await?;
        let (cp, note) = self.ca.signed_checkpoint(&who).await?;
        Ok(Response::new(proto::SignedCheckpoint {
            note,
            tree_size: cp.size,
            root_hash: cp.root.to_vec(),
        }))
    }

    async fn get_inclusion_proof(
        &self,
        request: Request<proto::GetInclusionProofRequest>,
    ) -> Result<Response<proto::InclusionProof>, Status> {
        let who = self.caller(&request).await?;
        let req = request.into_inner();
        let (leaf, proof) = self
            .ca
            .inclusion_proof(&who, req.seq, req.tree_size)
            .await?;
        Ok(Response::new(proto::InclusionProof {
            seq: req.seq,
            tree_size: req.tree_size,
            leaf_hash: leaf.to_vec(),
            proof: proof.iter().map(|h| h.to_vec()).collect(),
        }))
    }

    async fn get_consistency_proof(
        &self,
        request: Request<proto::GetConsistencyProofRequest>,
    ) -> Result<Response<proto::ConsistencyProof>, Status> {
        let who = self.caller(&request).await?;
        let req = request.into_inner();
        let proof = self
            .ca
            .consistency_proof(&who, req.old_size, req.new_size)
            .await?;
        Ok(Response::new(proto::ConsistencyProof {
            old_size: req.old_size,
            new_size: req.new_size,
            proof: proof.iter().map(|h| h.to_vec()).collect(),
        }))
    }

    type ExportAuditStream = LineStream;

    async fn export_audit(
        &self,
        request: Request<proto::ExportAuditRequest>,
    ) -> Result<Response<LineStream>, Status> {
        let who = self.caller(&request).await?;
        let req = request.into_inner();
        let query = self
            .parse(
                &who,
                crate::audit::Action::AuditExport,
                &Target::ledger(),
                audit_query(req.filter),
            )
            .await?;
        let rx = self.ca.export(&who, query, req.previous_tree_size).await?;
        let lines = tokio_stream::wrappers::ReceiverStream::new(rx).map(|r| {
            r.map(|json| proto::BundleLine { json })
                .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(lines)))
    }

    async fn query_audit(
        &self,
        request: Request<proto::QueryAuditRequest>,
    ) -> Result<Response<proto::QueryAuditResponse>, Status> {
        let who = self.caller(&request).await?;
        let req = request.into_inner();
        let parsed = audit_query(req.filter).and_then(|q| {
            let after = match req.page_token.as_str() {
                "" => 0,
                t => t.parse::<i64>().map_err(|_| {
                    Error::InvalidArgument("page_token is not one this server issued".into())
                })?,
            };
            Ok((q, after))
        });
        let (query, after) = self
            .parse(
                &who,
                crate::audit::Action::AuditQuery,
                &Target::ledger(),
                parsed,
            )
            .await?;
        let page = if req.page_size == 0 {
            100
        } else {
            req.page_size
        };
        let (events, next) = self.ca.query_audit(&who, query, after, page).await?;
        Ok(Response::new(proto::QueryAuditResponse {
            events_json: events.iter().map(|v| v.to_string()).collect(),
            next_page_token: next.map(|n| n.to_string()).unwrap_or_default(),
        }))
    }
}

/// A stream fed by a spawned task through a channel.
fn async_stream<T, F, Fut>(body: F) -> Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<Result<T, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(body(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
