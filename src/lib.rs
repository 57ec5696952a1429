//! medid: a private certificate authority and audit ledger for connected medical devices.
//!
//! A map of the crate, split by authority rather than by layer (see `docs/ARCHITECTURE.md`):
//!
//! - [`api`]: the edges. gRPC (tonic over rustls mTLS) services, EST over HTTPS, the public
//!   CRL/OCSP/CA HTTP endpoints; peer certificate → [`Principal`], proto ↔ domain conversion,
//!   [`Error`] → `tonic::Status` or an HTTP status. The only module that sees prost types.
//! - [`policy`]: the registration authority. Pure decisions: who may do what, CSR and key
//!   acceptance, which certificate profile a request gets. No I/O, no keys.
//! - [`issuance`]: the signing authority. Holds the CA private keys and signs what it is told;
//!   knows no policy. The only module that may see a private key.
//! - [`store`]: the only module that speaks SQL (sqlx; SQLite, or PostgreSQL for replicas), with
//!   group commit for the hot writes.
//! - [`audit`]: typed audit events: what is recorded for every change and every refusal.
//! - [`service`]: the issuance cycle and the other use cases, written as numbered steps that
//!   call policy, store, issuance and audit in order.
//! - [`server`]: `server::run(config, listener, shutdown)`, what `medid serve` and the tests start.
//! - [`cli`]: the `medid` command line (service, PKI bootstrap and client commands).
//!
//! Supporting modules: [`config`], [`clock`], [`domain`] (validated newtypes), [`error`],
//! [`files`] (modes and atomic replacement of what medid writes).

#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod der;
pub mod domain;
pub mod error;
pub mod files;
pub mod gateway;
pub mod issuance;
pub mod logging;
pub mod pem;
pub mod policy;
pub mod server;
pub mod service;
pub mod store;

pub use domain::Principal;
pub use error::Error;

/// Generated protobuf and gRPC code for `proto/medid/v1/medid.proto`.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("medid.v1");

    /// Encoded `FileDescriptorSet`, served by gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/medid_descriptor.bin"));

    include!(concat!(env!("OUT_DIR"), "/rpc_methods.rs"));
}

/// The version and the git commit this binary was built from (`--version`, `medid_build_info`).
pub const BUILD_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("MEDID_GIT_COMMIT"),
    ")"
);

/// The git commit this binary was built from, or `unknown`.
pub const BUILD_COMMIT: &str = env!("MEDID_GIT_COMMIT");
