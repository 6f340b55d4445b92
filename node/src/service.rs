//! The gRPC face of a node: who may call what, and errors as gRPC statuses.
//! The only place in this crate that builds a `tonic::Status`.

use std::sync::Arc;

use corridor_certs::{Identity, caller_identity};
use corridor_proto::{self as pb, node_server};
use tonic::{Request, Response, Status, Streaming};

use crate::{
    catalog::Query,
    convert::{from_proto, to_proto},
    import::RowError,
    node::{Node, NodeError},
    store::StoreError,
};

/// Largest number of rows one import may carry.
const MAX_IMPORT_ROWS: usize = 1_000_000;
/// Most hits one search may ask for.
pub const MAX_LIMIT: u32 = 200;
pub const DEFAULT_LIMIT: u32 = 20;

#[derive(Clone)]
pub struct NodeService {
    node: Arc<Node>,
}

impl NodeService {
    pub fn new(node: Arc<Node>) -> Self {
        NodeService { node }
    }

    fn caller<T>(&self, req: &Request<T>) -> Result<Identity, Status> {
        caller_identity(req).map_err(|e| Status::unauthenticated(e.to_string()))
    }

    /// The gateway and the reconciler read every city; a city's own admin and
    /// node read it too. Everyone else goes through the gateway.
    fn authorize_read<T>(&self, req: &Request<T>) -> Result<Identity, Status> {
        let id = self.caller(req)?;
        let city = self.node.city().slug;
        match &id {
            Identity::Gateway | Identity::Reconciler => Ok(id),
            Identity::Admin(c) | Identity::Node(c) if c == city => Ok(id),
            _ => Err(Status::permission_denied(format!(
                "{id} may not read the {city} node directly; search through the gateway"
            ))),
        }
    }

    /// Only `admin-<city>` writes a city's inventory.
    fn authorize_write<T>(&self, req: &Request<T>) -> Result<Identity, Status> {
        let id = self.caller(req)?;
        let city = self.node.city().slug;
        match &id {
            Identity::Admin(c) if c == city => Ok(id),
            _ => Err(Status::permission_denied(format!(
                "{id} may not write {city}'s inventory; only spiffe://corridor/city/{city}/admin may"
            ))),
        }
    }
}

fn status(e: NodeError) -> Status {
    match e {
        NodeError::Rejected(e) => Status::invalid_argument(format!("import rejected, nothing stored: {e}")),
        NodeError::Store(e @ StoreError::Corrupt { .. }) => Status::data_loss(e.to_string()),
        NodeError::Store(e) => Status::unavailable(e.to_string()),
        e @ (NodeError::Tls(_) | NodeError::Serve(_)) => Status::internal(e.to_string()),
    }
}

/// Turns a wire search into a node query, bounding the limit.
pub fn query_from(req: &pb::SearchRequest) -> Query {
    let filter = req.filter.clone().unwrap_or_default();
    let limit = match req.limit {
        0 => DEFAULT_LIMIT,
        n => n.min(MAX_LIMIT),
    };
    Query {
        text: req.query.clone(),
        cities: filter.cities,
        provinces: filter.provinces,
        categories: filter.categories,
        limit: limit as usize,
    }
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
        let q = query_from(req.get_ref());
        let (hits, total) = self.node.search(&q);
        let city = self.node.city();
        let hits = hits
            .into_iter()
            .map(|(e, score)| pb::SearchHit { instrument: Some(to_proto(&e.stored, city)), score })
            .collect();
        Ok(Response::new(pb::NodeSearchResponse { hits, total }))
    }

    async fn get_instrument(&self, req: Request<pb::GetInstrumentRequest>) -> Result<Response<pb::Instrument>, Status> {
        self.authorize_read(&req)?;
        let city = self.node.city();
        let id = &req.get_ref().id;
        let local = id.strip_prefix(city.slug).and_then(|r| r.strip_prefix('/')).ok_or_else(|| {
            Status::invalid_argument(format!("{id:?} is not an id of {} (\"{}/<local-id>\")", city.slug, city.slug))
        })?;
        let entry = self.node.get(local).ok_or_else(|| Status::not_found(format!("no instrument {id:?}")))?;
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
                    return Err(Status::invalid_argument(format!(
                        "an import holds at most {MAX_IMPORT_ROWS} rows; split the file"
                    )));
                }
                let line = row.line;
                let inst = row.instrument.ok_or_else(|| {
                    status(NodeError::Rejected(RowError { line, reason: "row carries no instrument".into() }))
                })?;
                let record =
                    from_proto(inst).map_err(|reason| status(NodeError::Rejected(RowError { line, reason })))?;
                rows.push((line, record));
            }
        }
        let received = rows.len() as u64;
        let s = self.node.import(rows).await.map_err(status)?;
        tracing::info!(%who, received, inserted = s.inserted, updated = s.updated, "import applied");
        Ok(Response::new(pb::ImportSummary {
            received,
            inserted: s.inserted,
            updated: s.updated,
            unchanged: s.unchanged,
        }))
    }

    async fn upsert_instrument(
        &self,
        req: Request<pb::UpsertInstrumentRequest>,
    ) -> Result<Response<pb::UpsertInstrumentResponse>, Status> {
        self.authorize_write(&req)?;
        let inst = req.into_inner().instrument.ok_or_else(|| Status::invalid_argument("instrument is required"))?;
        let record = from_proto(inst).map_err(Status::invalid_argument)?;
        let local_id = record.local_id.clone();
        let s = self.node.import(vec![(0, record)]).await.map_err(status)?;
        let entry = self.node.get(&local_id).ok_or_else(|| Status::internal("the record just written is missing"))?;
        Ok(Response::new(pb::UpsertInstrumentResponse {
            instrument: Some(to_proto(&entry.stored, self.node.city())),
            changed: s.unchanged == 0,
        }))
    }
}
