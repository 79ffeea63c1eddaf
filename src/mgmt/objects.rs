//! The management API's object endpoints beyond plain listing: bindings
//! (create, look up, delete, per exchange and per queue), publishing and
//! getting messages, the aliveness and port-listener checks, nodes and the
//! cluster name, and per-vhost / per-connection views of connections,
//! channels and consumers.
//!
//! Everything goes through the broker's own operations (bind/unbind,
//! publish, queue get/ack/requeue), the same ones AMQP methods use, so the
//! effects (durable bindings, persistent messages, redelivery marks) are
//! the same. Status codes and error bodies follow RabbitMQ 3.10's
//! management plugin, including its quirks where clients may rely on them
//! (a failed publish is a 400 whose reason carries the AMQP code).

use super::json::{self, table_to_json};
use super::paging;
use super::process;
use super::{body_object, caller_in, exchange_name, permitted, AuthUser, MgmtState, St};
use crate::broker::base64::{base64_decode, base64_encode};
use crate::broker::properties::BasicProperties;
use crate::broker::{BrokerError, Dest, ErrorKind, Kind, Perm, QueueOptions, RouteScratch, Vhost};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::{json, Map, Value as J};
use std::collections::HashMap;
use std::sync::Arc;
use warren_exchanges::{Table, Value};
use warren_queues::{Message, MessageError};

type Res = Result<Response, Fail>;

/// A failed request: RabbitMQ's error body (its reason may be any JSON:
/// it sends Erlang terms as arrays), a health check's own failure body,
/// or a response made elsewhere.
pub(super) enum Fail {
    Error(StatusCode, &'static str, J),
    Body(StatusCode, J),
    Other(Box<Response>),
}

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        match self {
            Fail::Error(status, error, reason) => {
                (status, Json(json!({"error": error, "reason": reason}))).into_response()
            }
            Fail::Body(status, body) => (status, Json(body)).into_response(),
            Fail::Other(r) => *r,
        }
    }
}

impl From<super::ApiError> for Fail {
    fn from(e: super::ApiError) -> Self {
        Fail::Other(Box::new(e.into_response()))
    }
}

fn fail(status: StatusCode, error: &'static str, reason: impl Into<J>) -> Fail {
    Fail::Error(status, error, reason.into())
}

fn bad(reason: impl Into<J>) -> Fail {
    fail(StatusCode::BAD_REQUEST, "bad_request", reason)
}

fn object_not_found() -> Fail {
    fail(StatusCode::NOT_FOUND, "Object Not Found", "Not Found")
}

fn vhost_or_404(s: &MgmtState, name: &str) -> Result<Arc<Vhost>, Fail> {
    s.broker.vhost(name).ok_or_else(object_not_found)
}

/// A list RabbitMQ sorts and trims (`sort`, `columns`) but never pages
/// (its `reply_list`: bindings, nodes, per-vhost and per-connection views).
fn unpaged(q: &HashMap<String, String>) -> HashMap<String, String> {
    let mut q = q.clone();
    q.remove("page");
    q
}

fn list(items: Vec<J>, q: &HashMap<String, String>, default_sort: &[&str]) -> Res {
    paging::reply(items, &unpaged(q), default_sort)
        .map(|j| Json(j).into_response())
        .map_err(bad_list)
}

/// A list parameter error as RabbitMQ words it (always a 400).
pub(super) fn bad_list(e: paging::ListError) -> Fail {
    fail(StatusCode::BAD_REQUEST, e.0, e.1)
}

pub fn routes() -> Router<Arc<MgmtState>> {
    Router::new()
        .route(
            "/api/bindings/{vhost}/e/{source}/{dtype}/{dest}",
            get(pair_bindings).post(create_binding),
        )
        .route(
            "/api/bindings/{vhost}/e/{source}/{dtype}/{dest}/{props}",
            get(get_binding).delete(delete_binding),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/source",
            get(source_bindings),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/destination",
            get(destination_bindings),
        )
        .route("/api/queues/{vhost}/{name}/bindings", get(queue_bindings))
        .route("/api/exchanges/{vhost}/{name}/publish", post(publish))
        .route("/api/queues/{vhost}/{name}/get", post(get_messages))
        .route("/api/aliveness-test/{vhost}", get(aliveness))
        .route(
            "/api/health/checks/port-listener/{port}",
            get(port_listener),
        )
        .route(
            "/api/health/checks/node-is-quorum-critical",
            get(quorum_critical),
        )
        .route("/api/nodes", get(nodes))
        .route("/api/nodes/{node}", get(node))
        .route("/api/cluster-name", get(cluster_name))
        .route("/api/vhosts/{vhost}/connections", get(vhost_connections))
        .route("/api/vhosts/{vhost}/channels", get(vhost_channels))
        .route("/api/connections/{name}/channels", get(connection_channels))
        .route("/api/channels/{name}", get(channel))
        .route("/api/consumers/{vhost}", get(vhost_consumers))
}

// ---------------------------------------------------------------- bindings

/// One binding, the default exchange's implicit ones included.
struct Binding {
    source: String,
    destination: String,
    dtype: &'static str,
    key: String,
    args: Table,
}

/// Every binding of a vhost: the default exchange's implicit binding of
/// each queue first, then each exchange's (copied out under a brief lock).
fn vhost_bindings(v: &Vhost) -> Vec<Binding> {
    let mut out: Vec<Binding> = v
        .queues()
        .iter()
        .map(|q| Binding {
            source: String::new(),
            destination: q.name.clone(),
            dtype: "queue",
            key: q.name.clone(),
            args: Table::default(),
        })
        .collect();
    for e in v.exchanges().iter().filter(|e| !e.name.is_empty()) {
        out.extend(e.router().bindings().iter().map(|b| {
            let (destination, dtype) = match &b.destination {
                Dest::Queue(q) => (q.0.name.clone(), "queue"),
                Dest::Exchange(x) => (x.name.clone(), "exchange"),
            };
            Binding {
                source: e.name.clone(),
                destination,
                dtype,
                key: b.routing_key.clone(),
                args: b.arguments.clone(),
            }
        }));
    }
    out
}

fn binding_json(vhost: &str, b: &Binding) -> J {
    json!({
        "source": b.source,
        "vhost": vhost,
        "destination": b.destination,
        "destination_type": b.dtype,
        "routing_key": b.key,
        "arguments": table_to_json(&b.args),
        "properties_key": json::properties_key(&b.key, &b.args),
    })
}

/// RabbitMQ's default order for binding lists.
const BINDING_SORT: &[&str] = &[
    "vhost",
    "source",
    "type",
    "destination",
    "routing_key",
    "properties_key",
];

fn binding_list(v: &Vhost, keep: impl Fn(&Binding) -> bool, q: &HashMap<String, String>) -> Res {
    let items = vhost_bindings(v)
        .iter()
        .filter(|b| keep(b))
        .map(|b| binding_json(&v.name, b))
        .collect();
    list(items, q, BINDING_SORT)
}

/// The queue fields cheap enough to build for every queue of a large list
/// (no rates, no arguments), only those in `wanted`: enough to sort and
/// filter on before only the requested page is rendered in full.
fn queue_light(q: &crate::broker::Queue, wanted: &[&str]) -> J {
    let mut m = Map::new();
    let counts = wanted
        .iter()
        .any(|w| w.starts_with("messages") || *w == "consumers")
        .then(|| (q.counts(), q.unacked_count()));
    for w in wanted {
        let v = match (*w, counts) {
            ("name", _) => J::String(q.name.clone()),
            ("vhost", _) => J::String(q.vhost.clone()),
            ("durable", _) => J::Bool(q.durable),
            ("auto_delete", _) => J::Bool(q.auto_delete),
            ("exclusive", _) => J::Bool(q.owner.is_some()),
            ("consumers", Some(((_, c), _))) => json!(c),
            ("messages", Some(((r, _), u))) => json!(r + u),
            ("messages_ready", Some(((r, _), _))) => json!(r),
            ("messages_unacknowledged", Some((_, u))) => json!(u),
            _ => continue,
        };
        m.insert((*w).to_owned(), v);
    }
    J::Object(m)
}

/// `/api/queues[/{vhost}]` with the list parameters, paging lazily.
pub(super) fn queues_reply(
    s: &MgmtState,
    only: Option<&Arc<Vhost>>,
    q: &HashMap<String, String>,
    viewer: &super::admin::Viewer,
) -> Response {
    let r = match super::history::Ranges::from_query(q) {
        Ok(r) => r,
        Err(e) => return super::bad_request(e).into_response(),
    };
    if !q.contains_key("page") {
        // Every queue is rendered in full anyway.
        let list = viewer.filter(json::queues(s, only, &r));
        return match paging::reply_json(list, q, &["vhost", "name"]) {
            Ok(j) => Json(j).into_response(),
            Err(e) => bad_list(e).into_response(),
        };
    }
    let mut vhosts = match only {
        Some(v) => vec![v.clone()],
        None => s.broker.vhosts(),
    };
    vhosts.retain(|v| viewer.sees_vhost(&v.name));
    vhosts.sort_by(|a, b| a.name.cmp(&b.name));
    let mut queues = Vec::new();
    for v in vhosts {
        let mut qs = v.queues();
        qs.sort_by(|a, b| a.name.cmp(&b.name));
        queues.extend(qs);
    }
    match paging::reply_lazy(
        &queues,
        q,
        &["vhost", "name"],
        |q: &Arc<crate::broker::Queue>, w: &[&str]| queue_light(q, w),
        |q| {
            let mut j = json::queue(s, q);
            super::history::queue(&mut j, q, &r);
            j
        },
    ) {
        Ok(j) => Json(j).into_response(),
        Err(e) => bad_list(e).into_response(),
    }
}

/// A binding list (`/api/bindings[/{vhost}]`) sorted and trimmed as
/// RabbitMQ's (which does not page binding lists).
pub(super) fn binding_reply(list: J, q: &HashMap<String, String>) -> Response {
    match paging::reply_json(list, &unpaged(q), BINDING_SORT) {
        Ok(j) => Json(j).into_response(),
        Err(e) => bad_list(e).into_response(),
    }
}

/// `q` or `e` in a bindings URL.
fn dest_type(seg: &str) -> Option<&'static str> {
    match seg {
        "q" => Some("queue"),
        "e" => Some("exchange"),
        _ => None,
    }
}

async fn pair_bindings(
    State(s): St,
    Path((vhost, source, dtype, dest)): Path<(String, String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Res {
    let v = vhost_or_404(&s, &vhost)?;
    let dtype = dest_type(&dtype).ok_or_else(object_not_found)?;
    let (source, dest) = (exchange_name(&source).to_owned(), dest_name(dtype, &dest));
    binding_list(
        &v,
        |b| b.source == source && b.dtype == dtype && b.destination == dest,
        &q,
    )
}

/// A destination segment: exchanges map `amq.default` to "".
fn dest_name(dtype: &str, seg: &str) -> String {
    if dtype == "exchange" {
        exchange_name(seg).to_owned()
    } else {
        seg.to_owned()
    }
}

/// A bind/unbind refusal as RabbitMQ's management plugin reports it.
fn binding_error(e: BrokerError) -> Fail {
    match e.kind {
        ErrorKind::NotFound => fail(StatusCode::NOT_FOUND, "not_found", e.text),
        // RabbitMQ answers refusals (the default exchange) with a 401.
        ErrorKind::AccessRefused => fail(
            StatusCode::UNAUTHORIZED,
            "not_authorised",
            "Access refused.",
        ),
        _ => bad(e.text),
    }
}

/// A routing key from a JSON body: RabbitMQ takes numbers too.
fn routing_key(m: &Map<String, J>) -> Result<String, Fail> {
    match m.get("routing_key") {
        None | Some(J::Null) => Ok(String::new()),
        Some(J::String(k)) => Ok(k.clone()),
        Some(J::Number(n)) => Ok(n.to_string()),
        Some(other) => Err(bad(format!("routing_key: expected a string, got {other}"))),
    }
}

async fn create_binding(
    State(s): St,
    Path((vhost, source, dtype, dest)): Path<(String, String, String, String)>,
    Extension(AuthUser(user)): Extension<AuthUser>,
    uri: Uri,
    body: Bytes,
) -> Res {
    let v = s
        .broker
        .vhost(&vhost)
        .ok_or_else(|| fail(StatusCode::NOT_FOUND, "not_found", "vhost_not_found"))?;
    let dtype_name = dest_type(&dtype).ok_or_else(object_not_found)?;
    let m = body_object(&body).map_err(Fail::from)?;
    let key = routing_key(&m)?;
    let args = super::arguments(&m).map_err(Fail::from)?;
    let src = exchange_name(&source);
    let dst = dest_name(dtype_name, &dest);
    // RabbitMQ checks the default exchange before the ends exist.
    if src.is_empty() || (dtype_name == "exchange" && dst.is_empty()) {
        return Err(binding_error(BrokerError::default_exchange()));
    }
    let dkind = if dtype_name == "queue" {
        Kind::Queue
    } else {
        Kind::Exchange
    };
    let caller = caller_in(&s, &user, &vhost)?;
    permitted(caller.check_bind(dkind, &dst, src))?;
    permitted(caller.check_bind_topic(&v, src, &key))?;
    let props = json::properties_key(&key, &args);
    let res = if dtype_name == "queue" {
        v.bind_queue(&dst, src, &key, args, 0)
    } else {
        v.bind_exchange(&dst, src, &key, args)
    };
    res.map_err(binding_error)?;
    tracing::debug!(vhost = %v.name, source = src, destination = %dst, key, "binding created via the management API");
    let to = format!(
        "/api/bindings/{}/e/{}/{dtype}/{}/{}",
        quote_plus(&vhost),
        quote_plus(src),
        quote_plus(&dst),
        quote_plus(&props)
    );
    let location = relativise(uri.path(), &to);
    let mut r = StatusCode::CREATED.into_response();
    if let Ok(h) = header::HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, h);
    }
    Ok(r)
}

/// The binding a `{props}` segment names: (routing key, arguments), or
/// `None` when there is no such binding (RabbitMQ: 404).
fn find_binding(v: &Vhost, source: &str, dtype: &str, dest: &str, props: &str) -> Option<Binding> {
    let tokens: Vec<&str> = props.splitn(3, '~').collect();
    let (key, hash) = match tokens.as_slice() {
        [k] => (unquote_plus(k), None),
        [k, h] => (unquote_plus(k), Some(unquote_plus(h))),
        _ => return None,
    };
    vhost_bindings(v).into_iter().find(|b| {
        b.source == source
            && b.dtype == dtype
            && b.destination == dest
            && b.key == key
            && match &hash {
                None => b.args.is_empty(),
                Some(h) => !b.args.is_empty() && json::args_hash(&b.args) == *h,
            }
    })
}

/// The path segments naming one binding:
/// `/bindings/{vhost}/e/{source}/{q|e}/{dest}/{props}`.
type BindingPath = Path<(String, String, String, String, String)>;

/// The binding a [`BindingPath`] names, with its vhost and destination
/// type; 404 when any part is unknown.
fn binding_at(
    s: &MgmtState,
    Path((vhost, source, dtype, dest, props)): BindingPath,
) -> Result<(Arc<Vhost>, &'static str, Binding), Fail> {
    let v = vhost_or_404(s, &vhost)?;
    let dtype = dest_type(&dtype).ok_or_else(object_not_found)?;
    let b = find_binding(
        &v,
        exchange_name(&source),
        dtype,
        &dest_name(dtype, &dest),
        &props,
    )
    .ok_or_else(object_not_found)?;
    Ok((v, dtype, b))
}

async fn get_binding(State(s): St, path: BindingPath) -> Res {
    let (v, _, b) = binding_at(&s, path)?;
    Ok(Json(binding_json(&v.name, &b)).into_response())
}

async fn delete_binding(
    State(s): St,
    Extension(AuthUser(user)): Extension<AuthUser>,
    path: BindingPath,
) -> Res {
    let (v, dtype, b) = binding_at(&s, path)?;
    if b.source.is_empty() {
        return Err(binding_error(BrokerError::default_exchange()));
    }
    let dkind = if dtype == "queue" {
        Kind::Queue
    } else {
        Kind::Exchange
    };
    let caller = caller_in(&s, &user, &v.name)?;
    permitted(caller.check_bind(dkind, &b.destination, &b.source))?;
    permitted(caller.check_bind_topic(&v, &b.source, &b.key))?;
    let res = if dtype == "queue" {
        v.unbind_queue(&b.destination, &b.source, &b.key, &b.args, 0)
    } else {
        v.unbind_exchange(&b.destination, &b.source, &b.key, &b.args)
    };
    res.map_err(binding_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn source_bindings(
    State(s): St,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Res {
    let v = vhost_or_404(&s, &vhost)?;
    let name = exchange_name(&name).to_owned();
    binding_list(&v, |b| b.source == name, &q)
}

async fn destination_bindings(
    State(s): St,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Res {
    let v = vhost_or_404(&s, &vhost)?;
    let name = exchange_name(&name).to_owned();
    binding_list(&v, |b| b.dtype == "exchange" && b.destination == name, &q)
}

async fn queue_bindings(
    State(s): St,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Res {
    let v = vhost_or_404(&s, &vhost)?;
    binding_list(&v, |b| b.dtype == "queue" && b.destination == name, &q)
}

/// RabbitMQ's `quote_plus`: unreserved characters kept, space as `+`,
/// everything else as upper-case `%XX` bytes.
pub(super) fn quote_plus(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'~' | b'_' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The inverse of [`quote_plus`] (a `%` not followed by two hex digits stays).
fn unquote_plus(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// RabbitMQ's `relativise`: the target path relative to the request's.
fn relativise(from: &str, to: &str) -> String {
    let from: Vec<&str> = from.split('/').filter(|s| !s.is_empty()).collect();
    let to: Vec<&str> = to.split('/').filter(|s| !s.is_empty()).collect();
    let mut f = from.as_slice();
    let mut t = to.as_slice();
    loop {
        match (f, t) {
            ([h], [h2, ..]) if h == h2 => return t.join("/"),
            ([h, fr @ ..], [h2, tr @ ..]) if h == h2 => {
                f = fr;
                t = tr;
            }
            (_, []) => return vec![".."; f.len()].join("/"),
            ([_, fr @ ..], _) => {
                let mut parts = vec![".."; fr.len()];
                parts.extend_from_slice(t);
                return parts.join("/");
            }
            ([], _) => return t.join("/"),
        }
    }
}

// ------------------------------------------------------------ publish / get

/// `with_decode`: the required keys, or RabbitMQ's key_missing list.
fn required<'a>(m: &'a Map<String, J>, keys: &[&str]) -> Result<Vec<&'a J>, Fail> {
    let missing: Vec<String> = keys
        .iter()
        .filter(|k| !m.contains_key(**k))
        .map(|k| format!("{{key_missing,{k}}}"))
        .collect();
    if !missing.is_empty() {
        return Err(bad(format!("[{}]", missing.join(","))));
    }
    Ok(keys.iter().map(|k| &m[*k]).collect())
}

/// A JSON body as `with_decode` reads it: empty and `null` are `{}`,
/// anything else that is not an object is `not_json`.
fn decode_body(body: &Bytes) -> Result<Map<String, J>, Fail> {
    let trimmed = body.trim_ascii();
    if trimmed.is_empty() || trimmed == b"null" {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<J>(trimmed) {
        Ok(J::Object(m)) => Ok(m),
        Ok(J::String(_)) => Err(bad("invalid payload: the request body JSON-decoded to a string. Is the input doubly-JSON-encoded?")),
        Ok(J::Bool(_)) | Ok(J::Null) => Ok(Map::new()),
        _ => Err(bad("not_json")),
    }
}

/// RabbitMQ's `to_basic_properties`: integers for delivery_mode, priority
/// and timestamp, a table for headers, strings for the rest.
fn properties_from_json(p: &J) -> Result<BasicProperties, Fail> {
    let empty = Map::new();
    let m = match p {
        J::Object(m) => m,
        J::Null => &empty,
        // RabbitMQ's own forms send [] for "no properties".
        J::Array(a) if a.is_empty() => &empty,
        _ => return Err(bad("properties: expected a JSON object")),
    };
    let int = |k: &str, max: u64| -> Result<Option<u64>, Fail> {
        match m.get(k) {
            None | Some(J::Null) => Ok(None),
            Some(J::Number(n)) => match n.as_u64().filter(|v| *v <= max) {
                Some(v) => Ok(Some(v)),
                None => Err(bad(json!(["not_int", k]))),
            },
            Some(_) => Err(bad(json!(["not_int", k]))),
        }
    };
    let string = |k: &str| -> Result<Option<String>, Fail> {
        match m.get(k) {
            None | Some(J::Null) => Ok(None),
            Some(J::String(s)) if s.len() <= 255 => Ok(Some(s.clone())),
            Some(_) => Err(bad(json!(["not_string", k]))),
        }
    };
    let headers = match m.get("headers") {
        None | Some(J::Null) => None,
        Some(J::Object(h)) => Some(json::table_from_json(h)),
        Some(J::Array(a)) if a.is_empty() => Some(Table::default()),
        Some(_) => return Err(bad(json!(["not_table", "headers"]))),
    };
    Ok(BasicProperties {
        content_type: string("content_type")?,
        content_encoding: string("content_encoding")?,
        headers,
        delivery_mode: int("delivery_mode", 255)?.map(|v| v as u8),
        priority: int("priority", 255)?.map(|v| v as u8),
        correlation_id: string("correlation_id")?,
        reply_to: string("reply_to")?,
        expiration: string("expiration")?,
        message_id: string("message_id")?,
        timestamp: int("timestamp", u64::MAX)?,
        kind: string("type")?,
        user_id: string("user_id")?,
        app_id: string("app_id")?,
        cluster_id: string("cluster_id")?,
    })
}

/// Properties as RabbitMQ's `basic_properties` renders them: present
/// fields only, headers as an object; no properties at all is `[]` (an
/// empty Erlang proplist), as RabbitMQ sends it.
pub(super) fn properties_json(raw: &[u8]) -> J {
    let Some(p) = BasicProperties::decode(raw) else {
        return J::Array(Vec::new());
    };
    let mut m = Map::new();
    let mut s = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            m.insert(k.to_owned(), J::String(v.clone()));
        }
    };
    s("content_type", &p.content_type);
    s("content_encoding", &p.content_encoding);
    s("correlation_id", &p.correlation_id);
    s("reply_to", &p.reply_to);
    s("expiration", &p.expiration);
    s("message_id", &p.message_id);
    s("type", &p.kind);
    s("user_id", &p.user_id);
    s("app_id", &p.app_id);
    s("cluster_id", &p.cluster_id);
    if let Some(h) = &p.headers {
        m.insert("headers".into(), table_to_json(h));
    }
    if let Some(d) = p.delivery_mode {
        m.insert("delivery_mode".into(), json!(d));
    }
    if let Some(d) = p.priority {
        m.insert("priority".into(), json!(d));
    }
    if let Some(t) = p.timestamp {
        m.insert("timestamp".into(), json!(t));
    }
    if m.is_empty() {
        J::Array(Vec::new())
    } else {
        J::Object(m)
    }
}

/// The CC/BCC routing keys of a header value (arrays of strings).
fn cc_keys(v: Option<&Value>) -> Result<Vec<String>, String> {
    match v {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => Ok(items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_owned))
            .collect()),
        Some(other) => Err(other.type_name().to_owned()),
    }
}

/// An AMQP-style refusal inside a management request: RabbitMQ reports
/// the channel error as a 400 `"CODE NAME - text"`.
fn amqp_refusal(e: &BrokerError) -> Fail {
    let (code, name) = match e.kind {
        ErrorKind::NotFound => (404, "NOT_FOUND"),
        ErrorKind::AccessRefused => (403, "ACCESS_REFUSED"),
        ErrorKind::ResourceLocked => (405, "RESOURCE_LOCKED"),
        ErrorKind::PreconditionFailed => (406, "PRECONDITION_FAILED"),
        ErrorKind::NotAllowed => (530, "NOT_ALLOWED"),
        ErrorKind::CommandInvalid => (503, "COMMAND_INVALID"),
        ErrorKind::NotImplemented => (540, "NOT_IMPLEMENTED"),
        ErrorKind::InternalError => (541, "INTERNAL_ERROR"),
    };
    bad(format!("{code} {name} - {}", e.text))
}

fn rejected() -> Fail {
    bad("rejected Unable to publish message. Check queue limits.")
}

/// Publishes as a channel would, and waits (like RabbitMQ's publisher
/// confirm) until a persisted message is on disk.
async fn publish_message(
    s: &MgmtState,
    v: &Vhost,
    exchange: &str,
    routing_key: String,
    props: BasicProperties,
    body: Vec<u8>,
) -> Result<bool, Fail> {
    let ex = v.exchange(exchange).map_err(|e| amqp_refusal(&e))?;
    if ex.opts.internal {
        return Err(amqp_refusal(&BrokerError::new(
            ErrorKind::AccessRefused,
            format!(
                "cannot publish to internal exchange '{}' in vhost '{}'",
                ex.name, v.name
            ),
        )));
    }
    let mut props = props;
    let mut extra_keys = Vec::new();
    let mut bcc = Vec::new();
    if let Some(h) = props.headers.as_mut() {
        for name in ["CC", "BCC"] {
            match cc_keys(h.get(name)) {
                Ok(keys) => {
                    if name == "BCC" {
                        bcc = keys.clone();
                    }
                    extra_keys.extend(keys)
                }
                Err(t) => {
                    return Err(amqp_refusal(&BrokerError::new(
                        ErrorKind::PreconditionFailed,
                        format!("invalid message: {{unacceptable_type_in_header,\"{name}\",{t}}}"),
                    )))
                }
            }
        }
        // BCC never reaches consumers (the message keeps its keys, to
        // dead-letter by them).
        h.remove("BCC");
    }
    let encoded = props.encode().map_err(|e| bad(e.0))?;
    let message = Message::with_bcc(
        exchange,
        &routing_key,
        &encoded,
        &body,
        props.delivery_mode == Some(2),
        &bcc,
    )
    .map_err(|e| match e {
        MessageError::NameTooLong => bad("routing_key is longer than 255 bytes"),
        MessageError::PropertiesTooLarge | MessageError::BadBcc => bad("properties are too large"),
    })?;
    let expiration = match &props.expiration {
        Some(e) => Some(
            crate::broker::queue_args::parse_expiration(e)
                .map_err(|t| amqp_refusal(&BrokerError::new(ErrorKind::PreconditionFailed, t)))?,
        ),
        None => None,
    };
    let details = crate::broker::PublishDetails {
        headers: props.headers.as_ref(),
        message_id: props.message_id.as_deref(),
        correlation_id: props.correlation_id.as_deref(),
        timestamp: props.timestamp,
        extra_keys: &extra_keys,
        expiration,
    };
    let mut scratch = RouteScratch::default();
    let published = match v.publish(&ex, message, details, &mut scratch) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "cannot store a message published via the management API");
            return Err(rejected());
        }
    };
    if published.routed == 0 {
        // Not mandatory: dropped, counted as the AMQP path counts it.
        s.broker
            .counters()
            .add(crate::broker::Counter::DropUnroutable, 1);
    }
    if published.written {
        if let Some(p) = s.broker.persistence() {
            let (tx, rx) = tokio::sync::oneshot::channel();
            p.flusher.after_flush(Box::new(move |ok| {
                let _ = tx.send(ok);
            }));
            if !rx.await.unwrap_or(false) {
                return Err(rejected());
            }
        }
    }
    Ok(published.routed > 0)
}

async fn publish(
    State(s): St,
    Path((vhost, name)): Path<(String, String)>,
    Extension(AuthUser(user)): Extension<AuthUser>,
    body: Bytes,
) -> Res {
    let v = vhost_or_404(&s, &vhost)?;
    let m = decode_body(&body)?;
    let vals = required(
        &m,
        &["routing_key", "properties", "payload", "payload_encoding"],
    )?;
    let key = match vals[0] {
        J::String(k) => k.clone(),
        J::Number(n) => n.to_string(),
        _ => return Err(bad(json!(["not_string", "routing_key"]))),
    };
    let J::String(payload) = vals[2] else {
        return Err(bad("payload_not_string"));
    };
    let body = match vals[3] {
        J::String(e) if e == "string" => payload.as_bytes().to_vec(),
        J::String(e) if e == "base64" => {
            base64_decode(payload.trim()).ok_or_else(|| bad(json!(["not_base64", payload])))?
        }
        other => return Err(bad(json!(["unsupported_encoding", other]))),
    };
    let props = properties_from_json(vals[1])?;
    let caller = caller_in(&s, &user, &vhost)?;
    caller
        .check_publish(exchange_name(&name))
        .map_err(|e| amqp_refusal(&e))?;
    if let Ok(x) = v.exchange(exchange_name(&name)) {
        caller
            .check_topic(Perm::Write, &x.name, x.kind.as_str() == "topic", &key)
            .map_err(|e| amqp_refusal(&e))?;
    }
    if let Some(uid) = &props.user_id {
        caller
            .check_user_id(uid.as_bytes())
            .map_err(|e| amqp_refusal(&e))?;
    }
    let routed = publish_message(&s, &v, exchange_name(&name), key, props, body).await?;
    Ok(Json(json!({ "routed": routed })).into_response())
}

/// An integer parameter as `rabbit_misc:parse_int` takes it.
fn parse_int(v: &J) -> Result<i64, Fail> {
    match v {
        J::Number(n) => n
            .as_i64()
            .ok_or_else(|| bad(json!(["not_integer", v.to_string()]))),
        J::String(s) => s.trim().parse().map_err(|_| bad(json!(["not_integer", s]))),
        other => Err(bad(json!(["not_integer", other.to_string()]))),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum AckMode {
    AckRequeue,
    AckDrop,
    RejectRequeue,
    RejectDrop,
}

/// One message as `/get` renders it (`truncate` cuts the payload only).
pub(super) fn message_json(
    m: &Message,
    properties: &[u8],
    redelivered: bool,
    message_count: usize,
    base64: bool,
    truncate: Option<usize>,
) -> J {
    let full = m.body();
    let cut = match truncate {
        Some(n) if n < full.len() => &full[..n],
        _ => full,
    };
    let (payload, encoding) = match (base64, std::str::from_utf8(cut)) {
        (false, Ok(text)) => (text.to_owned(), "string"),
        _ => (base64_encode(cut), "base64"),
    };
    json!({
        "payload_bytes": full.len(),
        "redelivered": redelivered,
        "exchange": m.exchange(),
        "routing_key": m.routing_key(),
        "message_count": message_count,
        "properties": properties_json(properties),
        "payload": payload,
        "payload_encoding": encoding,
    })
}

/// The most messages one `/get` takes (the dashboard asks for a few).
const MAX_GET_COUNT: i64 = 10_000;

/// The most payload bytes one `/get` collects before it stops taking more.
const MAX_GET_BYTES: usize = 64 << 20;

async fn get_messages(
    State(s): St,
    Path((vhost, name)): Path<(String, String)>,
    Extension(AuthUser(user)): Extension<AuthUser>,
    body: Bytes,
) -> Res {
    let v = vhost_or_404(&s, &vhost)?;
    // RabbitMQ answers this refusal with 401 and the AMQP text.
    caller_in(&s, &user, &vhost)?
        .check_read_queue(&name)
        .map_err(|e| {
            fail(
                StatusCode::UNAUTHORIZED,
                "not_authorised",
                format!("ACCESS_REFUSED - {}", e.text),
            )
        })?;
    let m = decode_body(&body)?;
    let vals = required(&m, &["ackmode", "count", "encoding"])?;
    let count = parse_int(vals[1])?;
    // RabbitMQ loops until the queue is empty for a negative count and
    // holds everything it took until the end; Warren refuses that and caps
    // one request, since every message taken stays in memory until then.
    if !(0..=MAX_GET_COUNT).contains(&count) {
        return Err(bad(format!(
            "count must be between 0 and {MAX_GET_COUNT}, got {count}"
        )));
    }
    let base64 = match vals[2] {
        J::String(e) if e == "auto" => false,
        J::String(e) if e == "base64" => true,
        _ => return Err(bad("Unsupported encoding. Please use auto or base64.")),
    };
    let truncate = match m.get("truncate") {
        None | Some(J::Null) => None,
        Some(t) => Some(parse_int(t)?.max(0) as usize),
    };
    let mode = match vals[0].as_str() {
        Some("ack_requeue_true") => AckMode::AckRequeue,
        Some("ack_requeue_false") => AckMode::AckDrop,
        Some("reject_requeue_true") => AckMode::RejectRequeue,
        Some("reject_requeue_false") => AckMode::RejectDrop,
        _ => {
            return Err(bad(
                "Unsupported ackmode. Please use ack_requeue_true, ack_requeue_false, \
                 reject_requeue_true or reject_requeue_false.",
            ))
        }
    };
    let q = v.queue_for(&name, 0).map_err(|e| match e.kind {
        ErrorKind::NotFound => fail(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("NOT_FOUND - {}", e.text),
        ),
        _ => amqp_refusal(&e),
    })?;
    q.check_supported("basic.get")
        .map_err(|e| amqp_refusal(&e))?;
    let no_ack = mode == AckMode::AckDrop;
    let mut out = Vec::new();
    let mut taken = Vec::new();
    // RabbitMQ gets them one by one and settles them all afterwards:
    // requeued at once, each get would return the same message.
    let mut n = count;
    let mut bytes = 0usize;
    while n != 0 && bytes < MAX_GET_BYTES {
        let Some(mut got) = q.get(no_ack) else {
            break;
        };
        let qm = &got.message;
        bytes += qm.message.body().len();
        out.push(message_json(
            &qm.message,
            &got.properties(),
            qm.redelivered,
            got.left,
            base64,
            truncate,
        ));
        taken.extend(got.held.take());
        n -= 1;
    }
    match mode {
        AckMode::AckDrop => {}
        AckMode::AckRequeue | AckMode::RejectRequeue => q.requeue(&mut taken),
        // A reject is not an ack in the counters (RabbitMQ counts it apart).
        AckMode::RejectDrop => q.discard(&mut taken),
    }
    Ok(Json(J::Array(out)).into_response())
}

// ------------------------------------------------------------ health checks

async fn aliveness(State(s): St, Path(vhost): Path<String>) -> Res {
    let v = vhost_or_404(&s, &vhost)?;
    const QUEUE: &str = "aliveness-test";
    let opts = QueueOptions {
        durable: false,
        exclusive: false,
        auto_delete: false,
        arguments: Table::default(),
    };
    let failed = |reason: String| {
        Fail::Body(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "failed", "reason": reason}),
        )
    };
    let q = v
        .declare_queue(QUEUE, false, opts, 0)
        .map_err(|e| failed(e.text))?
        .queue;
    publish_message(
        &s,
        &v,
        "",
        QUEUE.to_owned(),
        BasicProperties::default(),
        b"test_message".to_vec(),
    )
    .await?;
    match q.get(true) {
        Some(_) => Ok(Json(json!({"status": "ok"})).into_response()),
        None => Err(failed("aliveness-test queue is empty".into())),
    }
}

/// The ports Warren listens on (AMQP, management HTTP, Prometheus, and
/// the TLS ones).
fn listener_ports(s: &MgmtState) -> Vec<u16> {
    s.amqp_addrs
        .iter()
        .chain(&s.http_addrs)
        .chain(&s.prometheus_addrs)
        .chain(&s.amqps_addrs)
        .chain(&s.https_addrs)
        .map(|a| a.port())
        .collect()
}

async fn port_listener(State(s): St, Path(port): Path<String>) -> Res {
    let port: u16 = port.parse().map_err(|_| bad("Invalid port"))?;
    let ports = listener_ports(&s);
    if ports.contains(&port) {
        return Ok(Json(json!({"status": "ok", "port": port})).into_response());
    }
    Err(Fail::Body(
        StatusCode::SERVICE_UNAVAILABLE,
        json!({
            "status": "failed",
            "reason": "No active listener",
            "missing": port,
            "ports": ports,
        }),
    ))
}

async fn quorum_critical() -> Json<J> {
    Json(json!({"status": "ok", "reason": "single node cluster"}))
}

// ------------------------------------------------------------ nodes

fn node_json(s: &MgmtState) -> J {
    // The monitor's last measures: the alarms are set from the same
    // figures, and no statvfs runs on an async worker here.
    let r = s.broker.alarms().status();
    let processors = std::thread::available_parallelism().map_or(1, |n| n.get());
    let exchange_types: Vec<J> = [
        (
            "direct",
            "AMQP direct exchange, as per the AMQP specification",
        ),
        (
            "fanout",
            "AMQP fanout exchange, as per the AMQP specification",
        ),
        (
            "headers",
            "AMQP headers exchange, as per the AMQP specification",
        ),
        (
            "topic",
            "AMQP topic exchange, as per the AMQP specification",
        ),
        ("x-consistent-hash", "Consistent Hashing Exchange"),
    ]
    .iter()
    .map(|(n, d)| json!({"name": n, "description": d, "enabled": true}))
    .collect();
    let rate = json!({"rate": 0.0});
    json!({
        "name": s.node,
        "type": "disc",
        "running": true,
        "being_drained": false,
        "uptime": s.started.elapsed().as_millis() as u64,
        "os_pid": std::process::id().to_string(),
        "processors": processors,
        "run_queue": 0,
        "rates_mode": "basic",
        "mem_used": r.mem_used,
        "mem_used_details": rate,
        "mem_limit": r.mem_limit,
        "mem_alarm": r.alarms.memory,
        "mem_calculation_strategy": "rss",
        "disk_free": r.disk_free,
        "disk_free_details": rate,
        "disk_free_limit": r.disk_free_limit,
        "disk_free_alarm": r.alarms.disk,
        "fd_used": process::fd_used(),
        "fd_used_details": rate,
        "fd_total": process::fd_total(),
        "sockets_used": s.broker.connections().len(),
        "sockets_used_details": rate,
        "sockets_total": (process::fd_total() as f64 * 0.9) as u64,
        // No Erlang processes: threads are the nearest thing.
        "proc_used": process::threads(),
        "proc_used_details": rate,
        "proc_total": 1_048_576,
        "net_ticktime": 60,
        "partitions": [],
        "cluster_links": [],
        "enabled_plugins": ["rabbitmq_management"],
        "applications": [{
            "name": "warren",
            "description": "Warren, an AMQP 0-9-1 broker",
            "version": env!("CARGO_PKG_VERSION"),
        }],
        "auth_mechanisms": [
            {"name": "PLAIN", "description": "SASL PLAIN authentication mechanism", "enabled": true},
            {"name": "AMQPLAIN", "description": "QPid AMQPLAIN mechanism", "enabled": true},
        ],
        "exchange_types": exchange_types,
        "contexts": [{
            "description": "RabbitMQ Management",
            "path": "/",
            "port": s.http_addrs[0].port().to_string(),
        }],
        "db_dir": s.data_dir.display().to_string(),
        "config_files": [],
        "log_files": ["<stdout>"],
    })
}

async fn nodes(State(s): St, Query(q): Query<HashMap<String, String>>) -> Res {
    list(vec![node_json(&s)], &q, &["name"])
}

async fn node(State(s): St, Path(name): Path<String>) -> Res {
    if name != s.node {
        return Err(object_not_found());
    }
    Ok(Json(node_json(&s)).into_response())
}

async fn cluster_name(State(s): St) -> Json<J> {
    Json(json!({"name": s.cluster_name}))
}

// ------------------------------------------------------------ per-object views

async fn vhost_connections(
    State(s): St,
    Path(vhost): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Res {
    vhost_or_404(&s, &vhost)?;
    let items = s
        .broker
        .connections()
        .iter()
        .filter(|c| c.vhost == vhost)
        .map(|c| json::connection(&s, c))
        .collect();
    list(items, &q, &["vhost", "name"])
}

fn channels_where(s: &MgmtState, keep: impl Fn(&J) -> bool) -> Vec<J> {
    match json::channels(s) {
        J::Array(a) => a.into_iter().filter(|c| keep(c)).collect(),
        _ => Vec::new(),
    }
}

async fn vhost_channels(
    State(s): St,
    Path(vhost): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Res {
    vhost_or_404(&s, &vhost)?;
    let items = channels_where(&s, |c| c["vhost"] == vhost.as_str());
    list(items, &q, &["vhost", "name"])
}

async fn connection_channels(
    State(s): St,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Res {
    if !s.broker.connections().iter().any(|c| c.name == name) {
        return Err(object_not_found());
    }
    let items = channels_where(&s, |c| c["connection_details"]["name"] == name.as_str());
    list(items, &q, &["vhost", "name"])
}

/// One channel with its consumers, as RabbitMQ's channel page reads it
/// (`publishes`/`deliveries` are per-object-pair stats RabbitMQ fills only
/// in its `detailed` rates mode: empty, as in its default `basic` mode).
async fn channel(
    State(s): St,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Res {
    let r = super::history::Ranges::from_query(&q).map_err(super::bad_request)?;
    let mut c = channels_where(&s, |c| c["name"] == name.as_str())
        .into_iter()
        .next()
        .ok_or_else(object_not_found)?;
    let conn = c["connection_details"]["name"].as_str().unwrap_or_default();
    let number = c["number"].as_u64().and_then(|n| u16::try_from(n).ok());
    if let (Some(conn), Some(number)) = (
        s.broker.connections().into_iter().find(|x| x.name == conn),
        number,
    ) {
        super::history::channel(&mut c, &conn, number, &r);
    }
    let consumers: Vec<J> = match json::consumers(&s) {
        J::Array(a) => a
            .into_iter()
            .filter(|k| k["channel_details"]["name"] == name.as_str())
            .collect(),
        _ => Vec::new(),
    };
    c["consumer_details"] = J::Array(consumers);
    c["publishes"] = json!([]);
    c["deliveries"] = json!([]);
    Ok(Json(c).into_response())
}

async fn vhost_consumers(State(s): St, Path(vhost): Path<String>) -> Res {
    vhost_or_404(&s, &vhost)?;
    let items: Vec<J> = match json::consumers(&s) {
        J::Array(a) => a
            .into_iter()
            .filter(|c| c["queue"]["vhost"] == vhost.as_str())
            .collect(),
        _ => Vec::new(),
    };
    Ok(Json(J::Array(items)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_matches_rabbitmq() {
        assert_eq!(quote_plus("a b~c/é"), "a+b~c%2F%C3%A9");
        assert_eq!(unquote_plus("a+b%7Ec%2f%zz"), "a b~c/%zz");
        assert_eq!(
            relativise("/api/bindings/%2F/e/x/q/q1", "/api/bindings/%2F/e/x/q/q1/k"),
            "q1/k"
        );
    }
}
