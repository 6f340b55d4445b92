//! Node-to-node calls: a provider's node reaching issuing cities' nodes over
//! mutual TLS, as its own `node-<city>` identity.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use corridor_certs::{CredentialSource, Identity, reloading_channel};
use corridor_proto::{self as pb, node_client::NodeClient};
use corridor_telemetry::ClientService;
use tonic::{Code, Status, transport::Channel};
use tracing::Instrument;

use crate::error::Invalid;
use crate::{
    booking::time,
    money::coordinator::{CallError, CallFuture, IssuerCall, IssuerReply, Issuers},
};

/// A call to an issuer that takes longer than this counts as unanswered;
/// recovery calls again.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Issuing cities' nodes, by city slug.
pub struct GrpcIssuers {
    city: &'static str,
    clients: BTreeMap<String, NodeClient<ClientService<Channel>>>,
}

impl GrpcIssuers {
    /// `peers` maps city slugs to `https://host:port`. Connections open
    /// lazily, so a peer that is down at start is reached once it is up.
    pub fn new(
        city: &'static str,
        peers: &BTreeMap<String, String>,
        creds: Arc<CredentialSource>,
    ) -> Result<Self, corridor_certs::CertError> {
        let mut clients = BTreeMap::new();
        for (peer, url) in peers {
            let channel = reloading_channel(url, creds.clone(), Some(Identity::Node(peer.clone())), CONNECT_TIMEOUT)?;
            clients.insert(peer.clone(), NodeClient::new(ClientService::new(channel)));
        }
        Ok(GrpcIssuers { city, clients })
    }
}

/// A definite answer is a refusal; anything else may not have been seen.
fn classify(s: Status) -> CallError {
    match s.code() {
        Code::FailedPrecondition
        | Code::NotFound
        | Code::InvalidArgument
        | Code::PermissionDenied
        | Code::AlreadyExists
        | Code::OutOfRange => CallError::Refused(s.message().to_string()),
        _ => CallError::Unreachable(format!("{:?}: {}", s.code(), s.message())),
    }
}

impl Issuers for GrpcIssuers {
    fn call<'a>(&'a self, issuer: &'a str, call: IssuerCall) -> CallFuture<'a> {
        Box::pin(async move {
            let mut client = self
                .clients
                .get(issuer)
                .cloned()
                .ok_or_else(|| CallError::Unreachable(format!("no endpoint is configured for {issuer}'s node")))?;
            let req = debit_request(self.city, &call);
            // The call's span: a child of the request that started the
            // payment (recovery's calls have none, and start their own
            // trace); the issuer's server span joins it.
            let city = corridor_proto::cities::city_by_slug(issuer).map_or("unknown", |c| c.slug);
            let span = corridor_telemetry::client_span(&format!("node.call.{city}"), city);
            let mut r = tonic::Request::new(req);
            r.set_timeout(CALL_TIMEOUT);
            corridor_telemetry::client_request(&mut r, &span);
            let fut = async {
                match call {
                    IssuerCall::Try(_) => client.try_debit(r).await,
                    IssuerCall::Confirm { .. } => client.confirm_debit(r).await,
                    IssuerCall::Cancel { .. } => client.cancel_debit(r).await,
                    IssuerCall::Post(_) => client.post_debit(r).await,
                }
            };
            let d = tokio::time::timeout(CALL_TIMEOUT, fut)
                .instrument(span)
                .await
                .map_err(|_| CallError::Unreachable(format!("{issuer}'s node did not answer in time")))?
                .map_err(classify)?
                .into_inner();
            Ok(IssuerReply {
                amount_fen: d.amount_fen,
                share_percent: d.share_percent,
                per_use_cap_fen: d.per_use_cap_fen,
            })
        })
    }
}

/// The wire request for a call, as the provider `city` sends it.
fn debit_request(city: &str, call: &IssuerCall) -> pb::DebitRequest {
    let provider_city = city.to_string();
    match call {
        IssuerCall::Try(t) => pb::DebitRequest {
            op_id: t.op.clone(),
            voucher_id: t.voucher.clone(),
            requester: t.requester.clone(),
            provider_city,
            instrument_id: t.instrument.clone(),
            fee_fen: t.fee_fen,
            expires_at: time::format(t.hold_expires),
            ..Default::default()
        },
        IssuerCall::Confirm { op } => pb::DebitRequest { op_id: op.clone(), provider_city, ..Default::default() },
        IssuerCall::Cancel { op, voucher, reason } => pb::DebitRequest {
            op_id: op.clone(),
            voucher_id: voucher.clone(),
            provider_city,
            reason: reason.clone(),
            ..Default::default()
        },
        IssuerCall::Post(p) => pb::DebitRequest {
            op_id: p.op.clone(),
            provider_city,
            amount_fen: p.amount_fen,
            provider_institution: p.provider_institution.clone(),
            provider_uscc: p.provider_uscc.clone(),
            service_at: time::format(p.service_at),
            ..Default::default()
        },
    }
}

/// Parses `--peer city=https://host:port` values.
pub fn parse_peers(values: &[String]) -> Result<BTreeMap<String, String>, Invalid> {
    let mut out = BTreeMap::new();
    for v in values {
        let (city, url) = v.split_once('=').ok_or_else(|| format!("--peer {v:?}: expected CITY=https://host:port"))?;
        if corridor_proto::cities::city_by_slug(city).is_none() {
            return Err(Invalid(format!("--peer {v:?}: {city:?} is not a corridor city")));
        }
        if !url.starts_with("https://") {
            return Err(Invalid(format!("--peer {v:?}: the endpoint must be https://host:port")));
        }
        out.insert(city.to_string(), url.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::voucher::{PostDebit, TryDebit};

    #[test]
    fn a_definite_no_is_a_refusal_and_anything_else_may_have_been_seen() {
        for code in [Code::FailedPrecondition, Code::NotFound, Code::InvalidArgument, Code::PermissionDenied] {
            match classify(Status::new(code, "voucher wuhu/v-1 has 10.00 yuan left")) {
                CallError::Refused(m) => assert_eq!(m, "voucher wuhu/v-1 has 10.00 yuan left"),
                other => panic!("{code:?} should be a refusal, got {other:?}"),
            }
        }
        // No answer, an overloaded or failing issuer: the call may have taken
        // effect, so the provider calls again rather than giving up.
        for code in [Code::Unavailable, Code::DeadlineExceeded, Code::Internal, Code::Unknown, Code::Cancelled] {
            match classify(Status::new(code, "connection reset")) {
                CallError::Unreachable(m) => assert!(m.contains("connection reset"), "{m}"),
                other => panic!("{code:?} should be unreachable, got {other:?}"),
            }
        }
    }

    #[test]
    fn each_call_carries_what_the_issuer_needs() {
        let t = debit_request(
            "hefei",
            &IssuerCall::Try(TryDebit {
                op: "hefei/bk-7".into(),
                voucher: "wuhu/v-2".into(),
                requester: "spiffe://corridor/org/demo".into(),
                provider_city: "hefei".into(),
                instrument: "hefei/tem-1".into(),
                fee_fen: 120_000,
                hold_expires: 1_795_399_200,
            }),
        );
        assert_eq!(
            (t.op_id.as_str(), t.voucher_id.as_str(), t.provider_city.as_str(), t.fee_fen),
            ("hefei/bk-7", "wuhu/v-2", "hefei", 120_000)
        );
        assert_eq!(t.expires_at, "2026-11-23T10:00:00+08:00");
        let p = debit_request(
            "hefei",
            &IssuerCall::Post(PostDebit {
                op: "hefei/bk-7".into(),
                amount_fen: 60_000,
                provider_institution: "中国科学技术大学".into(),
                provider_uscc: "12100000485000490J".into(),
                service_at: 1_795_399_200,
            }),
        );
        assert_eq!((p.amount_fen, p.provider_uscc.as_str(), p.fee_fen), (60_000, "12100000485000490J", 0));
        let c = debit_request(
            "hefei",
            &IssuerCall::Cancel { op: "hefei/bk-7".into(), voucher: "wuhu/v-2".into(), reason: "declined".into() },
        );
        assert_eq!((c.reason.as_str(), c.voucher_id.as_str()), ("declined", "wuhu/v-2"));
    }

    #[test]
    fn peers_are_read_and_bad_ones_named() {
        let ok = parse_peers(&["wuhu=https://127.0.0.1:7001".into(), "hefei=https://n.hefei:443".into()]).unwrap();
        assert_eq!(ok.get("wuhu").map(String::as_str), Some("https://127.0.0.1:7001"));
        for (bad, says) in [
            ("wuhu", "expected CITY=https://host:port"),
            ("paris=https://x:1", "not a corridor city"),
            ("wuhu=http://x:1", "must be https://"),
        ] {
            let e = parse_peers(&[bad.to_string()]).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
