//! `/api/super-streams`: Warren's endpoints for super streams (RabbitMQ
//! creates them with `rabbitmq-streams add_super_stream` or the stream
//! protocol; its management API has none). PUT creates one in one call,
//! DELETE removes its exchange and partitions, GET lists them with each
//! partition's offsets and each consumer group's committed offset, tail
//! and lag per partition. The broker does the work and the permission
//! checks ([`crate::broker::stream::super_stream`]).

use super::{
    arguments, body_object, caller_in, not_found_err, put_status, refusal_or, vhost_or_404,
    ApiError, AuthUser, St,
};
use crate::broker::stream::super_stream::{SuperStreamInfo, SuperStreamSpec, MAX_PARTITIONS};
use crate::broker::Vhost;
use axum::body::Bytes;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{json, Map, Value as J};
use std::sync::Arc;
use warren_exchanges::Routing;

pub fn routes() -> Router<Arc<super::MgmtState>> {
    Router::new()
        .route("/api/super-streams", get(all))
        .route("/api/super-streams/{vhost}", get(in_vhost))
        .route(
            "/api/super-streams/{vhost}/{name}",
            get(one).put(create).delete(delete),
        )
}

/// A super stream's JSON: its partitions (offsets, consumers, groups) and
/// its groups summed over the partitions.
fn to_json(vhost: &str, ss: &SuperStreamInfo) -> J {
    // group -> (lag, per-partition entries)
    let mut groups: Vec<(String, u64, Vec<J>)> = Vec::new();
    let partitions: Vec<J> = ss
        .partitions
        .iter()
        .map(|p| {
            let Some(st) = p.queue.stream() else {
                return json!({"name": p.queue.name, "index": p.index});
            };
            let stats = st.stats();
            let tail = stats.committed;
            let gs: Vec<J> = st
                .group_infos()
                .into_iter()
                .map(|g| {
                    let lag = tail.saturating_sub(g.committed);
                    let entry = json!({
                        "partition": p.queue.name,
                        "index": p.index,
                        "committed_offset": g.committed,
                        "tail": tail,
                        "lag": lag,
                        "active_consumer_tag": g.active,
                        "members": g.members,
                    });
                    match groups.iter_mut().find(|(n, _, _)| *n == g.name) {
                        Some((_, total, list)) => {
                            *total += lag;
                            list.push(entry);
                        }
                        None => groups.push((g.name.clone(), lag, vec![entry])),
                    }
                    json!({
                        "name": g.name,
                        "committed_offset": g.committed,
                        "tail": tail,
                        "lag": lag,
                        "active_consumer_tag": g.active,
                        "members": g.members,
                    })
                })
                .collect();
            json!({
                "name": p.queue.name,
                "index": p.index,
                "binding_key": p.binding_key,
                "first_offset": stats.first_offset,
                "committed_offset": tail,
                "messages": tail.saturating_sub(stats.first_offset),
                "bytes_on_disk": stats.bytes,
                "consumers": st.consumer_count(),
                "groups": gs,
            })
        })
        .collect();
    groups.sort_by(|a, b| a.0.cmp(&b.0));
    json!({
        "name": ss.name,
        "vhost": vhost,
        "routing": ss.routing.as_str(),
        "partitions": partitions,
        "groups": groups.into_iter().map(|(name, lag, parts)| json!({
            "name": name,
            "lag": lag,
            "partitions": parts,
        })).collect::<Vec<_>>(),
    })
}

fn list(v: &Vhost) -> Vec<J> {
    v.super_streams()
        .iter()
        .map(|ss| to_json(&v.name, ss))
        .collect()
}

async fn all(s: St, Extension(AuthUser(user)): Extension<AuthUser>) -> Json<J> {
    let mut vhosts = s.broker.vhosts();
    vhosts.sort_by(|a, b| a.name.cmp(&b.name));
    let items = vhosts
        .iter()
        .filter(|v| caller_in(&s, &user, &v.name).is_ok())
        .flat_map(|v| list(v))
        .collect();
    Json(J::Array(items))
}

async fn in_vhost(
    s: St,
    Path(vhost): Path<String>,
    Extension(AuthUser(user)): Extension<AuthUser>,
) -> Result<Json<J>, ApiError> {
    let v = vhost_or_404(&s, &vhost)?;
    caller_in(&s, &user, &vhost)?;
    Ok(Json(J::Array(list(&v))))
}

async fn one(
    s: St,
    Path((vhost, name)): Path<(String, String)>,
    Extension(AuthUser(user)): Extension<AuthUser>,
) -> Result<Json<J>, ApiError> {
    let v = vhost_or_404(&s, &vhost)?;
    caller_in(&s, &user, &vhost)?;
    let ss = v.super_stream(&name).ok_or_else(not_found_err)?;
    Ok(Json(to_json(&v.name, &ss)))
}

/// The body's partitions: `{"partitions": N}` (keys `0..N-1`) or
/// `{"binding-keys": ["a", "b"]}` (partitions `NAME-a`, `NAME-b`).
fn binding_keys(m: &Map<String, J>) -> Result<Vec<String>, ApiError> {
    fn bad(r: impl Into<String>) -> ApiError {
        super::bad_request(r)
    }
    match (m.get("partitions"), m.get("binding-keys")) {
        (Some(_), Some(_)) => Err(bad("give either partitions or binding-keys, not both")),
        (Some(n), None) => match n.as_u64() {
            Some(n) if (1..=MAX_PARTITIONS as u64).contains(&n) => {
                Ok(SuperStreamSpec::numbered(n as usize))
            }
            _ => Err(bad(format!(
                "partitions: expected an integer from 1 to {MAX_PARTITIONS}, got {n}"
            ))),
        },
        (None, Some(J::Array(keys))) => keys
            .iter()
            .map(|k| match k {
                J::String(s) => Ok(s.clone()),
                other => Err(bad(format!("binding-keys: expected strings, got {other}"))),
            })
            .collect(),
        (None, Some(other)) => Err(bad(format!(
            "binding-keys: expected an array of strings, got {other}"
        ))),
        (None, None) => Err(bad("partitions or binding-keys is required")),
    }
}

fn routing(m: &Map<String, J>) -> Result<Routing, ApiError> {
    match m.get("routing") {
        None | Some(J::Null) => Ok(Routing::Key),
        Some(J::String(r)) if r == "key" => Ok(Routing::Key),
        Some(J::String(r)) if r == "hash" => Ok(Routing::Hash),
        Some(other) => Err(super::bad_request(format!(
            "routing: expected \"key\" or \"hash\", got {other}"
        ))),
    }
}

async fn create(
    s: St,
    Path((vhost, name)): Path<(String, String)>,
    Extension(AuthUser(user)): Extension<AuthUser>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let v = vhost_or_404(&s, &vhost)?;
    let caller = caller_in(&s, &user, &vhost)?;
    let m = body_object(&body)?;
    let spec = SuperStreamSpec {
        binding_keys: binding_keys(&m)?,
        routing: routing(&m)?,
        arguments: arguments(&m)?,
    };
    let created = v
        .create_super_stream(&name, &spec, &caller)
        .await
        .map_err(refusal_or)?;
    Ok(put_status(!created))
}

async fn delete(
    s: St,
    Path((vhost, name)): Path<(String, String)>,
    Extension(AuthUser(user)): Extension<AuthUser>,
) -> Result<StatusCode, ApiError> {
    let v = vhost_or_404(&s, &vhost)?;
    let caller = caller_in(&s, &user, &vhost)?;
    v.delete_super_stream(&name, &caller)
        .await
        .map_err(refusal_or)?;
    Ok(StatusCode::NO_CONTENT)
}
