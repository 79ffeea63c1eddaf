//! Users, vhost creation and deletion, permissions, and the management
//! API's tag rules: which tag each endpoint needs (RabbitMQ's
//! `is_authorized_*` callbacks), checked centrally by the auth layer so
//! routes added anywhere get the `management` rule by default, and which
//! items of the cross-vhost lists a plain `management` user sees.

use super::{
    bad_request, body_object, not_found_err, put_status, ApiError, AuthUser, MgmtState, St,
};
use crate::broker::access::{MANAGEMENT_TAGS, MD5, SHA256, SHA512};
use crate::broker::{Kept, Permission, User, VhostMeta};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::{json, Map, Value as J};
use std::sync::Arc;

pub fn routes() -> Router<Arc<MgmtState>> {
    Router::new()
        .route("/api/users", get(users))
        .route(
            "/api/users/without-permissions",
            get(users_without_permissions),
        )
        .route("/api/users/bulk-delete", post(users_bulk_delete))
        .route(
            "/api/users/{name}",
            get(user_get).put(user_put).delete(user_delete),
        )
        .route("/api/users/{name}/permissions", get(user_permissions))
        .route(
            "/api/users/{name}/topic-permissions",
            get(user_topic_permissions),
        )
        .route(
            "/api/vhosts/{vhost}",
            axum::routing::put(vhost_put).delete(vhost_delete),
        )
        .route("/api/vhosts/{vhost}/permissions", get(vhost_permissions))
        .route(
            "/api/vhosts/{vhost}/topic-permissions",
            get(vhost_topic_permissions),
        )
        .route("/api/permissions", get(permissions))
        .route(
            "/api/permissions/{vhost}/{user}",
            get(permission_get)
                .put(permission_put)
                .delete(permission_delete),
        )
        .route("/api/topic-permissions", get(topic_permissions))
        .route(
            "/api/topic-permissions/{vhost}/{user}",
            get(topic_permission_get)
                .put(topic_permission_put)
                .delete(topic_permission_delete),
        )
        .merge(super::definitions::routes())
}

// ---- tag rules ----

/// What a request needs beyond a valid login.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Need {
    /// Any of the management tags.
    Management,
    /// `monitoring` or `administrator`.
    Monitoring,
    /// `policymaker` or `administrator`.
    Policymaker,
    Administrator,
    /// A connection's own user, else monitoring (administrator to close it).
    ConnectionOwner(String),
}

/// RabbitMQ's percent-decoding of a path segment.
fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The tag a request needs and the vhost it is scoped to (non-admins need
/// a permission there), from RabbitMQ 3.10's handlers.
fn need(method: &Method, path: &str) -> (Need, Option<String>) {
    let Some(rest) = path.strip_prefix("/api/") else {
        return (Need::Management, None);
    };
    let seg: Vec<String> = rest
        .split('/')
        .filter(|s| !s.is_empty())
        .map(pct_decode)
        .collect();
    let s: Vec<&str> = seg.iter().map(String::as_str).collect();
    let vhost_at = |i: usize| s.get(i).map(|v| (*v).to_owned());
    let writes = *method != Method::GET && *method != Method::HEAD;
    match s.as_slice() {
        ["vhosts", vhost, "connections" | "channels"] => {
            (Need::Management, Some((*vhost).to_owned()))
        }
        ["users", ..]
        | ["permissions", ..]
        | ["topic-permissions", ..]
        | ["definitions", ..]
        | ["feature-flags", ..]
        | ["reset", ..]
        | ["rebalance", ..]
        | ["operator-policies", _, _, ..]
        | ["user-limits", _, _, ..]
        | ["vhost-limits", _, _, ..]
        | ["vhosts", _, ..] => (Need::Administrator, None),
        ["queues", _, _, "actions"] => (Need::Administrator, None),
        ["vhost-limits", vhost] => (Need::Management, Some((*vhost).to_owned())),
        ["cluster-name"] if writes => (Need::Administrator, None),
        ["nodes", ..] | ["auth-attempts", ..] => (Need::Monitoring, None),
        // Plain management users see only their own connections,
        // channels and consumers in these lists (see [`visible_only`]).
        ["channels", _, ..] => (Need::Monitoring, None),
        ["connections", name, ..] => (Need::ConnectionOwner((*name).to_owned()), None),
        ["global-parameters", ..] => (Need::Policymaker, None),
        ["parameters", _, vhost, ..] | ["policies", vhost, _, ..] => {
            (Need::Policymaker, Some((*vhost).to_owned()))
        }
        ["queues", _, ..]
        | ["exchanges", _, ..]
        | ["bindings", _, ..]
        | ["policies", _]
        | ["operator-policies", _]
        | ["aliveness-test", _]
        | ["consumers", _] => (Need::Management, vhost_at(1)),
        _ => (Need::Management, None),
    }
}

fn not_authorised(reason: &str) -> ApiError {
    ApiError(StatusCode::UNAUTHORIZED, "not_authorised", reason.into())
}

/// Checks the logged-in user's tags (and vhost access) for a request;
/// the auth layer calls it after the password check.
pub(super) fn authorize(
    s: &MgmtState,
    method: &Method,
    path: &str,
    user: &str,
) -> Result<(), ApiError> {
    let Some(u) = s.broker.user(user) else {
        return Err(not_authorised("Not management user"));
    };
    if !MANAGEMENT_TAGS.iter().any(|t| u.has_tag(t)) {
        return Err(not_authorised("Not management user"));
    }
    let admin = u.has_tag("administrator");
    let monitor = admin || u.has_tag("monitoring");
    let (need, vhost) = need(method, path);
    match need {
        Need::Management => {}
        Need::Administrator if !admin => return Err(not_authorised("Not administrator user")),
        Need::Monitoring if !monitor => return Err(not_authorised("Not monitor user")),
        Need::Policymaker if !(admin || u.has_tag("policymaker")) => {
            return Err(not_authorised("User not authorised to access object"))
        }
        Need::ConnectionOwner(name) => {
            let own = s
                .broker
                .connections()
                .iter()
                .any(|c| c.name == name && c.user == user);
            let allowed = if *method == Method::DELETE {
                admin
            } else {
                monitor
            };
            if !(own || allowed) {
                return Err(not_authorised("User not authorised to access object"));
            }
        }
        _ => {}
    }
    if let Some(vh) = vhost {
        if !admin && s.broker.access().permission(&vh, user).is_none() {
            return Err(not_authorised("User not authorised to access virtual host"));
        }
    }
    Ok(())
}

/// What a list shows a plain management user: items of the vhosts it has
/// permissions in, or (connections, channels, consumers) its own.
enum Visible {
    /// The item's field names a vhost.
    Vhost(&'static str),
    /// The item's field (a dotted path) names a user.
    User(&'static str),
}

fn list_filter(path: &str) -> Option<Visible> {
    match path.trim_end_matches('/') {
        "/api/vhosts" => Some(Visible::Vhost("name")),
        "/api/queues"
        | "/api/exchanges"
        | "/api/bindings"
        | "/api/policies"
        | "/api/operator-policies" => Some(Visible::Vhost("vhost")),
        "/api/connections" | "/api/channels" => Some(Visible::User("user")),
        "/api/consumers" => Some(Visible::User("channel_details.user")),
        _ => None,
    }
}

/// What a cross-vhost list may show the logged-in user; the auth layer
/// puts one in every request's extensions. Paged list handlers filter
/// with it *before* paging (RabbitMQ's `filter_vhost` runs before
/// `paginate`), so pages and `filtered_count` / `total_count` count only
/// what the user may see.
#[derive(Clone, Default)]
pub(super) struct Viewer(Option<Arc<Restriction>>);

struct Restriction {
    user: String,
    rule: Visible,
    /// The vhosts the user has permissions in.
    vhosts: std::collections::HashSet<String>,
}

impl Viewer {
    /// The viewer for `user` requesting `path` (unrestricted for
    /// administrators, monitoring users, and lists that need no filter).
    pub(super) fn new(s: &MgmtState, method: &Method, path: &str, user: &str) -> Self {
        if *method != Method::GET {
            return Viewer::default();
        }
        let Some(rule) = list_filter(path) else {
            return Viewer::default();
        };
        match s.broker.user(user) {
            Some(u) if !u.has_tag("administrator") && !u.has_tag("monitoring") => {
                let vhosts = s
                    .broker
                    .access()
                    .permissions()
                    .into_iter()
                    .filter(|p| p.user == user)
                    .map(|p| p.vhost)
                    .collect();
                Viewer(Some(Arc::new(Restriction {
                    user: user.to_owned(),
                    rule,
                    vhosts,
                })))
            }
            _ => Viewer::default(),
        }
    }

    /// Whether the user may see items of this vhost.
    pub(super) fn sees_vhost(&self, vhost: &str) -> bool {
        match &self.0 {
            Some(r) if matches!(r.rule, Visible::Vhost(_)) => r.vhosts.contains(vhost),
            _ => true,
        }
    }

    /// Whether the user may see this list item.
    pub(super) fn keeps(&self, item: &J) -> bool {
        let Some(r) = &self.0 else {
            return true;
        };
        match r.rule {
            Visible::Vhost(f) => item[f].as_str().is_some_and(|v| r.vhosts.contains(v)),
            Visible::User(f) => f
                .split('.')
                .fold(item, |j, k| &j[k])
                .as_str()
                .is_some_and(|x| x == r.user),
        }
    }

    /// A JSON array with only the visible items (anything else unchanged).
    pub(super) fn filter(&self, mut list: J) -> J {
        if self.0.is_some() {
            if let J::Array(a) = &mut list {
                a.retain(|i| self.keeps(i));
            }
        }
        list
    }
}

/// Filters a cross-vhost list for a user who is neither administrator nor
/// monitoring, as RabbitMQ's `filter_vhost` / `filter_conn_ch_list` do.
/// Per-vhost lists need no filtering: [`authorize`] checked the vhost.
/// A safety net for the unpaged lists: the paged ones were filtered with
/// [`Viewer`] before paging (so this keeps all of their items).
pub(super) async fn visible_only(
    s: &MgmtState,
    method: &Method,
    path: &str,
    user: &str,
    resp: axum::response::Response,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if *method != Method::GET || !resp.status().is_success() {
        return resp;
    }
    let Some(rule) = list_filter(path) else {
        return resp;
    };
    let Some(u) = s.broker.user(user) else {
        return resp;
    };
    if u.has_tag("administrator") || u.has_tag("monitoring") {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "cannot read a list reply to filter it");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    let Ok(mut j) = serde_json::from_slice::<J>(&bytes) else {
        return axum::response::Response::from_parts(parts, bytes.into());
    };
    let access = s.broker.access();
    let keep = |item: &J| match rule {
        Visible::Vhost(f) => item[f]
            .as_str()
            .is_some_and(|v| access.permission(v, user).is_some()),
        Visible::User(f) => f
            .split('.')
            .fold(item, |j, k| &j[k])
            .as_str()
            .is_some_and(|x| x == user),
    };
    match &mut j {
        J::Array(a) => a.retain(keep),
        J::Object(o) => {
            if let Some(J::Array(a)) = o.get_mut("items") {
                a.retain(keep);
                let n = a.len();
                o.insert("item_count".into(), json!(n));
            }
        }
        _ => {}
    }
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    axum::response::Response::from_parts(parts, j.to_string().into())
}

// ---- body helpers ----

/// Tags as RabbitMQ takes them: a comma-separated string or an array.
pub(super) fn parse_tags(v: &J) -> Result<Vec<String>, ApiError> {
    let tags: Vec<String> = match v {
        J::Null => Vec::new(),
        J::String(s) => s.split(',').map(|t| t.trim().to_owned()).collect(),
        J::Array(a) => a
            .iter()
            .map(|t| match t {
                J::String(s) => Ok(s.trim().to_owned()),
                _ => Err(bad_request("tags: expected strings")),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(bad_request("tags: expected a string or an array")),
    };
    Ok(tags.into_iter().filter(|t| !t.is_empty()).collect())
}

fn str_field<'a>(m: &'a Map<String, J>, key: &str) -> Result<Option<&'a str>, ApiError> {
    match m.get(key) {
        None | Some(J::Null) => Ok(None),
        Some(J::String(s)) => Ok(Some(s)),
        Some(_) => Err(bad_request(format!("{key}: expected a string"))),
    }
}

/// The refusal of `"password": ""`, saying how to ask for no password.
const EMPTY_PASSWORD: &str = "password must not be empty: to make a user that cannot log in with a password, send \"password_hash\": \"\" or leave both password fields out";

/// A user from a PUT body or a definitions entry, RabbitMQ's rules:
/// `password` or `password_hash` (never both); neither makes a user that
/// cannot log in with a password (RabbitMQ's passwordless users), and so
/// does `"password_hash": ""`. An empty `password` is refused: RabbitMQ
/// stores it and then refuses every login with an empty password, so an
/// edit form left blank would silently lock the user out.
pub(super) fn user_from_body(
    name: &str,
    m: &Map<String, J>,
    existing: Option<&User>,
) -> Result<User, ApiError> {
    let tags = match (m.get("tags"), m.get("administrator")) {
        (Some(t), _) => parse_tags(t)?,
        (None, Some(a)) => {
            if a == &J::Bool(true) || a == &J::String("true".into()) {
                vec!["administrator".to_owned()]
            } else {
                Vec::new()
            }
        }
        (None, None) => return Err(bad_request("tags_not_present")),
    };
    let password = str_field(m, "password")?;
    let hash = str_field(m, "password_hash")?;
    let (password_hash, hashing_algorithm) = match (password, hash) {
        (Some(_), Some(_)) => {
            return Err(bad_request("both_password_and_password_hash_are_provided"))
        }
        (Some(""), None) => return Err(bad_request(EMPTY_PASSWORD)),
        (Some(p), None) => {
            let u = User::with_password(name, p, Vec::new());
            (u.password_hash, u.hashing_algorithm)
        }
        (None, Some(h)) => {
            if crate::broker::base64::base64_decode(h).is_none() {
                return Err(bad_request(format!("not_base64: {h}")));
            }
            let algo = str_field(m, "hashing_algorithm")?.unwrap_or(SHA256);
            if ![SHA256, SHA512, MD5].contains(&algo) {
                return Err(bad_request(format!("unknown hashing_algorithm '{algo}'")));
            }
            (h.to_owned(), algo.to_owned())
        }
        (None, None) => (String::new(), SHA256.to_owned()),
    };
    let limits = match m.get("limits") {
        Some(J::Object(l)) => J::Object(l.clone()),
        None | Some(J::Null) => existing.map_or_else(|| json!({}), |u| u.limits.clone()),
        Some(_) => return Err(bad_request("limits: expected a JSON object")),
    };
    Ok(User {
        name: name.to_owned(),
        password_hash,
        hashing_algorithm,
        tags,
        limits,
    })
}

/// Checks a permission pattern compiles (RabbitMQ: `invalid_regexp`).
pub(super) fn check_regex(field: &str, pattern: &str) -> Result<(), ApiError> {
    regex::Regex::new(&crate::broker::authz::pcre_braces(pattern))
        .map(|_| ())
        .map_err(|e| bad_request(format!("invalid_regexp '{pattern}' in {field}: {e}")))
}

/// configure/write/read from a body; RabbitMQ's text for missing keys.
pub(super) fn permission_from_body(
    user: &str,
    vhost: &str,
    m: &Map<String, J>,
) -> Result<Permission, ApiError> {
    let missing: Vec<String> = ["configure", "write", "read"]
        .iter()
        .filter(|k| !m.contains_key(**k))
        .map(|k| format!("{{key_missing,{k}}}"))
        .collect();
    if !missing.is_empty() {
        return Err(bad_request(format!("[{}]", missing.join(","))));
    }
    let mut vals = Vec::new();
    for k in ["configure", "write", "read"] {
        let v = str_field(m, k)?.unwrap_or_default().to_owned();
        check_regex(k, &v)?;
        vals.push(v);
    }
    let [configure, write, read]: [String; 3] = vals.try_into().expect("three patterns");
    Ok(Permission {
        user: user.to_owned(),
        vhost: vhost.to_owned(),
        configure,
        write,
        read,
    })
}

/// Vhost metadata from a PUT body or a definitions entry (`metadata` as
/// RabbitMQ 3.13 exports it, or the top-level fields).
pub(super) fn vhost_meta_from_body(m: &Map<String, J>) -> Result<VhostMeta, ApiError> {
    let meta = match m.get("metadata") {
        Some(J::Object(md)) => md,
        _ => m,
    };
    let description = str_field(meta, "description")?
        .or(str_field(m, "description")?)
        .unwrap_or_default()
        .to_owned();
    let tags = match meta.get("tags").or(m.get("tags")) {
        Some(t) => parse_tags(t)?,
        None => Vec::new(),
    };
    let dqt = str_field(meta, "default_queue_type")?
        .or(str_field(m, "default_queue_type")?)
        .or(str_field(m, "defaultqueuetype")?)
        .filter(|t| !t.is_empty() && *t != "undefined")
        .map(str::to_owned);
    Ok(VhostMeta {
        description,
        tags,
        default_queue_type: dqt,
    })
}

fn full_permission(user: &str, vhost: &str) -> Permission {
    Permission {
        user: user.to_owned(),
        vhost: vhost.to_owned(),
        configure: ".*".into(),
        write: ".*".into(),
        read: ".*".into(),
    }
}

/// Creates or updates a vhost; a new one gives the acting user full
/// permissions on it, as RabbitMQ's `maybe_grant_full_permissions`.
pub(super) fn put_vhost(s: &MgmtState, name: &str, meta: VhostMeta, acting: &str) -> bool {
    let existed = s.broker.create_vhost(name, meta);
    if !existed && s.broker.user(acting).is_some() {
        s.broker
            .access()
            .set_permission(full_permission(acting, name));
    }
    existed
}

// ---- users ----

async fn users(State(s): St) -> Json<J> {
    Json(J::Array(
        s.broker.users().iter().map(User::to_json).collect(),
    ))
}

async fn users_without_permissions(State(s): St) -> Json<J> {
    let perms = s.broker.access().permissions();
    Json(J::Array(
        s.broker
            .users()
            .iter()
            .filter(|u| !perms.iter().any(|p| p.user == u.name))
            .map(User::to_json)
            .collect(),
    ))
}

async fn users_bulk_delete(State(s): St, body: Bytes) -> Result<StatusCode, ApiError> {
    let m = body_object(&body)?;
    let Some(list) = m.get("users") else {
        return Err(bad_request("[{key_missing,users}]"));
    };
    let Some(list) = list.as_array() else {
        return Err(bad_request("users: expected an array of names"));
    };
    for name in list {
        match name.as_str() {
            Some(n) => {
                s.broker.delete_user(n);
            }
            None => return Err(bad_request("users: expected an array of names")),
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn user_get(State(s): St, Path(name): Path<String>) -> Result<Json<J>, ApiError> {
    let u = s.broker.user(&name).ok_or_else(not_found_err)?;
    Ok(Json(u.to_json()))
}

async fn user_put(
    State(s): St,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let m = body_object(&body)?;
    let existing = s.broker.user(&name);
    let u = user_from_body(&name, &m, existing.as_ref())?;
    tracing::info!(user = %name, tags = ?u.tags, "user set via the management API");
    Ok(put_status(s.broker.access().put_user(u)))
}

async fn user_delete(State(s): St, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    if !s.broker.delete_user(&name) {
        return Err(not_found_err());
    }
    tracing::info!(user = %name, "user deleted via the management API");
    Ok(StatusCode::NO_CONTENT)
}

async fn user_permissions(State(s): St, Path(name): Path<String>) -> Result<Json<J>, ApiError> {
    s.broker.user(&name).ok_or_else(not_found_err)?;
    Ok(Json(J::Array(
        s.broker
            .access()
            .permissions()
            .iter()
            .filter(|p| p.user == name)
            .map(Permission::to_json)
            .collect(),
    )))
}

async fn user_topic_permissions(
    State(s): St,
    Path(name): Path<String>,
) -> Result<Json<J>, ApiError> {
    s.broker.user(&name).ok_or_else(not_found_err)?;
    Ok(Json(J::Array(
        s.broker
            .access()
            .kept(Kept::TopicPermission, None)
            .into_iter()
            .filter(|t| t["user"] == name.as_str())
            .collect(),
    )))
}

// ---- vhosts ----

async fn vhost_put(
    State(s): St,
    Path(name): Path<String>,
    Extension(AuthUser(acting)): Extension<AuthUser>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let m = body_object(&body)?;
    let meta = vhost_meta_from_body(&m)?;
    let existed = put_vhost(&s, &name, meta, &acting);
    tracing::info!(vhost = %name, existed, "vhost set via the management API");
    Ok(put_status(existed))
}

async fn vhost_delete(State(s): St, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    // Removing every queue and binding and syncing blocks: off the async
    // workers. The reply waits for the final sync.
    let deleted = tokio::task::spawn_blocking(move || s.broker.delete_vhost(&name))
        .await
        .map_err(|e| internal(format!("vhost deletion failed: {e}")))?;
    if !deleted {
        return Err(not_found_err());
    }
    Ok(StatusCode::NO_CONTENT)
}

/// A 500 for a failed background task.
pub(super) fn internal(reason: String) -> ApiError {
    tracing::error!(%reason, "management request failed");
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", reason)
}

async fn vhost_permissions(State(s): St, Path(name): Path<String>) -> Result<Json<J>, ApiError> {
    s.broker.vhost(&name).ok_or_else(not_found_err)?;
    Ok(Json(J::Array(
        s.broker
            .access()
            .permissions()
            .iter()
            .filter(|p| p.vhost == name)
            .map(Permission::to_json)
            .collect(),
    )))
}

async fn vhost_topic_permissions(
    State(s): St,
    Path(name): Path<String>,
) -> Result<Json<J>, ApiError> {
    s.broker.vhost(&name).ok_or_else(not_found_err)?;
    Ok(Json(J::Array(
        s.broker.access().kept(Kept::TopicPermission, Some(&name)),
    )))
}

// ---- permissions ----

async fn permissions(State(s): St) -> Json<J> {
    Json(J::Array(
        s.broker
            .access()
            .permissions()
            .iter()
            .map(Permission::to_json)
            .collect(),
    ))
}

async fn permission_get(
    State(s): St,
    Path((vhost, user)): Path<(String, String)>,
) -> Result<Json<J>, ApiError> {
    let p = s
        .broker
        .access()
        .permission(&vhost, &user)
        .ok_or_else(not_found_err)?;
    Ok(Json(p.to_json()))
}

async fn permission_put(
    State(s): St,
    Path((vhost, user)): Path<(String, String)>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    // RabbitMQ answers 400 (not 404) when either end is unknown on PUT.
    if s.broker.vhost(&vhost).is_none() || s.broker.user(&user).is_none() {
        return Err(bad_request("vhost_or_user_not_found"));
    }
    let m = body_object(&body)?;
    let p = permission_from_body(&user, &vhost, &m)?;
    Ok(put_status(s.broker.access().set_permission(p)))
}

async fn permission_delete(
    State(s): St,
    Path((vhost, user)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    if !s.broker.access().clear_permission(&vhost, &user) {
        return Err(not_found_err());
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The topic permissions of one user in one vhost; 404 when none.
async fn topic_permission_get(
    State(s): St,
    Path((vhost, user)): Path<(String, String)>,
) -> Result<Json<J>, ApiError> {
    let items: Vec<J> = s
        .broker
        .access()
        .kept(Kept::TopicPermission, Some(&vhost))
        .into_iter()
        .filter(|t| t["user"] == user.as_str())
        .collect();
    if items.is_empty() {
        return Err(not_found_err());
    }
    Ok(Json(J::Array(items)))
}

/// Sets the topic permission of a user on one exchange (RabbitMQ's body:
/// `exchange`, `write`, `read`); 201 new, 204 replaced.
async fn topic_permission_put(
    State(s): St,
    Path((vhost, user)): Path<(String, String)>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    if s.broker.vhost(&vhost).is_none() || s.broker.user(&user).is_none() {
        return Err(bad_request("vhost_or_user_not_found"));
    }
    let m = body_object(&body)?;
    let Some(exchange) = str_field(&m, "exchange")? else {
        return Err(bad_request("[{key_missing,exchange}]"));
    };
    let mut vals = Vec::new();
    for k in ["write", "read"] {
        let v = str_field(&m, k)?.unwrap_or_default().to_owned();
        check_regex(k, &v)?;
        vals.push(v);
    }
    let key = vec![vhost.clone(), user.clone(), exchange.to_owned()];
    let existed = s
        .broker
        .access()
        .kept(Kept::TopicPermission, Some(&vhost))
        .iter()
        .any(|t| t["user"] == user.as_str() && t["exchange"] == exchange);
    let item = json!({
        "user": user, "vhost": vhost, "exchange": exchange,
        "write": vals[0], "read": vals[1],
    });
    s.broker.access().put_kept(Kept::TopicPermission, key, item);
    Ok(put_status(existed))
}

/// Removes a user's topic permissions in a vhost (all of them, as
/// RabbitMQ's endpoint does); 404 when there are none.
async fn topic_permission_delete(
    State(s): St,
    Path((vhost, user)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    if s.broker
        .access()
        .remove_topic_permissions(&vhost, &user, None)
        == 0
    {
        return Err(not_found_err());
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn topic_permissions(State(s): St) -> Json<J> {
    Json(J::Array(
        s.broker.access().kept(Kept::TopicPermission, None),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_map_to_rabbitmq_tags() {
        let g = Method::GET;
        assert_eq!(need(&g, "/api/overview").0, Need::Management);
        assert_eq!(need(&g, "/api/users").0, Need::Administrator);
        assert_eq!(need(&g, "/api/vhosts").0, Need::Management);
        assert_eq!(need(&Method::PUT, "/api/vhosts/v").0, Need::Administrator);
        assert_eq!(need(&g, "/api/nodes").0, Need::Monitoring);
        assert_eq!(need(&g, "/api/definitions/%2F").0, Need::Administrator);
        assert_eq!(
            need(&g, "/api/queues/%2F/q"),
            (Need::Management, Some("/".to_owned()))
        );
        assert_eq!(need(&g, "/api/cluster-name").0, Need::Management);
        assert_eq!(
            need(&g, "/api/vhosts/v/connections"),
            (Need::Management, Some("v".to_owned()))
        );
        assert_eq!(need(&g, "/api/vhosts/v/permissions").0, Need::Administrator);
        assert_eq!(
            need(&Method::PUT, "/api/cluster-name").0,
            Need::Administrator
        );
        assert_eq!(
            need(&Method::POST, "/api/queues/v/q/actions").0,
            Need::Administrator
        );
    }

    #[test]
    fn path_segments_are_percent_decoded() {
        assert_eq!(pct_decode("%2F"), "/");
        assert_eq!(pct_decode("a%20b%"), "a b%");
        assert_eq!(pct_decode("%zz"), "%zz");
    }
}
