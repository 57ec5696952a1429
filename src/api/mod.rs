//! The gRPC edge. Each RPC: take the peer certificate from the TLS connection, authenticate it
//! against the store, parse the request into domain types, call the service, and map the
//! result back. This is the only module that sees prost types or `tonic::Status`.

mod audit;
pub mod client;
pub mod conn;
pub mod console;
mod convert;
pub mod est;
pub mod fhir_rest;
pub mod http;
mod lifecycle;
pub mod limits;
pub mod listen;
pub mod metrics;
pub mod syslog;
pub mod tls;

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::audit::Target;
use crate::domain::{ManufacturerId, Principal};
use crate::proto::{
    self, admin_service_server::AdminService, enrollment_service_server::EnrollmentService,
    registry_service_server::RegistryService,
};
use crate::service::Ca;
use crate::store::registry::DeviceQuery;

/// The connection a request came on. Every connection medid serves is accepted by
/// `listen::accept`, which attaches this; its absence is a fault in the server's wiring, not a
/// refusal of a caller (there is none yet), so it is logged and answered INTERNAL.
pub(crate) fn conn_of<T>(request: &Request<T>) -> Result<&conn::ConnInfo, Status> {
    request.extensions().get::<conn::ConnInfo>().ok_or_else(|| {
        Status::from(&crate::Error::Internal(
            "a request without connection info (not accepted by listen::accept)".into(),
        ))
    })
}

/// The gRPC services, all backed by one [`Ca`].
#[derive(Clone)]
pub struct Api {
    ca: Arc<Ca>,
    limiter: Arc<limits::PrincipalLimiter>,
}

/// An authenticated caller and the concurrency permit it holds while its request runs.
pub(crate) struct Caller(
    Principal,
    #[allow(dead_code)] tokio::sync::OwnedSemaphorePermit,
);

impl std::ops::Deref for Caller {
    type Target = Principal;
    fn deref(&self) -> &Principal {
        &self.0
    }
}

impl Api {
    /// `limiter` is shared with the EST edge, so a principal's limit spans both.
    pub fn new(ca: Arc<Ca>, limiter: Arc<limits::PrincipalLimiter>) -> Self {
        Self { ca, limiter }
    }

    pub(crate) fn td(&self) -> &crate::domain::TrustDomain {
        &self.ca.profiles.trust_domain
    }

    /// The caller's principal, from the leaf certificate of its TLS session, holding one of its
    /// concurrency permits for as long as the returned value lives.
    async fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let conn = conn_of(request)?;
        let who = self.ca.authenticate(conn.leaf(), conn.remote.ip()).await?;
        if let Some(note) = request.extensions().get::<metrics::RequestNote>() {
            note.set_principal(&who.uri);
        }
        match self.limiter.try_acquire(&who.uri) {
            Ok(permit) => Ok(Caller(who, permit)),
            Err(e) => Err(self
                .ca
                .refuse(
                    &who,
                    crate::audit::Action::RequestLimit,
                    &Target::service(),
                    e,
                )
                .await
                .into()),
        }
    }

    /// Parses a request field; a parse failure is refused and audited like any other refusal.
    async fn parse<T>(
        &self,
        who: &Principal,
        action: crate::audit::Action,
        target: &Target,
        parsed: Result<T, crate::Error>,
    ) -> Result<T, Status> {
        match parsed {
            Ok(v) => Ok(v),
            Err(e) => Err(self.ca.refuse(who, action, target, e).await.into()),
        }
    }
}

#[tonic::async_trait]
impl AdminService for Api {
    async fn create_manufacturer(
        &self,
        request: Request<proto::CreateManufacturerRequest>,
    ) -> Result<Response<proto::Manufacturer>, Status> {
        let who = self.caller(&request).await?;
        let req = request.into_inner();
        let target = Target::manufacturer(self.td(), &req.id);
        let input = self
            .parse(
                &who,
                crate::audit::Action::ManufacturerCreate,
                &target,
                convert::new_manufacturer(req),
            )
            .await?;
        let m = self.ca.create_manufacturer(&who, input).await?;
        Ok(Response::new(convert::manufacturer(&m)))
    }

    async fn list_manufacturers(
        &self,
        request: Request<proto::ListManufacturersRequest>,
    ) -> Result<Response<proto::ListManufacturersResponse>, Status> {
        let who = self.caller(&request).await?;
        let list = self.ca.list_manufacturers(&who).await?;
        Ok(Response::new(proto::ListManufacturersResponse {
            manufacturers: list.iter().map(convert::manufacturer).collect(),
        }))
    }

    async fn issue_principal_certificate(
        &self,
        request: Request<proto::IssuePrincipalCertificateRequest>,
    ) -> Result<Response<proto::IssuedCertificate>, Status> {
        let who = self.caller(&request).await?;
        let req = request.into_inner();
        let target = convert::principal_target(self.td(), req.role, &req.id, &req.manufacturer_id);
        let (role, id) = self
            .parse(
                &who,
                crate::audit::Action::PrincipalIssue,
                &target,
                convert::principal_role(&req),
            )
            .await?;
        let issued = self.ca.issue_principal(&who, role, id, &req.csr).await?;
        Ok(Response::new(convert::issued(&issued)))
    }
}

#[tonic::async_trait]
impl EnrollmentService for Api {
    async fn enroll_device(
        &self,
        request: Request<proto::EnrollDeviceRequest>,
    ) -> Result<Response<proto::EnrollDeviceResponse>, Status> {
        let who = self.caller(&request).await?;
        let req = request.into_inner();
        let target = Target::device(
            self.td(),
            who.manufacturer.as_ref().map_or("", |m| m.as_str()),
            &req.serial,
        );
        let input = self
            .parse(
                &who,
                crate::audit::Action::DeviceEnroll,
                &target,
                convert::enroll_input(req),
            )
            .await?;
        let (device, issued) = self.ca.enroll_device(&who, input).await?;
        Ok(Response::new(proto::EnrollDeviceResponse {
            device: Some(convert::device(&device)),
            certificate: Some(convert::issued(&issued)),
        }))
    }
}

#[tonic::async_trait]
impl RegistryService for Api {
    async fn get_device(
        &self,
        request: Request<proto::GetDeviceRequest>,
    ) -> Result<Response<proto::Device>, Status> {
        let who = self.caller(&request).await?;
        let req = request.into_inner();
        let target = Target::device(self.td(), &req.manufacturer_id, &req.serial);
        let manufacturer = self
            .parse(
                &who,
                crate::audit::Action::DeviceRead,
                &target,
                ManufacturerId::parse(&req.manufacturer_id),
            )
            .await?;
        let device = self.ca.get_device(&who, manufacturer, &req.serial).await?;
        Ok(Response::new(convert::device(&device)))
    }

    async fn list_devices(
        &self,
        request: Request<proto::ListDevicesRequest>,
    ) -> Result<Response<proto::ListDevicesResponse>, Status> {
        let who = self.caller(&request).await?;
        let req = request.into_inner();
        let query: DeviceQuery = self
            .parse(
                &who,
                crate::audit::Action::DeviceList,
                &Target::devices(),
                convert::device_query(req),
            )
            .await?;
        let (devices, next) = self.ca.list_devices(&who, query).await?;
        Ok(Response::new(proto::ListDevicesResponse {
            devices: devices.iter().map(convert::device).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }
}
