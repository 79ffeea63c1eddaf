//! Warren's own management endpoints, beyond RabbitMQ's API: peeking at a
//! queue's ready messages, the unacked view of a queue, and the routing
//! tester. Their shapes are fixed in the README (and coded against by the
//! dashboard); errors use the API's usual `{"error","reason"}` bodies.
//!
//! None of them changes anything: peek takes nothing from the queue and
//! marks nothing redelivered, the unacked view only reads, and the routing
//! tester walks the exchange graph without publishing or counting.

use super::json::{self, properties_key, table_to_json};
use super::{bad_request, body_object, exchange_name, not_found_err, vhost_or_404, ApiError, St};
use crate::broker::registry::unix_ms;
use crate::broker::unacked::HeldDelivery;
use crate::broker::{ConnectionInfo, Queue, RouteStep};
use axum::body::Bytes;
use axum::extract::{Path, Query};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value as J};
use std::collections::HashMap;
use std::sync::Arc;
use warren_exchanges::{RouteInput, Table, Value};
use warren_queues::{PeekBody, PeekEntry, Peeked};

/// The most messages one peek or unacked request returns.
const MAX_COUNT: usize = 500;

/// The most payload bytes one peek reply carries.
const PEEK_RENDER_BUDGET: usize = 64 * 1024 * 1024;

pub fn routes() -> Router<Arc<super::MgmtState>> {
    Router::new()
        .route("/api/queues/{vhost}/{name}/peek", get(peek))
        .route("/api/queues/{vhost}/{name}/unacked", get(unacked))
        .route("/api/exchanges/{vhost}/{name}/route-test", post(route_test))
}

type Q = Query<HashMap<String, String>>;

/// A non-negative integer query parameter, `default` when absent.
fn int_param(q: &HashMap<String, String>, key: &str, default: usize) -> Result<usize, ApiError> {
    match q.get(key) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| bad_request(format!("{key}: expected a non-negative integer, got {v:?}"))),
    }
}

fn count_param(q: &HashMap<String, String>, default: usize) -> Result<usize, ApiError> {
    let n = int_param(q, "count", default)?;
    if n > MAX_COUNT {
        return Err(bad_request(format!(
            "count: at most {MAX_COUNT} messages per request, got {n}"
        )));
    }
    Ok(n)
}

async fn peek(
    s: St,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Q,
) -> Result<Json<J>, ApiError> {
    let count = count_param(&q, 10)?;
    let offset = int_param(&q, "offset", 0)?;
    let base64 = match q.get("encoding").map(String::as_str) {
        None | Some("auto") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(bad_request(format!(
                "encoding: expected auto or base64, got {other:?}"
            )))
        }
    };
    let truncate = match q.get("truncate") {
        None => None,
        Some(_) => Some(int_param(&q, "truncate", 0)?),
    };
    let v = vhost_or_404(&s, &vhost)?;
    let queue = v.queue(&name).ok_or_else(not_found_err)?;
    // The queue's lock is held only while in-memory messages and the
    // places of paged-out ones are copied out; the bodies are read (up to
    // 64 MiB from disk) and rendered after, on a blocking thread, so a
    // peek at a backlogged queue stalls neither the queue nor a worker.
    let (peeked, ready) = queue.peek(offset, count);
    let items = tokio::task::spawn_blocking(move || {
        let mut items = Vec::with_capacity(peeked.len());
        let mut rendered = 0usize;
        for (place, m) in peeked.load() {
            // A reply stays bounded however big the messages are: past the
            // budget, fewer messages come back (the first always does).
            let shown = truncate.map_or(m.message.body().len(), |t| t.min(m.message.body().len()));
            if !items.is_empty() && rendered + shown > PEEK_RENDER_BUDGET {
                break;
            }
            rendered += shown;
            let mut j = super::objects::message_json(
                &m.message,
                m.message.properties(),
                m.redelivered,
                ready,
                base64,
                truncate,
            );
            j["position"] = json!(offset + place);
            items.push(j);
        }
        items
    })
    .await
    .map_err(|e| {
        ApiError(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "internal_server_error",
            format!("peek failed: {e}"),
        )
    })?;
    Ok(Json(J::Array(items)))
}

/// How long the unacked view waits for connections to answer.
const UNACKED_DEADLINE: std::time::Duration = std::time::Duration::from_secs(1);

/// One held delivery and the connection holding it.
type Held = (Arc<ConnectionInfo>, HeldDelivery);

async fn unacked(
    s: St,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Q,
) -> Result<Json<J>, ApiError> {
    let count = count_param(&q, 100)?;
    let v = vhost_or_404(&s, &vhost)?;
    let queue = v.queue(&name).ok_or_else(not_found_err)?;
    // The count comes from the queue's totals; the records live with the
    // channels holding them, so each connection is asked for its oldest.
    let total = queue.unacked_count();
    let items = if count == 0 || total == 0 {
        Vec::new()
    } else {
        ask_connections(&s, &queue, count).await
    };
    // Unacked messages of a durable queue past its memory budget keep only
    // their place on disk: read those bodies here, off the async workers
    // and without the queue's lock (one acked meanwhile shows no details).
    let missing: Vec<&HeldDelivery> = items
        .iter()
        .map(|(_, h)| h)
        .filter(|h| h.message.is_none())
        .collect();
    let mut loaded: HashMap<u64, Arc<warren_queues::Message>> = HashMap::new();
    if let (false, Some(p)) = (missing.is_empty(), s.broker.persistence()) {
        let seqs: Vec<u64> = missing.iter().map(|h| h.seq).collect();
        let stored: Vec<PeekEntry> = queue
            .unacked_locations(&seqs)
            .into_iter()
            .zip(missing)
            .filter_map(|(at, h)| {
                Some(PeekEntry {
                    seq: h.seq,
                    redelivered: h.redelivered,
                    body: PeekBody::Stored(at?),
                })
            })
            .collect();
        let peeked = Peeked::new(stored, Some(p.disk.clone()));
        let read = tokio::task::spawn_blocking(move || peeked.load())
            .await
            .unwrap_or_default();
        loaded = read.into_iter().map(|(_, m)| (m.seq, m.message)).collect();
    }
    let now = unix_ms();
    let items: Vec<J> = items
        .iter()
        .map(|(c, u)| {
            let message = u.message.as_ref().or_else(|| loaded.get(&u.seq));
            held_json(&s.node, c, u, message, now)
        })
        .collect();
    Ok(Json(json!({"total": total, "items": items})))
}

/// One held delivery as the view shows it: the holder's channel and
/// consumer tag, times, and what is known of the message.
fn held_json(
    node: &str,
    c: &ConnectionInfo,
    u: &HeldDelivery,
    message: Option<&Arc<warren_queues::Message>>,
    now: u64,
) -> J {
    let number = u.channel;
    let channel = json!({
        "name": format!("{} ({number})", c.name),
        "number": number,
        "connection_name": c.name,
        "user_provided_name": (!c.client.connection_name.is_empty())
            .then(|| c.client.connection_name.clone()),
        "peer_host": c.peer.ip().to_string(),
        "peer_port": c.peer.port(),
        "user": c.user,
        "node": node,
    });
    json!({
        // Kept null, as before the records moved to the channels: the
        // channel and delivery time identify a delivery.
        "delivery_tag": null,
        "consumer_tag": u.consumer_tag,
        "channel_details": channel,
        "delivered_at": u.delivered_at,
        "held_for_ms": now.saturating_sub(u.delivered_at),
        "redelivered": u.redelivered,
        "exchange": message.map(|m| m.exchange().to_owned()),
        "routing_key": message.map(|m| m.routing_key().to_owned()),
        "payload_bytes": message.map(|m| m.body().len()),
    })
}

/// The `n` oldest deliveries of `queue` over every connection, oldest
/// first: each is asked at once (a full mailbox or a connection that is
/// gone is skipped) and waited for until one deadline.
async fn ask_connections(s: &super::MgmtState, queue: &Arc<Queue>, n: usize) -> Vec<Held> {
    let asked: Vec<_> = s
        .broker
        .connections()
        .into_iter()
        // Only a connection to the queue's vhost can hold its deliveries.
        .filter(|c| c.vhost == queue.vhost)
        .filter_map(|c| {
            let rx = c.query_unacked(queue, n)?;
            Some((c, rx))
        })
        .collect();
    let deadline = tokio::time::Instant::now() + UNACKED_DEADLINE;
    let mut all: Vec<Held> = Vec::new();
    for (c, rx) in asked {
        if let Ok(Ok(held)) = tokio::time::timeout_at(deadline, rx).await {
            all.extend(held.into_iter().map(|h| (c.clone(), h)));
        }
    }
    all.sort_by_key(|(_, h)| (h.delivered_at, h.seq));
    all.truncate(n);
    all
}

/// The routing keys of a CC or BCC header; RabbitMQ refuses a non-array.
fn cc_keys(h: &Table, name: &str) -> Result<Vec<String>, ApiError> {
    match h.get(name) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => Ok(items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_owned))
            .collect()),
        Some(other) => Err(bad_request(format!(
            "invalid message: {{unacceptable_type_in_header,\"{name}\",{}}}",
            other.type_name()
        ))),
    }
}

fn step_json(st: &RouteStep) -> J {
    if st.alternate {
        return json!({
            "source": st.source,
            "destination": st.destination,
            "destination_type": "exchange",
            "alternate": true,
        });
    }
    json!({
        "source": st.source,
        "destination": st.destination,
        "destination_type": if st.to_queue { "queue" } else { "exchange" },
        "routing_key": st.routing_key,
        "arguments": table_to_json(&st.arguments),
        "properties_key": properties_key(&st.routing_key, &st.arguments),
    })
}

async fn route_test(
    s: St,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<J>, ApiError> {
    let v = vhost_or_404(&s, &vhost)?;
    let ex = v
        .exchange(exchange_name(&name))
        .map_err(|_| not_found_err())?;
    let m = body_object(&body)?;
    let routing_key = match m.get("routing_key") {
        None | Some(J::Null) => String::new(),
        Some(J::String(k)) => k.clone(),
        Some(other) => {
            return Err(bad_request(format!(
                "routing_key: expected a string, got {other}"
            )))
        }
    };
    let props = match m.get("properties") {
        None | Some(J::Null) => Map::new(),
        Some(J::Object(p)) => p.clone(),
        Some(_) => return Err(bad_request("properties: expected a JSON object")),
    };
    // Headers may come on their own or inside the properties (as /publish).
    let mut headers = Table::default();
    for src in [props.get("headers"), m.get("headers")] {
        match src {
            None | Some(J::Null) => {}
            Some(J::Object(h)) => {
                for (k, val) in json::table_from_json(h).iter() {
                    headers.insert(k, val.clone());
                }
            }
            Some(_) => return Err(bad_request("headers: expected a JSON object")),
        }
    }
    let mut extra = cc_keys(&headers, "CC")?;
    extra.extend(cc_keys(&headers, "BCC")?);
    let str_prop = |k: &str| -> Result<Option<String>, ApiError> {
        match props.get(k) {
            None | Some(J::Null) => Ok(None),
            Some(J::String(v)) => Ok(Some(v.clone())),
            Some(other) => Err(bad_request(format!("{k}: expected a string, got {other}"))),
        }
    };
    let message_id = str_prop("message_id")?;
    let correlation_id = str_prop("correlation_id")?;
    let timestamp = match props.get("timestamp") {
        None | Some(J::Null) => None,
        Some(J::Number(n)) if n.as_u64().is_some() => n.as_u64(),
        Some(other) => {
            return Err(bad_request(format!(
                "timestamp: expected a non-negative integer, got {other}"
            )))
        }
    };
    let input = RouteInput {
        routing_key: &routing_key,
        headers: Some(&headers),
        message_id: message_id.as_deref(),
        correlation_id: correlation_id.as_deref(),
        timestamp,
    };
    let trace = v.route_trace(&ex, &input, &extra);
    let queues: Vec<J> = trace
        .queues
        .iter()
        .map(|(q, via)| {
            json!({
                "vhost": q.vhost,
                "name": q.name,
                "via": via.iter().map(step_json).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Json(json!({
        "routed": !queues.is_empty(),
        "queues": queues,
        "exchanges": trace.exchanges,
    })))
}
