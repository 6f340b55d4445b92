//! What a failed TLS handshake means, for the person who has to fix it.
//!
//! A client whose certificate the server refuses learns it from a TLS alert,
//! several causes deep under gRPC's "transport error". Callers hand the whole
//! error here and get the reason back, so that no code outside this crate
//! needs to know rustls's types.

use std::{error::Error as StdError, io};

use rustls::{AlertDescription as A, CertificateError as C, Error as E};

/// Why a TLS handshake failed, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The server refused this client's certificate: the CA revoked it.
    Revoked,
    /// The server refused this client's certificate: expired, or not yet valid.
    Expired,
    /// The server refused this client's certificate: another CA issued it.
    UnknownCa,
    /// The server refused this client's certificate: not a corridor identity
    /// (a CA leaf, two URI SANs, a bad signature or key usage).
    BadCertificate,
    /// The server wants a client certificate and got none.
    NoCertificate,
    /// The server ended the handshake with another alert (its TLS name).
    Alert(String),
    /// This client does not accept the server's certificate (why, in words).
    UntrustedServer(String),
    /// The peer does not speak TLS, or broke the protocol.
    Protocol(String),
}

/// Finds the TLS failure anywhere in `err`'s chain of causes, including an
/// `io::Error` that carries one (whose own `source()` would skip it).
pub fn handshake_failure(err: &(dyn StdError + 'static)) -> Option<HandshakeFailure> {
    let mut next = Some(err);
    while let Some(e) = next {
        let tls = e
            .downcast_ref::<E>()
            .or_else(|| e.downcast_ref::<io::Error>().and_then(|io| io.get_ref()?.downcast_ref::<E>()));
        if let Some(tls) = tls {
            return Some(classify(tls));
        }
        next = e.source();
    }
    None
}

fn classify(e: &E) -> HandshakeFailure {
    match e {
        E::AlertReceived(alert) => match alert {
            A::CertificateRevoked => HandshakeFailure::Revoked,
            A::CertificateExpired => HandshakeFailure::Expired,
            A::UnknownCA => HandshakeFailure::UnknownCa,
            A::BadCertificate
            | A::CertificateUnknown
            | A::UnsupportedCertificate
            | A::DecryptError
            | A::AccessDenied => HandshakeFailure::BadCertificate,
            A::CertificateRequired => HandshakeFailure::NoCertificate,
            other => HandshakeFailure::Alert(format!("{other:?}")),
        },
        E::InvalidCertificate(C::Revoked) => HandshakeFailure::UntrustedServer("its certificate was revoked".into()),
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            HandshakeFailure::UntrustedServer("its certificate has expired".into())
        }
        E::InvalidCertificate(C::UnknownIssuer) => {
            HandshakeFailure::UntrustedServer("its certificate is not from this corridor's CA".into())
        }
        E::InvalidCertificate(other) => HandshakeFailure::UntrustedServer(format!("{other:?}")),
        // The corridor's own checks of the server (its identity) fail as General.
        E::General(why) => HandshakeFailure::UntrustedServer(why.clone()),
        other => HandshakeFailure::Protocol(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alert_inside_an_io_error_inside_another_error_is_found() {
        #[derive(Debug)]
        struct Outer(io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("transport error")
            }
        }
        impl StdError for Outer {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        let revoked = Outer(io::Error::new(io::ErrorKind::InvalidData, E::AlertReceived(A::CertificateRevoked)));
        assert_eq!(handshake_failure(&revoked), Some(HandshakeFailure::Revoked));
        let plain = Outer(io::Error::other("connection refused"));
        assert_eq!(handshake_failure(&plain), None);
    }
}
