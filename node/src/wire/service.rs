//! The gRPC face of a node: who may call what, on whose behalf, and the
//! calls themselves. Errors become statuses in `wire::error`.

use std::sync::Arc;

use corridor_certs::{Identity, caller_identity};
use corridor_proto::{self as pb, node_server};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::{
    convert::{
        booking_to_proto, debit_to_proto, facets_to_proto, from_proto, issue_from_proto, rules_from_proto,
        rules_to_proto, service_mode_from_proto, stats_from_proto, stats_to_proto, status_from_proto, voucher_to_proto,
    },
    error as refuse,
};
use crate::{
    audit,
    booking::{Actor, Qualification, Reserve, parse_window},
    catalog::{
        Entry,
        import::RowError,
        search::{FreeWindow, Query},
        summary::to_proto,
    },
    error::Error,
    kv::Flush,
    money::{coordinator::Driven, ledger, payment::PayState},
    node::{Node, NodeError},
};

/// Bytes per streamed backup message: well under every message limit.
const BACKUP_CHUNK: usize = 1 << 20;

/// Ledger entries per page.
const LEDGER_PAGE: usize = 5_000;

/// Largest number of rows one import may carry.
const MAX_IMPORT_ROWS: usize = 1_000_000;
/// Most hits one search may ask for.
pub const MAX_LIMIT: u32 = 200;
pub const DEFAULT_LIMIT: u32 = 20;
/// How long a batch runs its searches before letting other calls in.
const BATCH_SLICE: std::time::Duration = std::time::Duration::from_millis(2);
/// The most one search may cost, whatever deadline its caller gave (or none):
/// a search runs on the node's own thread, and past this it only delays
/// every other call.
pub const MAX_SEARCH_TIME: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Clone)]
pub struct NodeService {
    node: Arc<Node>,
}

impl NodeService {
    pub fn new(node: Arc<Node>) -> Self {
        NodeService { node }
    }

    fn caller<T>(&self, req: &Request<T>) -> Result<Identity, Status> {
        caller_identity(req).map_err(|e| refuse::unauthenticated(e.to_string()))
    }

    /// One search of this node's catalog, as `Search` and each item of
    /// `SearchBatch` run it, given up once `budget` (the caller's, capped at
    /// [`MAX_SEARCH_TIME`]) has passed since `received`.
    fn search_one(
        &self,
        req: &pb::SearchRequest,
        received: tokio::time::Instant,
        budget: Option<std::time::Duration>,
    ) -> Result<pb::NodeSearchResponse, Status> {
        let budget = budget.map_or(MAX_SEARCH_TIME, |b| b.min(MAX_SEARCH_TIME));
        let (mut q, free) = query_from(req)?;
        q.deadline = Some(received + budget);
        let stats = req.stats.as_ref().map(stats_from_proto);
        let found = self.node.search(&q, stats.as_ref(), free);
        if found.stopped {
            return Err(refuse::deadline_exceeded(format!(
                "the search was stopped after {} ms, its deadline; narrow it (fewer words, a city or a category)",
                budget.as_millis()
            )));
        }
        let hits = found
            .hits
            .into_iter()
            .map(|(e, score)| pb::NodeSearchHit {
                instrument: e.summary.clone(),
                score: score as f64,
                id: e.id.clone(),
            })
            .collect();
        let facets = q.facets.then(|| facets_to_proto(found.facets));
        Ok(pb::NodeSearchResponse { hits, total: found.total, facets })
    }

    /// The gateway and the reconciler read every city; a city's own admin and
    /// node read it too. Everyone else goes through the gateway.
    fn authorize_read<T>(&self, req: &Request<T>) -> Result<Identity, Status> {
        let id = self.caller(req)?;
        let city = self.node.city().slug;
        match &id {
            Identity::Gateway | Identity::Reconciler => Ok(id),
            Identity::Admin(c) | Identity::Node(c) if c == city => Ok(id),
            _ => Err(refuse::permission_denied(format!(
                "{id} may not read the {city} node directly; search through the gateway"
            ))),
        }
    }

    /// Who a reservation call acts for. The gateway names the caller it acts
    /// for in `x-corridor-on-behalf-of`; anyone else acts as itself. Only
    /// organisations and the city's own admin deal with bookings.
    fn actor<T>(&self, req: &Request<T>) -> Result<Actor, Status> {
        let peer = self.caller(req)?;
        let named = req.metadata().get(corridor_proto::ON_BEHALF_OF);
        let acting = match (&peer, named) {
            (Identity::Gateway, Some(v)) => {
                let uri = v.to_str().map_err(|_| refuse::invalid_argument("on-behalf-of is not text"))?;
                Identity::from_uri(uri).map_err(|e| refuse::invalid_argument(e.to_string()))?
            }
            (Identity::Gateway, None) => {
                return Err(refuse::permission_denied("the gateway must name the identity it acts for"));
            }
            (_, Some(_)) => {
                return Err(refuse::permission_denied(format!("{peer} may not act on behalf of another identity")));
            }
            (p, None) => p.clone(),
        };
        let city = self.node.city().slug;
        let admin = matches!(&acting, Identity::Admin(c) if c == city);
        if !admin && !matches!(acting, Identity::Org(_)) {
            return Err(refuse::permission_denied(format!(
                "{acting} has no bookings at {city}; organisations and {city}'s admin do"
            )));
        }
        Ok(Actor { uri: acting.uri(), admin, may_book: true, reader: false })
    }

    /// Who reads a voucher: as [`NodeService::actor`], and the reconciler.
    fn voucher_reader<T>(&self, req: &Request<T>) -> Result<Actor, Status> {
        match self.caller(req)? {
            Identity::Reconciler => {
                Ok(Actor { uri: Identity::Reconciler.uri(), admin: false, may_book: false, reader: true })
            }
            _ => self.actor(req),
        }
    }

    /// The provider city calling the issuer side of a voucher payment: only
    /// a city's node, for its own operations (whose ids are its booking ids).
    fn provider_node(&self, req: &Request<pb::DebitRequest>) -> Result<String, Status> {
        let named = &req.get_ref().provider_city;
        let c = match self.caller(req)? {
            Identity::Node(c) if named.is_empty() || *named == c => c,
            Identity::Node(c) => {
                return Err(refuse::permission_denied(format!("node-{c} may not act for provider city {named:?}")));
            }
            other => {
                return Err(refuse::permission_denied(format!(
                    "{other} may not call the issuer side of voucher payments; only city nodes do"
                )));
            }
        };
        let op = &req.get_ref().op_id;
        if !op.starts_with(&format!("{c}/")) {
            return Err(refuse::invalid_argument(format!("op_id {op:?} is not a booking id of {c}")));
        }
        Ok(c)
    }

    /// Before acting on a booking, lets its voucher payment finish a step
    /// that a restart left unfinished (recovery would, a moment later), so
    /// that confirm and complete are not refused for a state about to pass.
    async fn catch_up(&self, actor: &Actor, id: &str) {
        if let Ok(b) = self.node.bookings().get(actor, id)
            && b.payment.as_ref().is_some_and(|p| matches!(p.state, PayState::Trying | PayState::Confirming))
        {
            let _ = self.settle(b).await;
        }
    }

    /// Runs the voucher payment of `b` as far as it goes, in a task of its
    /// own so that a caller who hangs up cannot stop it halfway.
    async fn settle(&self, b: crate::booking::Booking) -> Result<crate::booking::Booking, Status> {
        if b.payment.is_none() {
            return Ok(b);
        }
        let (node, id) = (self.node.clone(), b.id.clone());
        // In the request's span, so that the calls to the issuer join its trace.
        let driven = tokio::spawn(async move { node.drive(&id).await }.in_current_span())
            .await
            .map_err(|e| refuse::internal(format!("payment task failed: {e}")))??;
        match driven {
            Driven::Settled(b) => Ok(b),
            Driven::Waiting(b, why) => match b.payment.as_ref().map(|p| p.state) {
                Some(PayState::Trying) => Err(refuse::unavailable(format!(
                    "{why}; booking {} is held until {} and settles by itself; retry with the same idempotency key to see the outcome",
                    b.id,
                    b.hold_expires.map(crate::booking::time::format).unwrap_or_default()
                ))),
                _ => Ok(b),
            },
        }
    }

    /// The instrument an id names, if it is one of this city's.
    fn instrument(&self, id: &str) -> Result<Arc<Entry>, Status> {
        let city = self.node.city();
        let local = id.strip_prefix(city.slug).and_then(|r| r.strip_prefix('/')).ok_or_else(|| {
            refuse::invalid_argument(format!("{id:?} is not an instrument id of {0} (\"{0}/<local-id>\")", city.slug))
        })?;
        self.node.get(local).ok_or_else(|| refuse::not_found(format!("no instrument {id:?}")))
    }

    fn debit_reply(
        &self,
        d: Result<crate::money::voucher::Debit, Error>,
        point: &str,
    ) -> Result<Response<pb::Debit>, Status> {
        let d = d?;
        crate::money::coordinator::failpoint(point);
        Ok(Response::new(debit_to_proto(&d)))
    }

    /// The answer to a booking change: its voucher payment run as far as it
    /// goes, then the booking as it stands.
    async fn changed(&self, b: Result<crate::booking::Booking, Error>) -> Result<Response<pb::Booking>, Status> {
        let b = self.settle(b?).await?;
        Ok(self.booking_reply(&b))
    }

    fn booking_reply(&self, b: &crate::booking::Booking) -> Response<pb::Booking> {
        Response::new(booking_to_proto(b, self.node.city(), self.node.bookings().now()))
    }

    /// Records a change to the inventory in the audit log. The records live
    /// in their own store, so the entry lands just after the change, not in
    /// its step: a crash between the two loses the entry, never the change.
    async fn audit_inventory(
        &self,
        who: &Identity,
        action: &str,
        target: &str,
        before: serde_json::Value,
        after: serde_json::Value,
    ) -> Result<(), Status> {
        let bookings = self.node.bookings();
        let now = bookings.now();
        let uri = who.uri();
        bookings
            .kv()
            .step(Flush::Wait, |tx| audit::record(tx, now, &uri, action, target, before.clone(), after.clone()))
            .await?;
        Ok(())
    }

    /// Only `admin-<city>` writes a city's inventory.
    fn authorize_write<T>(&self, req: &Request<T>) -> Result<Identity, Status> {
        let id = self.caller(req)?;
        let city = self.node.city().slug;
        match &id {
            Identity::Admin(c) if c == city => Ok(id),
            _ => Err(refuse::permission_denied(format!(
                "{id} may not write {city}'s inventory; only spiffe://corridor/city/{city}/admin may"
            ))),
        }
    }
}

/// Turns a wire search into a node query, bounding the limit, and reads the
/// free-window filter.
pub fn query_from(req: &pb::SearchRequest) -> Result<(Query, Option<FreeWindow>), Status> {
    corridor_proto::limits::check_query(&req.query).map_err(|e| refuse::invalid_argument(e.to_string()))?;
    let filter = req.filter.clone().unwrap_or_default();
    let limit = match req.limit {
        0 => DEFAULT_LIMIT,
        n => n.min(MAX_LIMIT),
    };
    let after = if req.cursor.is_empty() {
        None
    } else {
        Some(corridor_proto::cursor::decode(&req.cursor).ok_or_else(|| {
            refuse::invalid_argument("cursor is not one this service issued; pass next_cursor back unchanged")
        })?)
    };
    let service_modes = filter
        .service_modes
        .iter()
        .map(|m| service_mode_from_proto(*m))
        .collect::<Result<Vec<_>, _>>()
        .map_err(refuse::invalid_argument)?;
    let statuses = filter
        .statuses
        .iter()
        .map(|s| status_from_proto(*s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(refuse::invalid_argument)?;
    let free = match &filter.free_window {
        None => None,
        Some(w) => {
            let (from, to) = parse_window(&w.from, &w.to)?;
            if w.min_minutes == 0 {
                return Err(refuse::invalid_argument("free_window.min_minutes must be at least 1"));
            }
            Some(FreeWindow { from, to, minutes: w.min_minutes })
        }
    };
    let query = Query {
        text: req.query.clone(),
        cities: filter.cities,
        provinces: filter.provinces,
        categories: filter.categories,
        institutions: filter.institutions,
        min_price_fen: filter.min_price_fen,
        max_price_fen: filter.max_price_fen,
        accepts_vouchers: filter.accepts_vouchers,
        accreditations: filter.accreditations,
        service_modes,
        statuses,
        after,
        limit: limit as usize,
        facets: req.facets,
        deadline: None,
    };
    Ok((query, free))
}

#[tonic::async_trait]
impl node_server::Node for NodeService {
    async fn info(&self, req: Request<pb::NodeInfoRequest>) -> Result<Response<pb::NodeInfo>, Status> {
        self.authorize_read(&req)?;
        let city = self.node.city();
        Ok(Response::new(pb::NodeInfo {
            city: city.slug.into(),
            province: city.province.into(),
            instruments: self.node.len() as u64,
            version: env!("CARGO_PKG_VERSION").into(),
        }))
    }

    #[tracing::instrument(name = "node.search", skip_all, fields(city = self.node.city().slug))]
    async fn search(&self, req: Request<pb::SearchRequest>) -> Result<Response<pb::NodeSearchResponse>, Status> {
        self.authorize_read(&req)?;
        let budget = corridor_proto::limits::grpc_timeout(req.metadata());
        self.search_one(req.get_ref(), tokio::time::Instant::now(), budget).map(Response::new)
    }

    #[tracing::instrument(name = "node.search_batch", skip_all, fields(city = self.node.city().slug, items = req.get_ref().items.len()))]
    async fn search_batch(
        &self,
        req: Request<pb::NodeSearchBatchRequest>,
    ) -> Result<Response<pb::NodeSearchBatchResponse>, Status> {
        self.authorize_read(&req)?;
        let received = tokio::time::Instant::now();
        let items = req.into_inner().items;
        if items.len() > pb::MAX_SEARCH_BATCH {
            return Err(refuse::invalid_argument(format!(
                "a search batch holds at most {} searches, not {}",
                pb::MAX_SEARCH_BATCH,
                items.len()
            )));
        }
        let mut results = Vec::with_capacity(items.len());
        let mut ran = std::time::Instant::now();
        for item in &items {
            let budget = std::time::Duration::from_micros(item.budget_micros);
            let outcome = if item.budget_micros > 0 && received.elapsed() >= budget {
                Err(refuse::deadline_exceeded(format!(
                    "this search's {} ms ran out while earlier searches of its batch ran",
                    budget.as_millis()
                )))
            } else {
                // Each item is its own search in its own trace, as if it had
                // come alone.
                let span = corridor_telemetry::item_span("/corridor.v1.Node/Search");
                corridor_telemetry::set_parent_from_map(&span, &item.trace_context);
                let outcome = match &item.request {
                    Some(r) => {
                        span.in_scope(|| self.search_one(r, received, (item.budget_micros > 0).then_some(budget)))
                    }
                    None => Err(refuse::invalid_argument("a batch item carries no search request")),
                };
                corridor_telemetry::record_server_status(&span, outcome.as_ref().map(|_| ()));
                outcome
            };
            results.push(pb::NodeSearchBatchResult {
                outcome: Some(match outcome {
                    Ok(found) => pb::node_search_batch_result::Outcome::Found(found),
                    Err(s) => pb::node_search_batch_result::Outcome::Error(pb::ItemError {
                        code: s.code() as i32,
                        message: s.message().to_string(),
                    }),
                }),
            });
            // A big batch on a large catalog would hold the thread for all of
            // its items; past a couple of milliseconds, let other calls (a
            // booking, say) run. Not after every item: interleaving batches
            // only makes each one finish later.
            if ran.elapsed() >= BATCH_SLICE {
                tokio::task::yield_now().await;
                ran = std::time::Instant::now();
            }
        }
        Ok(Response::new(pb::NodeSearchBatchResponse { results }))
    }

    async fn search_stats(&self, req: Request<pb::SearchRequest>) -> Result<Response<pb::CorpusStats>, Status> {
        self.authorize_read(&req)?;
        corridor_proto::limits::check_query(&req.get_ref().query)
            .map_err(|e| refuse::invalid_argument(e.to_string()))?;
        Ok(Response::new(stats_to_proto(&self.node.search_stats(&req.get_ref().query))))
    }

    async fn get_instrument(&self, req: Request<pb::GetInstrumentRequest>) -> Result<Response<pb::Instrument>, Status> {
        self.authorize_read(&req)?;
        let city = self.node.city();
        let id = &req.get_ref().id;
        let local = id.strip_prefix(city.slug).and_then(|r| r.strip_prefix('/')).ok_or_else(|| {
            refuse::invalid_argument(format!("{id:?} is not an id of {} (\"{}/<local-id>\")", city.slug, city.slug))
        })?;
        let entry = self.node.get(local).ok_or_else(|| refuse::not_found(format!("no instrument {id:?}")))?;
        Ok(Response::new(to_proto(&entry.stored, city)))
    }

    #[tracing::instrument(name = "node.import_instruments", skip_all, fields(city = self.node.city().slug))]
    async fn import_instruments(
        &self,
        req: Request<Streaming<pb::ImportChunk>>,
    ) -> Result<Response<pb::ImportSummary>, Status> {
        // Refuse before reading a single row.
        let who = self.authorize_write(&req)?;
        let mut stream = req.into_inner();
        let mut rows = Vec::new();
        while let Some(chunk) = stream.message().await? {
            for row in chunk.rows {
                if rows.len() >= MAX_IMPORT_ROWS {
                    return Err(refuse::invalid_argument(format!(
                        "an import holds at most {MAX_IMPORT_ROWS} rows; split the file"
                    )));
                }
                let line = row.line;
                let inst = row.instrument.ok_or_else(|| {
                    Status::from(NodeError::Rejected(RowError { line, reason: "row carries no instrument".into() }))
                })?;
                let record = from_proto(inst)
                    .map_err(|reason| Status::from(NodeError::Rejected(RowError { line, reason: reason.0 })))?;
                rows.push((line, record));
            }
        }
        let received = rows.len() as u64;
        let s = self.node.import(rows).await?;
        tracing::info!(%who, received, inserted = s.inserted, updated = s.updated, "import applied");
        if s.inserted + s.updated > 0 {
            let after = serde_json::json!({
                "received": received, "inserted": s.inserted, "updated": s.updated, "unchanged": s.unchanged,
            });
            self.audit_inventory(&who, "import", self.node.city().slug, serde_json::Value::Null, after).await?;
        }
        Ok(Response::new(pb::ImportSummary {
            received,
            inserted: s.inserted,
            updated: s.updated,
            unchanged: s.unchanged,
        }))
    }

    #[tracing::instrument(name = "node.reserve", skip_all, fields(city = self.node.city().slug))]
    async fn reserve(&self, req: Request<pb::ReserveRequest>) -> Result<Response<pb::Booking>, Status> {
        let actor = self.actor(&req)?;
        let r = req.into_inner();
        let entry = self.instrument(&r.instrument_id)?;
        let voucher = (!r.voucher_id.is_empty()).then_some(r.voucher_id);
        if voucher.is_some() && self.node.payments().is_none() {
            return Err(refuse::failed_precondition(format!(
                "{} takes no voucher payments: its node has no peers configured",
                self.node.city().slug
            )));
        }
        let cmd = Reserve {
            start: r.start,
            end: r.end,
            hold_only: r.hold_only,
            purpose: r.purpose,
            idempotency_key: r.idempotency_key,
            voucher,
        };
        let b = self.node.bookings().reserve(&actor, &entry.stored.record, cmd).await?;
        crate::money::coordinator::failpoint("provider.after_hold");
        let b = self.settle(b).await?;
        if let Some(e) = crate::money::coordinator::refusal(&b) {
            return Err(e.into());
        }
        Ok(self.booking_reply(&b))
    }

    async fn confirm_booking(&self, req: Request<pb::BookingActionRequest>) -> Result<Response<pb::Booking>, Status> {
        let actor = self.actor(&req)?;
        let r = req.into_inner();
        self.catch_up(&actor, &r.booking_id).await;
        self.changed(self.node.bookings().confirm(&actor, &r.booking_id, &r.idempotency_key).await).await
    }

    async fn cancel_booking(&self, req: Request<pb::BookingActionRequest>) -> Result<Response<pb::Booking>, Status> {
        let actor = self.actor(&req)?;
        let r = req.into_inner();
        let accept = r.accept_fee_fen.unwrap_or(0);
        self.changed(self.node.bookings().cancel(&actor, &r.booking_id, &r.idempotency_key, &r.reason, accept).await)
            .await
    }

    async fn approve_booking(&self, req: Request<pb::BookingActionRequest>) -> Result<Response<pb::Booking>, Status> {
        let actor = self.actor(&req)?;
        let r = req.into_inner();
        self.changed(self.node.bookings().decide(&actor, &r.booking_id, &r.idempotency_key, true, &r.reason).await)
            .await
    }

    async fn decline_booking(&self, req: Request<pb::BookingActionRequest>) -> Result<Response<pb::Booking>, Status> {
        let actor = self.actor(&req)?;
        let r = req.into_inner();
        self.changed(self.node.bookings().decide(&actor, &r.booking_id, &r.idempotency_key, false, &r.reason).await)
            .await
    }

    async fn complete_booking(
        &self,
        req: Request<pb::CompleteBookingRequest>,
    ) -> Result<Response<pb::Booking>, Status> {
        let actor = self.actor(&req)?;
        let r = req.into_inner();
        self.catch_up(&actor, &r.booking_id).await;
        self.changed(self.node.bookings().complete(&actor, &r.booking_id, &r.idempotency_key, r.actual_minutes).await)
            .await
    }

    async fn get_booking(&self, req: Request<pb::GetBookingRequest>) -> Result<Response<pb::Booking>, Status> {
        let actor = self.actor(&req)?;
        let b = self.node.bookings().get(&actor, &req.get_ref().booking_id)?;
        Ok(self.booking_reply(&b))
    }

    async fn list_bookings(
        &self,
        req: Request<pb::ListBookingsRequest>,
    ) -> Result<Response<pb::ListBookingsResponse>, Status> {
        let actor = self.actor(&req)?;
        let r = req.into_inner();
        let instrument = if r.instrument_id.is_empty() {
            None
        } else {
            Some(self.instrument(&r.instrument_id)?.stored.record.local_id.clone())
        };
        let size = corridor_proto::page::size(r.page_size);
        let after =
            match corridor_proto::page::decode(&r.page_token).map_err(|e| refuse::invalid_argument(e.to_string()))? {
                None => None,
                Some((start, id)) => {
                    Some((crate::booking::time::parse_any("page_token", &start).map_err(refuse::invalid_argument)?, id))
                }
            };
        let after = after.as_ref().map(|(start, id)| (*start, id.as_str()));
        let (list, more) = self.node.bookings().list(&actor, instrument.as_deref(), r.include_closed, after, size)?;
        let next_page_token = match (more, list.last()) {
            (true, Some(b)) => corridor_proto::page::encode(&crate::booking::time::format(b.start), &b.id),
            _ => String::new(),
        };
        let (city, now) = (self.node.city(), self.node.bookings().now());
        Ok(Response::new(pb::ListBookingsResponse {
            bookings: list.iter().map(|b| booking_to_proto(b, city, now)).collect(),
            nodes: Vec::new(),
            partial: false,
            next_page_token,
        }))
    }

    async fn check_availability(
        &self,
        req: Request<pb::AvailabilityRequest>,
    ) -> Result<Response<pb::AvailabilityResponse>, Status> {
        // Busy times carry no names, so anyone who may read may ask.
        if self.authorize_read(&req).is_err() {
            self.actor(&req)?;
        }
        let r = req.into_inner();
        let entry = self.instrument(&r.instrument_id)?;
        let crate::booking::Availability { free, busy, rules } =
            self.node.bookings().availability(&entry.stored.record, &r.from, &r.to)?;
        use crate::booking::time::format;
        Ok(Response::new(pb::AvailabilityResponse {
            instrument_id: r.instrument_id,
            free: free.into_iter().map(|(s, e)| pb::FreeWindow { start: format(s), end: format(e) }).collect(),
            busy: busy
                .into_iter()
                .map(|b| pb::BusyInterval { start: format(b.start), end: format(b.end), kind: b.kind.into() })
                .collect(),
            rules: Some(rules_to_proto(&rules)),
        }))
    }

    async fn set_booking_rules(
        &self,
        req: Request<pb::SetBookingRulesRequest>,
    ) -> Result<Response<pb::BookingRules>, Status> {
        let actor = self.actor(&req)?;
        let r = req.into_inner();
        let entry = self.instrument(&r.instrument_id)?;
        let rules = rules_from_proto(r.rules.unwrap_or_default()).map_err(refuse::invalid_argument)?;
        let rules = self.node.bookings().set_rules_durably(&actor, &entry.stored.record, rules).await?;
        Ok(Response::new(rules_to_proto(&rules)))
    }

    async fn grant_qualification(
        &self,
        req: Request<pb::GrantQualificationRequest>,
    ) -> Result<Response<pb::GrantQualificationResponse>, Status> {
        let actor = self.actor(&req)?;
        let r = req.into_inner();
        let holder = Identity::from_uri(&r.holder).map_err(|e| refuse::invalid_argument(e.to_string()))?;
        let entry = self.instrument(&r.instrument_id)?;
        let grant = match (r.revoke, r.until.as_str()) {
            (true, "") => None,
            (true, _) => return Err(refuse::invalid_argument("until is for a grant, not a revoke")),
            (false, "") => Some(Qualification { until: None }),
            (false, until) => {
                Some(Qualification { until: Some(crate::booking::time::parse("until", until).map_err(Error::from)?) })
            }
        };
        self.node.bookings().grant(&actor, &entry.stored.record, &holder.uri(), grant).await?;
        Ok(Response::new(pb::GrantQualificationResponse {}))
    }

    async fn issue_voucher(&self, req: Request<pb::IssueVoucherRequest>) -> Result<Response<pb::Voucher>, Status> {
        let actor = self.actor(&req)?;
        let r = req.into_inner();
        let city = self.node.city();
        if !r.city.is_empty() && r.city != city.slug {
            return Err(refuse::invalid_argument(format!(
                "this is {}'s node; vouchers of {:?} are issued by that city's node",
                city.slug, r.city
            )));
        }
        let cmd = issue_from_proto(r).map_err(refuse::invalid_argument)?;
        let v = self.node.vouchers().issue_voucher(&actor, cmd).await?;
        Ok(Response::new(voucher_to_proto(&v)))
    }

    async fn get_voucher(&self, req: Request<pb::GetVoucherRequest>) -> Result<Response<pb::Voucher>, Status> {
        let actor = self.voucher_reader(&req)?;
        let v = self.node.vouchers().voucher(&actor, &req.get_ref().voucher_id)?;
        Ok(Response::new(voucher_to_proto(&v)))
    }

    async fn try_debit(&self, req: Request<pb::DebitRequest>) -> Result<Response<pb::Debit>, Status> {
        let provider_city = self.provider_node(&req)?;
        let r = req.into_inner();
        let hold_expires =
            crate::booking::time::parse_any("expires_at", &r.expires_at).map_err(refuse::invalid_argument)?;
        let t = crate::money::voucher::TryDebit {
            op: r.op_id,
            voucher: r.voucher_id,
            requester: r.requester,
            provider_city,
            instrument: r.instrument_id,
            fee_fen: r.fee_fen,
            hold_expires,
        };
        self.debit_reply(self.node.vouchers().try_debit(t).await, "issuer.after_try")
    }

    async fn confirm_debit(&self, req: Request<pb::DebitRequest>) -> Result<Response<pb::Debit>, Status> {
        let provider_city = self.provider_node(&req)?;
        let d = self.node.vouchers().confirm_debit(&provider_city, &req.get_ref().op_id).await;
        self.debit_reply(d, "issuer.after_confirm")
    }

    async fn cancel_debit(&self, req: Request<pb::DebitRequest>) -> Result<Response<pb::Debit>, Status> {
        let provider_city = self.provider_node(&req)?;
        let r = req.into_inner();
        let d = self.node.vouchers().cancel_debit(&provider_city, &r.op_id, &r.voucher_id, &r.reason).await;
        self.debit_reply(d, "issuer.after_cancel")
    }

    async fn post_debit(&self, req: Request<pb::DebitRequest>) -> Result<Response<pb::Debit>, Status> {
        let provider_city = self.provider_node(&req)?;
        let r = req.into_inner();
        let service_at =
            crate::booking::time::parse_any("service_at", &r.service_at).map_err(refuse::invalid_argument)?;
        let p = crate::money::voucher::PostDebit {
            op: r.op_id,
            amount_fen: r.amount_fen,
            provider_institution: r.provider_institution,
            provider_uscc: r.provider_uscc,
            service_at,
        };
        self.debit_reply(self.node.vouchers().post_debit(&provider_city, p).await, "issuer.after_post")
    }

    async fn read_ledger(&self, req: Request<pb::ReadLedgerRequest>) -> Result<Response<pb::LedgerPage>, Status> {
        let who = self.caller(&req)?;
        let city = self.node.city().slug;
        if !matches!(&who, Identity::Reconciler) && !matches!(&who, Identity::Admin(c) if c == city) {
            return Err(refuse::permission_denied(format!(
                "{who} may not read {city}'s ledger; the reconciler and {city}'s admin may"
            )));
        }
        let r = req.into_inner();
        let limit = match r.limit {
            0 => LEDGER_PAGE,
            n => (n as usize).min(LEDGER_PAGE),
        };
        let (entries, head) = ledger::page(self.node.bookings().kv(), r.after_seq, limit)?;
        Ok(Response::new(pb::LedgerPage { entries, head_seq: head.seq, head_hash: head.hash }))
    }

    async fn read_audit(&self, req: Request<pb::ReadAuditRequest>) -> Result<Response<pb::AuditPage>, Status> {
        let who = self.caller(&req)?;
        let city = self.node.city().slug;
        if !matches!(&who, Identity::Admin(c) if c == city) {
            return Err(refuse::permission_denied(format!(
                "{who} may not read {city}'s audit log; {city}'s admin may"
            )));
        }
        let r = req.into_inner();
        let since = match r.since.as_str() {
            "" => i64::MIN,
            s => crate::booking::time::parse("since", s).map_err(crate::error::Error::from)?,
        };
        let limit = corridor_proto::page::size(r.limit);
        let (entries, more) = audit::page(self.node.bookings().kv(), r.after_seq, since, limit)?;
        let next_after_seq = if more { entries.last().map_or(0, |e| e.seq) } else { 0 };
        let entries = entries
            .into_iter()
            .map(|e| pb::AuditEntry {
                seq: e.seq,
                at: crate::booking::time::format(e.at),
                actor: e.actor,
                action: e.action,
                target: e.target,
                before_json: e.before.to_string(),
                after_json: e.after.to_string(),
            })
            .collect();
        Ok(Response::new(pb::AuditPage { entries, next_after_seq }))
    }

    type BackupStream = tokio_stream::Iter<std::vec::IntoIter<Result<pb::BackupChunk, Status>>>;

    async fn backup(&self, req: Request<pb::BackupRequest>) -> Result<Response<Self::BackupStream>, Status> {
        let who = self.authorize_write(&req)?;
        let bytes = self.node.backup().await?;
        tracing::info!(%who, bytes = bytes.len(), "backup taken");
        let chunks: Vec<Result<pb::BackupChunk, Status>> =
            bytes.chunks(BACKUP_CHUNK).map(|c| Ok(pb::BackupChunk { data: c.to_vec() })).collect();
        Ok(Response::new(tokio_stream::iter(chunks)))
    }

    async fn upsert_instrument(
        &self,
        req: Request<pb::UpsertInstrumentRequest>,
    ) -> Result<Response<pb::UpsertInstrumentResponse>, Status> {
        let who = self.authorize_write(&req)?;
        let inst = req.into_inner().instrument.ok_or_else(|| refuse::invalid_argument("instrument is required"))?;
        let record = from_proto(inst).map_err(refuse::invalid_argument)?;
        let local_id = record.local_id.clone();
        let previous = self.node.get(&local_id).map(|e| e.stored.record.clone());
        let s = self.node.import(vec![(0, record)]).await?;
        let entry = self.node.get(&local_id).ok_or_else(|| refuse::internal("the record just written is missing"))?;
        if s.unchanged == 0 {
            let json = |r: Option<&crate::catalog::model::InstrumentRecord>| {
                r.and_then(|r| serde_json::to_value(r).ok()).unwrap_or_default()
            };
            let (before, after) = audit::diff(&json(previous.as_ref()), &json(Some(&entry.stored.record)));
            let target = format!("{}/{local_id}", self.node.city().slug);
            self.audit_inventory(&who, "set_instrument", &target, before, after).await?;
        }
        Ok(Response::new(pb::UpsertInstrumentResponse {
            instrument: Some(to_proto(&entry.stored, self.node.city())),
            changed: s.unchanged == 0,
        }))
    }
}
