use std::path::PathBuf;

/// Everything that can go wrong while issuing, loading or checking certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    // The cause is in the message, not chained, so that it prints once.
    #[error("cannot read {path}: {cause}")]
    Read { path: PathBuf, cause: std::io::Error },
    #[error("cannot write {path}: {cause}")]
    Write { path: PathBuf, cause: std::io::Error },
    #[error("{path} already exists; pass --force to replace the CA and every identity")]
    Exists { path: PathBuf },
    #[error("{path} already exists; request into another directory, and move the key once the certificate is signed")]
    KeyExists { path: PathBuf },
    #[error("{path} holds no {what} in PEM form")]
    NoPem { path: PathBuf, what: &'static str },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("tls configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("not a corridor identity: {0}")]
    BadIdentity(String),
    #[error("malformed certificate: {0}")]
    BadCertificate(String),
    #[error("malformed certificate signing request: {0}")]
    BadRequest(String),
    #[error("certificate signing request refused: {0}")]
    Refused(String),
}
