//! The public gRPC service. The only place in this crate that builds a
//! `tonic::Status`: its own refusals, and, in `relay` and `fail_fast`, what
//! a client sees of a node call's [`CallError`].

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::Duration,
};

use tokio::time::Instant;
use tracing::Instrument;

use corridor_certs::{Identity, caller_identity};
use corridor_proto::{
    self as pb, NodeState, ON_BEHALF_OF, cities::split_instrument_id, gateway_server, node_client::NodeClient,
};
use futures_util::{StreamExt, stream::FuturesUnordered};
use tonic::{Code, Request, Response, Status, metadata::AsciiMetadataValue};

use crate::{
    call::{NodeChannel, client_deadline, node_budget, node_request, within},
    config::GatewayConfig,
    error::CallError,
    fanout::{Cities, CityClient},
};

const MAX_LIMIT: u32 = 200;
const DEFAULT_LIMIT: u32 = 20;

pub struct GatewayService {
    cities: Cities,
    default_deadline: Duration,
    max_deadline: Duration,
    stats_cache: std::sync::Mutex<HashMap<StatsKey, (Instant, pb::CorpusStats)>>,
    metrics: std::sync::Arc<corridor_telemetry::Metrics>,
}

impl GatewayService {
    pub fn new(cities: Cities, config: &GatewayConfig, metrics: std::sync::Arc<corridor_telemetry::Metrics>) -> Self {
        GatewayService {
            cities,
            default_deadline: config.default_deadline(),
            max_deadline: config.max_deadline(),
            stats_cache: Default::default(),
            metrics,
        }
    }

    /// Counts one city's part in a fan-out.
    fn fanout(&self, city: &str, state: NodeState) {
        self.metrics.inc(
            "corridor_fanout_total",
            "per-city outcomes of the gateway's fan-out calls",
            vec![("city", city.to_string()), ("state", state_label(state).to_string())],
        );
    }

    /// Corpus-wide statistics for `msg`'s query over `targets`, and the
    /// cities that could not give theirs.
    async fn global_stats<'a>(
        &self,
        targets: &[&'a CityClient],
        msg: &pb::SearchRequest,
        deadline: Instant,
    ) -> (pb::CorpusStats, Vec<(&'a CityClient, CallError)>) {
        let key: StatsKey = (msg.query.clone(), targets.iter().map(|c| c.city.slug).collect());
        // Later pages keep the statistics of the first, so that scores, and
        // with them the cursor's place in the ranking, do not move.
        let ttl = if msg.cursor.is_empty() { STATS_TTL } else { PAGED_STATS_TTL };
        if let Some((at, stats)) = self.stats_cache.lock().expect("poisoned").get(&key)
            && at.elapsed() < ttl
        {
            return (stats.clone(), Vec::new());
        }
        let budget = deadline.saturating_duration_since(Instant::now());
        let query = pb::SearchRequest { query: msg.query.clone(), ..Default::default() };
        let calls = targets.iter().map(|c| {
            let query = query.clone();
            async move { (*c, call(c, budget, None, query, |mut cl, r| async move { cl.search_stats(r).await }).await) }
        });
        let mut sum = pb::CorpusStats::default();
        let mut failed = Vec::new();
        for (c, (result, _)) in futures_util::future::join_all(calls).await {
            match result {
                Ok(s) => add_stats(&mut sum, &s),
                Err(e) => failed.push((c, e)),
            }
        }
        if failed.is_empty() {
            let mut cache = self.stats_cache.lock().expect("poisoned");
            if cache.len() >= STATS_CACHE_MAX {
                cache.clear();
            }
            cache.insert(key, (Instant::now(), sum.clone()));
        }
        (sum, failed)
    }

    fn budget<T>(&self, req: &Request<T>) -> Duration {
        node_budget(client_deadline(req.metadata()), self.default_deadline, self.max_deadline)
    }

    /// Any identity the corridor CA issued may use the gateway; the TLS layer
    /// has already refused everyone else. This reads it for the logs.
    fn caller<T>(&self, req: &Request<T>) -> Result<Identity, Status> {
        caller_identity(req).map_err(|e| Status::unauthenticated(e.to_string()))
    }

    /// Sends a call to the city named by `id`'s prefix (an instrument or
    /// booking id), acting for the caller. The node decides; its answer,
    /// refusals included, passes through unchanged (see `relay`).
    async fn forward<Req, Resp, F, Fut>(&self, req: Request<Req>, id: &str, f: F) -> Result<Response<Resp>, Status>
    where
        F: FnOnce(NodeClient<NodeChannel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let caller = self.caller(&req)?;
        let budget = self.budget(&req);
        let (city, _) = split_instrument_id(id).ok_or_else(|| {
            Status::invalid_argument(format!("{id:?} is not an id \"<city>/<local-id>\" of a corridor city"))
        })?;
        let c = self
            .cities
            .get(city.slug)
            .ok_or_else(|| Status::unavailable(format!("city {} is not configured on this gateway", city.slug)))?;
        let (result, _) = call(c, budget, Some(on_behalf_of(&caller)?), req.into_inner(), f).await;
        result.map(Response::new).map_err(|e| relay(c, e))
    }

    /// The cities a search must ask: those the filter allows.
    fn targets(&self, filter: &pb::SearchFilter) -> Result<Vec<&CityClient>, Status> {
        for c in &filter.cities {
            if corridor_proto::cities::city_by_slug(c).is_none() {
                return Err(Status::invalid_argument(format!(
                    "{c:?} is not a corridor city; cities are {}",
                    corridor_proto::cities::CITIES.map(|c| c.slug).join(", ")
                )));
            }
        }
        for p in &filter.provinces {
            if !corridor_proto::cities::PROVINCES.iter().any(|k| k.eq_ignore_ascii_case(p)) {
                return Err(Status::invalid_argument(format!(
                    "{p:?} is not a corridor province; provinces are {}",
                    corridor_proto::cities::PROVINCES.join(", ")
                )));
            }
        }
        let cities: HashSet<&str> = filter.cities.iter().map(String::as_str).collect();
        Ok(self
            .cities
            .all()
            .filter(|c| cities.is_empty() || cities.contains(c.city.slug))
            .filter(|c| {
                filter.provinces.is_empty() || filter.provinces.iter().any(|p| p.eq_ignore_ascii_case(c.city.province))
            })
            .collect())
    }
}

/// The caller, as a node reads it from `x-corridor-on-behalf-of`.
fn on_behalf_of(caller: &Identity) -> Result<AsciiMetadataValue, Status> {
    caller.uri().parse().map_err(|_| Status::internal("identity is not valid metadata"))
}

fn node_status(c: &CityClient, state: NodeState, took: Duration, detail: String) -> pb::NodeStatus {
    pb::NodeStatus {
        city: c.city.slug.into(),
        province: c.city.province.into(),
        state: state as i32,
        took_ms: took.as_millis().min(u32::MAX as u128) as u32,
        detail,
        instruments: 0,
        endpoint: c.endpoint.clone(),
    }
}

/// Calls one node under `budget`, sending the budget on as `grpc-timeout`,
/// through the city's guard like every other call to it; with
/// `on_behalf_of`, acting for that caller.
async fn call<Req, Resp, F, Fut>(
    c: &CityClient,
    budget: Duration,
    on_behalf_of: Option<AsciiMetadataValue>,
    msg: Req,
    f: F,
) -> (Result<Resp, CallError>, Duration)
where
    F: FnOnce(NodeClient<NodeChannel>, Request<Req>) -> Fut,
    Fut: Future<Output = Result<Response<Resp>, Status>>,
{
    guarded(c, budget, |span| {
        let mut req = node_request(msg, budget, &span);
        if let Some(caller) = on_behalf_of {
            req.metadata_mut().insert(ON_BEHALF_OF, caller);
        }
        async move {
            f(c.client.clone(), req).instrument(span).await.map(Response::into_inner).map_err(CallError::from_status)
        }
    })
    .await
}

/// A search of one node, alone or batched with others to the same node
/// (see `batch`), under the same guard as every other call.
async fn search_call(
    c: &CityClient,
    budget: Duration,
    msg: pb::SearchRequest,
) -> (Result<pb::NodeSearchResponse, CallError>, Duration) {
    let deadline = Instant::now() + budget;
    guarded(c, budget, |span| {
        let wait = span.clone();
        async move { c.searches.search(msg, deadline, span).instrument(wait).await }
    })
    .await
}

/// One call to a city through its guard: admitted or shed at once, bounded
/// by `budget`, and its outcome counted by the circuit breaker. `start` gets
/// the call's span, whose context the node's span joins. A failure is the
/// node's own answer, the guard's refusal, or the budget running out.
async fn guarded<Resp, F, Fut>(c: &CityClient, budget: Duration, start: F) -> (Result<Resp, CallError>, Duration)
where
    F: FnOnce(tracing::Span) -> Fut,
    Fut: Future<Output = Result<Resp, CallError>>,
{
    let started = Instant::now();
    let permit = match c.guard.admit() {
        Ok(p) => p,
        Err(why) => return (Err(why.into()), started.elapsed()),
    };
    let result = within(budget, start(c.call_span())).await;
    c.guard.record(!result.as_ref().is_err_and(CallError::is_sickness));
    drop(permit);
    (result, started.elapsed())
}

/// A failed call to city `c` as its caller sees it: the node's own code and
/// message when the node answered, whatever the code; UNAVAILABLE when it
/// could not be reached (the connection broke, or its guard refused);
/// DEADLINE_EXCEEDED when it did not answer in time. The one place that says
/// so.
fn relay(c: &CityClient, e: CallError) -> Status {
    let city = c.city.slug;
    match e {
        CallError::Node { code, message } => Status::new(code, message),
        CallError::NoAnswer { .. } | CallError::Expired(_) => {
            Status::deadline_exceeded(format!("city {city} did not answer in time: {e}"))
        }
        CallError::Broken(_) | CallError::Refused(_) => Status::unavailable(format!("city {city} is unavailable: {e}")),
        CallError::Dropped | CallError::LeftOut => Status::internal(format!("city {city}: {e}")),
    }
}

/// Orders merged hits as every node does: best score first, then by id, so
/// that equal scores come out the same way every time.
fn rank_hits(a: &pb::NodeSearchHit, b: &pb::NodeSearchHit) -> std::cmp::Ordering {
    corridor_proto::cursor::rank_bytes((a.score as f32, &a.id), (b.score as f32, &b.id))
}

/// A search that does not allow partial results, failed by city `c`: a
/// node's own answer keeps its code and message, with the city named; a
/// city that gave no answer makes the search UNAVAILABLE, as a retry may
/// well succeed.
fn fail_fast(c: &CityClient, e: &CallError) -> Status {
    let city = c.city.slug;
    match e {
        CallError::Node { code, message } if *code != Code::Ok => Status::new(*code, format!("city {city}: {message}")),
        _ => Status::unavailable(format!(
            "city {city} did not answer ({}): {e}; retry, or allow partial results",
            state_label(e.state())
        )),
    }
}

fn state_label(s: NodeState) -> &'static str {
    match s {
        NodeState::Ok => "ok",
        NodeState::Timeout => "timeout",
        NodeState::Unavailable => "unavailable",
        NodeState::Error => "error",
        NodeState::Unspecified => "unknown",
    }
}

/// Facet counts summed across cities. Hashed, not ordered: a broad query
/// brings hundreds of institutions from every city, and the order wanted
/// (by count) is made once at the end.
#[derive(Default)]
struct FacetSums {
    cities: HashMap<String, u64>,
    categories: HashMap<String, u64>,
    institutions: HashMap<String, u64>,
}

impl FacetSums {
    fn add(&mut self, f: pb::Facets) {
        for (sum, counts) in [
            (&mut self.cities, f.cities),
            (&mut self.categories, f.categories),
            (&mut self.institutions, f.institutions),
        ] {
            for c in counts {
                *sum.entry(c.value).or_default() += c.count;
            }
        }
    }

    fn into_proto(self) -> pb::Facets {
        pb::Facets {
            cities: pb::facet_counts(self.cities),
            categories: pb::facet_counts(self.categories),
            institutions: pb::facet_counts(self.institutions),
        }
    }
}

/// Sums per-city statistics into corpus-wide ones.
fn add_stats(sum: &mut pb::CorpusStats, s: &pb::CorpusStats) {
    sum.num_docs += s.num_docs;
    for f in &s.fields {
        match sum.fields.iter_mut().find(|x| x.field == f.field) {
            Some(x) => x.total_tokens += f.total_tokens,
            None => sum.fields.push(f.clone()),
        }
    }
    let mut index: BTreeMap<(String, String), usize> =
        sum.terms.iter().enumerate().map(|(i, t)| ((t.field.clone(), t.term.clone()), i)).collect();
    for t in &s.terms {
        match index.get(&(t.field.clone(), t.term.clone())) {
            Some(&i) => sum.terms[i].doc_freq += t.doc_freq,
            None => {
                index.insert((t.field.clone(), t.term.clone()), sum.terms.len());
                sum.terms.push(t.clone());
            }
        }
    }
}

/// How long summed statistics are reused for the same query and cities.
/// Document frequencies move slowly; a few seconds of staleness shifts
/// scores slightly and identically at every node.
const STATS_TTL: Duration = Duration::from_secs(5);
const STATS_CACHE_MAX: usize = 4_096;
/// How long a paginated search keeps its first page's statistics.
const PAGED_STATS_TTL: Duration = Duration::from_secs(600);

type StatsKey = (String, Vec<&'static str>);

#[tonic::async_trait]
impl gateway_server::Gateway for GatewayService {
    #[tracing::instrument(name = "gateway.search", skip_all, fields(query = %req.get_ref().query))]
    async fn search(&self, req: Request<pb::SearchRequest>) -> Result<Response<pb::SearchResponse>, Status> {
        self.caller(&req)?;
        let deadline = Instant::now() + self.budget(&req);
        let mut msg = req.into_inner();
        // Refused here, as every node would refuse it, before any fan-out.
        corridor_proto::limits::check_query(&msg.query).map_err(|e| Status::invalid_argument(e.to_string()))?;
        msg.limit = match msg.limit {
            0 => DEFAULT_LIMIT,
            n => n.min(MAX_LIMIT),
        };
        if !msg.cursor.is_empty() && corridor_proto::cursor::decode(&msg.cursor).is_none() {
            return Err(Status::invalid_argument(
                "cursor is not one this service issued; pass next_cursor back unchanged",
            ));
        }
        let allow_partial = msg.allow_partial.unwrap_or(true);
        let filter = msg.filter.clone().unwrap_or_default();
        let mut targets = self.targets(&filter)?;
        let mut nodes = Vec::with_capacity(targets.len());

        // Phase 1: corpus-wide term statistics, so that nine indexes score as
        // one. Cached briefly per query and set of cities.
        if !msg.query.trim().is_empty() {
            // At most half the budget: a city that cannot answer this small
            // question in time is left out of the second phase, which keeps
            // the rest of the budget for everyone else.
            let half = Instant::now() + deadline.saturating_duration_since(Instant::now()) / 2;
            let (stats, failed) = self.global_stats(&targets, &msg, half).await;
            if let Some((c, e)) = failed.first()
                && !allow_partial
            {
                return Err(fail_fast(c, e));
            }
            for (c, e) in failed {
                targets.retain(|t| t.city.slug != c.city.slug);
                nodes.push(node_status(c, e.state(), Duration::ZERO, e.to_string()));
            }
            msg.stats = Some(stats);
        }

        // Phase 2: each city's best hits after the cursor, merged as they come.
        let budget = deadline.saturating_duration_since(Instant::now());
        let mut calls: FuturesUnordered<_> = targets
            .iter()
            .map(|c| {
                let msg = msg.clone();
                async move {
                    let r = search_call(c, budget, msg).await;
                    (*c, r)
                }
            })
            .collect();
        let mut hits: Vec<pb::NodeSearchHit> = Vec::new();
        let mut total = 0;
        let mut facets = msg.facets.then(FacetSums::default);
        while let Some((c, (result, took))) = calls.next().await {
            match result {
                Ok(resp) => {
                    total += resp.total;
                    if let (Some(sum), Some(f)) = (facets.as_mut(), resp.facets) {
                        sum.add(f);
                    }
                    // Merge as answers arrive; keep only what can still make the page.
                    hits.extend(resp.hits.into_iter().map(|mut h| {
                        h.fill_id();
                        h
                    }));
                    hits.sort_by(rank_hits);
                    hits.truncate(msg.limit as usize);
                    nodes.push(node_status(c, NodeState::Ok, took, String::new()));
                }
                Err(e) => {
                    let state = e.state();
                    tracing::warn!(city = c.city.slug, ?state, detail = %e, "city failed during search");
                    if !allow_partial {
                        return Err(fail_fast(c, &e));
                    }
                    nodes.push(node_status(c, state, took, e.to_string()));
                }
            }
        }
        for n in &nodes {
            self.fanout(&n.city, NodeState::try_from(n.state).unwrap_or(NodeState::Unspecified));
        }
        let partial = nodes.iter().any(|n| n.state != NodeState::Ok as i32);
        // Report cities in corridor order, whatever order they answered in.
        let order: Vec<&str> = corridor_proto::cities::CITIES.iter().map(|c| c.slug).collect();
        nodes.sort_by_key(|n| order.iter().position(|s| *s == n.city));
        let next_cursor = match hits.last() {
            Some(h) if hits.len() == msg.limit as usize => corridor_proto::cursor::encode(h.score as f32, h.id_str()),
            _ => String::new(),
        };
        Ok(Response::new(pb::SearchResponse {
            // Forwarded as the nodes encoded them.
            hits: hits.into_iter().map(|h| pb::SearchHit::encoded(h.instrument, h.score)).collect(),
            nodes,
            partial,
            total,
            next_cursor,
            facets: facets.map(FacetSums::into_proto),
        }))
    }

    async fn get_instrument(&self, req: Request<pb::GetInstrumentRequest>) -> Result<Response<pb::Instrument>, Status> {
        let id = req.get_ref().id.clone();
        self.forward(req, &id, |mut c, r| async move { c.get_instrument(r).await }).await
    }

    async fn list_nodes(&self, req: Request<pb::ListNodesRequest>) -> Result<Response<pb::ListNodesResponse>, Status> {
        self.caller(&req)?;
        let budget = self.budget(&req);
        let calls = self.cities.all().map(|c| async move {
            let (result, took) =
                call(c, budget, None, pb::NodeInfoRequest {}, |mut cl, r| async move { cl.info(r).await }).await;
            match result {
                Ok(info) => {
                    let mut s = node_status(c, NodeState::Ok, took, String::new());
                    s.instruments = info.instruments;
                    s
                }
                Err(e) => node_status(c, e.state(), took, e.to_string()),
            }
        });
        let nodes = futures_util::future::join_all(calls).await;
        Ok(Response::new(pb::ListNodesResponse { nodes }))
    }

    async fn reserve(&self, req: Request<pb::ReserveRequest>) -> Result<Response<pb::Booking>, Status> {
        let id = req.get_ref().instrument_id.clone();
        corridor_telemetry::failpoint("gateway.before_forward");
        let answer = self.forward(req, &id, |mut c, r| async move { c.reserve(r).await }).await;
        corridor_telemetry::failpoint("gateway.after_forward");
        answer
    }

    async fn issue_voucher(&self, req: Request<pb::IssueVoucherRequest>) -> Result<Response<pb::Voucher>, Status> {
        if req.get_ref().city.is_empty() {
            return Err(Status::invalid_argument("city is required: the slug of the issuing city, e.g. \"wuhu\""));
        }
        // Routed like an id: "<city>/" names the issuing city's node.
        let route = format!("{}/voucher", req.get_ref().city);
        self.forward(req, &route, |mut c, r| async move { c.issue_voucher(r).await }).await
    }

    async fn get_voucher(&self, req: Request<pb::GetVoucherRequest>) -> Result<Response<pb::Voucher>, Status> {
        let id = req.get_ref().voucher_id.clone();
        self.forward(req, &id, |mut c, r| async move { c.get_voucher(r).await }).await
    }

    async fn confirm_booking(&self, req: Request<pb::BookingActionRequest>) -> Result<Response<pb::Booking>, Status> {
        let id = req.get_ref().booking_id.clone();
        self.forward(req, &id, |mut c, r| async move { c.confirm_booking(r).await }).await
    }

    async fn cancel_booking(&self, req: Request<pb::BookingActionRequest>) -> Result<Response<pb::Booking>, Status> {
        let id = req.get_ref().booking_id.clone();
        self.forward(req, &id, |mut c, r| async move { c.cancel_booking(r).await }).await
    }

    async fn approve_booking(&self, req: Request<pb::BookingActionRequest>) -> Result<Response<pb::Booking>, Status> {
        let id = req.get_ref().booking_id.clone();
        self.forward(req, &id, |mut c, r| async move { c.approve_booking(r).await }).await
    }

    async fn decline_booking(&self, req: Request<pb::BookingActionRequest>) -> Result<Response<pb::Booking>, Status> {
        let id = req.get_ref().booking_id.clone();
        self.forward(req, &id, |mut c, r| async move { c.decline_booking(r).await }).await
    }

    async fn complete_booking(
        &self,
        req: Request<pb::CompleteBookingRequest>,
    ) -> Result<Response<pb::Booking>, Status> {
        let id = req.get_ref().booking_id.clone();
        self.forward(req, &id, |mut c, r| async move { c.complete_booking(r).await }).await
    }

    async fn get_booking(&self, req: Request<pb::GetBookingRequest>) -> Result<Response<pb::Booking>, Status> {
        let id = req.get_ref().booking_id.clone();
        self.forward(req, &id, |mut c, r| async move { c.get_booking(r).await }).await
    }

    /// One city when named (or implied by the instrument), else every city,
    /// with partial results like search.
    async fn list_bookings(
        &self,
        req: Request<pb::ListBookingsRequest>,
    ) -> Result<Response<pb::ListBookingsResponse>, Status> {
        let caller = self.caller(&req)?;
        let budget = self.budget(&req);
        let msg = req.into_inner();
        corridor_proto::page::decode(&msg.page_token).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let size = corridor_proto::page::size(msg.page_size);
        let city = if !msg.instrument_id.is_empty() {
            let (c, _) = split_instrument_id(&msg.instrument_id)
                .ok_or_else(|| Status::invalid_argument(format!("{:?} is not an instrument id", msg.instrument_id)))?;
            Some(c.slug.to_string())
        } else if !msg.city.is_empty() {
            Some(msg.city.clone())
        } else {
            None
        };
        let filter = pb::SearchFilter { cities: city.into_iter().collect(), ..Default::default() };
        let targets = self.targets(&filter)?;
        let on_behalf = on_behalf_of(&caller)?;
        let calls = targets.iter().map(|c| {
            let (msg, on_behalf) = (msg.clone(), on_behalf.clone());
            async move {
                let (r, took) =
                    call(c, budget, Some(on_behalf), msg, |mut cl, r| async move { cl.list_bookings(r).await }).await;
                (*c, r, took)
            }
        });
        let mut out = pb::ListBookingsResponse::default();
        let mut more = false;
        for (c, r, took) in futures_util::future::join_all(calls).await {
            match r {
                Ok(resp) => {
                    more |= !resp.next_page_token.is_empty();
                    out.bookings.extend(resp.bookings);
                    out.nodes.push(node_status(c, NodeState::Ok, took, String::new()));
                }
                Err(e) => {
                    out.partial = true;
                    out.nodes.push(node_status(c, e.state(), took, e.to_string()));
                }
            }
        }
        // Every city sent its first `size` bookings after the token, so the
        // first `size` of their union are the first `size` overall.
        out.bookings.sort_by(|a, b| (&a.start, &a.id).cmp(&(&b.start, &b.id)));
        if more || out.bookings.len() > size {
            out.bookings.truncate(size);
            if let Some(last) = out.bookings.last() {
                out.next_page_token = corridor_proto::page::encode(&last.start, &last.id);
            }
        }
        Ok(Response::new(out))
    }

    async fn check_availability(
        &self,
        req: Request<pb::AvailabilityRequest>,
    ) -> Result<Response<pb::AvailabilityResponse>, Status> {
        let id = req.get_ref().instrument_id.clone();
        self.forward(req, &id, |mut c, r| async move { c.check_availability(r).await }).await
    }

    async fn set_booking_rules(
        &self,
        req: Request<pb::SetBookingRulesRequest>,
    ) -> Result<Response<pb::BookingRules>, Status> {
        let id = req.get_ref().instrument_id.clone();
        self.forward(req, &id, |mut c, r| async move { c.set_booking_rules(r).await }).await
    }

    async fn grant_qualification(
        &self,
        req: Request<pb::GrantQualificationRequest>,
    ) -> Result<Response<pb::GrantQualificationResponse>, Status> {
        let id = req.get_ref().instrument_id.clone();
        self.forward(req, &id, |mut c, r| async move { c.grant_qualification(r).await }).await
    }
}
