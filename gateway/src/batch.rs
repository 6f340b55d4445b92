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
use tonic::{Code, Request};
use tracing::Instrument;

use crate::{
    call::{NodeChannel, node_request, within},
    error::CallError,
};

/// Most hits one batch may ask for, so that its answer stays well inside the
/// message limit (16 MiB) whatever the summaries weigh.
const MAX_BATCH_HITS: u32 = 4_000;

/// The two calls batching makes to a node, each failure already classified
/// (see [`CallError::from_status`]). A trait so that batching can be tested
/// against a node made up for the test.
pub trait SearchNode: Clone + Send + Sync + 'static {
    fn search(
        &self,
        req: Request<pb::SearchRequest>,
    ) -> impl Future<Output = Result<pb::NodeSearchResponse, CallError>> + Send;

    fn search_batch(
        &self,
        req: Request<pb::NodeSearchBatchRequest>,
    ) -> impl Future<Output = Result<pb::NodeSearchBatchResponse, CallError>> + Send;
}

impl SearchNode for NodeClient<NodeChannel> {
    async fn search(&self, req: Request<pb::SearchRequest>) -> Result<pb::NodeSearchResponse, CallError> {
        // The client's own method (it takes `&mut self`), not this trait's.
        NodeClient::search(&mut self.clone(), req)
            .await
            .map(tonic::Response::into_inner)
            .map_err(CallError::from_status)
    }

    async fn search_batch(
        &self,
        req: Request<pb::NodeSearchBatchRequest>,
    ) -> Result<pb::NodeSearchBatchResponse, CallError> {
        NodeClient::search_batch(&mut self.clone(), req)
            .await
            .map(tonic::Response::into_inner)
            .map_err(CallError::from_status)
    }
}

/// The search calls to one city's node.
pub struct Batcher<N> {
    node: N,
    queue: Mutex<VecDeque<Pending>>,
    calls: Arc<Semaphore>,
    /// Set when the node answers `SearchBatch` with UNIMPLEMENTED (a node of
    /// an earlier version, mid-upgrade): from then on every search goes to
    /// it alone.
    unbatched: AtomicBool,
}

type Answer = Result<pb::NodeSearchResponse, CallError>;

struct Pending {
    request: pb::SearchRequest,
    deadline: Instant,
    span: tracing::Span,
    reply: oneshot::Sender<Answer>,
}

/// A free call, handed back on drop; whoever hands it back looks for
/// searches that queued meanwhile.
struct Slot<N: SearchNode> {
    batcher: Arc<Batcher<N>>,
    permit: Option<OwnedSemaphorePermit>,
}

impl<N: SearchNode> Drop for Slot<N> {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.batcher.kick();
    }
}

impl<N: SearchNode> Batcher<N> {
    /// At most `calls` search calls to `node` in flight at once.
    pub fn new(node: N, calls: usize) -> Self {
        Batcher {
            node,
            queue: Mutex::default(),
            calls: Arc::new(Semaphore::new(calls)),
            unbatched: AtomicBool::new(false),
        }
    }

    /// Runs `request` on the city's node by `deadline`, alone or in a batch.
    /// `span` is this search's call span; the node's span joins it.
    pub async fn search(
        self: &Arc<Self>,
        request: pb::SearchRequest,
        deadline: Instant,
        span: tracing::Span,
    ) -> Answer {
        if self.unbatched.load(Ordering::Relaxed) {
            return search_alone(&self.node, request, deadline, &span).await;
        }
        let queue_empty = self.queue.lock().expect("poisoned").is_empty();
        if queue_empty && let Ok(permit) = self.calls.clone().try_acquire_owned() {
            let _slot = Slot { batcher: self.clone(), permit: Some(permit) };
            return search_alone(&self.node, request, deadline, &span).await;
        }
        let (reply, answer) = oneshot::channel();
        self.queue.lock().expect("poisoned").push_back(Pending { request, deadline, span, reply });
        self.kick();
        // Each search waits under its own deadline, whatever its batch does.
        let budget = deadline.saturating_duration_since(Instant::now());
        within(budget, async { answer.await.unwrap_or(Err(CallError::Dropped)) }).await
    }

    /// Starts a call for the queue if one is free. Every search that queues
    /// kicks, and every call that ends kicks, so nothing is left waiting.
    fn kick(self: &Arc<Self>) {
        if self.queue.lock().expect("poisoned").is_empty() {
            return;
        }
        let Ok(permit) = self.calls.clone().try_acquire_owned() else { return };
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let slot = Slot { batcher: self.clone(), permit: Some(permit) };
        rt.spawn(async move { slot.batcher.clone().drain().await });
    }

    /// Sends what is queued, batch after batch, until the queue is empty.
    async fn drain(self: Arc<Self>) {
        loop {
            let batch = self.take();
            if batch.is_empty() {
                return;
            }
            self.send(batch).await;
        }
    }

    /// Up to [`pb::MAX_SEARCH_BATCH`] queued searches that someone still
    /// waits for. One whose time is up is answered so and not sent.
    fn take(&self) -> Vec<Pending> {
        let mut queue = self.queue.lock().expect("poisoned");
        let mut batch = Vec::with_capacity(queue.len().min(pb::MAX_SEARCH_BATCH));
        let mut hits = 0;
        let now = Instant::now();
        while batch.len() < pb::MAX_SEARCH_BATCH
            && let Some(p) = queue.pop_front()
        {
            if p.reply.is_closed() {
                // Its client gave up.
                continue;
            }
            if p.deadline <= now {
                let _ = p.reply.send(Err(CallError::NoAnswer { budget: Duration::ZERO }));
                continue;
            }
            if !batch.is_empty() && hits + p.request.limit > MAX_BATCH_HITS {
                queue.push_front(p);
                break;
            }
            hits += p.request.limit;
            batch.push(p);
        }
        batch
    }

    async fn send(&self, batch: Vec<Pending>) {
        // One search, or a node known to predate batches (another call may
        // have learnt it while these queued): each goes as its own call.
        if batch.len() == 1 || self.unbatched.load(Ordering::Relaxed) {
            return each_alone(&self.node, batch).await;
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
        match within(budget, self.node.search_batch(req)).instrument(span).await {
            Ok(resp) => {
                let mut results = resp.results.into_iter();
                for p in batch {
                    // Each item is answered as `Search` would have answered it,
                    // its code and message included.
                    let result = match results.next().and_then(|r| r.outcome) {
                        Some(Outcome::Found(found)) => Ok(found),
                        Some(Outcome::Error(e)) => {
                            Err(CallError::Node { code: Code::from(e.code), message: e.message })
                        }
                        None => Err(CallError::LeftOut),
                    };
                    let _ = p.reply.send(result);
                }
            }
            Err(CallError::Node { code: Code::Unimplemented, .. }) => {
                // A node from before batching: ask it one search at a time,
                // now and from now on.
                self.unbatched.store(true, Ordering::Relaxed);
                each_alone(&self.node, batch).await;
            }
            Err(e) => {
                for p in batch {
                    let _ = p.reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// Searches waiting for a free call.
    #[cfg(test)]
    fn queued(&self) -> usize {
        self.queue.lock().expect("poisoned").len()
    }
}

/// Sends each search as its own call, all at once.
async fn each_alone<N: SearchNode>(node: &N, batch: Vec<Pending>) {
    futures_util::future::join_all(batch.into_iter().map(|p| async move {
        let result = search_alone(node, p.request, p.deadline, &p.span).await;
        let _ = p.reply.send(result);
    }))
    .await;
}

/// One search sent as its own call, its budget sent on as `grpc-timeout`.
async fn search_alone<N: SearchNode>(
    node: &N,
    request: pb::SearchRequest,
    deadline: Instant,
    span: &tracing::Span,
) -> Answer {
    let budget = deadline.saturating_duration_since(Instant::now());
    within(budget, node.search(node_request(request, budget, span))).await
}

fn micros(d: Duration) -> u64 {
    // 0 would mean "no budget" to the node; a search with no time left is
    // not sent at all.
    d.as_micros().clamp(1, u64::MAX as u128) as u64
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// How the made-up node answers `SearchBatch`.
    #[derive(Clone)]
    enum Batches {
        /// Each item as `Search` would answer it.
        Each,
        /// As a node from before batching: UNIMPLEMENTED.
        Unknown,
        /// The whole call fails so.
        Fail(CallError),
        /// Without a result for the last item.
        Short,
    }

    /// A node made up for the test. It records every call, holds each until
    /// the test opens its gate, and answers a search for "<n>" with a total
    /// of n, and any other query with the node's own RESOURCE_EXHAUSTED.
    #[derive(Clone)]
    struct Fake(Arc<FakeNode>);

    struct FakeNode {
        open: tokio::sync::watch::Sender<bool>,
        batches: Batches,
        started: AtomicUsize,
        singles: Mutex<Vec<String>>,
        /// Each batch call's items: query and budget.
        batch_calls: Mutex<Vec<Vec<(String, Duration)>>>,
    }

    impl Fake {
        fn new(batches: Batches) -> Self {
            Fake(Arc::new(FakeNode {
                open: tokio::sync::watch::Sender::new(false),
                batches,
                started: AtomicUsize::new(0),
                singles: Mutex::default(),
                batch_calls: Mutex::default(),
            }))
        }

        fn open(&self) {
            self.0.open.send_replace(true);
        }

        async fn gate(&self) {
            let _ = self.0.open.subscribe().wait_for(|open| *open).await;
        }

        fn singles(&self) -> Vec<String> {
            let mut v = self.0.singles.lock().unwrap().clone();
            v.sort();
            v
        }

        fn batch_calls(&self) -> Vec<Vec<(String, Duration)>> {
            self.0.batch_calls.lock().unwrap().clone()
        }

        fn started(&self) -> usize {
            self.0.started.load(Ordering::SeqCst)
        }
    }

    fn answer(query: &str) -> Answer {
        match query.parse() {
            Ok(total) => Ok(pb::NodeSearchResponse { total, ..Default::default() }),
            Err(_) => Err(CallError::Node { code: Code::ResourceExhausted, message: format!("{query}: too much") }),
        }
    }

    impl SearchNode for Fake {
        async fn search(&self, req: Request<pb::SearchRequest>) -> Answer {
            self.0.started.fetch_add(1, Ordering::SeqCst);
            self.0.singles.lock().unwrap().push(req.get_ref().query.clone());
            self.gate().await;
            answer(&req.get_ref().query)
        }

        async fn search_batch(
            &self,
            req: Request<pb::NodeSearchBatchRequest>,
        ) -> Result<pb::NodeSearchBatchResponse, CallError> {
            self.0.started.fetch_add(1, Ordering::SeqCst);
            let queries: Vec<String> =
                req.get_ref().items.iter().map(|i| i.request.as_ref().unwrap().query.clone()).collect();
            let budgets = req.get_ref().items.iter().map(|i| Duration::from_micros(i.budget_micros));
            self.0.batch_calls.lock().unwrap().push(queries.iter().cloned().zip(budgets).collect());
            self.gate().await;
            let mut results: Vec<_> = queries
                .iter()
                .map(|q| pb::NodeSearchBatchResult {
                    outcome: Some(match answer(q) {
                        Ok(found) => Outcome::Found(found),
                        Err(CallError::Node { code, message }) => {
                            Outcome::Error(pb::ItemError { code: code as i32, message })
                        }
                        Err(other) => unreachable!("{other}"),
                    }),
                })
                .collect();
            match &self.0.batches {
                Batches::Each => {}
                Batches::Unknown => {
                    return Err(CallError::Node {
                        code: Code::Unimplemented,
                        message: "unknown method SearchBatch".into(),
                    });
                }
                Batches::Fail(e) => return Err(e.clone()),
                Batches::Short => drop(results.pop()),
            }
            Ok(pb::NodeSearchBatchResponse { results })
        }
    }

    fn query(q: &str) -> pb::SearchRequest {
        pb::SearchRequest { query: q.into(), limit: 10, ..Default::default() }
    }

    fn in_secs(s: u64) -> Instant {
        Instant::now() + Duration::from_secs(s)
    }

    type Search = tokio::task::JoinHandle<Answer>;

    fn spawn_search(b: &Arc<Batcher<Fake>>, q: &str, deadline: Instant) -> Search {
        let (b, q) = (b.clone(), query(q));
        tokio::spawn(async move { b.search(q, deadline, tracing::Span::none()).await })
    }

    /// Runs other tasks until `done` holds.
    async fn until(mut done: impl FnMut() -> bool) {
        while !done() {
            tokio::task::yield_now().await;
        }
    }

    /// A batcher with one call, busy with search "1" (held at the node),
    /// and `queued` searches waiting behind it.
    async fn busy(fake: &Fake, queued: &[(&str, Instant)]) -> (Arc<Batcher<Fake>>, Search, Vec<Search>) {
        let b = Arc::new(Batcher::new(fake.clone(), 1));
        let first = spawn_search(&b, "1", in_secs(60));
        until(|| fake.started() == 1).await;
        let rest = queued.iter().map(|(q, d)| spawn_search(&b, q, *d)).collect();
        until(|| b.queued() == queued.len()).await;
        (b, first, rest)
    }

    fn total(a: Answer) -> u64 {
        a.expect("found").total
    }

    #[tokio::test]
    async fn a_search_that_finds_a_call_free_goes_alone_at_once() {
        let fake = Fake::new(Batches::Each);
        fake.open();
        let b = Arc::new(Batcher::new(fake.clone(), 2));
        assert_eq!(total(b.search(query("7"), in_secs(60), tracing::Span::none()).await), 7);
        assert_eq!(fake.singles(), ["7"]);
        assert!(fake.batch_calls().is_empty());
    }

    #[tokio::test]
    async fn searches_gather_only_while_every_call_is_busy_and_each_is_answered_as_itself() {
        let fake = Fake::new(Batches::Each);
        let (near, far) = (in_secs(10), in_secs(20));
        let (_b, first, rest) = busy(&fake, &[("2", near), ("3", far)]).await;
        // Nothing goes out while the only call is busy.
        assert_eq!(fake.started(), 1);
        fake.open();
        assert_eq!(total(first.await.unwrap()), 1);
        let answers: Vec<u64> =
            futures_util::future::join_all(rest).await.into_iter().map(|r| total(r.unwrap())).collect();
        assert_eq!(answers, [2, 3]);
        assert_eq!(fake.singles(), ["1"]);
        let calls = fake.batch_calls();
        assert_eq!(calls.len(), 1, "the two waiting searches went as one batch");
        let [(q2, b2), (q3, b3)] = calls[0].as_slice() else { panic!("{calls:?}") };
        assert_eq!((q2.as_str(), q3.as_str()), ("2", "3"));
        // Each item carries its own remaining budget.
        assert!(*b2 <= Duration::from_secs(10) && *b3 > Duration::from_secs(10), "{b2:?} {b3:?}");
    }

    #[tokio::test]
    async fn an_item_the_node_refuses_keeps_its_code_and_message() {
        let fake = Fake::new(Batches::Each);
        let (_b, first, rest) = busy(&fake, &[("lots", in_secs(60)), ("2", in_secs(60))]).await;
        fake.open();
        first.await.unwrap().unwrap();
        let [refused, found] = <[Search; 2]>::try_from(rest).unwrap();
        assert_eq!(
            refused.await.unwrap(),
            Err(CallError::Node { code: Code::ResourceExhausted, message: "lots: too much".into() })
        );
        assert_eq!(total(found.await.unwrap()), 2);
        assert_eq!(fake.batch_calls().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_search_whose_budget_ran_out_is_no_answer_and_never_sent() {
        let fake = Fake::new(Batches::Each);
        let b = Arc::new(Batcher::new(fake.clone(), 2));
        assert_eq!(
            b.search(query("1"), Instant::now(), tracing::Span::none()).await,
            Err(CallError::NoAnswer { budget: Duration::ZERO })
        );
        assert_eq!(fake.started(), 0, "no call for a search with no time left");

        // One that runs out while it waits for a call.
        let (_b, first, rest) = busy(&fake, &[("2", in_secs(1)), ("3", in_secs(60))]).await;
        tokio::time::advance(Duration::from_secs(2)).await;
        let [late, on_time] = <[Search; 2]>::try_from(rest).unwrap();
        assert!(matches!(late.await.unwrap(), Err(CallError::NoAnswer { .. })));
        fake.open();
        first.await.unwrap().unwrap();
        assert_eq!(total(on_time.await.unwrap()), 3);
        // "3" went alone, as the only search still waiting.
        assert_eq!(fake.singles(), ["1", "3"]);
        assert!(fake.batch_calls().is_empty());
    }

    #[tokio::test]
    async fn a_node_without_batches_gets_each_search_alone_from_then_on() {
        let fake = Fake::new(Batches::Unknown);
        let (b, first, rest) = busy(&fake, &[("2", in_secs(60)), ("3", in_secs(60))]).await;
        fake.open();
        assert_eq!(total(first.await.unwrap()), 1);
        let answers: Vec<u64> =
            futures_util::future::join_all(rest).await.into_iter().map(|r| total(r.unwrap())).collect();
        assert_eq!(answers, [2, 3], "refused as a batch, answered one by one");
        assert_eq!(fake.batch_calls().len(), 1);
        assert_eq!(fake.singles(), ["1", "2", "3"]);
        // From then on nothing queues: every search is its own call at once,
        // however many are in flight.
        fake.0.open.send_replace(false);
        let held: Vec<Search> = ["4", "5", "6"].iter().map(|q| spawn_search(&b, q, in_secs(60))).collect();
        until(|| fake.started() == 1 + 1 + 2 + 3).await;
        assert_eq!(b.queued(), 0);
        fake.open();
        for h in held {
            h.await.unwrap().unwrap();
        }
        assert_eq!(fake.batch_calls().len(), 1);
    }

    #[tokio::test]
    async fn a_failed_batch_call_fails_each_of_its_searches_with_its_error() {
        let broken = CallError::Broken("connection reset".into());
        let fake = Fake::new(Batches::Fail(broken.clone()));
        let (_b, first, rest) = busy(&fake, &[("2", in_secs(60)), ("3", in_secs(60))]).await;
        fake.open();
        first.await.unwrap().unwrap();
        for r in rest {
            assert_eq!(r.await.unwrap(), Err(broken.clone()));
        }

        let fake = Fake::new(Batches::Short);
        let (_b, first, rest) = busy(&fake, &[("2", in_secs(60)), ("3", in_secs(60))]).await;
        fake.open();
        first.await.unwrap().unwrap();
        let [answered, left_out] = <[Search; 2]>::try_from(rest).unwrap();
        assert_eq!(total(answered.await.unwrap()), 2);
        assert_eq!(left_out.await.unwrap(), Err(CallError::LeftOut));
    }
}
