//! The web dashboard's static files (`mgmt-ui/`), embedded in the binary
//! and served at `/` like RabbitMQ's management UI on port 15672.
//!
//! The files need no login: they hold no data, and every API call the page
//! makes carries the user's credentials. Each reply has an ETag computed
//! from the embedded bytes, with `Cache-Control: no-cache`, so a browser
//! revalidates (a cheap 304) and never runs a stale dashboard against a
//! newer binary.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// One embedded file: its URL path, content type and bytes.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

macro_rules! asset {
    ($file:literal, $ty:expr) => {
        Asset {
            path: concat!("/", $file),
            content_type: $ty,
            body: include_str!(concat!("../../mgmt-ui/", $file)),
        }
    };
}

const HTML: &str = "text/html; charset=utf-8";
// Module scripts are refused by browsers unless served with a JavaScript type.
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

static ASSETS: &[Asset] = &[
    asset!("index.html", HTML),
    asset!("style.css", CSS),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("charts.js", JS),
    asset!("table.js", JS),
    asset!("messages.js", JS),
    asset!("overview.js", JS),
    asset!("objects.js", JS),
    asset!("queues.js", JS),
    asset!("exchanges.js", JS),
    asset!("admin.js", JS),
    asset!("policies.js", JS),
    asset!("superstreams.js", JS),
    asset!("limits.js", JS),
    asset!("definitions.js", JS),
    asset!("vhost.js", JS),
];

/// The dashboard's routes, merged outside the API's auth layer.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let mut r = Router::new().route(
        "/",
        get(|h: HeaderMap| async move { serve(&ASSETS[0], &h) }),
    );
    for a in ASSETS {
        r = r.route(a.path, get(move |h: HeaderMap| async move { serve(a, &h) }));
    }
    r
}

/// FNV-1a over the file: a stable validator without a hashing crate.
fn etag(body: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in body.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("\"{h:016x}\"")
}

fn serve(a: &'static Asset, req: &HeaderMap) -> Response {
    let tag = etag(a.body);
    let fresh = req
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    let mut r = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, a.content_type)], a.body).into_response()
    };
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(v) = HeaderValue::from_str(&tag) {
        h.insert(header::ETAG, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_the_page_imports_is_embedded() {
        // A module missing from ASSETS would 404 in the browser only.
        for a in ASSETS {
            for line in a.body.lines() {
                let line = line.trim_start();
                if let Some(rest) = line.strip_prefix("import ") {
                    let spec = rest.rsplit(" from ").next().unwrap_or(rest);
                    let file = spec.trim_matches(|c| c == '\'' || c == ';' || c == ' ');
                    let file = file.trim_start_matches("./");
                    assert!(
                        ASSETS.iter().any(|x| x.path == format!("/{file}")),
                        "{} imports {file}, which is not embedded",
                        a.path
                    );
                }
            }
        }
        let index = ASSETS[0].body;
        for needed in ["style.css", "app.js"] {
            assert!(index.contains(needed));
        }
    }

    #[test]
    fn types_match_extensions() {
        for a in ASSETS {
            let want = match a.path.rsplit('.').next() {
                Some("html") => HTML,
                Some("js") => JS,
                _ => CSS,
            };
            assert_eq!(a.content_type, want, "{}", a.path);
        }
    }
}
