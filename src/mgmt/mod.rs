//! The management HTTP API: axum handlers that turn broker snapshots into
//! RabbitMQ-shaped JSON (field names and types as RabbitMQ's management
//! plugin renders them, so its clients read them unchanged).
//!
//! Owns routing, HTTP Basic auth against the broker's users and error
//! bodies. It never imports the AMQP layer: everything comes from
//! [`crate::broker`] snapshots, and closing a connection is a request the
//! connection's own task acts on.

mod admin;
pub mod conn;
mod definitions;
mod extras;
mod history;
mod json;
mod limits;
mod metrics;
mod objects;
mod paging;
mod policies;
mod process;
mod super_streams;
mod ui;

use crate::broker::{Broker, BrokerError, Caller, ErrorKind, ExchangeOptions, Kind, QueueOptions};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Extension;
use axum::{Json, Router};
use serde_json::{json, Value as J};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// What every handler needs.
pub struct MgmtState {
    pub broker: Arc<Broker>,
    /// The node name shown in every object (RabbitMQ's `node`).
    pub node: String,
    pub cluster_name: String,
    /// The addresses each listener is bound to (never empty).
    pub amqp_addrs: Vec<SocketAddr>,
    pub http_addrs: Vec<SocketAddr>,
    pub prometheus_addrs: Vec<SocketAddr>,
    /// The TLS listeners' addresses (AMQPS, management HTTPS); may be empty.
    pub amqps_addrs: Vec<SocketAddr>,
    pub https_addrs: Vec<SocketAddr>,
    /// Where durable state lives (the node's disk_free is measured there).
    pub data_dir: std::path::PathBuf,
    /// When the node started (its uptime).
    pub started: std::time::Instant,
}

type St = State<Arc<MgmtState>>;

/// The logged-in user, put in the request by the auth layer.
#[derive(Clone)]
struct AuthUser(String);

/// The API's router; serve it with connect info (the auth layer needs the
/// peer address for loopback-only users).
pub fn router(state: Arc<MgmtState>) -> Router {
    Router::new()
        .route("/api/overview", get(overview))
        .route("/api/whoami", get(whoami))
        .route("/api/vhosts", get(vhosts))
        .route("/api/vhosts/{vhost}", get(vhost))
        .route("/api/queues", get(queues_all))
        .route("/api/queues/{vhost}", get(queues_in))
        .route(
            "/api/queues/{vhost}/{name}",
            get(queue_get).put(queue_put).delete(queue_delete),
        )
        .route(
            "/api/queues/{vhost}/{name}/contents",
            axum::routing::delete(queue_purge),
        )
        .route("/api/exchanges", get(exchanges_all))
        .route("/api/exchanges/{vhost}", get(exchanges_in))
        .route(
            "/api/exchanges/{vhost}/{name}",
            get(exchange_get).put(exchange_put).delete(exchange_delete),
        )
        .route("/api/bindings", get(bindings_all))
        .route("/api/bindings/{vhost}", get(bindings_in))
        .route("/api/connections", get(connections))
        .route(
            "/api/connections/{name}",
            get(connection_get).delete(connection_delete),
        )
        .route("/api/channels", get(channels))
        .route("/api/consumers", get(consumers))
        .route("/api/health/checks/alarms", get(health_alarms))
        .route("/api/health/checks/local-alarms", get(health_local_alarms))
        .route("/api/health/checks/virtual-hosts", get(health_ok))
        .merge(objects::routes())
        .merge(admin::routes())
        .merge(policies::routes())
        .merge(extras::routes())
        .merge(limits::routes())
        .merge(super_streams::routes())
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), durable_reply))
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        // Added after the auth layer: Prometheus scrapes without a login.
        .route("/metrics", get(metrics_aggregated))
        .route("/metrics/per-object", get(metrics_per_object))
        .route("/metrics/detailed", get(metrics_detailed))
        // The dashboard's static files: no login (the API calls carry it).
        .merge(ui::routes())
        .with_state(state)
        .layer(middleware::from_fn(|r, n| conn::track(false, r, n)))
}

/// The Prometheus listener's router: the metrics only.
pub fn metrics_router(state: Arc<MgmtState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_aggregated))
        .route("/metrics/per-object", get(metrics_per_object))
        .route("/metrics/detailed", get(metrics_detailed))
        .with_state(state)
        .layer(middleware::from_fn(|r, n| conn::track(true, r, n)))
}

fn metrics_response(body: String) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn metrics_aggregated(State(s): St) -> Response {
    metrics_response(metrics::render(&s, false))
}

async fn metrics_per_object(State(s): St) -> Response {
    metrics_response(metrics::render(&s, true))
}

/// `/metrics/detailed?family=a&family=b`: the repeated parameter is read
/// from the raw query (family names need no decoding).
/// `/metrics/detailed`: `family=` picks the families (unknown ones are
/// ignored) and `vhost=` (repeatable) keeps only those vhosts' queues, as
/// rabbitmq_prometheus 3.13's handler reads them: a vhost that does not
/// exist is dropped, so naming only unknown vhosts filters every queue out.
async fn metrics_detailed(
    State(s): St,
    axum::extract::Query(params): axum::extract::Query<Vec<(String, String)>>,
) -> Response {
    let families: Vec<&str> = params
        .iter()
        .filter(|(k, _)| k == "family")
        .filter_map(|(_, f)| {
            metrics::DETAILED_FAMILIES
                .iter()
                .find(|k| **k == f.as_str())
                .copied()
        })
        .collect();
    let asked: Vec<&str> = params
        .iter()
        .filter(|(k, _)| k == "vhost")
        .map(|(_, v)| v.as_str())
        .collect();
    let vhosts: Option<Vec<String>> = (!asked.is_empty()).then(|| {
        asked
            .into_iter()
            .filter(|v| s.broker.vhost(v).is_some())
            .map(str::to_owned)
            .collect()
    });
    metrics_response(metrics::render_detailed(&s, &families, vhosts.as_deref()))
}

/// An API error with RabbitMQ's body shape.
struct ApiError(StatusCode, &'static str, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.0, Json(json!({"error": self.1, "reason": self.2}))).into_response();
        // RabbitMQ asks for credentials only when the login failed, not
        // when a valid user lacks a tag ("not_authorised").
        if self.0 == StatusCode::UNAUTHORIZED && self.1 == "not_authorized" {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"RabbitMQ Management\""),
            );
        }
        r
    }
}

fn not_found_err() -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        "Object Not Found",
        "Not Found".into(),
    )
}

fn bad_request(reason: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, "bad_request", reason.into())
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        match e.kind {
            ErrorKind::NotFound => not_found_err(),
            ErrorKind::AccessRefused => ApiError(StatusCode::FORBIDDEN, "access_refused", e.text),
            _ => bad_request(e.text),
        }
    }
}

async fn not_found() -> ApiError {
    not_found_err()
}

/// A request that may change definitions (any method but GET and HEAD)
/// is answered only once the definition writes made so far are durable:
/// the writes themselves join the group commit instead of syncing on an
/// async worker, so the 201 or 204 waits for that flush here, once for
/// every handler. Nothing pending (a GET-like POST, a refused request):
/// no wait.
async fn durable_reply(State(s): St, req: Request, next: Next) -> Response {
    let changes = !matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    let resp = next.run(req).await;
    if let (true, Some(p)) = (changes, s.broker.persistence()) {
        if !p.definitions_durable().await {
            return ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "the definitions could not be written to disk".into(),
            )
            .into_response();
        }
    }
    resp
}

async fn auth(State(s): St, req: Request, next: Next) -> Response {
    let conn = req
        .extensions()
        .get::<ConnectInfo<conn::Peer>>()
        .map(|c| c.0.clone());
    let peer = conn.as_ref().map(|c| c.addr.ip());
    let creds = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| crate::broker::base64::base64_decode(b.trim()))
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|s| s.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned())));
    let Some((user, pass)) = creds else {
        return ApiError(
            StatusCode::UNAUTHORIZED,
            "not_authorized",
            "Not_Authorized".into(),
        )
        .into_response();
    };
    // Without a peer address (never, when served with connect info) the
    // loopback rule cannot be checked: refuse rather than guess.
    let peer = peer.unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    match s.broker.authenticate(&user, &pass, peer) {
        Ok(()) => {
            // A valid login, whatever the request may do: the connection
            // is no longer an anonymous one (see conn::GuardedIo).
            if let Some(c) = &conn {
                c.authenticated();
            }
            let (method, path) = (req.method().clone(), req.uri().path().to_owned());
            if let Err(e) = admin::authorize(&s, &method, &path, &user) {
                tracing::warn!(user = %user, reason = %e.2, "HTTP access denied");
                return e.into_response();
            }
            let mut req = req;
            req.extensions_mut().insert(AuthUser(user.clone()));
            req.extensions_mut()
                .insert(admin::Viewer::new(&s, &method, &path, &user));
            admin::visible_only(&s, &method, &path, &user, next.run(req).await).await
        }
        Err(crate::broker::AuthError::LoopbackOnly) => ApiError(
            StatusCode::UNAUTHORIZED,
            "not_authorised",
            "User can only log in via localhost".into(),
        )
        .into_response(),
        Err(crate::broker::AuthError::Refused) => ApiError(
            StatusCode::UNAUTHORIZED,
            "not_authorized",
            "Login failed".into(),
        )
        .into_response(),
    }
}

async fn health_ok() -> Json<J> {
    Json(json!({"status": "ok"}))
}

/// RabbitMQ's alarms health check: 200 `{"status":"ok"}`, or 503 with
/// the alarms in effect (one node: the cluster's are the node's).
async fn health_alarms(State(s): St) -> Response {
    alarms_check(&s, "There are alarms in effect in the cluster")
}

async fn health_local_alarms(State(s): St) -> Response {
    alarms_check(&s, "There are alarms in effect on the node")
}

fn alarms_check(s: &MgmtState, reason: &str) -> Response {
    let alarms = s.broker.alarms().current();
    if !alarms.any() {
        return Json(json!({"status": "ok"})).into_response();
    }
    let list: Vec<J> = alarms
        .resources()
        .into_iter()
        .map(|r| json!({"resource": r, "node": s.node}))
        .collect();
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"status": "failed", "reason": reason, "alarms": list})),
    )
        .into_response()
}

async fn overview(
    State(s): St,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<J>, ApiError> {
    let r = ranges(&q)?;
    let mut j = json::overview(&s);
    history::overview(&mut j, &s.broker.history, &r);
    Ok(Json(j))
}

/// The history ranges a request asks for (see [`history::Ranges`]).
fn ranges(q: &HashMap<String, String>) -> Result<history::Ranges, ApiError> {
    history::Ranges::from_query(q).map_err(bad_request)
}

async fn whoami(
    State(s): St,
    axum::Extension(AuthUser(user)): axum::Extension<AuthUser>,
) -> Json<J> {
    let tags = s.broker.user(&user).map(|u| u.tags).unwrap_or_default();
    Json(json!({"name": user, "tags": tags}))
}

async fn vhosts(State(s): St) -> Json<J> {
    let mut v = s.broker.vhosts();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    Json(J::Array(v.iter().map(|v| json::vhost(&s, v)).collect()))
}

async fn vhost(State(s): St, Path(name): Path<String>) -> Result<Json<J>, ApiError> {
    let v = s.broker.vhost(&name).ok_or_else(not_found_err)?;
    Ok(Json(json::vhost(&s, &v)))
}

/// The logged-in user as a [`Caller`] in `vhost`: the API checks the
/// same rules as AMQP through it. Without a permission in the vhost every
/// operation is refused, as RabbitMQ's API (whose operations go through
/// an AMQP connection of the user) refuses them.
fn caller_in(s: &MgmtState, user: &str, vhost: &str) -> Result<Caller, ApiError> {
    s.broker
        .caller(user, vhost, 0)
        .map_err(|_| access_refused())
}

/// RabbitMQ's answer to an operation the user's permissions refuse.
fn access_refused() -> ApiError {
    ApiError(
        StatusCode::UNAUTHORIZED,
        "not_authorised",
        "Access refused.".into(),
    )
}

/// A permission check as RabbitMQ's API reports it: a refusal is 401
/// "Access refused.", other errors as usual.
fn permitted(r: crate::broker::Result<()>) -> Result<(), ApiError> {
    r.map_err(refusal_or)
}

fn refusal_or(e: BrokerError) -> ApiError {
    if crate::broker::authz::is_permission_refusal(&e) {
        access_refused()
    } else {
        e.into()
    }
}

fn vhost_or_404(s: &MgmtState, name: &str) -> Result<Arc<crate::broker::Vhost>, ApiError> {
    s.broker.vhost(name).ok_or_else(not_found_err)
}

/// A list with RabbitMQ's sort, columns and pagination parameters applied,
/// after leaving out what the user may not see.
fn paged(list: J, q: &HashMap<String, String>, viewer: &admin::Viewer) -> Response {
    match paging::reply_json(viewer.filter(list), q, &["vhost", "name"]) {
        Ok(j) => Json(j).into_response(),
        Err(e) => objects::bad_list(e).into_response(),
    }
}

async fn queues_all(
    State(s): St,
    Extension(viewer): Extension<admin::Viewer>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    objects::queues_reply(&s, None, &q, &viewer)
}

async fn queues_in(
    State(s): St,
    Path(vhost): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let v = vhost_or_404(&s, &vhost)?;
    Ok(objects::queues_reply(
        &s,
        Some(&v),
        &q,
        &admin::Viewer::default(),
    ))
}

async fn queue_get(
    State(s): St,
    Path((vhost, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<J>, ApiError> {
    let r = ranges(&query)?;
    let v = vhost_or_404(&s, &vhost)?;
    let q = v.queue(&name).ok_or_else(not_found_err)?;
    let mut j = json::queue(&s, &q);
    history::queue(&mut j, &q, &r);
    j["consumer_details"] = json::consumer_details(&s, &q);
    // Warren's own field (one queue only, lists stay lean): each effective
    // setting with where it comes from, for the dashboard's queue page.
    j["effective_settings"] = q.settings().to_json();
    j["dead_letter_stats"] = json::dead_letter_stats(&q.dead_counters);
    Ok(Json(j))
}

/// A JSON object body; an empty body counts as `{}` (RabbitMQ accepts it).
fn body_object(body: &Bytes) -> Result<serde_json::Map<String, J>, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice::<J>(body) {
        Ok(J::Object(m)) => Ok(m),
        Ok(_) => Err(bad_request("body must be a JSON object")),
        Err(e) => Err(bad_request(format!("failed to decode JSON: {e}"))),
    }
}

fn flag(m: &serde_json::Map<String, J>, key: &str, default: bool) -> Result<bool, ApiError> {
    match m.get(key) {
        None | Some(J::Null) => Ok(default),
        Some(J::Bool(b)) => Ok(*b),
        // RabbitMQ's forms send strings.
        Some(J::String(s)) if s == "true" || s == "false" => Ok(s == "true"),
        Some(other) => Err(bad_request(format!(
            "{key}: expected a boolean, got {other}"
        ))),
    }
}

fn arguments(m: &serde_json::Map<String, J>) -> Result<warren_exchanges::Table, ApiError> {
    match m.get("arguments") {
        None | Some(J::Null) => Ok(warren_exchanges::Table::default()),
        Some(J::Object(a)) => Ok(json::table_from_json(a)),
        Some(_) => Err(bad_request("arguments: expected a JSON object")),
    }
}

async fn queue_put(
    State(s): St,
    Path((vhost, name)): Path<(String, String)>,
    Extension(AuthUser(user)): Extension<AuthUser>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let v = vhost_or_404(&s, &vhost)?;
    let caller = caller_in(&s, &user, &vhost)?;
    let m = body_object(&body)?;
    let opts = QueueOptions {
        durable: flag(&m, "durable", true)?,
        exclusive: false,
        auto_delete: flag(&m, "auto_delete", false)?,
        arguments: arguments(&m)?,
    };
    let existed = v.queue(&name).is_some();
    // The caller's connection id 0 is never a real connection (ids start at 1).
    v.declare_queue_as(&name, false, opts, &caller)
        .map_err(refusal_or)?;
    Ok(put_status(existed))
}

async fn queue_delete(
    State(s): St,
    Path((vhost, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    Extension(AuthUser(user)): Extension<AuthUser>,
) -> Result<StatusCode, ApiError> {
    let v = vhost_or_404(&s, &vhost)?;
    let q = v.queue(&name).ok_or_else(not_found_err)?;
    permitted(caller_in(&s, &user, &vhost)?.check_delete(Kind::Queue, &name))?;
    let on = |k: &str| query.get(k).is_some_and(|v| v == "true");
    // The API may delete any queue, exclusive ones included, as RabbitMQ's:
    // acting as the owner makes the exclusivity check pass.
    v.delete_queue(&name, on("if-unused"), on("if-empty"), q.owner.unwrap_or(0))?;
    Ok(StatusCode::NO_CONTENT)
}

async fn queue_purge(
    State(s): St,
    Path((vhost, name)): Path<(String, String)>,
    Extension(AuthUser(user)): Extension<AuthUser>,
) -> Result<StatusCode, ApiError> {
    let v = vhost_or_404(&s, &vhost)?;
    let q = v.queue(&name).ok_or_else(not_found_err)?;
    permitted(caller_in(&s, &user, &vhost)?.check_read_queue(&name))?;
    // A stream is never purged (retention alone removes its messages),
    // as the AMQP queue.purge is refused.
    q.check_supported("queue.purge")?;
    q.purge();
    Ok(StatusCode::NO_CONTENT)
}

/// RabbitMQ's URLs name the default exchange `amq.default`.
fn exchange_name(segment: &str) -> &str {
    if segment == "amq.default" {
        ""
    } else {
        segment
    }
}

async fn exchanges_all(
    State(s): St,
    Extension(viewer): Extension<admin::Viewer>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let r = ranges(&q)?;
    Ok(paged(json::exchanges(&s, None, &r), &q, &viewer))
}

async fn exchanges_in(
    State(s): St,
    Path(vhost): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let r = ranges(&q)?;
    let v = vhost_or_404(&s, &vhost)?;
    Ok(paged(
        json::exchanges(&s, Some(&v), &r),
        &q,
        &admin::Viewer::default(),
    ))
}

async fn exchange_get(
    State(s): St,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<J>, ApiError> {
    let r = ranges(&q)?;
    let v = vhost_or_404(&s, &vhost)?;
    let e = v
        .exchange(exchange_name(&name))
        .map_err(|_| not_found_err())?;
    let mut j = json::exchange(&v.name, &e);
    history::exchange(&mut j, &e, &r);
    Ok(Json(j))
}

async fn exchange_put(
    State(s): St,
    Path((vhost, name)): Path<(String, String)>,
    Extension(AuthUser(user)): Extension<AuthUser>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let v = vhost_or_404(&s, &vhost)?;
    let caller = caller_in(&s, &user, &vhost)?;
    let m = body_object(&body)?;
    let kind = match m.get("type") {
        Some(J::String(t)) => t.clone(),
        _ => return Err(bad_request("type: an exchange type is required")),
    };
    let opts = ExchangeOptions {
        durable: flag(&m, "durable", true)?,
        auto_delete: flag(&m, "auto_delete", false)?,
        internal: flag(&m, "internal", false)?,
        arguments: arguments(&m)?,
    };
    let name = exchange_name(&name);
    let existed = v.exchange(name).is_ok();
    permitted(caller.check_exchange_declare(&v, name, &kind, &opts.arguments))?;
    v.declare_exchange(name, &kind, false, opts)?;
    Ok(put_status(existed))
}

async fn exchange_delete(
    State(s): St,
    Path((vhost, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    Extension(AuthUser(user)): Extension<AuthUser>,
) -> Result<StatusCode, ApiError> {
    let v = vhost_or_404(&s, &vhost)?;
    let name = exchange_name(&name);
    v.exchange(name).map_err(|_| not_found_err())?;
    if !name.is_empty() {
        permitted(caller_in(&s, &user, &vhost)?.check_delete(Kind::Exchange, name))?;
    }
    // `?if-unused=true` refuses while the exchange is the source of a
    // binding, as exchange.delete's if-unused does (400 with its text).
    let if_unused = query.get("if-unused").is_some_and(|v| v == "true");
    v.delete_exchange(name, if_unused)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn bindings_all(State(s): St, Query(q): Query<HashMap<String, String>>) -> Response {
    objects::binding_reply(json::bindings(&s, None), &q)
}

async fn bindings_in(
    State(s): St,
    Path(vhost): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let v = vhost_or_404(&s, &vhost)?;
    Ok(objects::binding_reply(json::bindings(&s, Some(&v)), &q))
}

async fn connections(
    State(s): St,
    Extension(viewer): Extension<admin::Viewer>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let r = ranges(&q)?;
    let list = s
        .broker
        .connections()
        .iter()
        .map(|c| {
            let mut j = json::connection(&s, c);
            history::connection(&mut j, c, &r);
            j
        })
        .collect();
    Ok(paged(J::Array(list), &q, &viewer))
}

async fn connection_get(
    State(s): St,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<J>, ApiError> {
    let r = ranges(&q)?;
    let c = s
        .broker
        .connections()
        .into_iter()
        .find(|c| c.name == name)
        .ok_or_else(not_found_err)?;
    let mut j = json::connection(&s, &c);
    history::connection(&mut j, &c, &r);
    Ok(Json(j))
}

async fn connection_delete(
    State(s): St,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let c = s
        .broker
        .connections()
        .into_iter()
        .find(|c| c.name == name)
        .ok_or_else(not_found_err)?;
    let reason = headers
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("Closed via management plugin");
    tracing::info!(conn = c.id, name = %c.name, reason, "closing connection via the management API");
    c.request_close(reason);
    Ok(StatusCode::NO_CONTENT)
}

async fn channels(
    State(s): St,
    Extension(viewer): Extension<admin::Viewer>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    paged(json::channels(&s), &q, &viewer)
}

async fn consumers(State(s): St) -> Json<J> {
    Json(json::consumers(&s))
}

/// A PUT's answer, as RabbitMQ's: 201 when it created the object, 204 when
/// it replaced one that existed.
pub(super) fn put_status(existed: bool) -> StatusCode {
    if existed {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::CREATED
    }
}
