//! Users, vhosts, permissions, tag rules and definitions through the
//! management API: typed calls with `rabbitmq_http_client`, raw HTTP for
//! status codes and bodies, lapin for what AMQP clients then see.

mod common;

use common::*;
use lapin::options::*;
use lapin::BasicProperties;
use rabbitmq_http_client::password_hashing;
use rabbitmq_http_client::requests::{Permissions, UserParams, VirtualHostParams};
use serde_json::{json, Value as J};
use warren::broker::base64::base64_encode;
use warren::server::Server;

const FIXTURE: &str = include_str!("fixtures/rabbitmq-3.10-definitions.json");

fn basic(user: &str, pass: &str) -> String {
    base64_encode(format!("{user}:{pass}").as_bytes())
}

async fn put(s: &Server, path: &str, body: J) -> (u16, String) {
    raw(s, "PUT", path, Some(GUEST), &body.to_string()).await
}

/// Full permissions on `/` (RabbitMQ refuses connection.open without one).
async fn grant(s: &Server, user: &str) {
    let (st, body) = put(
        s,
        &format!("/api/permissions/%2F/{user}"),
        json!({"configure": ".*", "write": ".*", "read": ".*"}),
    )
    .await;
    assert!(st == 201 || st == 204, "{st} {body}");
}

fn reason(body: &str) -> String {
    let j: J = serde_json::from_str(body).unwrap_or(J::Null);
    j["reason"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn users_are_created_updated_and_deleted_and_log_in_over_amqp() {
    let s = start().await;
    let api = api(&s);

    // Typed call with a client-made hash.
    let salt = password_hashing::salt();
    let hash = password_hashing::base64_encoded_salted_password_hash_sha256(&salt, "s3cret");
    api.create_user(&UserParams::new("alice", &hash, "management"))
        .await
        .unwrap();
    let u = api.get_user("alice").await.unwrap();
    assert!(u.tags.contains("management"));
    grant(&s, "alice").await;
    let c = connect_as(&s, "alice", "s3cret", "/")
        .await
        .expect("alice logs in");
    let ch = c.create_channel().await.unwrap();
    ch.queue_declare(
        "alice-q".into(),
        QueueDeclareOptions::default(),
        Default::default(),
    )
    .await
    .unwrap();
    c.close(200, "bye".into()).await.unwrap();
    assert!(connect_as(&s, "alice", "wrong", "/").await.is_err());
    assert!(connect_as(&s, "nobody", "s3cret", "/").await.is_err());

    // Raw PUT with a plain password, tags as a string: 201, then 204.
    let (st, _) = put(
        &s,
        "/api/users/bob",
        json!({"password": "pw1", "tags": "monitoring, management"}),
    )
    .await;
    assert_eq!(st, 201);
    let (st, j) = get_json(&s, "/api/users/bob").await;
    assert_eq!(st, 200);
    assert_eq!(j["tags"], json!(["monitoring", "management"]));
    assert_eq!(j["hashing_algorithm"], "rabbit_password_hashing_sha256");
    assert_eq!(j["limits"], json!({}));
    let raw_hash = warren::broker::base64::base64_decode(j["password_hash"].as_str().unwrap());
    assert_eq!(raw_hash.unwrap().len(), 36, "4 salt bytes + SHA-256");
    // The right password without a permission in the vhost: 530, not 403.
    let e = connect_as(&s, "bob", "pw1", "/").await.unwrap_err();
    assert!(format!("{e:?}").contains("NOT_ALLOWED"), "{e:?}");
    grant(&s, "bob").await;
    connect_as(&s, "bob", "pw1", "/")
        .await
        .expect("bob logs in");
    let (st, _) = put(
        &s,
        "/api/users/bob",
        json!({"password": "pw2", "tags": ["administrator"]}),
    )
    .await;
    assert_eq!(st, 204);
    assert!(connect_as(&s, "bob", "pw1", "/").await.is_err());
    connect_as(&s, "bob", "pw2", "/")
        .await
        .expect("new password");
    // The same store serves HTTP Basic auth.
    let (st, body) = raw(&s, "GET", "/api/whoami", Some(&basic("bob", "pw2")), "").await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        raw(&s, "GET", "/api/whoami", Some(&basic("bob", "pw1")), "")
            .await
            .0,
        401
    );

    // RabbitMQ's errors.
    let (st, body) = put(&s, "/api/users/carol", json!({"password": "x"})).await;
    assert_eq!((st, reason(&body).as_str()), (400, "tags_not_present"));
    let (st, body) = put(
        &s,
        "/api/users/carol",
        json!({"password": "x", "password_hash": hash, "tags": ""}),
    )
    .await;
    assert_eq!(
        (st, reason(&body).as_str()),
        (400, "both_password_and_password_hash_are_provided")
    );
    let (st, _) = raw(&s, "PUT", "/api/users/carol", Some(GUEST), "{not json").await;
    assert_eq!(st, 400);
    // Neither password nor hash: a user that cannot log in with a password.
    let (st, _) = put(&s, "/api/users/carol", json!({"tags": ""})).await;
    assert_eq!(st, 201);
    assert_eq!(
        get_json(&s, "/api/users/carol").await.1["password_hash"],
        ""
    );
    assert!(connect_as(&s, "carol", "", "/").await.is_err());

    // Users without permissions: carol (guest, alice and bob have some).
    let names: Vec<String> = api
        .list_users_without_permissions()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.name)
        .collect();
    assert_eq!(names, ["carol"]);
    let (st, j) = get_json(&s, "/api/users/guest/permissions").await;
    assert_eq!(st, 200);
    assert_eq!(
        j,
        json!([{"user": "guest", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}])
    );
    assert_eq!(get_json(&s, "/api/users/nobody/permissions").await.0, 404);

    // Delete: the user's connections close, logins stop, GET is 404.
    let c = connect_as(&s, "alice", "s3cret", "/").await.unwrap();
    api.delete_user("alice", false).await.unwrap();
    eventually(|| {
        let c = &c;
        async move { !c.status().connected() }
    })
    .await;
    assert!(connect_as(&s, "alice", "s3cret", "/").await.is_err());
    assert_eq!(get_json(&s, "/api/users/alice").await.0, 404);
    assert_eq!(
        raw(&s, "DELETE", "/api/users/alice", Some(GUEST), "")
            .await
            .0,
        404
    );
    api.delete_users(vec!["bob", "carol", "ghost"])
        .await
        .unwrap();
    let names: Vec<String> = api
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.name)
        .collect();
    assert_eq!(names, ["guest"]);
    s.shutdown().await;
}

/// An empty `password` is refused (400, the user unchanged) rather than
/// stored as "no password", which would lock the user out; no password is
/// asked for with `"password_hash": ""` or with neither field. The user
/// JSON says which users have one (`password_hash` empty or not).
#[tokio::test]
async fn an_empty_password_is_refused_unless_no_password_is_asked_for() {
    let s = start().await;
    let (st, _) = put(&s, "/api/users/dana", json!({"password": "pw", "tags": ""})).await;
    assert_eq!(st, 201);
    grant(&s, "dana").await;

    // An edit with an empty password: 400 with RabbitMQ's error shape,
    // and dana's password and tags stay as they were.
    let (st, body) = put(
        &s,
        "/api/users/dana",
        json!({"password": "", "tags": "management"}),
    )
    .await;
    assert_eq!(st, 400, "{body}");
    let j: J = serde_json::from_str(&body).unwrap();
    assert_eq!(j["error"], "bad_request");
    assert!(
        reason(&body).starts_with("password must not be empty"),
        "{body}"
    );
    let (_, u) = get_json(&s, "/api/users/dana").await;
    assert_eq!(u["tags"], json!([]));
    assert_ne!(u["password_hash"], "");
    connect_as(&s, "dana", "pw", "/")
        .await
        .expect("dana still logs in with her password");
    // Creating a user with an empty password is refused the same way.
    let (st, body) = put(&s, "/api/users/eve", json!({"password": "", "tags": ""})).await;
    assert_eq!(
        (st, reason(&body).starts_with("password must not be")),
        (400, true)
    );
    assert_eq!(get_json(&s, "/api/users/eve").await.0, 404);
    // So is a definitions import carrying one.
    let (st, body) = raw(
        &s,
        "POST",
        "/api/definitions",
        Some(GUEST),
        &json!({"users": [{"name": "eve", "password": "", "tags": ""}]}).to_string(),
    )
    .await;
    assert_eq!(st, 400, "{body}");
    assert_eq!(get_json(&s, "/api/users/eve").await.0, 404);

    // Asking for no password explicitly: an empty hash.
    let (st, _) = put(
        &s,
        "/api/users/dana",
        json!({"password_hash": "", "tags": "management"}),
    )
    .await;
    assert_eq!(st, 204);
    assert!(connect_as(&s, "dana", "pw", "/").await.is_err());
    assert!(connect_as(&s, "dana", "", "/").await.is_err());

    // The list shows who has a password: RabbitMQ's `password_hash` and
    // `hashing_algorithm`, the hash empty for dana only.
    let (st, list) = get_json(&s, "/api/users").await;
    assert_eq!(st, 200);
    let users = list.as_array().unwrap();
    let dana = users.iter().find(|u| u["name"] == "dana").unwrap();
    assert_eq!(dana["password_hash"], "");
    assert_eq!(dana["hashing_algorithm"], "rabbit_password_hashing_sha256");
    let guest = users.iter().find(|u| u["name"] == "guest").unwrap();
    assert_ne!(guest["password_hash"], "");
    s.shutdown().await;
}

#[tokio::test]
async fn a_hash_made_by_rabbitmq_logs_in() {
    let s = start().await;
    let defs: J = serde_json::from_str(FIXTURE).unwrap();
    let app = defs["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "fx-app")
        .unwrap()
        .clone();
    let (st, body) = put(
        &s,
        "/api/users/imported",
        json!({
            "password_hash": app["password_hash"],
            "hashing_algorithm": app["hashing_algorithm"],
            "tags": "",
        }),
    )
    .await;
    assert_eq!(st, 201, "{body}");
    grant(&s, "imported").await;
    connect_as(&s, "imported", "app-secret", "/")
        .await
        .expect("RabbitMQ's hash of app-secret");
    assert!(connect_as(&s, "imported", "app-secreT", "/").await.is_err());
    // The hash is kept verbatim.
    assert_eq!(
        get_json(&s, "/api/users/imported").await.1["password_hash"],
        app["password_hash"]
    );
    let (st, body) = put(
        &s,
        "/api/users/imported",
        json!({"password_hash": "!!!", "tags": ""}),
    )
    .await;
    assert_eq!(st, 400, "{body}");
    s.shutdown().await;
}

#[tokio::test]
async fn vhosts_are_created_used_and_deleted_with_everything_in_them() {
    let s = start().await;
    let api = api(&s);
    api.create_vhost(&VirtualHostParams {
        name: "v1",
        description: Some("first"),
        tags: Some(vec!["a", "b"]),
        default_queue_type: None,
        tracing: false,
    })
    .await
    .unwrap();
    let v = api.get_vhost("v1").await.unwrap();
    assert_eq!(v.description.as_deref(), Some("first"));
    // The creating user gets full permissions, as in RabbitMQ.
    let perms = api.list_permissions_in("v1").await.unwrap();
    assert_eq!(perms.len(), 1);
    assert_eq!(
        (perms[0].user.as_str(), perms[0].configure.as_str()),
        ("guest", ".*")
    );
    // Its amq.* exchanges exist.
    let (_, xs) = get_json(&s, "/api/exchanges/v1").await;
    let names: Vec<&str> = xs
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "",
            "amq.direct",
            "amq.fanout",
            "amq.headers",
            "amq.match",
            "amq.topic"
        ]
    );
    // A second PUT updates (204) and replaces the metadata.
    let (st, _) = put(&s, "/api/vhosts/v1", json!({"description": "second"})).await;
    assert_eq!(st, 204);
    let (_, j) = get_json(&s, "/api/vhosts/v1").await;
    assert_eq!(
        (j["description"].clone(), j["tags"].clone()),
        (json!("second"), json!([]))
    );

    // Usable over AMQP at once.
    let c = connect_as(&s, "guest", "guest", "v1")
        .await
        .expect("connect to v1");
    let events = c.events_listener();
    let ch = c.create_channel().await.unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare("vq".into(), durable, Default::default())
        .await
        .unwrap();
    ch.queue_bind(
        "vq".into(),
        "amq.direct".into(),
        "k".into(),
        Default::default(),
        Default::default(),
    )
    .await
    .unwrap();
    ch.basic_publish(
        "amq.direct".into(),
        "k".into(),
        Default::default(),
        b"m",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    eventually(|| {
        let api = &api;
        async move {
            api.get_queue_info("v1", "vq")
                .await
                .is_ok_and(|q| q.message_count == 1)
        }
    })
    .await;
    assert_eq!(get_json(&s, "/api/queues/v1/vq").await.0, 200);

    // Delete: the connection is closed with RabbitMQ's reason, everything goes.
    api.delete_vhost("v1", false).await.unwrap();
    let err = within(async {
        use futures_lite::StreamExt;
        let mut events = std::pin::pin!(events);
        loop {
            if let Some(lapin::Event::Error(e)) = events.next().await {
                break e.to_string();
            }
        }
    })
    .await;
    assert!(
        err.contains("CONNECTION_FORCED - vhost 'v1' is deleted"),
        "{err}"
    );
    assert_eq!(get_json(&s, "/api/vhosts/v1").await.0, 404);
    assert_eq!(get_json(&s, "/api/queues/v1/vq").await.0, 404);
    assert_eq!(get_json(&s, "/api/vhosts/v1/permissions").await.0, 404);
    assert!(api
        .list_permissions()
        .await
        .unwrap()
        .iter()
        .all(|p| p.vhost != "v1"));
    assert_eq!(
        raw(&s, "DELETE", "/api/vhosts/v1", Some(GUEST), "").await.0,
        404
    );
    // An unknown vhost is refused at connection.open.
    let e = connect_as(&s, "guest", "guest", "v1").await.unwrap_err();
    assert!(e.to_string().contains("NOT_ALLOWED"), "{e}");
    // Re-created, it starts empty.
    let (st, _) = raw(&s, "PUT", "/api/vhosts/v1", Some(GUEST), "").await;
    assert_eq!(st, 201);
    assert_eq!(get_json(&s, "/api/queues/v1/vq").await.0, 404);
    s.shutdown().await;
}

#[tokio::test]
async fn permissions_are_set_read_and_cleared() {
    let s = start().await;
    let api = api(&s);
    put(&s, "/api/users/pat", json!({"password": "pw", "tags": ""})).await;
    put(&s, "/api/vhosts/pv", json!({})).await;
    api.declare_permissions(&Permissions {
        user: "pat",
        vhost: "pv",
        configure: "^pat\\.",
        write: ".*",
        read: "",
    })
    .await
    .unwrap();
    let p = api.get_permissions("pv", "pat").await.unwrap();
    assert_eq!(
        (p.configure.as_str(), p.write.as_str(), p.read.as_str()),
        ("^pat\\.", ".*", "")
    );
    let (st, _) = put(
        &s,
        "/api/permissions/pv/pat",
        json!({"configure": ".*", "write": ".*", "read": ".*"}),
    )
    .await;
    assert_eq!(st, 204, "an update");
    let (st, _) = put(
        &s,
        "/api/permissions/%2F/pat",
        json!({"configure": "", "write": "", "read": ".*"}),
    )
    .await;
    assert_eq!(st, 201);
    assert_eq!(api.list_permissions_of("pat").await.unwrap().len(), 2);
    assert_eq!(
        api.list_permissions().await.unwrap().len(),
        4,
        "guest on / and pv, pat on both"
    );

    // Errors as RabbitMQ: a bad pattern and missing keys are 400s; PUT
    // with an unknown end is 400 vhost_or_user_not_found; GET/DELETE 404.
    let (st, body) = put(
        &s,
        "/api/permissions/pv/pat",
        json!({"configure": "(", "write": ".*", "read": ".*"}),
    )
    .await;
    assert_eq!(st, 400);
    assert!(reason(&body).starts_with("invalid_regexp"), "{body}");
    assert_eq!(
        api.get_permissions("pv", "pat").await.unwrap().configure,
        ".*",
        "unchanged"
    );
    let (st, body) = put(&s, "/api/permissions/pv/pat", json!({"configure": "x"})).await;
    assert_eq!(
        (st, reason(&body).as_str()),
        (400, "[{key_missing,write},{key_missing,read}]")
    );
    let (st, body) = put(
        &s,
        "/api/permissions/pv/nobody",
        json!({"configure": "", "write": "", "read": ""}),
    )
    .await;
    assert_eq!(
        (st, reason(&body).as_str()),
        (400, "vhost_or_user_not_found")
    );
    let (st, _) = put(
        &s,
        "/api/permissions/novhost/pat",
        json!({"configure": "", "write": "", "read": ""}),
    )
    .await;
    assert_eq!(st, 400);
    assert_eq!(get_json(&s, "/api/permissions/pv/nobody").await.0, 404);
    assert_eq!(get_json(&s, "/api/permissions/novhost/pat").await.0, 404);

    let (st, _) = raw(&s, "DELETE", "/api/permissions/pv/pat", Some(GUEST), "").await;
    assert_eq!(st, 204);
    assert_eq!(get_json(&s, "/api/permissions/pv/pat").await.0, 404);
    assert_eq!(
        raw(&s, "DELETE", "/api/permissions/pv/pat", Some(GUEST), "")
            .await
            .0,
        404
    );
    // Deleting the user clears the rest of its permissions.
    api.delete_user("pat", false).await.unwrap();
    assert!(api
        .list_permissions()
        .await
        .unwrap()
        .iter()
        .all(|p| p.user != "pat"));
    assert_eq!(
        get_json(&s, "/api/topic-permissions").await,
        (200, json!([]))
    );
    s.shutdown().await;
}

#[tokio::test]
async fn endpoints_need_rabbitmq_tags() {
    let s = start().await;
    for (name, tags) in [("plain", ""), ("mgmt", "management"), ("mon", "monitoring")] {
        put(
            &s,
            &format!("/api/users/{name}"),
            json!({"password": "pw", "tags": tags}),
        )
        .await;
    }
    let plain = basic("plain", "pw");
    let mgmt = basic("mgmt", "pw");
    let mon = basic("mon", "pw");

    // A valid user without a management tag: 401, no new login prompt.
    let (st, body) = raw(&s, "GET", "/api/overview", Some(&plain), "").await;
    assert_eq!(st, 401);
    let j: J = serde_json::from_str(&body).unwrap();
    assert_eq!(
        j,
        json!({"error": "not_authorised", "reason": "Not management user"})
    );
    // But it may use AMQP.
    grant(&s, "plain").await;
    let c = connect_as(&s, "plain", "pw", "/")
        .await
        .expect("AMQP needs no tag");
    // Closed, so the connection lists below hold only the ones made there.
    c.close(200, "bye".into()).await.unwrap();
    // A wrong password is RabbitMQ's "Login failed".
    let (st, body) = raw(&s, "GET", "/api/overview", Some(&basic("mgmt", "nope")), "").await;
    assert_eq!((st, reason(&body).as_str()), (401, "Login failed"));

    // Monitoring: node views yes, admin endpoints no.
    assert_eq!(raw(&s, "GET", "/api/overview", Some(&mon), "").await.0, 200);
    let (st, body) = raw(&s, "GET", "/api/users", Some(&mon), "").await;
    assert_eq!(st, 401);
    assert_eq!(reason(&body), "Not administrator user");
    let (st, _) = raw(&s, "PUT", "/api/vhosts/x", Some(&mon), "").await;
    assert_eq!(st, 401);
    assert_eq!(
        raw(&s, "GET", "/api/definitions", Some(&mon), "").await.0,
        401
    );
    assert_ne!(raw(&s, "GET", "/api/nodes", Some(&mon), "").await.0, 401);
    assert_eq!(
        raw(&s, "GET", "/api/connections", Some(&mon), "").await.0,
        200
    );
    // As in RabbitMQ, a vhost's objects need a permission there (or administrator).
    assert_eq!(
        raw(&s, "GET", "/api/queues/%2F", Some(&mon), "").await.0,
        401
    );

    // Management: the basics, but not node views nor other vhosts.
    assert_eq!(raw(&s, "GET", "/api/whoami", Some(&mgmt), "").await.0, 200);
    put(&s, "/api/vhosts/other", json!({})).await;
    put(&s, "/api/queues/other/oq", json!({})).await;
    put(&s, "/api/queues/%2F/rq", json!({})).await;
    let names = |j: &J, f: &str| -> Vec<String> {
        j.as_array()
            .unwrap()
            .iter()
            .map(|i| i[f].as_str().unwrap().to_owned())
            .collect()
    };
    let get_as = |who: String, path: &'static str| {
        let s = &s;
        async move {
            let (st, body) = raw(s, "GET", path, Some(&who), "").await;
            assert_eq!(st, 200, "{path}: {body}");
            serde_json::from_str::<J>(&body).unwrap()
        }
    };
    // Lists show a plain management user only the vhosts it may use.
    assert_eq!(
        names(&get_as(mgmt.clone(), "/api/vhosts").await, "name"),
        Vec::<String>::new()
    );
    assert_eq!(
        names(&get_as(mgmt.clone(), "/api/queues").await, "name"),
        Vec::<String>::new()
    );
    assert_eq!(
        names(&get_as(mon.clone(), "/api/queues").await, "name"),
        ["rq", "oq"]
    );
    let (st, body) = raw(&s, "GET", "/api/nodes", Some(&mgmt), "").await;
    assert_eq!((st, reason(&body).as_str()), (401, "Not monitor user"));
    let (st, body) = raw(&s, "GET", "/api/queues/%2F", Some(&mgmt), "").await;
    assert_eq!(
        (st, reason(&body).as_str()),
        (401, "User not authorised to access virtual host")
    );
    put(
        &s,
        "/api/permissions/%2F/mgmt",
        json!({"configure": ".*", "write": ".*", "read": ".*"}),
    )
    .await;
    assert_eq!(
        raw(&s, "GET", "/api/queues/%2F", Some(&mgmt), "").await.0,
        200
    );
    assert_eq!(
        names(&get_as(mgmt.clone(), "/api/vhosts").await, "name"),
        ["/"]
    );
    assert_eq!(
        names(&get_as(mgmt.clone(), "/api/queues").await, "name"),
        ["rq"]
    );
    let paged = get_as(mgmt.clone(), "/api/exchanges?page=1").await;
    if paged.is_object() {
        // With the pagination helper merged: filtered items, fixed item_count.
        assert!(paged["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["vhost"] == "/"));
        assert_eq!(
            paged["item_count"],
            json!(paged["items"].as_array().unwrap().len())
        );
    }
    // A management user may see and close its own connection only.
    let c = connect_as(&s, "mgmt", "pw", "/").await.unwrap();
    let _other = connect(&s).await;
    let api = api(&s);
    let conns = api.list_connections().await.unwrap();
    let mine = conns
        .iter()
        .find(|x| x.username == "mgmt")
        .unwrap()
        .name
        .clone();
    let theirs = conns
        .iter()
        .find(|x| x.username == "guest")
        .unwrap()
        .name
        .clone();
    let enc = |n: &str| n.replace(' ', "%20").replace('>', "%3E");
    // Its connection list holds its own connection only; monitoring sees all.
    assert_eq!(
        names(&get_as(mgmt.clone(), "/api/connections").await, "name"),
        vec![mine.clone()]
    );
    assert_eq!(
        get_as(mon.clone(), "/api/connections")
            .await
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        raw(
            &s,
            "GET",
            &format!("/api/connections/{}", enc(&mine)),
            Some(&mgmt),
            ""
        )
        .await
        .0,
        200
    );
    assert_eq!(
        raw(
            &s,
            "GET",
            &format!("/api/connections/{}", enc(&theirs)),
            Some(&mgmt),
            ""
        )
        .await
        .0,
        401
    );
    assert_eq!(
        raw(
            &s,
            "DELETE",
            &format!("/api/connections/{}", enc(&mine)),
            Some(&mgmt),
            ""
        )
        .await
        .0,
        204
    );
    eventually(|| {
        let c = &c;
        async move { !c.status().connected() }
    })
    .await;
    s.shutdown().await;
}

#[tokio::test]
async fn users_vhosts_and_permissions_survive_a_restart() {
    let dir = temp_dir("admin");
    {
        let s = start_on(&dir).await;
        put(
            &s,
            "/api/users/dave",
            json!({"password": "pw", "tags": "management"}),
        )
        .await;
        put(
            &s,
            "/api/vhosts/keep",
            json!({"description": "kept", "tags": "t1"}),
        )
        .await;
        put(&s, "/api/vhosts/gone", json!({})).await;
        put(
            &s,
            "/api/permissions/keep/dave",
            json!({"configure": "^d", "write": ".*", "read": ".*"}),
        )
        .await;
        // The configured user's password changed through the API.
        put(
            &s,
            "/api/users/guest",
            json!({"password": "changed", "tags": "administrator"}),
        )
        .await;
        let g = basic("guest", "changed");
        let c = connect_as(&s, "guest", "changed", "keep").await.unwrap();
        let ch = c.create_channel().await.unwrap();
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare("kq".into(), durable, Default::default())
            .await
            .unwrap();
        c.close(200, "bye".into()).await.unwrap();
        let (st, _) = raw(&s, "DELETE", "/api/vhosts/gone", Some(&g), "").await;
        assert_eq!(st, 204);
        s.shutdown().await;
    }
    let s = start_on(&dir).await;
    // Config users are seeded on the first start only: the API's change stays.
    assert!(connect_as(&s, "guest", "guest", "/").await.is_err());
    let g = basic("guest", "changed");
    connect_as(&s, "dave", "pw", "keep")
        .await
        .expect("dave kept");
    let (st, body) = raw(&s, "GET", "/api/vhosts/keep", Some(&g), "").await;
    assert_eq!(st, 200);
    let j: J = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (j["description"].clone(), j["tags"].clone()),
        (json!("kept"), json!(["t1"]))
    );
    let (st, body) = raw(&s, "GET", "/api/permissions/keep/dave", Some(&g), "").await;
    assert_eq!(st, 200);
    assert_eq!(serde_json::from_str::<J>(&body).unwrap()["configure"], "^d");
    assert_eq!(
        raw(&s, "GET", "/api/queues/keep/kq", Some(&g), "").await.0,
        200
    );
    assert_eq!(
        raw(&s, "GET", "/api/vhosts/gone", Some(&g), "").await.0,
        404
    );
    let (_, body) = raw(&s, "GET", "/api/permissions", Some(&g), "").await;
    let perms: J = serde_json::from_str(&body).unwrap();
    assert_eq!(
        perms.as_array().unwrap().len(),
        3,
        "guest on / and keep, dave on keep: {perms}"
    );
    s.shutdown().await;
}

/// The items of a definitions section, as a set (order does not matter).
fn set(d: &J, key: &str) -> Vec<J> {
    let mut v = d[key].as_array().cloned().unwrap_or_default();
    v.sort_by_key(|a| a.to_string());
    v
}

fn assert_same(a: &J, b: &J, key: &str) {
    let (x, y) = (set(a, key), set(b, key));
    assert_eq!(x.len(), y.len(), "{key}: {x:?} vs {y:?}");
    for i in &x {
        assert!(y.contains(i), "{key}: {i} missing from the export");
    }
}

#[tokio::test]
async fn a_rabbitmq_export_imports_and_exports_back_the_same() {
    let s = start().await;
    let api = api(&s);
    let fixture: J = serde_json::from_str(FIXTURE).unwrap();
    api.import_definitions(fixture.clone()).await.unwrap();
    let (st, export) = get_json(&s, "/api/definitions").await;
    assert_eq!(st, 200);
    for key in [
        "users",
        "vhosts",
        "permissions",
        "topic_permissions",
        "parameters",
        "global_parameters",
        "policies",
        "queues",
        "exchanges",
        "bindings",
    ] {
        assert_same(&fixture, &export, key);
    }
    assert_eq!(export["product_name"], "Warren");
    assert!(export["rabbit_version"].is_string());
    // rabbitmq_http_client reads the export with its own types.
    let typed = api.export_cluster_wide_definitions_as_data().await.unwrap();
    assert!(typed.find_queue("fixture", "app.orders").is_some());
    assert!(typed.find_policy("fixture", "ttl-policy").is_some());

    // The imported objects are live: users log in, routing works.
    let c = connect_as(&s, "fx-app", "app-secret", "fixture")
        .await
        .expect("fx-app");
    let ch = c.create_channel().await.unwrap();
    ch.basic_publish(
        "app.topic".into(),
        "orders.new".into(),
        Default::default(),
        b"o",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    eventually(|| {
        let api = &api;
        async move {
            api.get_queue_info("fixture", "app.orders")
                .await
                .is_ok_and(|q| q.message_count == 1)
        }
    })
    .await;

    // The per-vhost form: RabbitMQ's keys, no vhost fields.
    let (st, v) = get_json(&s, "/api/definitions/fixture").await;
    assert_eq!(st, 200);
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "bindings",
            "exchanges",
            "parameters",
            "policies",
            "queues",
            "rabbit_version"
        ]
    );
    assert_eq!(v["queues"].as_array().unwrap().len(), 4);
    assert!(v["queues"][0].get("vhost").is_none());
    assert_eq!(get_json(&s, "/api/definitions/nope").await.0, 400);
    // ... and imports into another vhost.
    put(&s, "/api/vhosts/copy", json!({})).await;
    let (st, body) = raw(
        &s,
        "POST",
        "/api/definitions/copy",
        Some(GUEST),
        &v.to_string(),
    )
    .await;
    assert_eq!(st, 204, "{body}");
    let (_, copy) = get_json(&s, "/api/definitions/copy").await;
    for key in ["queues", "exchanges", "bindings"] {
        assert_same(&v, &copy, key);
    }
    // Policies keep their `vhost` field in this form, as in RabbitMQ.
    assert_eq!(v["policies"][0]["vhost"], "fixture");
    assert_eq!(copy["policies"][0]["vhost"], "copy");
    assert_eq!(
        copy["policies"][0]["definition"],
        v["policies"][0]["definition"]
    );
    let (st, _) = raw(&s, "POST", "/api/definitions/nope", Some(GUEST), "{}").await;
    assert_eq!(st, 404);
    s.shutdown().await;
}

#[tokio::test]
async fn bad_definitions_are_refused_whole() {
    let s = start().await;
    let (st, body) = raw(&s, "POST", "/api/definitions", Some(GUEST), "{\"vhosts\":").await;
    assert_eq!((st, reason(&body).as_str()), (400, "failed_to_parse_json"));
    let (st, _) = raw(&s, "POST", "/api/definitions", Some(GUEST), "[1]").await;
    assert_eq!(st, 400);
    // An unknown exchange type: 400 and nothing of the file applied.
    let doc = json!({
        "vhosts": [{"name": "half"}],
        "queues": [{"name": "hq", "vhost": "half", "durable": true, "auto_delete": false, "arguments": {}}],
        "exchanges": [{"name": "hx", "vhost": "half", "type": "bogus", "durable": true,
                       "auto_delete": false, "internal": false, "arguments": {}}],
    });
    let (st, body) = raw(
        &s,
        "POST",
        "/api/definitions",
        Some(GUEST),
        &doc.to_string(),
    )
    .await;
    assert_eq!(st, 400);
    assert!(reason(&body).contains("bogus"), "{body}");
    assert_eq!(get_json(&s, "/api/vhosts/half").await.0, 404);
    // A bad permission pattern or unknown user likewise.
    let doc = json!({"permissions": [{"user": "nobody", "vhost": "/", "configure": "", "write": "", "read": ""}]});
    assert_eq!(
        raw(
            &s,
            "POST",
            "/api/definitions",
            Some(GUEST),
            &doc.to_string()
        )
        .await
        .0,
        400
    );
    // The RabbitMQ UI's multipart upload works too.
    let body = "--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"d.json\"\r\nContent-Type: application/json\r\n\r\n{\"vhosts\":[{\"name\":\"uploaded\"}]}\r\n--B--\r\n";
    let auth = format!("Basic {GUEST}");
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "multipart/form-data; boundary=B"),
    ];
    let (status, _, _) =
        http_request(s.http_addr(), "POST", "/api/definitions", &headers, body).await;
    assert_eq!(status, 204);
    assert_eq!(get_json(&s, "/api/vhosts/uploaded").await.0, 200);
    s.shutdown().await;
}

async fn post_defs(s: &Server, doc: &J) -> (u16, String) {
    raw(s, "POST", "/api/definitions", Some(GUEST), &doc.to_string()).await
}

#[tokio::test]
async fn an_import_with_a_bad_binding_or_exchange_applies_nothing() {
    let s = start().await;
    // The review's case: a binding from a missing exchange after a user.
    let doc = json!({
        "users": [{"name": "x", "password": "p", "tags": ""}],
        "bindings": [{"vhost": "/", "source": "nope", "destination": "q",
                      "destination_type": "queue", "routing_key": "", "arguments": {}}],
    });
    let (st, body) = post_defs(&s, &doc).await;
    assert_eq!(st, 400, "{body}");
    assert!(reason(&body).contains("nope"), "{body}");
    assert_eq!(get_json(&s, "/api/users/x").await.0, 404);
    // A binding to a queue that neither exists nor is in the file.
    let doc = json!({
        "vhosts": [{"name": "bv"}],
        "exchanges": [{"name": "bx", "vhost": "bv", "type": "direct", "durable": true,
                       "auto_delete": false, "internal": false, "arguments": {}}],
        "bindings": [{"vhost": "bv", "source": "bx", "destination": "missing",
                      "destination_type": "queue", "routing_key": "k", "arguments": {}}],
    });
    let (st, body) = post_defs(&s, &doc).await;
    assert_eq!(st, 400, "{body}");
    assert_eq!(get_json(&s, "/api/vhosts/bv").await.0, 404);
    // Exchange arguments its type refuses (Exchange::new's check).
    let doc = json!({
        "users": [{"name": "y", "password": "p", "tags": ""}],
        "exchanges": [{"name": "ch", "vhost": "/", "type": "x-consistent-hash", "durable": true,
                       "auto_delete": false, "internal": false,
                       "arguments": {"hash-header": "h", "hash-property": "message_id"}}],
    });
    let (st, body) = post_defs(&s, &doc).await;
    assert_eq!(st, 400, "{body}");
    assert_eq!(get_json(&s, "/api/users/y").await.0, 404);
    assert_eq!(get_json(&s, "/api/exchanges/%2F/ch").await.0, 404);
    // Binding arguments the router refuses (a bad x-match), and a binding
    // from the default exchange.
    for (source, args) in [("amq.headers", json!({"x-match": "some"})), ("", json!({}))] {
        let doc = json!({
            "users": [{"name": "z", "password": "p", "tags": ""}],
            "queues": [{"name": "zq", "vhost": "/", "durable": true, "auto_delete": false, "arguments": {}}],
            "bindings": [{"vhost": "/", "source": source, "destination": "zq",
                          "destination_type": "queue", "routing_key": "", "arguments": args}],
        });
        let (st, body) = post_defs(&s, &doc).await;
        assert_eq!(st, 400, "{source}: {body}");
        assert_eq!(get_json(&s, "/api/users/z").await.0, 404);
        assert_eq!(get_json(&s, "/api/queues/%2F/zq").await.0, 404);
    }
    // Ends declared in the same file (in a new vhost, to its built-in
    // exchanges too) or already there are fine.
    let doc = json!({
        "vhosts": [{"name": "ok"}],
        "queues": [{"name": "oq", "vhost": "ok", "durable": true, "auto_delete": false, "arguments": {}}],
        "exchanges": [{"name": "ox", "vhost": "ok", "type": "topic", "durable": true,
                       "auto_delete": false, "internal": false, "arguments": {}}],
        "bindings": [
            {"vhost": "ok", "source": "ox", "destination": "oq", "destination_type": "queue",
             "routing_key": "a.#", "arguments": {}},
            {"vhost": "ok", "source": "amq.topic", "destination": "ox", "destination_type": "exchange",
             "routing_key": "b", "arguments": {}},
            {"vhost": "/", "source": "amq.direct", "destination": "amq.fanout",
             "destination_type": "exchange", "routing_key": "c", "arguments": {}},
        ],
    });
    let (st, body) = post_defs(&s, &doc).await;
    assert_eq!(st, 204, "{body}");
    let (_, b) = get_json(&s, "/api/bindings/ok").await;
    let keys: Vec<&str> = b
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["source"] != "")
        .map(|b| b["routing_key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["b", "a.#"], "{b}");
    s.shutdown().await;
}

#[tokio::test]
async fn a_large_import_is_durable_once_it_answers_and_a_vhost_delete_too() {
    let dir = temp_dir("bulk-import");
    let s = start_on(&dir).await;
    let n = 300;
    let queues: Vec<J> = (0..n)
        .map(|i| json!({"name": format!("q{i}"), "vhost": "bulk", "durable": true, "auto_delete": false, "arguments": {}}))
        .collect();
    let bindings: Vec<J> = (0..n)
        .map(|i| json!({"vhost": "bulk", "source": "amq.direct", "destination": format!("q{i}"),
                        "destination_type": "queue", "routing_key": format!("k{i}"), "arguments": {}}))
        .collect();
    let doc = json!({"vhosts": [{"name": "bulk"}, {"name": "gone"}], "queues": queues, "bindings": bindings,
        "exchanges": [{"name": "gx", "vhost": "gone", "type": "fanout", "durable": true,
                       "auto_delete": false, "internal": false, "arguments": {}}]});
    let (st, body) = post_defs(&s, &doc).await;
    assert_eq!(st, 204, "{body}");
    let (st, _) = raw(&s, "DELETE", "/api/vhosts/gone", Some(GUEST), "").await;
    assert_eq!(st, 204);
    s.shutdown().await;
    let s = start_on(&dir).await;
    let (_, qs) = get_json(&s, "/api/queues/bulk").await;
    assert_eq!(qs.as_array().map(Vec::len), Some(n));
    let (_, bs) = get_json(&s, "/api/exchanges/bulk/amq.direct/bindings/source").await;
    assert_eq!(bs.as_array().map(Vec::len), Some(n));
    assert_eq!(get_json(&s, "/api/vhosts/gone").await.0, 404);
    assert_eq!(get_json(&s, "/api/exchanges/gone/gx").await.0, 404);
    s.shutdown().await;
}

#[tokio::test]
async fn a_management_user_pages_only_its_vhosts() {
    let s = start().await;
    for v in ["pa", "pb"] {
        assert_eq!(put(&s, &format!("/api/vhosts/{v}"), json!({})).await.0, 201);
    }
    for i in 0..30 {
        let (st, _) = put(&s, &format!("/api/queues/pa/a{i:02}"), json!({})).await;
        assert_eq!(st, 201);
    }
    for i in 0..3 {
        let (st, _) = put(&s, &format!("/api/queues/pb/b{i}"), json!({})).await;
        assert_eq!(st, 201);
    }
    let (st, _) = put(
        &s,
        "/api/users/pm",
        json!({"password": "pw", "tags": "management"}),
    )
    .await;
    assert_eq!(st, 201);
    let perm = json!({"configure": ".*", "write": ".*", "read": ".*"});
    assert_eq!(put(&s, "/api/permissions/pb/pm", perm).await.0, 201);
    let me = basic("pm", "pw");
    let (st, body) = raw(&s, "GET", "/api/queues?page=1&page_size=10", Some(&me), "").await;
    assert_eq!(st, 200, "{body}");
    let j: J = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = j["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["b0", "b1", "b2"], "{j}");
    assert_eq!(
        (
            &j["item_count"],
            &j["filtered_count"],
            &j["total_count"],
            &j["page_count"]
        ),
        (&json!(3), &json!(3), &json!(3), &json!(1)),
        "{j}"
    );
    // The same for exchanges: pb's 6 (amq.* and the default), none of pa's.
    let (_, body) = raw(
        &s,
        "GET",
        "/api/exchanges?page=1&page_size=5",
        Some(&me),
        "",
    )
    .await;
    let j: J = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (&j["item_count"], &j["total_count"]),
        (&json!(5), &json!(6)),
        "{j}"
    );
    assert!(j["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["vhost"] == "pb"));
    // The administrator still sees and counts everything.
    let (_, j) = get_json(&s, "/api/queues?page=1&page_size=10").await;
    assert_eq!(
        (&j["item_count"], &j["total_count"]),
        (&json!(10), &json!(33)),
        "{j}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn an_imported_md5_user_from_older_rabbitmq_logs_in() {
    let s = start().await;
    // base64(salt ++ md5(salt ++ "legacy-pw")), rabbit_password_hashing_md5.
    let defs = r#"{"users":[{"name":"old-md5","password_hash":"AQIDBKVyDwFlk2RWnVmGsifoA2M=",
        "hashing_algorithm":"rabbit_password_hashing_md5","tags":""}],
        "permissions":[{"user":"old-md5","vhost":"/","configure":".*","write":".*","read":".*"}]}"#;
    let (status, body) = raw(&s, "POST", "/api/definitions", Some(GUEST), defs).await;
    assert!(
        status == 204 || status == 201 || status == 200,
        "{status} {body}"
    );
    let url = |pw: &str| format!("amqp://old-md5:{pw}@{}/%2f", s.amqp_addr());
    lapin::Connection::connect(&url("legacy-pw"), Default::default())
        .await
        .expect("the MD5 user logs in");
    assert!(
        lapin::Connection::connect(&url("wrong"), Default::default())
            .await
            .is_err()
    );
}
