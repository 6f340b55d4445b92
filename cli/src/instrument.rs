//! `corridor instrument set|retire`: a city admin changes one instrument, or
//! retires it. The record is read whole, changed field by field, checked as an
//! import checks it (here for the field types, then at the node as the
//! authority), and written and reindexed in one step at the city's node.

use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use clap::Subcommand;
use corridor_node::catalog::{
    model::{InstrumentRecord, StoredInstrument},
    summary::to_proto,
};
use corridor_proto as pb;
use serde_json::{Value, json};

use crate::{
    ClientOpts,
    client::{admin_node, city_of, gateway_as, status_error},
};

#[derive(Subcommand)]
pub enum InstrumentCommand {
    /// Change fields of one instrument: FIELD=VALUE pairs, with the field
    /// names of an import file (e.g. price_external_fen=120000
    /// status=maintenance "booking_notes=Samples must be dry"; lists are
    /// separated by ";").
    Set {
        /// "<city>/<local-id>"
        id: String,
        #[arg(required = true, value_name = "FIELD=VALUE")]
        changes: Vec<String>,
        /// The node's endpoint; defaults to the one the gateway has for the city.
        #[arg(long)]
        node: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Retire an instrument: it leaves search (unless asked for with
    /// --status retired) and can no longer be booked; its bookings and
    /// history stay.
    Retire {
        id: String,
        #[arg(long)]
        node: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
}

pub async fn instrument(command: InstrumentCommand) -> Result<ExitCode> {
    let (id, changes, node, client) = match command {
        InstrumentCommand::Set { id, changes, node, client } => {
            let pairs = changes
                .iter()
                .map(|c| {
                    c.split_once('=')
                        .map(|(f, v)| (f.trim().replace('-', "_"), v.to_string()))
                        .with_context(|| format!("{c:?}: expected FIELD=VALUE, e.g. price_external_fen=120000"))
                })
                .collect::<Result<Vec<_>>>()?;
            (id, pairs, node, client)
        }
        InstrumentCommand::Retire { id, node, client } => (id, vec![("status".into(), "retired".into())], node, client),
    };
    let city = city_of(&id)?;
    let current = gateway_as(&client, &format!("admin-{}", city.slug))?
        .get_instrument(pb::GetInstrumentRequest { id: id.clone() })
        .await
        .map_err(status_error)?
        .into_inner();
    let before = corridor_node::wire::convert::from_proto(current).map_err(|e| anyhow!("{id}: {e}"))?;
    let after = change(&before, &changes).map_err(|e| anyhow!("{id}: {e}; nothing changed"))?;
    let instrument = to_proto(&StoredInstrument { record: after, updated_at: String::new() }, city);
    let (mut node, _) = admin_node(city, node, &client).await?;
    let resp = node
        .upsert_instrument(pb::UpsertInstrumentRequest { instrument: Some(instrument) })
        .await
        .map_err(status_error)?
        .into_inner();
    let stored = resp.instrument.context("the node sent no instrument back")?;
    if client.json {
        let changed: Vec<_> = changes.iter().map(|(f, _)| f).collect();
        outln!("{}", json!({"id": stored.id, "changed": resp.changed, "fields": changed}));
    } else if resp.changed {
        outln!("{}: changed {}", stored.id, changes.iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>().join(", "));
    } else {
        outln!("{}: already so; nothing changed", stored.id);
    }
    Ok(ExitCode::SUCCESS)
}

/// `record` with each FIELD=VALUE applied, each value read as the field's
/// type: text, whole number, yes/no, or a list separated by ";".
fn change(record: &InstrumentRecord, changes: &[(String, String)]) -> Result<InstrumentRecord> {
    let mut value = serde_json::to_value(record)?;
    let fields = value.as_object_mut().expect("a record is an object");
    for (field, text) in changes {
        if field == "local_id" || field == "city" {
            bail!("{field} names the instrument and cannot change (import it under a new id and retire this one)");
        }
        let Some(old) = fields.get(field) else {
            let mut names: Vec<&str> = fields.keys().map(String::as_str).collect();
            names.sort_unstable();
            bail!("{field:?} is not a field of an instrument; the fields are {}", names.join(", "));
        };
        let new = match old {
            Value::Bool(_) => match text.trim().to_lowercase().as_str() {
                "true" | "yes" | "1" => Value::Bool(true),
                "false" | "no" | "0" => Value::Bool(false),
                _ => bail!("{field} is yes or no, not {text:?}"),
            },
            Value::Number(_) => Value::from(
                text.trim()
                    .replace(',', "")
                    .parse::<i64>()
                    .map_err(|_| anyhow!("{field} is a whole number, not {text:?}"))?,
            ),
            Value::Array(_) => Value::from(
                text.split(';').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect::<Vec<_>>(),
            ),
            _ => Value::from(text.clone()),
        };
        fields.insert(field.clone(), new);
    }
    serde_json::from_value(value).map_err(|e| anyhow!("{e}"))
}

#[cfg(test)]
mod tests {
    use corridor_node::{
        catalog::model::Status,
        ops::demo::{Scale, city_inventory},
    };

    use super::*;

    fn set(pairs: &[(&str, &str)]) -> Result<InstrumentRecord> {
        let pairs: Vec<(String, String)> = pairs.iter().map(|(f, v)| (f.to_string(), v.to_string())).collect();
        change(&city_inventory(Scale::G60, "hefei")[0], &pairs)
    }

    #[test]
    fn each_value_is_read_as_its_field_type() {
        let r = set(&[
            ("price_external_fen", "120,000"),
            ("status", "maintenance"),
            ("training_required", "yes"),
            ("techniques", "SEM; EDS"),
        ])
        .unwrap();
        assert_eq!(r.price_external_fen, 120_000);
        assert_eq!(r.status, Status::Maintenance);
        assert!(r.training_required);
        assert_eq!(r.techniques, ["SEM", "EDS"]);
    }

    #[test]
    fn a_wrong_field_or_value_is_named() {
        let e = set(&[("prise", "1")]).unwrap_err().to_string();
        assert!(e.contains("\"prise\" is not a field") && e.contains("price_external_fen"), "{e}");
        assert!(set(&[("price_external_fen", "a lot")]).unwrap_err().to_string().contains("whole number"));
        assert!(set(&[("status", "broken")]).unwrap_err().to_string().contains("unknown variant"));
        assert!(set(&[("local_id", "x-2")]).unwrap_err().to_string().contains("cannot change"));
    }
}
