//! Natural batching of search calls to one city.
//!
//! Most of what a node spends on a search it is sent alone is the call, not
//! the search: TLS records, HTTP/2 frames, a task and a wake on both sides.
//! So only a few search calls to a city are in flight at once (the
//! gateway's `search_calls_in_flight`, 2 by default), and searches that
//! arrive while they are busy gather in a queue; the next call carries
//! everything queued, up to the node's limit, as one `SearchBatch`. Nothing
//! waits on a timer: a search that finds a call free goes out at once,
//! alone, as a plain `Search`, so a lone client sees no batching at all, and
//! under load batches grow with the load.
//!
//! A batch call is never cancelled by any one search giving up: it runs in
//! its own task, and each search waits only for its own answer, under its
//! own deadline. Each item carries its own remaining budget and trace
//! context, so the node skips items whose time is up and each search stays
//! one trace.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use corridor_proto::{self as pb, node_client::NodeClient, node_search_batch_result::Outcome};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, oneshot},
    time::Instant,
};
use tonic::{Code, Status};
use tracing::Instrument;

use crate::fanout::{NodeChannel as Channel, no_answer, node_request};

/// Most hits one batch may ask for, so that its answer stays well inside the
/// message limit (16 MiB) whatever the summaries weigh.
const MAX_BATCH_HITS: u32 = 4_000;

/// The search calls to one city.
pub struct Batcher {
    queue: Mutex<VecDeque<Pending>>,
    calls: Arc<Semaphore>,
    /// Set when the node answers `SearchBatch` with UNIMPLEMENTED (a node of
    /// an earlier version, mid-upgrade): from then on every search goes to
    /// it alone.
    unbatched: AtomicBool,
}

struct Pending {
    request: pb::SearchRequest,
    deadline: Instant,
    span: tracing::Span,
    reply: oneshot::Sender<Result<pb::NodeSearchResponse, Status>>,
}

/// A free call, handed back on drop; whoever hands it back looks for
/// searches that queued meanwhile.
struct Slot {
    batcher: Arc<Batcher>,
    client: NodeClient<Channel>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.batcher.kick(&self.client);
    }
}

impl Batcher {
    /// At most `calls` search calls in flight at once.
    pub fn new(calls: usize) -> Self {
        Batcher { queue: Mutex::default(), calls: Arc::new(Semaphore::new(calls)), unbatched: AtomicBool::new(false) }
    }

    /// Runs `request` on the city's node by `deadline`, alone or in a batch.
    /// `span` is this search's call span; the node's span joins it.
    pub async fn search(
        self: &Arc<Self>,
        client: &NodeClient<Channel>,
        request: pb::SearchRequest,
        deadline: Instant,
        span: tracing::Span,
    ) -> Result<pb::NodeSearchResponse, Status> {
        if self.unbatched.load(Ordering::Relaxed) {
            return search_alone(client.clone(), request, deadline, &span).await;
        }
        let queue_empty = self.queue.lock().expect("poisoned").is_empty();
        if queue_empty && let Ok(permit) = self.calls.clone().try_acquire_owned() {
            let _slot = Slot { batcher: self.clone(), client: client.clone(), permit: Some(permit) };
            return search_alone(client.clone(), request, deadline, &span).await;
        }
        let (reply, answer) = oneshot::channel();
        self.queue.lock().expect("poisoned").push_back(Pending { request, deadline, span, reply });
        self.kick(client);
        answer.await.unwrap_or_else(|_| Err(Status::internal("the batch carrying this search was dropped")))
    }

    /// Starts a call for the queue if one is free. Every search that queues
    /// kicks, and every call that ends kicks, so nothing is left waiting.
    fn kick(self: &Arc<Self>, client: &NodeClient<Channel>) {
        if self.queue.lock().expect("poisoned").is_empty() {
            return;
        }
        let Ok(permit) = self.calls.clone().try_acquire_owned() else { return };
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let slot = Slot { batcher: self.clone(), client: client.clone(), permit: Some(permit) };
        rt.spawn(async move { slot.batcher.clone().drain(&slot.client).await });
    }

    /// Sends what is queued, batch after batch, until the queue is empty.
    async fn drain(self: Arc<Self>, client: &NodeClient<Channel>) {
        loop {
            let batch = self.take();
            if batch.is_empty() {
                return;
            }
            self.send(client, batch).await;
        }
    }

    /// Up to [`pb::MAX_SEARCH_BATCH`] queued searches that someone still waits for.
    fn take(&self) -> Vec<Pending> {
        let mut queue = self.queue.lock().expect("poisoned");
        let mut batch = Vec::with_capacity(queue.len().min(pb::MAX_SEARCH_BATCH));
        let mut hits = 0;
        while batch.len() < pb::MAX_SEARCH_BATCH
            && let Some(p) = queue.pop_front()
        {
            if !batch.is_empty() && hits + p.request.limit > MAX_BATCH_HITS {
                queue.push_front(p);
                break;
            }
            // A search whose client gave up, or whose time is up, is not sent.
            if !p.reply.is_closed() && p.deadline > Instant::now() {
                hits += p.request.limit;
                batch.push(p);
            }
        }
        batch
    }

    async fn send(&self, client: &NodeClient<Channel>, batch: Vec<Pending>) {
        // One search, or a node known to predate batches (another call may
        // have learnt it while these queued): each goes as its own call.
        if batch.len() == 1 || self.unbatched.load(Ordering::Relaxed) {
            return each_alone(client, batch).await;
        }
        let now = Instant::now();
        let last = batch.iter().map(|p| p.deadline).max().expect("not empty");
        // A client span like each city call's (see `client_span`): the
        // channel records the batch call's method and status on it.
        let span = tracing::info_span!(
            "gateway.city_batch",
            items = batch.len(),
            otel.kind = "client",
            rpc.system = "grpc",
            rpc.service = tracing::field::Empty,
            rpc.method = tracing::field::Empty,
            rpc.grpc.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
        );
        let items = batch
            .iter()
            .map(|p| {
                span.follows_from(&p.span);
                pb::NodeSearchBatchItem {
                    // Cloned: a node from before batching gets them again, one by one.
                    request: Some(p.request.clone()),
                    budget_micros: micros(p.deadline.saturating_duration_since(now)),
                    trace_context: corridor_telemetry::context_map(&p.span),
                }
            })
            .collect();
        let budget = last.saturating_duration_since(now);
        let req = node_request(pb::NodeSearchBatchRequest { items }, budget, &span);
        let answer = tokio::time::timeout(budget, client.clone().search_batch(req)).instrument(span).await;
        match answer {
            Ok(Ok(resp)) => {
                let mut results = resp.into_inner().results.into_iter();
                for p in batch {
                    let result = match results.next().and_then(|r| r.outcome) {
                        Some(Outcome::Found(found)) => Ok(found),
                        Some(Outcome::Error(e)) => Err(Status::new(Code::from(e.code), e.message)),
                        None => Err(Status::internal("the node's batch answer left this search out")),
                    };
                    let _ = p.reply.send(result);
                }
            }
            Ok(Err(status)) if status.code() == Code::Unimplemented => {
                // A node from before batching: ask it one search at a time,
                // now and from now on.
                self.unbatched.store(true, Ordering::Relaxed);
                each_alone(client, batch).await;
            }
            Ok(Err(status)) => {
                for p in batch {
                    let _ = p.reply.send(Err(status.clone()));
                }
            }
            Err(_) => {
                for p in batch {
                    let _ = p.reply.send(Err(Status::deadline_exceeded(no_answer(budget))));
                }
            }
        }
    }
}

/// Sends each search as its own call, all at once.
async fn each_alone(client: &NodeClient<Channel>, batch: Vec<Pending>) {
    futures_util::future::join_all(batch.into_iter().map(|p| async move {
        let result = search_alone(client.clone(), p.request, p.deadline, &p.span).await;
        let _ = p.reply.send(result);
    }))
    .await;
}

/// One search sent as its own call, its budget sent on as `grpc-timeout`.
async fn search_alone(
    mut client: NodeClient<Channel>,
    request: pb::SearchRequest,
    deadline: Instant,
    span: &tracing::Span,
) -> Result<pb::NodeSearchResponse, Status> {
    let budget = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(budget, client.search(node_request(request, budget, span))).await {
        Ok(answer) => answer.map(tonic::Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded(no_answer(budget))),
    }
}

fn micros(d: Duration) -> u64 {
    // 0 would mean "no budget" to the node; a search with no time left is
    // not sent at all.
    d.as_micros().clamp(1, u64::MAX as u128) as u64
}
