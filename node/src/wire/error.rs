//! The one place in the node where errors become gRPC statuses: domain
//! errors by their [`Code`], and the adapter's own refusals (a request that
//! does not parse, a caller without the right identity) by name. Nothing
//! else in the crate builds a `tonic::Status`; a tidy test holds that.

use tonic::Status;

use crate::{
    error::{Code, Error},
    node::NodeError,
};

/// The gRPC code for a domain code.
fn grpc(code: Code) -> tonic::Code {
    match code {
        Code::InvalidArgument => tonic::Code::InvalidArgument,
        Code::FailedPrecondition => tonic::Code::FailedPrecondition,
        Code::NotFound => tonic::Code::NotFound,
        Code::PermissionDenied => tonic::Code::PermissionDenied,
        Code::AlreadyExists => tonic::Code::AlreadyExists,
        Code::DataLoss => tonic::Code::DataLoss,
        Code::Unavailable => tonic::Code::Unavailable,
        Code::Internal => tonic::Code::Internal,
    }
}

/// A status with a domain code.
pub fn status(code: Code, message: impl Into<String>) -> Status {
    Status::new(grpc(code), message)
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        status(e.code(), e.to_string())
    }
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Status {
        status(e.code(), e.to_string())
    }
}

/// The request is malformed.
pub fn invalid_argument(message: impl Into<String>) -> Status {
    Status::invalid_argument(message)
}

/// The caller's identity may not do this.
pub fn permission_denied(message: impl Into<String>) -> Status {
    Status::permission_denied(message)
}

/// The caller presented no usable identity.
pub fn unauthenticated(message: impl Into<String>) -> Status {
    Status::unauthenticated(message)
}

pub fn not_found(message: impl Into<String>) -> Status {
    Status::not_found(message)
}

pub fn failed_precondition(message: impl Into<String>) -> Status {
    Status::failed_precondition(message)
}

/// The caller's time ran out before the work was done.
pub fn deadline_exceeded(message: impl Into<String>) -> Status {
    Status::deadline_exceeded(message)
}

pub fn unavailable(message: impl Into<String>) -> Status {
    Status::unavailable(message)
}

/// A fault of this node: a task that died, a value that cannot be sent.
pub fn internal(message: impl Into<String>) -> Status {
    Status::internal(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{StoreError, Violation};

    #[test]
    fn each_domain_error_keeps_its_meaning_on_the_wire() {
        let cases = [
            (Error::Invalid("bad".into()), tonic::Code::InvalidArgument),
            (Error::Rule(Violation::new("min_notice", "too soon")), tonic::Code::FailedPrecondition),
            (Error::State("it is cancelled".into()), tonic::Code::FailedPrecondition),
            (Error::NotFound("no booking".into()), tonic::Code::NotFound),
            (Error::Denied("admins only".into()), tonic::Code::PermissionDenied),
            (Error::KeyReused("k".into()), tonic::Code::AlreadyExists),
            (Error::Store(StoreError::Corrupt { key: "b/x".into(), reason: "eof".into() }), tonic::Code::DataLoss),
            (Error::Store(StoreError::Backend("disk full".into())), tonic::Code::Unavailable),
        ];
        for (e, code) in cases {
            let message = e.to_string();
            let s = Status::from(e);
            assert_eq!((s.code(), s.message()), (code, message.as_str()));
        }
        assert_eq!(
            Status::from(Error::Rule(Violation::new("min_notice", "too soon"))).message(),
            "rule min_notice: too soon"
        );
    }
}
