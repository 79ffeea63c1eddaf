//! Definitions export and import (`/api/definitions[/{vhost}]`) in
//! RabbitMQ's format, so a RabbitMQ export imports into Warren and
//! exports back the same.
//!
//! As RabbitMQ's management plugin: the export lists every non-exclusive
//! queue and every exchange but the default and `amq.*` ones (durable or
//! not), and the bindings between them. Policies are validated as
//! RabbitMQ validates them and applied; parameters and global parameters
//! are stored and exported back as they came, and topic permissions are
//! enforced. An import is checked whole before anything is applied, so a
//! bad file changes nothing.

use super::admin::{
    check_regex, permission_from_body, put_vhost, user_from_body, vhost_meta_from_body,
};
use super::json::{table_from_json, table_to_json};
use super::{bad_request, ApiError, AuthUser, MgmtState, St};
use crate::broker::access::kept_key;
use crate::broker::{
    Dest, ExchangeOptions, Kept, Permission, Policy, PolicyKind, QueueOptions, User, VhostMeta,
};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{json, Map, Value as J};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use warren_exchanges::ExchangeType;

pub fn routes() -> Router<Arc<MgmtState>> {
    Router::new()
        .route("/api/definitions", get(export_all).post(import_all))
        .route(
            "/api/definitions/{vhost}",
            get(export_vhost).post(import_vhost),
        )
}

/// The RabbitMQ release whose format (and `rabbit_version`) this follows.
const RABBIT_VERSION: &str = "3.13.7";

fn vhost_json(name: &str, meta: &VhostMeta) -> J {
    let mut v = json!({ "name": name });
    // Only what was set, so a RabbitMQ 3.10 export (names only) comes back equal.
    if *meta != VhostMeta::default() {
        let mut md = json!({"description": meta.description, "tags": meta.tags});
        if let Some(t) = &meta.default_queue_type {
            md["default_queue_type"] = json!(t);
            v["default_queue_type"] = json!(t);
        }
        v["description"] = json!(meta.description);
        v["tags"] = json!(meta.tags);
        v["metadata"] = md;
    }
    v
}

/// Queues, exchanges and bindings of the given vhosts, as RabbitMQ exports them.
fn objects(s: &MgmtState, vhosts: &[Arc<crate::broker::Vhost>]) -> (Vec<J>, Vec<J>, Vec<J>) {
    let (mut qs, mut xs, mut bs) = (Vec::new(), Vec::new(), Vec::new());
    let _ = s;
    for v in vhosts {
        let mut queues = v.queues();
        queues.sort_by(|a, b| a.name.cmp(&b.name));
        // Exclusive queues cannot be restored: RabbitMQ leaves them out.
        let exported: HashSet<String> = queues
            .iter()
            .filter(|q| q.owner.is_none())
            .map(|q| q.name.clone())
            .collect();
        for q in queues.iter().filter(|q| q.owner.is_none()) {
            qs.push(json!({
                "name": q.name, "vhost": v.name, "durable": q.durable,
                "auto_delete": q.auto_delete, "arguments": table_to_json(&q.arguments),
            }));
        }
        let mut exchanges = v.exchanges();
        exchanges.sort_by(|a, b| a.name.cmp(&b.name));
        for e in &exchanges {
            if e.name.is_empty() {
                continue;
            }
            if !e.name.starts_with("amq.") {
                xs.push(json!({
                    "name": e.name, "vhost": v.name, "type": e.kind.as_str(),
                    "durable": e.opts.durable, "auto_delete": e.opts.auto_delete,
                    "internal": e.opts.internal, "arguments": table_to_json(&e.opts.arguments),
                }));
            }
            let found: Vec<_> = e
                .router()
                .bindings()
                .iter()
                .filter_map(|b| {
                    let (dest, dtype) = match &b.destination {
                        Dest::Queue(q) if exported.contains(&q.0.name) => {
                            (q.0.name.clone(), "queue")
                        }
                        Dest::Queue(_) => return None,
                        Dest::Exchange(x) => (x.name.clone(), "exchange"),
                    };
                    Some(json!({
                        "source": e.name, "vhost": v.name, "destination": dest,
                        "destination_type": dtype, "routing_key": b.routing_key,
                        "arguments": table_to_json(&b.arguments),
                    }))
                })
                .collect();
            bs.extend(found);
        }
    }
    (qs, xs, bs)
}

/// The policies of the given vhosts, by vhost and name, in RabbitMQ's
/// JSON (with their `vhost`, in the per-vhost form too).
fn policies(vhosts: &[Arc<crate::broker::Vhost>]) -> Vec<J> {
    vhosts
        .iter()
        .flat_map(|v| v.policies(PolicyKind::Policy))
        .map(|p| p.to_json())
        .collect()
}

fn reply(body: J, query: &HashMap<String, String>) -> Response {
    let mut r = Json(body).into_response();
    // RabbitMQ's `?download=NAME` makes the browser save the file.
    if let Some(name) = query.get("download") {
        let safe: String = name
            .chars()
            .filter(|c| !c.is_control() && *c != '"')
            .collect();
        if let Ok(v) = header::HeaderValue::from_str(&format!("attachment; filename={safe}")) {
            r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
        }
    }
    r
}

async fn export_all(State(s): St, Query(q): Query<HashMap<String, String>>) -> Response {
    let a = s.broker.access();
    let mut vhosts = s.broker.vhosts();
    vhosts.sort_by(|a, b| a.name.cmp(&b.name));
    let (queues, exchanges, bindings) = objects(&s, &vhosts);
    let body = json!({
        "rabbit_version": RABBIT_VERSION,
        "rabbitmq_version": RABBIT_VERSION,
        "product_name": "Warren",
        "product_version": env!("CARGO_PKG_VERSION"),
        "users": a.users().iter().map(User::to_json).collect::<Vec<_>>(),
        "vhosts": vhosts.iter().map(|v| vhost_json(&v.name, &a.vhost_meta(&v.name))).collect::<Vec<_>>(),
        "permissions": a.permissions().iter().map(Permission::to_json).collect::<Vec<_>>(),
        "topic_permissions": a.kept(Kept::TopicPermission, None),
        "parameters": a.kept(Kept::Parameter, None),
        "global_parameters": a.kept(Kept::GlobalParameter, None),
        "policies": policies(&vhosts),
        "queues": queues,
        "exchanges": exchanges,
        "bindings": bindings,
    });
    reply(body, &q)
}

fn strip_vhost(items: Vec<J>) -> Vec<J> {
    items
        .into_iter()
        .map(|mut i| {
            if let Some(o) = i.as_object_mut() {
                o.remove("vhost");
            }
            i
        })
        .collect()
}

async fn export_vhost(
    State(s): St,
    Path(vhost): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    // RabbitMQ answers 400, not 404, for an unknown vhost here.
    let v = s
        .broker
        .vhost(&vhost)
        .ok_or_else(|| bad_request("vhost_not_found"))?;
    let a = s.broker.access();
    let (queues, exchanges, bindings) = objects(&s, std::slice::from_ref(&v));
    let body = json!({
        "rabbit_version": RABBIT_VERSION,
        // RabbitMQ strips `vhost` from queues, exchanges and bindings only.
        "parameters": a.kept(Kept::Parameter, Some(&vhost)),
        "policies": policies(&[v]),
        "queues": strip_vhost(queues),
        "exchanges": strip_vhost(exchanges),
        "bindings": strip_vhost(bindings),
    });
    Ok(reply(body, &q))
}

/// The definitions document from a JSON body, or from the `file` part of
/// a multipart form (the RabbitMQ UI's upload).
fn document(headers: &HeaderMap, body: &Bytes) -> Result<Map<String, J>, ApiError> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let raw: &[u8] = if ctype.starts_with("multipart/form-data") {
        multipart_file(ctype, body).ok_or_else(|| bad_request("no 'file' part in the form"))?
    } else {
        body
    };
    if raw.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<J>(raw) {
        Ok(J::Object(m)) => Ok(m),
        Ok(_) => Err(bad_request("failed_to_parse_json")),
        Err(e) => {
            tracing::warn!(error = %e, "definitions import: bad JSON");
            Err(bad_request("failed_to_parse_json"))
        }
    }
}

/// The body of the form part named `file`.
fn multipart_file<'a>(ctype: &str, body: &'a [u8]) -> Option<&'a [u8]> {
    let boundary = ctype
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))?
        .trim_matches('"');
    let delim = format!("--{boundary}");
    let d = delim.as_bytes();
    let mut starts = Vec::new();
    let mut i = 0;
    while i + d.len() <= body.len() {
        if &body[i..i + d.len()] == d {
            starts.push(i);
            i += d.len();
        } else {
            i += 1;
        }
    }
    for w in starts.windows(2) {
        let part = &body[w[0] + d.len()..w[1]];
        // A part without a header block is not the file: look further.
        let Some(split) = part.windows(4).position(|x| x == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&part[..split]).to_ascii_lowercase();
        if head.contains("name=\"file\"") {
            let content = &part[split + 4..];
            return Some(content.strip_suffix(b"\r\n").unwrap_or(content));
        }
    }
    None
}

/// Everything an import will do, checked before any of it is applied.
#[derive(Default)]
struct Plan {
    users: Vec<User>,
    vhosts: Vec<(String, VhostMeta)>,
    permissions: Vec<Permission>,
    kept: Vec<(Kept, Vec<String>, J)>,
    policies: Vec<(String, Policy)>,
    queues: Vec<(String, String, QueueOptions)>,
    exchanges: Vec<(String, String, String, ExchangeOptions)>,
    /// (vhost, source, destination type, destination, key, arguments)
    bindings: Vec<(
        String,
        String,
        String,
        String,
        String,
        warren_exchanges::Table,
    )>,
}

fn section<'a>(doc: &'a Map<String, J>, key: &str) -> Result<Vec<&'a Map<String, J>>, ApiError> {
    match doc.get(key) {
        None | Some(J::Null) => Ok(Vec::new()),
        Some(J::Array(a)) => a
            .iter()
            .map(|i| {
                i.as_object()
                    .ok_or_else(|| bad_request(format!("{key}: every item must be an object")))
            })
            .collect(),
        Some(_) => Err(bad_request(format!("{key}: expected an array"))),
    }
}

fn text(m: &Map<String, J>, what: &str, key: &str) -> Result<String, ApiError> {
    match m.get(key) {
        Some(J::String(s)) => Ok(s.clone()),
        // RabbitMQ keeps a number routing key as given; take its text.
        Some(J::Number(n)) if key == "routing_key" => Ok(n.to_string()),
        None if key == "routing_key" => Ok(String::new()),
        _ => Err(bad_request(format!("{what}: '{key}' must be a string"))),
    }
}

fn boolean(m: &Map<String, J>, what: &str, key: &str, default: bool) -> Result<bool, ApiError> {
    match m.get(key) {
        None | Some(J::Null) => Ok(default),
        Some(J::Bool(b)) => Ok(*b),
        Some(J::String(s)) if s == "true" || s == "false" => Ok(s == "true"),
        _ => Err(bad_request(format!("{what}: '{key}' must be a boolean"))),
    }
}

fn args(m: &Map<String, J>, what: &str) -> Result<warren_exchanges::Table, ApiError> {
    match m.get("arguments") {
        None | Some(J::Null) => Ok(warren_exchanges::Table::default()),
        Some(J::Object(a)) => Ok(table_from_json(a)),
        _ => Err(bad_request(format!(
            "{what}: 'arguments' must be an object"
        ))),
    }
}

/// Checks a document; `only` is the vhost of a per-vhost import (whose
/// items' own `vhost` fields are ignored, and which takes no users,
/// vhosts or permissions, as RabbitMQ).
fn plan(s: &MgmtState, doc: &Map<String, J>, only: Option<&str>) -> Result<Plan, ApiError> {
    let mut p = Plan::default();
    let vhost_of = |m: &Map<String, J>, what: &str| -> Result<String, ApiError> {
        match only {
            Some(v) => Ok(v.to_owned()),
            None => text(m, what, "vhost"),
        }
    };
    if only.is_none() {
        for u in section(doc, "users")? {
            let name = text(u, "users", "name")?;
            let existing = s.broker.user(&name);
            let mut u = u.clone();
            // Definitions carry tags as an array (3.9+) or a string; both parse.
            u.entry("tags").or_insert(J::Array(Vec::new()));
            p.users.push(user_from_body(&name, &u, existing.as_ref())?);
        }
        for v in section(doc, "vhosts")? {
            let name = text(v, "vhosts", "name")?;
            p.vhosts.push((name, vhost_meta_from_body(v)?));
        }
    }
    let vhost_known =
        |p: &Plan, v: &str| s.broker.vhost(v).is_some() || p.vhosts.iter().any(|(n, _)| n == v);
    if only.is_none() {
        for m in section(doc, "permissions")? {
            let user = text(m, "permissions", "user")?;
            let vhost = text(m, "permissions", "vhost")?;
            if s.broker.user(&user).is_none() && !p.users.iter().any(|u| u.name == user) {
                return Err(bad_request(format!("no_such_user: {user}")));
            }
            if !vhost_known(&p, &vhost) {
                return Err(bad_request(format!("no_such_vhost: {vhost}")));
            }
            let perm = permission_from_body(&user, &vhost, m)?;
            p.permissions.push(perm);
        }
        for m in section(doc, "topic_permissions")? {
            let mut item = J::Object(m.clone());
            for k in ["write", "read"] {
                if let Some(J::String(re)) = item.get(k) {
                    check_regex(k, re)?;
                }
            }
            let key = kept_key(Kept::TopicPermission, &item).ok_or_else(|| {
                bad_request("topic_permissions: user, vhost and exchange must be strings")
            })?;
            item["vhost"] = json!(key[0]);
            p.kept.push((Kept::TopicPermission, key, item));
        }
        for m in section(doc, "global_parameters")? {
            let item = J::Object(m.clone());
            let key = kept_key(Kept::GlobalParameter, &item)
                .ok_or_else(|| bad_request("global_parameters: name must be a string"))?;
            p.kept.push((Kept::GlobalParameter, key, item));
        }
    }
    for m in section(doc, "parameters")? {
        let kind = Kept::Parameter;
        let mut item = J::Object(m.clone());
        let vhost = vhost_of(m, "parameters")?;
        item["vhost"] = json!(vhost);
        let key = kept_key(kind, &item).ok_or_else(|| {
            bad_request(format!(
                "parameters: {} must be strings",
                kind.key_fields().join(", ")
            ))
        })?;
        if !vhost_known(&p, &vhost) {
            return Err(bad_request(format!("no_such_vhost: {vhost}")));
        }
        p.kept.push((kind, key, item));
    }
    for m in section(doc, "policies")? {
        let vhost = vhost_of(m, "policies")?;
        let name = text(m, "policies", "name")?;
        if !vhost_known(&p, &vhost) {
            return Err(bad_request(format!("no_such_vhost: {vhost}")));
        }
        let policy = Policy::parse(PolicyKind::Policy, &vhost, &name, m)
            .map_err(|e| bad_request(format!("policy '{name}' in vhost '{vhost}': {e}")))?;
        p.policies.push((vhost, policy));
    }
    for m in section(doc, "queues")? {
        let name = text(m, "queues", "name")?;
        let vhost = vhost_of(m, "queues")?;
        if !vhost_known(&p, &vhost) {
            return Err(bad_request(format!("no_such_vhost: {vhost}")));
        }
        let opts = QueueOptions {
            durable: boolean(m, "queues", "durable", true)?,
            exclusive: false,
            auto_delete: boolean(m, "queues", "auto_delete", false)?,
            arguments: args(m, "queues")?,
        };
        p.queues.push((vhost, name, opts));
    }
    for m in section(doc, "exchanges")? {
        let name = text(m, "exchanges", "name")?;
        let vhost = vhost_of(m, "exchanges")?;
        let kind = text(m, "exchanges", "type")?;
        if ExchangeType::parse(&kind).is_none() {
            return Err(bad_request(format!("invalid exchange type '{kind}'")));
        }
        if !vhost_known(&p, &vhost) {
            return Err(bad_request(format!("no_such_vhost: {vhost}")));
        }
        let opts = ExchangeOptions {
            durable: boolean(m, "exchanges", "durable", true)?,
            auto_delete: boolean(m, "exchanges", "auto_delete", false)?,
            internal: boolean(m, "exchanges", "internal", false)?,
            arguments: args(m, "exchanges")?,
        };
        p.exchanges.push((vhost, name, kind, opts));
    }
    let mut world = World::default();
    for m in section(doc, "bindings")? {
        let vhost = vhost_of(m, "bindings")?;
        let dtype = text(m, "bindings", "destination_type")?;
        if dtype != "queue" && dtype != "exchange" {
            return Err(bad_request(format!(
                "bindings: destination_type '{dtype}' is not queue or exchange"
            )));
        }
        if !vhost_known(&p, &vhost) {
            return Err(bad_request(format!("no_such_vhost: {vhost}")));
        }
        p.bindings.push((
            vhost,
            text(m, "bindings", "source")?,
            dtype,
            text(m, "bindings", "destination")?,
            text(m, "bindings", "routing_key")?,
            args(m, "bindings")?,
        ));
    }
    world.check(s, &p)?;
    Ok(p)
}

/// The exchanges and queues an import will leave, per vhost: those that
/// exist plus those it declares. `apply` can then not fail half way: every
/// exchange's arguments and every binding's ends and arguments are checked
/// here against it, as `declare_exchange` and `bind_*` would check them.
///
/// RabbitMQ's import fails (`rabbit_binding:add`'s error is thrown) on a
/// binding whose source or destination is missing, but only after applying
/// everything before it; Warren fails the same way before applying anything.
#[derive(Default)]
struct World {
    /// (vhost, exchange) -> type; the default exchange has none.
    exchanges: HashMap<(String, String), Option<ExchangeType>>,
    /// (vhost, queue) -> whether a connection owns it (exclusive).
    queues: HashMap<(String, String), bool>,
}

/// The exchanges every vhost is created with.
const BUILTIN_EXCHANGES: [(&str, ExchangeType); 5] = [
    ("amq.direct", ExchangeType::Direct),
    ("amq.fanout", ExchangeType::Fanout),
    ("amq.topic", ExchangeType::Topic),
    ("amq.headers", ExchangeType::Headers),
    ("amq.match", ExchangeType::Headers),
];

impl World {
    fn load_vhost(&mut self, s: &MgmtState, vhost: &str) {
        if self
            .exchanges
            .contains_key(&(vhost.to_owned(), String::new()))
        {
            return;
        }
        match s.broker.vhost(vhost) {
            Some(v) => {
                for e in v.exchanges() {
                    let t = match e.kind {
                        crate::broker::ExchangeKind::Typed(t) => Some(t),
                        crate::broker::ExchangeKind::Default => None,
                    };
                    self.exchanges.insert((vhost.to_owned(), e.name.clone()), t);
                }
                for q in v.queues() {
                    self.queues
                        .insert((vhost.to_owned(), q.name.clone()), q.owner.is_some());
                }
            }
            None => {
                for (n, t) in BUILTIN_EXCHANGES {
                    self.exchanges
                        .insert((vhost.to_owned(), n.to_owned()), Some(t));
                }
            }
        }
        self.exchanges
            .insert((vhost.to_owned(), String::new()), None);
    }

    fn check(&mut self, s: &MgmtState, p: &Plan) -> Result<(), ApiError> {
        for (vh, name, _) in &p.queues {
            self.load_vhost(s, vh);
            if !name.starts_with("amq.") {
                self.queues
                    .entry((vh.clone(), name.clone()))
                    .or_insert(false);
            }
        }
        for (vh, name, kind, opts) in &p.exchanges {
            self.load_vhost(s, vh);
            let key = (vh.clone(), name.clone());
            if name.is_empty() || name.starts_with("amq.") || self.exchanges.contains_key(&key) {
                continue;
            }
            let t = ExchangeType::parse(kind)
                .ok_or_else(|| bad_request(format!("invalid exchange type '{kind}'")))?;
            crate::broker::Exchange::new(
                name.clone(),
                crate::broker::ExchangeKind::Typed(t),
                opts.clone(),
            )
            .map_err(|e| bad_request(format!("exchange '{name}' in vhost '{vh}': {e}")))?;
            self.exchanges.insert(key, Some(t));
        }
        for (vh, source, dtype, dest, key, arguments) in &p.bindings {
            self.load_vhost(s, vh);
            let missing = |kind: &str, name: &str| {
                bad_request(format!(
                    "binding from '{source}' to '{dest}': no {kind} '{name}' in vhost '{vh}'"
                ))
            };
            let t = match self.exchanges.get(&(vh.clone(), source.clone())) {
                None => return Err(missing("exchange", source)),
                Some(None) => {
                    return Err(bad_request(format!(
                        "binding from '{source}' to '{dest}': operation not permitted on the default exchange"
                    )))
                }
                Some(Some(t)) => *t,
            };
            if dtype == "queue" {
                match self.queues.get(&(vh.clone(), dest.clone())) {
                    None => return Err(missing("queue", dest)),
                    Some(true) => {
                        return Err(bad_request(format!(
                            "binding from '{source}' to '{dest}': queue '{dest}' in vhost '{vh}' is exclusive to a connection"
                        )))
                    }
                    Some(false) => {}
                }
            } else {
                match self.exchanges.get(&(vh.clone(), dest.clone())) {
                    None => return Err(missing("exchange", dest)),
                    Some(None) => {
                        return Err(bad_request(format!(
                            "binding from '{source}' to '{dest}': operation not permitted on the default exchange"
                        )))
                    }
                    Some(Some(_)) => {}
                }
            }
            // The router's own checks (x-match, hash weights), on a scratch router.
            warren_exchanges::Router::<u8>::new(t)
                .bind(0, key, arguments.clone())
                .map_err(|e| bad_request(format!("binding from '{source}' to '{dest}': {e}")))?;
        }
        Ok(())
    }
}

/// Applies a checked plan in RabbitMQ's order. Existing queues and
/// exchanges are left as they are; `amq.*` names are skipped (RabbitMQ
/// logs and skips them too).
fn apply(s: &MgmtState, p: Plan, acting: &str) -> Result<(), ApiError> {
    let a = s.broker.access();
    for u in p.users {
        a.put_user(u);
    }
    for (name, meta) in p.vhosts {
        // As RabbitMQ's HTTP import: rabbit_definitions:add_vhost calls
        // rabbit_vhost:put_vhost with the acting user, which grants it full
        // permissions on a new vhost (only boot-time imports, acting as
        // the internal user, grant none).
        put_vhost(s, &name, meta, acting);
    }
    for perm in p.permissions {
        a.set_permission(perm);
    }
    for (kind, key, item) in p.kept {
        a.put_kept(kind, key, item);
    }
    // Vhost limits arrive as parameters: the vhosts take them now.
    s.broker.refresh_vhost_limits();
    let vhost = |name: &str| {
        s.broker
            .vhost(name)
            .ok_or_else(|| bad_request(format!("no_such_vhost: {name}")))
    };
    // Before the queues and exchanges, as RabbitMQ: they are declared
    // with their policies in place.
    for (vh, policy) in p.policies {
        vhost(&vh)?.put_policy(PolicyKind::Policy, policy)?;
    }
    for (vh, name, opts) in p.queues {
        let v = vhost(&vh)?;
        if name.starts_with("amq.") || v.queue(&name).is_some() {
            continue;
        }
        v.declare_queue(&name, false, opts, 0)?;
    }
    for (vh, name, kind, opts) in p.exchanges {
        let v = vhost(&vh)?;
        if name.is_empty() || name.starts_with("amq.") || v.exchange(&name).is_ok() {
            continue;
        }
        v.declare_exchange(&name, &kind, false, opts)?;
    }
    for (vh, source, dtype, dest, key, arguments) in p.bindings {
        let v = vhost(&vh)?;
        let r = if dtype == "queue" {
            v.bind_queue(&dest, &source, &key, arguments, 0)
        } else {
            v.bind_exchange(&dest, &source, &key, arguments)
        };
        r.map_err(|e| bad_request(format!("binding from '{source}' to '{dest}': {}", e.text)))?;
    }
    Ok(())
}

/// Plans and applies an import off the async workers: applying thousands
/// of durable definitions writes and syncs the disk. The definitions are
/// synced once at the end (not once each), before the reply.
async fn import(
    s: &Arc<MgmtState>,
    doc: Map<String, J>,
    only: Option<String>,
    acting: &str,
) -> Result<(), ApiError> {
    let (s, acting) = (s.clone(), acting.to_owned());
    tokio::task::spawn_blocking(move || {
        let p = plan(&s, &doc, only.as_deref())?;
        s.broker.batch(|| apply(&s, p, &acting))
    })
    .await
    .map_err(|e| super::admin::internal(format!("definitions import failed: {e}")))?
}

async fn import_all(
    State(s): St,
    Extension(AuthUser(acting)): Extension<AuthUser>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let doc = document(&headers, &body)?;
    import(&s, doc, None, &acting).await?;
    tracing::info!(user = %acting, "definitions imported via the management API");
    Ok(StatusCode::NO_CONTENT)
}

async fn import_vhost(
    State(s): St,
    Path(vhost): Path<String>,
    Extension(AuthUser(acting)): Extension<AuthUser>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let doc = document(&headers, &body)?;
    if s.broker.vhost(&vhost).is_none() {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            "not_found",
            "vhost_not_found".into(),
        ));
    }
    import(&s, doc, Some(vhost.clone()), &acting).await?;
    tracing::info!(user = %acting, vhost = %vhost, "definitions imported via the management API");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_part_of_a_form_is_found() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"redirect\"\r\n\r\n../#/\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"d.json\"\r\nContent-Type: application/json\r\n\r\n{\"users\":[]}\r\n--XyZ--\r\n";
        assert_eq!(
            multipart_file("multipart/form-data; boundary=XyZ", body),
            Some(&b"{\"users\":[]}"[..])
        );
        assert_eq!(
            multipart_file("multipart/form-data; boundary=Q", body),
            None
        );
    }

    #[test]
    fn a_part_without_headers_does_not_hide_the_file() {
        let body = b"--XyZ\r\npreamble-like junk\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\n{}\r\n--XyZ--\r\n";
        assert_eq!(
            multipart_file("multipart/form-data; boundary=XyZ", body),
            Some(&b"{}"[..])
        );
    }
}
