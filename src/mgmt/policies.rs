//! `/api/policies` and `/api/operator-policies`: list, read, set and
//! delete a vhost's policies in RabbitMQ's JSON, with its status codes and
//! validation texts. The broker validates, stores and applies them (see
//! `broker::policy`); this module only maps HTTP onto it.

use super::{body_object, not_found_err, put_status, ApiError, MgmtState, St};
use crate::broker::{Policy, PolicyKind};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::Value as J;
use std::collections::HashMap;
use std::sync::Arc;

pub fn routes() -> Router<Arc<MgmtState>> {
    Router::new()
        .route("/api/policies", get(list_all_policies))
        .route("/api/policies/{vhost}", get(list_vhost_policies))
        .route(
            "/api/policies/{vhost}/{name}",
            get(get_policy).put(put_policy).delete(delete_policy),
        )
        .route("/api/operator-policies", get(list_all_operator))
        .route("/api/operator-policies/{vhost}", get(list_vhost_operator))
        .route(
            "/api/operator-policies/{vhost}/{name}",
            get(get_operator).put(put_operator).delete(delete_operator),
        )
}

/// The policies of a kind in one vhost or all, as RabbitMQ lists them:
/// by priority, then vhost and name.
fn listed(s: &MgmtState, kind: PolicyKind, only: Option<&str>) -> Result<J, ApiError> {
    let vhosts = match only {
        Some(name) => vec![s.broker.vhost(name).ok_or_else(not_found_err)?],
        None => s.broker.vhosts(),
    };
    let mut all: Vec<Arc<Policy>> = vhosts.iter().flat_map(|v| v.policies(kind)).collect();
    all.sort_by(|a, b| {
        let pa = a.priority.as_f64().unwrap_or(0.0);
        let pb = b.priority.as_f64().unwrap_or(0.0);
        pa.total_cmp(&pb)
            .then_with(|| a.vhost.cmp(&b.vhost))
            .then_with(|| a.name.cmp(&b.name))
    });
    Ok(J::Array(all.iter().map(|p| p.to_json()).collect()))
}

fn list_reply(
    s: &MgmtState,
    kind: PolicyKind,
    only: Option<&str>,
    q: &HashMap<String, String>,
    viewer: &super::admin::Viewer,
) -> Result<Response, ApiError> {
    let list = viewer.filter(listed(s, kind, only)?);
    match super::paging::reply_json(list, q, &["priority"]) {
        Ok(j) => Ok(Json(j).into_response()),
        Err(e) => Ok(super::objects::bad_list(e).into_response()),
    }
}

fn one(s: &MgmtState, kind: PolicyKind, vhost: &str, name: &str) -> Result<Json<J>, ApiError> {
    let v = s.broker.vhost(vhost).ok_or_else(not_found_err)?;
    let p = v.policy(kind, name).ok_or_else(not_found_err)?;
    Ok(Json(p.to_json()))
}

/// A PUT: 201 created, 204 replaced; 404 `vhost_not_found` for an unknown
/// vhost, 400 with RabbitMQ's text for a bad body.
fn put(
    s: &MgmtState,
    kind: PolicyKind,
    vhost: &str,
    name: &str,
    body: &Bytes,
) -> Result<StatusCode, ApiError> {
    let Some(v) = s.broker.vhost(vhost) else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            "not_found",
            "vhost_not_found".into(),
        ));
    };
    let m = body_object(body)?;
    let p = Policy::parse(kind, vhost, name, &m).map_err(|e| super::bad_request(e.0))?;
    let existed = v.put_policy(kind, p)?;
    tracing::info!(vhost, name, ?kind, "policy set via the management API");
    Ok(put_status(existed))
}

fn delete(
    s: &MgmtState,
    kind: PolicyKind,
    vhost: &str,
    name: &str,
) -> Result<StatusCode, ApiError> {
    let v = s.broker.vhost(vhost).ok_or_else(not_found_err)?;
    if !v.delete_policy(kind, name)? {
        return Err(not_found_err());
    }
    tracing::info!(vhost, name, ?kind, "policy deleted via the management API");
    Ok(StatusCode::NO_CONTENT)
}

type Q = Query<HashMap<String, String>>;
type V = Extension<super::admin::Viewer>;

async fn list_all_policies(
    State(s): St,
    Extension(v): V,
    Query(q): Q,
) -> Result<Response, ApiError> {
    list_reply(&s, PolicyKind::Policy, None, &q, &v)
}

async fn list_vhost_policies(
    State(s): St,
    Path(vh): Path<String>,
    Query(q): Q,
) -> Result<Response, ApiError> {
    list_reply(&s, PolicyKind::Policy, Some(&vh), &q, &Default::default())
}

async fn get_policy(
    State(s): St,
    Path((vh, n)): Path<(String, String)>,
) -> Result<Json<J>, ApiError> {
    one(&s, PolicyKind::Policy, &vh, &n)
}

async fn put_policy(
    State(s): St,
    Path((vh, n)): Path<(String, String)>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    put(&s, PolicyKind::Policy, &vh, &n, &body)
}

async fn delete_policy(
    State(s): St,
    Path((vh, n)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    delete(&s, PolicyKind::Policy, &vh, &n)
}

async fn list_all_operator(
    State(s): St,
    Extension(v): V,
    Query(q): Q,
) -> Result<Response, ApiError> {
    list_reply(&s, PolicyKind::Operator, None, &q, &v)
}

async fn list_vhost_operator(
    State(s): St,
    Path(vh): Path<String>,
    Query(q): Q,
) -> Result<Response, ApiError> {
    list_reply(&s, PolicyKind::Operator, Some(&vh), &q, &Default::default())
}

async fn get_operator(
    State(s): St,
    Path((vh, n)): Path<(String, String)>,
) -> Result<Json<J>, ApiError> {
    one(&s, PolicyKind::Operator, &vh, &n)
}

async fn put_operator(
    State(s): St,
    Path((vh, n)): Path<(String, String)>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    put(&s, PolicyKind::Operator, &vh, &n, &body)
}

async fn delete_operator(
    State(s): St,
    Path((vh, n)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    delete(&s, PolicyKind::Operator, &vh, &n)
}
