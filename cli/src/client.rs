//! Client commands: they speak to the gateway (or, for imports, to the city
//! node) over mutual TLS and print text or JSON.

use std::{path::Path, process::ExitCode, time::Duration};

use anyhow::{Context, Result, bail};
use corridor_certs::{Credentials, HandshakeFailure, Identity, client_channel};
use corridor_node::{
    catalog::model::StoredInstrument,
    catalog::{
        import::{Format, check_rows, parse},
        model::yuan,
        summary::to_proto,
    },
};
use corridor_proto::{self as pb, NodeState, cities::City, gateway_client::GatewayClient, node_client::NodeClient};
use serde_json::json;
use tonic::{Request, transport::Channel};

use crate::ClientOpts;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest reply a client accepts (a city admin's booking list can be large).
const MAX_REPLY_BYTES: usize = 64 * 1024 * 1024;
/// Rows per streamed import message: small messages, far below any size limit.
const IMPORT_CHUNK_ROWS: usize = 500;

/// The identity this command presents and the address it dials, for error
/// messages: a command calls as one identity, and a refusal at the TLS
/// handshake only helps the user with both named.
static DIALED: std::sync::Mutex<Option<(Identity, String)>> = std::sync::Mutex::new(None);

/// A channel to `url` as `creds`, remembered for [`status_error`].
pub fn dial(url: &str, creds: &Credentials, expect: Identity) -> Result<Channel> {
    *DIALED.lock().expect("poisoned") = Some((creds.identity().clone(), url.to_string()));
    Ok(client_channel(url, creds, Some(expect), CONNECT_TIMEOUT)?)
}

pub fn gateway(opts: &ClientOpts) -> Result<GatewayClient<Channel>> {
    gateway_as(opts, "org-demo")
}

/// The gateway, as `default_identity` unless `--identity` names another.
pub fn gateway_as(opts: &ClientOpts, default_identity: &str) -> Result<GatewayClient<Channel>> {
    let creds = opts.credentials(default_identity)?;
    let channel = dial(&opts.gateway, &creds, Identity::Gateway)?;
    Ok(GatewayClient::new(channel).max_decoding_message_size(MAX_REPLY_BYTES))
}

pub fn state_name(state: i32) -> &'static str {
    match NodeState::try_from(state).unwrap_or(NodeState::Unspecified) {
        NodeState::Ok => "ok",
        NodeState::Timeout => "timeout",
        NodeState::Unavailable => "unavailable",
        NodeState::Error => "error",
        NodeState::Unspecified => "unknown",
    }
}

/// What a failed call tells the user. A refusal at the TLS handshake comes
/// as a transport error whose cause is the server's alert; it is said in
/// words, with the identity and the address.
pub fn status_error(s: tonic::Status) -> anyhow::Error {
    match corridor_certs::handshake_failure(&s) {
        Some(why) => anyhow::anyhow!(handshake_message(&why, DIALED.lock().expect("poisoned").as_ref())),
        None => anyhow::anyhow!("{} ({:?})", s.message(), s.code()),
    }
}

fn handshake_message(why: &HandshakeFailure, dialed: Option<&(Identity, String)>) -> String {
    let (who, name, addr) = match dialed {
        Some((id, addr)) => (format!("identity {} ({id})", id.name()), id.name(), addr.as_str()),
        None => ("this identity".to_string(), "NAME".to_string(), "the server"),
    };
    let refused = |reason: &str, fix: &str| format!("{addr} refused {who} at the tls handshake: {reason}; {fix}");
    match why {
        HandshakeFailure::Revoked => refused(
            "its certificate was revoked",
            &format!("the CA must issue a new one (`corridor certs renew {name}`)"),
        ),
        HandshakeFailure::Expired => refused(
            "its certificate has expired or is not yet valid",
            &format!("renew it (`corridor certs renew {name}`) or check this machine's clock"),
        ),
        HandshakeFailure::UnknownCa => {
            refused("its certificate is not from this corridor's CA", "use a certificate issued by the corridor CA")
        }
        HandshakeFailure::BadCertificate => refused(
            "its certificate is not a valid corridor identity",
            "issue it with `corridor certs issue` or `corridor certs sign`",
        ),
        HandshakeFailure::NoCertificate => {
            refused("no client certificate was presented", "pass --certs and --identity")
        }
        HandshakeFailure::Alert(alert) => {
            refused(&format!("tls alert {alert}"), "check the certificates on both sides")
        }
        HandshakeFailure::UntrustedServer(why) => {
            format!("{addr} is not trusted by {who}: {why}; check --gateway and the CA in --certs")
        }
        HandshakeFailure::Protocol(why) => {
            format!("{addr} does not speak corridor tls: {why}; check the address (https://host:port)")
        }
    }
}

/// Like [`status_error`], for a call to `addr`: a failure that may have
/// come from the connection rather than from an answer names the address,
/// so that a wrong `--gateway` or `--node` is plain to see.
pub fn at(addr: &str) -> impl Fn(tonic::Status) -> anyhow::Error + '_ {
    move |s| {
        use tonic::Code;
        // A refusal at the handshake names the address already.
        let reached = corridor_certs::handshake_failure(&s).is_some()
            || !matches!(s.code(), Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded);
        let e = status_error(s);
        if reached { e } else { anyhow::anyhow!("calling {addr}: {e}") }
    }
}

/// Every city's node endpoint, as the gateway at `--gateway` has them (any
/// port base, any deployment), asked as `identity`.
pub async fn node_endpoints(opts: &ClientOpts, identity: &str) -> Result<Vec<(String, String)>> {
    let mut gw = gateway_as(opts, identity)?;
    let nodes = gw.list_nodes(pb::ListNodesRequest {}).await.map_err(at(&opts.gateway))?.into_inner().nodes;
    Ok(nodes.into_iter().filter(|n| !n.endpoint.is_empty()).map(|n| (n.city, n.endpoint)).collect())
}

/// Where `city`'s node listens: `--node` when given, else the endpoint the
/// gateway has for it.
pub async fn node_endpoint(city: &City, node: Option<String>, opts: &ClientOpts, identity: &str) -> Result<String> {
    if let Some(n) = node {
        return Ok(n);
    }
    let endpoints = node_endpoints(opts, identity).await?;
    endpoints.into_iter().find(|(c, _)| c == city.slug).map(|(_, e)| e).with_context(|| {
        format!("the gateway at {} has no endpoint for {}; pass --node https://HOST:PORT", opts.gateway, city.slug)
    })
}

/// `city`'s node, dialled as its admin (or as --identity): at `node` when
/// given, else where the gateway says it listens; and that endpoint, for
/// errors that name it.
pub async fn admin_node(city: &City, node: Option<String>, opts: &ClientOpts) -> Result<(NodeClient<Channel>, String)> {
    let admin = format!("admin-{}", city.slug);
    let creds = opts.credentials(&admin)?;
    let endpoint = node_endpoint(city, node, opts, &admin).await?;
    let channel = dial(&endpoint, &creds, Identity::Node(city.slug.into()))?;
    Ok((NodeClient::new(channel), endpoint))
}

/// The city an instrument id ("<city>/<local-id>") names.
pub fn city_of(instrument: &str) -> Result<&'static City> {
    let (slug, _) = instrument
        .split_once('/')
        .with_context(|| format!("{instrument:?} is not an instrument id (\"<city>/<local-id>\")"))?;
    crate::city(slug)
}

pub async fn import(file: &Path, city: &City, node: Option<String>, opts: &ClientOpts) -> Result<ExitCode> {
    let format =
        Format::from_path(file).with_context(|| format!("{}: name the file .jsonl or .csv", file.display()))?;
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    // Check locally first, so that a bad file never leaves this machine; the
    // node checks again, as the authority.
    let rows = parse(format, &bytes).map_err(|e| anyhow::anyhow!("{}: {e}; nothing imported", file.display()))?;
    check_rows(city.slug, &rows).map_err(|e| anyhow::anyhow!("{}: {e}; nothing imported", file.display()))?;

    let (mut client, endpoint) = admin_node(city, node, opts).await?;
    let chunks: Vec<pb::ImportChunk> = rows
        .chunks(IMPORT_CHUNK_ROWS)
        .map(|chunk| pb::ImportChunk {
            rows: chunk
                .iter()
                .map(|(line, record)| pb::ImportRow {
                    line: *line,
                    instrument: Some(to_proto(
                        &StoredInstrument { record: record.clone(), updated_at: String::new() },
                        city,
                    )),
                })
                .collect(),
        })
        .collect();
    let summary =
        client.import_instruments(Request::new(tokio_stream::iter(chunks))).await.map_err(at(&endpoint))?.into_inner();
    if opts.json {
        outln!(
            "{}",
            json!({"city": city.slug, "received": summary.received, "inserted": summary.inserted,
                   "updated": summary.updated, "unchanged": summary.unchanged})
        );
    } else {
        outln!(
            "imported {} into {}: {} rows, {} inserted, {} updated, {} unchanged",
            file.display(),
            city.slug,
            summary.received,
            summary.inserted,
            summary.updated,
            summary.unchanged
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Streams a node's backup into `out`, writing to a temporary file first so
/// that a failed transfer never leaves a partial file under the real name.
pub async fn backup(city: &City, out: &Path, node: Option<String>, opts: &ClientOpts) -> Result<ExitCode> {
    let (mut node, endpoint) = admin_node(city, node, opts).await?;
    let mut stream = node.backup(pb::BackupRequest {}).await.map_err(at(&endpoint))?.into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await.map_err(at(&endpoint))? {
        bytes.extend(chunk.data);
    }
    let backup =
        corridor_node::ops::backup::verify(&bytes).map_err(|e| anyhow::anyhow!("the node sent a bad backup: {e}"))?;
    let tmp = out.with_extension("partial");
    std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("renaming to {}", out.display()))?;
    outln!(
        "backup of {} written to {}: {} entries, {} bytes, checksum verified",
        city.slug,
        out.display(),
        backup.len(),
        bytes.len()
    );
    Ok(ExitCode::SUCCESS)
}

fn hit_json(h: &pb::SearchHit) -> serde_json::Value {
    let i = h.instrument.clone().unwrap_or_default();
    let inst = i.institution.unwrap_or_default();
    let price = i.price.unwrap_or_default();
    json!({
        "id": i.id, "name": i.name_zh, "name_en": i.name_en, "city": i.city, "province": i.province,
        "category": i.category, "institution": inst.name, "model": format!("{} {}", i.manufacturer, i.model),
        "price_external_yuan": yuan(price.external_fen), "accepts_vouchers": i.accepts_vouchers,
        "score": h.score,
    })
}

fn node_json(n: &pb::NodeStatus) -> serde_json::Value {
    json!({"city": n.city, "province": n.province, "status": state_name(n.state), "took_ms": n.took_ms,
           "instruments": n.instruments, "endpoint": n.endpoint, "detail": n.detail})
}

pub async fn search(req: pb::SearchRequest, deadline_ms: u64, opts: &ClientOpts) -> Result<ExitCode> {
    let mut client = gateway(opts)?;
    let mut request = Request::new(req);
    request.set_timeout(Duration::from_millis(deadline_ms));
    let resp = client.search(request).await.map_err(at(&opts.gateway))?.into_inner();
    if opts.json {
        let out = json!({
            "hits": resp.hits.iter().map(hit_json).collect::<Vec<_>>(),
            "nodes": resp.nodes.iter().map(|n| json!({"city": n.city, "status": state_name(n.state), "took_ms": n.took_ms, "detail": n.detail})).collect::<Vec<_>>(),
            "partial": resp.partial,
            "total": resp.total,
            "next_cursor": resp.next_cursor,
            "facets": resp.facets.as_ref().map(|f| {
                let counts = |v: &[pb::FacetCount]| v.iter().map(|c| json!({"value": c.value, "count": c.count})).collect::<Vec<_>>();
                json!({"cities": counts(&f.cities), "categories": counts(&f.categories), "institutions": counts(&f.institutions)})
            }),
        });
        outln!("{out}");
        return Ok(ExitCode::SUCCESS);
    }
    for h in &resp.hits {
        let i = h.instrument.clone().unwrap_or_default();
        let inst = i.institution.unwrap_or_default();
        outln!("{:<22} {}  {}  [{}]", i.id, i.name_zh, i.name_en, inst.name);
    }
    let answered = resp.nodes.iter().filter(|n| n.state == NodeState::Ok as i32).count();
    outln!("{} shown of {} matches; {}/{} cities answered", resp.hits.len(), resp.total, answered, resp.nodes.len());
    for n in resp.nodes.iter().filter(|n| n.state != NodeState::Ok as i32) {
        outln!("  {}: {} after {} ms: {}", n.city, state_name(n.state), n.took_ms, n.detail);
    }
    if let Some(f) = &resp.facets {
        let line = |v: &[pb::FacetCount]| {
            v.iter().take(6).map(|c| format!("{} {}", c.value, c.count)).collect::<Vec<_>>().join(", ")
        };
        outln!("by city: {}", line(&f.cities));
        outln!("by category: {}", line(&f.categories));
    }
    if !resp.next_cursor.is_empty() {
        outln!("more: --cursor {}", resp.next_cursor);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn get(id: &str, opts: &ClientOpts) -> Result<ExitCode> {
    let mut client = gateway(opts)?;
    let i = client
        .get_instrument(pb::GetInstrumentRequest { id: id.to_string() })
        .await
        .map_err(at(&opts.gateway))?
        .into_inner();
    let inst = i.institution.clone().unwrap_or_default();
    let loc = i.location.clone().unwrap_or_default();
    let contact = i.contact.clone().unwrap_or_default();
    let price = i.price.unwrap_or_default();
    if opts.json {
        let mut v = hit_json(&pb::SearchHit::new(i.clone(), 0.0));
        let o = v.as_object_mut().expect("object");
        o.remove("score");
        o.insert("description".into(), json!(i.description));
        o.insert("techniques".into(), json!(i.techniques));
        o.insert("institution_uscc".into(), json!(inst.uscc));
        o.insert("department".into(), json!(inst.department));
        o.insert("location".into(), json!(format!("{} {} {}", loc.site, loc.building, loc.room)));
        o.insert("contact".into(), json!({"name": contact.name, "phone": contact.phone, "email": contact.email}));
        o.insert("price_internal_yuan".into(), json!(yuan(price.internal_fen)));
        o.insert("original_value_yuan".into(), json!(yuan(i.original_value_fen)));
        o.insert("accreditations".into(), json!(i.accreditations));
        o.insert("updated_at".into(), json!(i.updated_at));
        outln!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    outln!("{}  {} / {}", i.id, i.name_zh, i.name_en);
    outln!("  {} {} · category {} · commissioned {}", i.manufacturer, i.model, i.category, i.commissioned_on);
    outln!("  {} ({}) · {}", inst.name, inst.uscc, inst.department);
    outln!("  {} {} {}", loc.site, loc.building, loc.room);
    outln!("  contact: {} · {} · {}", contact.name, contact.phone, contact.email);
    let unit = if price.unit == pb::PriceUnit::Sample as i32 { "sample" } else { "hour" };
    outln!(
        "  price per {unit}: {} yuan internal, {} yuan external · vouchers {}",
        yuan(price.internal_fen),
        yuan(price.external_fen),
        if i.accepts_vouchers { "accepted" } else { "not accepted" }
    );
    if !i.description.is_empty() {
        outln!("  {}", i.description);
    }
    outln!("  updated {}", i.updated_at);
    Ok(ExitCode::SUCCESS)
}

pub async fn nodes(opts: &ClientOpts) -> Result<ExitCode> {
    let mut client = gateway(opts)?;
    let resp = client.list_nodes(pb::ListNodesRequest {}).await.map_err(at(&opts.gateway))?.into_inner();
    if opts.json {
        outln!("{}", json!({"nodes": resp.nodes.iter().map(node_json).collect::<Vec<_>>()}));
    } else {
        for n in &resp.nodes {
            outln!(
                "{:<10} {:<9} {:<12} {:>6} instruments {:>5} ms  {}",
                n.city,
                n.province,
                state_name(n.state),
                n.instruments,
                n.took_ms,
                n.detail
            );
        }
    }
    if resp.nodes.iter().any(|n| n.state != NodeState::Ok as i32) {
        return Ok(ExitCode::from(2));
    }
    if resp.nodes.is_empty() {
        bail!("the gateway knows no cities");
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether every configured city answers through the gateway: used by `up`
/// to decide that the mesh is ready.
pub async fn all_nodes_ok(client: &mut GatewayClient<Channel>) -> Option<(usize, u64)> {
    let resp = client.list_nodes(pb::ListNodesRequest {}).await.ok()?.into_inner();
    let ok = !resp.nodes.is_empty() && resp.nodes.iter().all(|n| n.state == NodeState::Ok as i32);
    ok.then(|| (resp.nodes.len(), resp.nodes.iter().map(|n| n.instruments).sum()))
}

pub fn gateway_for(url: &str, creds: &Credentials) -> Result<GatewayClient<Channel>> {
    Ok(GatewayClient::new(dial(url, creds, Identity::Gateway)?))
}
