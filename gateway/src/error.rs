//! Why a call to a city's node brought no answer, as a type.
//!
//! Everything below the service works with [`CallError`]; only `service`
//! turns one into the `tonic::Status` a client sees (see `relay` there), so
//! that what a caller is told about a node's failure is decided in one place.
//! [`CallError::from_status`] is the one place that reads a node call's
//! `Status` and says whether the node answered or the call never got an
//! answer.

use std::time::Duration;

use corridor_proto::NodeState;
use tonic::{Code, Status};

/// Why a call to a node did not bring its answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The node answered with this code and message: its own decision (not
    /// found, refused, its store unavailable, its search stopped at its
    /// deadline), which reaches the client as it is. Also the rare protocol
    /// failure that tonic reports under a code that says nothing of
    /// reachability (an HTTP/2 stream reset as INTERNAL, say), kept as it
    /// always was.
    #[error("{message}")]
    Node { code: Code, message: String },
    /// The gateway's own timer ran out: no answer within the call's budget.
    #[error("no answer within {} ms", budget.as_millis())]
    NoAnswer { budget: Duration },
    /// The budget sent on as `grpc-timeout` ran out, at the node (its server
    /// stops the call and answers CANCELLED) or at the channel here.
    #[error("{0}")]
    Expired(String),
    /// The node could not be reached, or its connection broke under the call.
    #[error("{0}")]
    Broken(String),
    /// The city's guard refused the call before it was sent.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The batch that carried this search ended without answering it.
    #[error("the batch carrying this search was dropped")]
    Dropped,
    /// The node's batch answer had no result for this search.
    #[error("the node's batch answer left this search out")]
    LeftOut,
}

/// Why a city's guard refused a call at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The circuit breaker is open: the city kept failing.
    #[error("circuit open after {failures} failures in a row; next try in {} ms", retry_in.as_millis())]
    CircuitOpen { failures: u32, retry_in: Duration },
    /// The city already has its limit of calls in flight.
    #[error("load shed: {in_flight} calls already in flight")]
    Shed { in_flight: usize },
}

impl CallError {
    /// What a node call's failed `Status` means: the one classification.
    ///
    /// A status that came over the wire is the node's answer and keeps its
    /// code and message, whatever the code (a node says UNAVAILABLE or
    /// DEADLINE_EXCEEDED for reasons of its own). A status that tonic made
    /// here from a transport error (it carries that error as its source) is
    /// no answer at all: the connection failed, or the deadline ran out.
    pub fn from_status(status: Status) -> Self {
        let message = status.message().to_string();
        match status.code() {
            Code::Unavailable | Code::Unknown | Code::Cancelled if broken_connection(&status) => {
                CallError::Broken(message)
            }
            // tonic answers CANCELLED when a deadline sent as `grpc-timeout`
            // expires, at the node or in the channel here; no node answers it
            // of its own accord.
            Code::Cancelled => CallError::Expired(message),
            code => CallError::Node { code, message },
        }
    }

    /// How a city that failed this way is reported in a fan-out.
    pub fn state(&self) -> NodeState {
        match self {
            CallError::Node { code: Code::Unavailable, .. } => NodeState::Unavailable,
            CallError::Node { code: Code::DeadlineExceeded, .. } => NodeState::Timeout,
            CallError::Node { .. } | CallError::Dropped | CallError::LeftOut => NodeState::Error,
            CallError::NoAnswer { .. } | CallError::Expired(_) => NodeState::Timeout,
            CallError::Broken(_) | CallError::Refused(_) => NodeState::Unavailable,
        }
    }

    /// Whether the failure says the city is sick, for its circuit breaker.
    /// Refusals a node decides (not found, invalid) are answers, not
    /// sickness.
    pub fn is_sickness(&self) -> bool {
        matches!(self.state(), NodeState::Timeout | NodeState::Unavailable)
    }
}

/// Whether `status` stands for a connection that failed rather than for
/// an answer: tonic made it here from a transport error, which it keeps as
/// the status's source. A connection that breaks under a call (the node was
/// killed) comes back as UNKNOWN, or as CANCELLED ("operation was
/// canceled"), with the transport's error inside; where the source was lost
/// on the way, its message still says so.
fn broken_connection(status: &Status) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = cause {
        // The channel's own deadline: the call was not answered in time,
        // but the connection is fine.
        if e.is::<tonic::TimeoutExpired>() {
            return false;
        }
        cause = e.source();
    }
    if std::error::Error::source(status).is_some() {
        return true;
    }
    let m = status.message();
    status.code() != Code::Unavailable
        && ["transport error", "h2 protocol error", "connection", "broken pipe", "operation was canceled"]
            .iter()
            .any(|p| m.contains(p))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn with_source(mut s: Status, source: impl std::error::Error + Send + Sync + 'static) -> Status {
        s.set_source(Arc::new(source));
        s
    }

    #[test]
    fn a_nodes_own_answer_keeps_its_code_and_message() {
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
            Code::FailedPrecondition,
            Code::NotFound,
            Code::DataLoss,
            Code::Internal,
        ] {
            let got = CallError::from_status(Status::new(code, "the node's reason"));
            assert_eq!(got, CallError::Node { code, message: "the node's reason".into() });
        }
    }

    #[test]
    fn a_broken_connection_is_unavailable_not_an_answer() {
        let broken = |s: Status| {
            let e = CallError::from_status(s);
            assert!(matches!(e, CallError::Broken(_)), "{e:?}");
            assert_eq!(e.state(), NodeState::Unavailable);
        };
        broken(Status::unknown("transport error"));
        broken(Status::unknown("h2 protocol error: stream reset"));
        // A node killed under a call: hyper's cancellation, not a deadline.
        broken(Status::cancelled("operation was canceled: connection closed"));
        // Made here by tonic from the transport's error, which it keeps.
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        broken(with_source(Status::unavailable("tcp connect error"), refused));
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        broken(with_source(Status::unknown("error reading a body from connection"), reset));

        assert_eq!(CallError::from_status(Status::unknown("the handler panicked")).state(), NodeState::Error);
        assert!(matches!(
            CallError::from_status(Status::internal("transport error")),
            CallError::Node { code: Code::Internal, .. }
        ));
    }

    #[test]
    fn an_expired_grpc_timeout_is_a_timeout_at_either_end() {
        // The node's server stopped the call at the deadline it was sent.
        let at_node = CallError::from_status(Status::cancelled("Timeout expired"));
        assert_eq!(at_node, CallError::Expired("Timeout expired".into()));
        assert_eq!(at_node.state(), NodeState::Timeout);
        // The channel here stopped waiting.
        let here = with_source(Status::cancelled("Timeout expired"), tonic::TimeoutExpired(()));
        assert_eq!(CallError::from_status(here).state(), NodeState::Timeout);
    }

    #[test]
    fn states_and_sickness_follow_the_kind_of_failure() {
        let node = |code| CallError::Node { code, message: String::new() };
        assert_eq!(node(Code::Unavailable).state(), NodeState::Unavailable);
        assert_eq!(node(Code::DeadlineExceeded).state(), NodeState::Timeout);
        assert_eq!(node(Code::NotFound).state(), NodeState::Error);
        assert!(!node(Code::NotFound).is_sickness());
        assert!(!node(Code::FailedPrecondition).is_sickness());
        assert!(CallError::NoAnswer { budget: Duration::from_millis(5) }.is_sickness());
        assert!(CallError::Broken("reset".into()).is_sickness());
        assert!(!CallError::LeftOut.is_sickness());
        let open = CallError::from(Refusal::CircuitOpen { failures: 5, retry_in: Duration::from_millis(1_500) });
        assert_eq!(open.state(), NodeState::Unavailable);
        assert_eq!(open.to_string(), "circuit open after 5 failures in a row; next try in 1500 ms");
        assert_eq!(CallError::NoAnswer { budget: Duration::from_millis(950) }.to_string(), "no answer within 950 ms");
    }
}
