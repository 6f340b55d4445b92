//! Corridor identities and the only code that touches rustls: the development CA,
//! certificate issue, server and client TLS configs, and turning a verified peer
//! certificate into a typed [`Identity`].

mod accept;
mod coalesce;
mod diagnose;
mod error;
mod files;
mod identity;
mod issue;
mod revoke;
mod tls;

pub use accept::{
    Deadline, MAX_CONNECTION_AGE, MAX_CONNECTION_AGE_GRACE, Refusal, ServerStream, TlsAcceptOptions,
    handshake_refusals, tls_incoming,
};
pub use coalesce::Coalesce;
pub use diagnose::{HandshakeFailure, handshake_failure};
pub use error::CertError;
pub use files::crl_path;
pub use identity::{Identity, TRUST_DOMAIN};
pub use issue::{
    Ca, CertRequest, IssueOptions, IssuedCert, SignedRequest, init_dir, request, write_identity, write_request,
};
pub use revoke::revoke;
pub use tls::{CredentialSource, Credentials, TlsConnector, caller_identity, client_channel, reloading_channel};
