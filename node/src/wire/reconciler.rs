//! The reconciler's side of the wire: pulls every node's whole ledger over
//! gRPC, as the reconciler's identity, and verifies each chain. What it
//! returns goes to `money::reconcile`, which is pure.

use std::time::Duration;

use corridor_proto::{ReadLedgerRequest, node_client::NodeClient};

use crate::money::{
    ledger::{self, Entry, Head},
    reconcile::NodeLedger,
};

/// Why one node's ledger could not be read. Any such node fails the run: a
/// statement missing a city would look balanced and be wrong.
#[derive(Debug, thiserror::Error)]
#[error("{city}'s node ({url}) {why}; no statement written")]
pub struct FetchError {
    pub city: String,
    pub url: String,
    pub why: String,
}

/// Pulls and verifies the ledgers of every `(city, url)` endpoint.
pub async fn fetch(
    endpoints: &[(String, String)],
    creds: &corridor_certs::Credentials,
    timeout: Duration,
) -> Result<Vec<NodeLedger>, FetchError> {
    let calls = endpoints.iter().map(|(city, url)| async move {
        let fail = |why: String| FetchError { city: city.clone(), url: url.clone(), why };
        let channel =
            corridor_certs::client_channel(url, creds, Some(corridor_certs::Identity::Node(city.clone())), timeout)
                .map_err(|e| fail(format!("cannot be reached: {e}")))?;
        let mut client = NodeClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
        let mut raw = Vec::new();
        let mut head: Head;
        let mut after = 0;
        loop {
            let mut req = tonic::Request::new(ReadLedgerRequest { after_seq: after, limit: 0 });
            req.set_timeout(timeout);
            let page = client
                .read_ledger(req)
                .await
                .map_err(|s| fail(format!("did not give its ledger: {} ({:?})", s.message(), s.code())))?
                .into_inner();
            head = Head { seq: page.head_seq, hash: page.head_hash };
            let last = page.entries.last().and_then(|e| serde_json::from_slice::<Entry>(e).ok()).map(|e| e.seq);
            let n = page.entries.len();
            raw.extend(page.entries);
            match last {
                Some(seq) if n > 0 && seq < head.seq && seq > after => after = seq,
                _ => break,
            }
        }
        let chain = ledger::verify(&raw, &head);
        Ok(NodeLedger { city: city.clone(), head, chain })
    });
    futures_util::future::join_all(calls).await.into_iter().collect()
}
