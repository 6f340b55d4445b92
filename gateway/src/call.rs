//! One call to a node: its channel, its request (budget and trace context),
//! and the deadline arithmetic every call shares. Below `batch`, `fanout`
//! and `service`, which all make calls, so that none of them has to import
//! another for these.

use std::time::Duration;

use tonic::{Request, transport::Channel};

use crate::error::CallError;

/// Largest gRPC message the gateway accepts or sends, in both directions,
/// to its clients and to the nodes.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// A channel to a node whose calls record their status on their call span.
pub type NodeChannel = corridor_telemetry::ClientService<Channel>;

/// A call to a node: `msg`, with `budget` sent on as `grpc-timeout` and
/// `span`'s trace context, which the node's span joins; the call's status
/// is recorded on `span`.
pub fn node_request<T>(msg: T, budget: Duration, span: &tracing::Span) -> Request<T> {
    let mut req = Request::new(msg);
    req.set_timeout(budget);
    corridor_telemetry::client_request(&mut req, span);
    req
}

/// Runs `call` for at most `budget`; running out is [`CallError::NoAnswer`].
/// A budget already spent starts no call at all.
pub async fn within<T>(budget: Duration, call: impl Future<Output = Result<T, CallError>>) -> Result<T, CallError> {
    if budget.is_zero() {
        return Err(CallError::NoAnswer { budget });
    }
    tokio::time::timeout(budget, call).await.unwrap_or(Err(CallError::NoAnswer { budget }))
}

/// The budget a client gave us in `grpc-timeout`, if any.
pub use corridor_proto::limits::grpc_timeout as client_deadline;

/// The budget for node calls: the client's deadline (bounded), minus a margin
/// so that the merged answer still reaches the client in time.
pub fn node_budget(client: Option<Duration>, default: Duration, max: Duration) -> Duration {
    let total = client.unwrap_or(default).min(max);
    let margin = (total / 20).clamp(Duration::from_millis(1), Duration::from_millis(50));
    total.saturating_sub(margin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_leaves_a_margin_and_respects_the_cap() {
        let d = Duration::from_millis;
        assert_eq!(node_budget(Some(d(1000)), d(1500), d(30_000)), d(950));
        assert_eq!(node_budget(None, d(1500), d(30_000)), d(1450));
        assert_eq!(node_budget(Some(d(60_000)), d(1500), d(30_000)), d(29_950));
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_gets_its_budget_and_no_more() {
        let d = Duration::from_millis;
        assert_eq!(within(d(10), async { Ok::<_, CallError>(7) }).await, Ok(7));
        let never = std::future::pending::<Result<(), CallError>>();
        assert_eq!(within(d(10), never).await, Err(CallError::NoAnswer { budget: d(10) }));
        // A spent budget does not even start the call.
        let started = std::sync::atomic::AtomicBool::new(false);
        let call = async {
            started.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok::<_, CallError>(())
        };
        assert_eq!(within(Duration::ZERO, call).await, Err(CallError::NoAnswer { budget: Duration::ZERO }));
        assert!(!started.load(std::sync::atomic::Ordering::SeqCst));
    }
}
