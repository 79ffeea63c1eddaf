//! `/api/vhost-limits` and `/api/user-limits`: RabbitMQ 3.10's endpoints
//! for vhost limits (`max-connections`, `max-queues`) and user limits
//! (`max-connections`, `max-channels`), with its JSON shapes, statuses and
//! validation texts. The broker keeps and enforces them
//! ([`crate::broker::limits`]); this module only reads and writes them.

use super::{not_found_err, ApiError, AuthUser, St};
use crate::broker::limits::{self, USER_LIMIT_NAMES, VHOST_LIMIT_NAMES};
use axum::body::Bytes;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Extension, Json, Router};
use serde_json::{json, Map, Value as J};
use std::sync::Arc;

pub fn routes() -> Router<Arc<super::MgmtState>> {
    Router::new()
        .route("/api/vhost-limits", get(vhost_limits_all))
        .route("/api/vhost-limits/{vhost}", get(vhost_limits_of))
        .route(
            "/api/vhost-limits/{vhost}/{name}",
            put(vhost_limit_put).delete(vhost_limit_delete),
        )
        .route("/api/user-limits", get(user_limits_all))
        .route("/api/user-limits/{user}", get(user_limits_of))
        .route(
            "/api/user-limits/{user}/{name}",
            put(user_limit_put).delete(user_limit_delete),
        )
}

use super::bad_request as bad;

/// The `value` of a `{"value": N}` body, as RabbitMQ's `with_decode`
/// reads it: not JSON, or no `value`, is a 400 with its texts.
fn value_of(body: &Bytes) -> Result<J, ApiError> {
    let Ok(J::Object(mut m)) = serde_json::from_slice::<J>(body) else {
        return Err(bad("not_json"));
    };
    m.remove("value")
        .ok_or_else(|| bad("[{key_missing,value}]"))
}

async fn vhost_limits_all(s: St, Extension(AuthUser(user)): Extension<AuthUser>) -> Json<J> {
    let admin = s
        .broker
        .user(&user)
        .is_some_and(|u| u.has_tag("administrator"));
    let items = s
        .broker
        .all_vhost_limits()
        .into_iter()
        .filter(|(vhost, _)| admin || s.broker.access().permission(vhost, &user).is_some())
        .map(|(vhost, value)| json!({"vhost": vhost, "value": value}))
        .collect();
    Json(J::Array(items))
}

async fn vhost_limits_of(s: St, Path(vhost): Path<String>) -> Result<Json<J>, ApiError> {
    if s.broker.vhost(&vhost).is_none() {
        return Err(not_found_err());
    }
    let value = s.broker.vhost_limits(&vhost);
    let empty = value.as_object().is_none_or(Map::is_empty);
    Ok(Json(if empty {
        json!([])
    } else {
        json!([{"vhost": vhost, "value": value}])
    }))
}

async fn vhost_limit_put(
    s: St,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    if s.broker.vhost(&vhost).is_none() {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            "not_found",
            "vhost_not_found".into(),
        ));
    }
    let value = value_of(&body)?;
    let mut one = Map::new();
    one.insert(name.clone(), value.clone());
    limits::validate("limits", &VHOST_LIMIT_NAMES, &one)
        .map_err(|e| bad(format!("Validation failed\n\n{e}\n")))?;
    s.broker.set_vhost_limit(&vhost, &name, value.as_i64());
    Ok(StatusCode::NO_CONTENT)
}

async fn vhost_limit_delete(
    s: St,
    Path((vhost, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    // RabbitMQ crashes (500) on an unknown vhost here; a 404 says more.
    if s.broker.vhost(&vhost).is_none() {
        return Err(not_found_err());
    }
    s.broker.set_vhost_limit(&vhost, &name, None);
    Ok(StatusCode::NO_CONTENT)
}

/// A user's limits as the list endpoints show them; `None` when empty.
fn user_item(name: &str, limits: &J) -> Option<J> {
    let m = limits.as_object().filter(|m| !m.is_empty())?;
    Some(json!({"user": name, "value": m}))
}

async fn user_limits_all(s: St) -> Json<J> {
    let items = s
        .broker
        .users()
        .iter()
        .filter_map(|u| user_item(&u.name, &u.limits))
        .collect();
    Json(J::Array(items))
}

async fn user_limits_of(s: St, Path(user): Path<String>) -> Result<Json<J>, ApiError> {
    let u = s.broker.user(&user).ok_or_else(not_found_err)?;
    Ok(Json(J::Array(
        user_item(&u.name, &u.limits).into_iter().collect(),
    )))
}

async fn user_limit_put(
    s: St,
    Path((user, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<StatusCode, Response> {
    let value = value_of(&body).map_err(IntoResponse::into_response)?;
    let mut one = Map::new();
    one.insert(name.clone(), value.clone());
    limits::validate("user-limits", &USER_LIMIT_NAMES, &one).map_err(|e| bad(e).into_response())?;
    if !s.broker.set_user_limit(&user, &name, value.as_i64()) {
        // RabbitMQ's reason here is an Erlang tuple rendered as an array.
        let body = json!({"error": "bad_request", "reason": ["no_such_user", user]});
        return Err((StatusCode::BAD_REQUEST, Json(body)).into_response());
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn user_limit_delete(
    s: St,
    Path((user, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    // RabbitMQ crashes (500) on an unknown user here; a 404 says more.
    if !s.broker.set_user_limit(&user, &name, None) {
        return Err(not_found_err());
    }
    Ok(StatusCode::NO_CONTENT)
}
