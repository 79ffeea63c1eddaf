//! Limits: max_message_size and the connection's budget for unfinished
//! bodies (raw frames), vhost limits (max-connections, max-queues) and
//! user limits (max-connections, max-channels) with RabbitMQ 3.10.8's
//! codes and texts (checked against it), their API shapes, persistence and
//! definitions; connection_max; the HTTP listeners' connection bound and
//! timeouts.

mod common;

use amq_protocol::protocol::{basic, channel, connection, queue, AMQPClass};
use common::raw_amqp::{frame_bytes, method_bytes, Raw};
use common::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren::amqp::codec;

impl Raw {
    /// A full handshake as `user` into `vhost`: Ok with the connection
    /// open, or the connection.close that refused it (code, text, class,
    /// method).
    async fn open_as(
        s: &warren::server::Server,
        user: &str,
        pass: &str,
        vhost: &str,
    ) -> Result<Raw, (u16, String, u16, u16)> {
        let mut r = Raw::connect(s).await;
        r.start().await;
        r.start_ok(user, pass, true).await;
        match r.tune_open(vhost).await {
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)) => Ok(r),
            AMQPClass::Connection(connection::AMQPMethod::Close(c)) => Err((
                c.reply_code,
                c.reply_text.as_str().to_owned(),
                c.class_id,
                c.method_id,
            )),
            other => panic!("{other:?}"),
        }
    }

    async fn open_guest(s: &warren::server::Server) -> Raw {
        Raw::open_as(s, "guest", "guest", "/").await.expect("opens")
    }

    /// basic.publish to the default exchange with routing key `q`, then a
    /// content header announcing `size` bytes (no body yet).
    async fn publish_header(&mut self, ch: u16, q: &str, size: u64) {
        let publish = AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: q.into(),
            mandatory: false,
            immediate: false,
        }));
        let mut b = method_bytes(ch, publish);
        let mut h = vec![0, 60, 0, 0];
        h.extend_from_slice(&size.to_be_bytes());
        h.extend_from_slice(&[0, 0]);
        b.extend(frame_bytes(codec::FRAME_HEADER, ch, &h));
        self.send(&b).await;
    }

    async fn body(&mut self, ch: u16, n: usize) {
        self.send(&frame_bytes(codec::FRAME_BODY, ch, &vec![b'x'; n]))
            .await;
    }

    async fn channel_close_ok(&mut self, ch: u16) {
        self.send(&method_bytes(
            ch,
            AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
        ))
        .await;
    }

    /// The next method must be channel.close on `ch`; answers close-ok
    /// when `ok` and returns (code, text, class, method).
    async fn expect_channel_close(&mut self, ch: u16, ok: bool) -> (u16, String, u16, u16) {
        let f = self.frame().await.expect("a frame");
        assert_eq!(f.channel, ch, "{f:?}");
        match amq_protocol::protocol::parse_class(&f.payload[..])
            .unwrap()
            .1
        {
            AMQPClass::Channel(channel::AMQPMethod::Close(c)) => {
                if ok {
                    self.channel_close_ok(ch).await;
                }
                (
                    c.reply_code,
                    c.reply_text.as_str().to_owned(),
                    c.class_id,
                    c.method_id,
                )
            }
            other => panic!("{other:?}"),
        }
    }

    /// A round trip on `ch` (queue.declare passive of `q`): everything
    /// sent before it was handled. Returns the queue's message count.
    async fn count(&mut self, ch: u16, q: &str) -> u32 {
        self.method_out(
            ch,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: q.into(),
                passive: true,
                durable: false,
                exclusive: false,
                auto_delete: false,
                nowait: false,
                arguments: Default::default(),
            })),
        )
        .await;
        match self.method().await {
            AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)) => ok.message_count,
            other => panic!("{other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Message size and unfinished bodies

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_max_message_size_is_refused_at_its_header() {
    let s = start_with(|c| c.amqp.max_message_size = 1000).await;
    let mut r = Raw::open_guest(&s).await;
    r.open_channel(1).await;
    // Nothing of the body is sent: the header alone is refused.
    r.publish_header(1, "q", 2000).await;
    assert_eq!(
        r.expect_channel_close(1, false).await,
        (
            406,
            "PRECONDITION_FAILED - message size 2000 is larger than configured max size 1000"
                .into(),
            60,
            40
        )
    );
    // The body frames a client had in flight are dropped with the channel.
    r.body(1, 500).await;
    r.channel_close_ok(1).await;
    r.open_channel(2).await;
    r.publish_header(2, "q", 1000).await;
    r.body(2, 1000).await;
    // A round trip on the same channel: the publish above has been routed
    // (to no queue) before the queue exists.
    r.method_out(
        2,
        AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 0,
            global: false,
        })),
    )
    .await;
    assert!(matches!(
        r.method().await,
        AMQPClass::Basic(basic::AMQPMethod::QosOk(_))
    ));
    let c = connect(&s).await;
    let ch = c.create_channel().await.unwrap();
    queue(&ch, "q", false).await;
    r.publish_header(2, "q", 1000).await;
    r.body(2, 1000).await;
    assert_eq!(r.count(2, "q").await, 1, "a body of exactly the max passes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connections_unfinished_bodies_share_one_budget() {
    let s = start_with(|c| {
        c.amqp.max_message_size = 5000;
        c.limits.max_unfinished_body_bytes = 1000;
    })
    .await;
    let c = connect(&s).await;
    let lch = c.create_channel().await.unwrap();
    queue(&lch, "q", false).await;
    let mut r = Raw::open_guest(&s).await;
    for ch in 1..=5 {
        r.open_channel(ch).await;
    }
    // Alone, a body may exceed the budget (up to max_message_size)...
    r.publish_header(1, "q", 3000).await;
    r.body(1, 10).await;
    // ...but then nothing else may start one beside it.
    r.publish_header(2, "q", 10).await;
    assert_eq!(
        r.expect_channel_close(2, true).await,
        (
            406,
            "PRECONDITION_FAILED - message size 10 does not fit beside this connection's other \
             unfinished messages (0 of its 1000 bytes left)"
                .into(),
            60,
            40
        )
    );
    // An empty body takes nothing and passes.
    r.publish_header(3, "q", 0).await;
    r.body(1, 2990).await;
    assert_eq!(r.count(3, "q").await, 2, "the big body completed");
    // Within the budget, bodies interleave freely.
    r.publish_header(3, "q", 500).await;
    r.publish_header(1, "q", 400).await;
    r.body(3, 100).await;
    r.publish_header(4, "q", 200).await;
    let (code, text, _, _) = r.expect_channel_close(4, true).await;
    assert_eq!(code, 406);
    assert!(text.contains("(100 of its 1000 bytes left)"), "{text}");
    r.body(1, 400).await;
    r.body(3, 400).await;
    assert_eq!(r.count(5, "q").await, 4);
    // The refused channel's place is free again.
    r.open_channel(2).await;
    r.publish_header(2, "q", 900).await;
    r.publish_header(5, "q", 100).await;
    r.body(2, 900).await;
    r.body(5, 100).await;
    assert_eq!(r.count(1, "q").await, 6);
}

// ---------------------------------------------------------------------------
// Vhost and user limits

async fn api_call(
    s: &warren::server::Server,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    raw(s, method, &format!("/api{path}"), Some(GUEST), body).await
}

async fn api_ok(s: &warren::server::Server, method: &str, path: &str, body: &str) {
    let (st, b) = api_call(s, method, path, body).await;
    assert!((200..300).contains(&st), "{method} {path}: {st} {b}");
}

/// A user with full permissions on `vhost` (password "p").
async fn user_in(s: &warren::server::Server, user: &str, vhost: &str) {
    api_ok(
        s,
        "PUT",
        &format!("/users/{user}"),
        r#"{"password":"p","tags":""}"#,
    )
    .await;
    let vh = vhost.replace('/', "%2F");
    api_ok(
        s,
        "PUT",
        &format!("/permissions/{vh}/{user}"),
        r#"{"configure":".*","write":".*","read":".*"}"#,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vhost_max_connections_refuses_with_rabbitmqs_530() {
    let s = start().await;
    api_ok(&s, "PUT", "/vhosts/lim", "").await;
    api_ok(
        &s,
        "PUT",
        "/vhost-limits/lim/max-connections",
        r#"{"value": 2}"#,
    )
    .await;
    let a = Raw::open_as(&s, "guest", "guest", "lim").await.unwrap();
    let _b = Raw::open_as(&s, "guest", "guest", "lim").await.unwrap();
    let refused = Raw::open_as(&s, "guest", "guest", "lim")
        .await
        .err()
        .unwrap();
    assert_eq!(
        refused,
        (
            530,
            "NOT_ALLOWED - access to vhost 'lim' refused for user 'guest': connection limit (2) is reached".into(),
            10,
            40
        )
    );
    // Other vhosts are not limited; a closed connection frees its place.
    Raw::open_guest(&s).await;
    drop(a);
    wait_until("the place to be free", Duration::from_secs(10), || async {
        Raw::open_as(&s, "guest", "guest", "lim").await.is_ok()
    })
    .await;
    // 0 allows none; -1 lifts the limit.
    api_ok(
        &s,
        "PUT",
        "/vhost-limits/lim/max-connections",
        r#"{"value": 0}"#,
    )
    .await;
    let (code, text, _, _) = Raw::open_as(&s, "guest", "guest", "lim")
        .await
        .err()
        .unwrap();
    assert_eq!(code, 530);
    assert!(text.ends_with("connection limit (0) is reached"), "{text}");
    api_ok(
        &s,
        "PUT",
        "/vhost-limits/lim/max-connections",
        r#"{"value": -1}"#,
    )
    .await;
    Raw::open_as(&s, "guest", "guest", "lim").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vhost_max_queues_refuses_new_queues_with_406() {
    let s = start().await;
    api_ok(&s, "PUT", "/vhosts/lq", "").await;
    api_ok(&s, "PUT", "/vhost-limits/lq/max-queues", r#"{"value": 1}"#).await;
    let c = connect_to(&s, "lq").await;
    let ch = c.create_channel().await.unwrap();
    queue(&ch, "q1", false).await;
    queue(&ch, "q1", false).await; // a redeclare is no new queue
    let e = ch
        .queue_declare("q2".into(), Default::default(), t())
        .await
        .unwrap_err();
    assert_eq!(
        soft_code(&e),
        (
            406,
            "PRECONDITION_FAILED - cannot declare queue 'q2': queue limit in vhost 'lq' (1) is reached".into()
        )
    );
    // The HTTP API's declare is refused the same way (400, RabbitMQ's text).
    let (st, body) = api_call(&s, "PUT", "/queues/lq/q3", "{}").await;
    assert_eq!(st, 400, "{body}");
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        j,
        serde_json::json!({"error": "bad_request",
            "reason": "cannot declare queue 'q3': queue limit in vhost 'lq' (1) is reached"})
    );
    // Deleting the limit lifts it.
    api_ok(&s, "DELETE", "/vhost-limits/lq/max-queues", "").await;
    let ch = c.create_channel().await.unwrap();
    queue(&ch, "q2", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_limits_refuse_connections_and_channels_with_530() {
    let s = start().await;
    user_in(&s, "lu", "/").await;
    api_ok(
        &s,
        "PUT",
        "/user-limits/lu/max-connections",
        r#"{"value": 1}"#,
    )
    .await;
    api_ok(&s, "PUT", "/user-limits/lu/max-channels", r#"{"value": 2}"#).await;
    let mut a = Raw::open_as(&s, "lu", "p", "/").await.unwrap();
    assert_eq!(
        Raw::open_as(&s, "lu", "p", "/").await.err().unwrap(),
        (
            530,
            "NOT_ALLOWED - connection refused for user 'lu': user connection limit (1) is reached"
                .into(),
            10,
            40
        )
    );
    Raw::open_guest(&s).await; // other users are not limited
    a.open_channel(1).await;
    a.open_channel(2).await;
    a.send(&common::raw_amqp::channel_open(3)).await;
    assert_eq!(
        a.expect_close().await,
        (
            530,
            "NOT_ALLOWED - number of channels opened for user 'lu' has reached the maximum allowed user limit of (2)".into(),
            0,
            0
        )
    );
    // The connection's channels and its place are given back.
    let mut b = Raw::open_as(&s, "lu", "p", "/").await;
    for _ in 0..100 {
        if b.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        b = Raw::open_as(&s, "lu", "p", "/").await;
    }
    let mut b = b.expect("the user's place is free again");
    b.open_channel(1).await;
    b.open_channel(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_api_has_rabbitmqs_shapes_and_errors() {
    let s = start().await;
    api_ok(&s, "PUT", "/vhosts/la", "").await;
    user_in(&s, "lb", "la").await;
    assert_eq!(get_ok(&s, "/api/vhost-limits").await, serde_json::json!([]));
    assert_eq!(
        get_ok(&s, "/api/vhost-limits/la").await,
        serde_json::json!([])
    );
    assert_eq!(get_ok(&s, "/api/user-limits").await, serde_json::json!([]));
    assert_eq!(
        get_ok(&s, "/api/user-limits/lb").await,
        serde_json::json!([])
    );
    api_ok(
        &s,
        "PUT",
        "/vhost-limits/la/max-connections",
        r#"{"value": 2}"#,
    )
    .await;
    api_ok(&s, "PUT", "/vhost-limits/la/max-queues", r#"{"value": 1}"#).await;
    api_ok(&s, "PUT", "/user-limits/lb/max-channels", r#"{"value": 3}"#).await;
    let vl = serde_json::json!([{"vhost": "la", "value": {"max-connections": 2, "max-queues": 1}}]);
    assert_eq!(get_ok(&s, "/api/vhost-limits").await, vl);
    assert_eq!(get_ok(&s, "/api/vhost-limits/la").await, vl);
    let ul = serde_json::json!([{"user": "lb", "value": {"max-channels": 3}}]);
    assert_eq!(get_ok(&s, "/api/user-limits").await, ul);
    assert_eq!(get_ok(&s, "/api/user-limits/lb").await, ul);
    assert_eq!(
        get_ok(&s, "/api/users/lb").await["limits"],
        serde_json::json!({"max-channels": 3})
    );
    // RabbitMQ 3.10.8's statuses and texts for bad requests.
    let bad = |reason: &str| serde_json::json!({"error": "bad_request", "reason": reason});
    for (path, body, want) in [
        (
            "/vhost-limits/la/max-foo",
            r#"{"value": 1}"#,
            bad("Validation failed\n\nUnrecognised terms [{<<\"max-foo\">>,1}] in limits\n"),
        ),
        (
            "/vhost-limits/la/max-queues",
            r#"{"value": "x"}"#,
            bad("Validation failed\n\nmax-queues should be a number, actually was <<\"x\">>\n"),
        ),
        (
            "/vhost-limits/la/max-queues",
            r#"{"value": 1.5}"#,
            bad("Validation failed\n\nmax-queues should be a number, actually was 1.5\n"),
        ),
        (
            "/vhost-limits/la/max-queues",
            r#"{"valu": 1}"#,
            bad("[{key_missing,value}]"),
        ),
        ("/vhost-limits/la/max-queues", "xx", bad("not_json")),
        (
            "/user-limits/lb/max-foo",
            r#"{"value": 2}"#,
            bad("Unrecognised terms [{<<\"max-foo\">>,2}] in user-limits"),
        ),
        (
            "/user-limits/lb/max-channels",
            r#"{"value": "a"}"#,
            bad("max-channels should be a number, actually was <<\"a\">>"),
        ),
        (
            "/user-limits/nobody/max-channels",
            r#"{"value": 2}"#,
            serde_json::json!({"error": "bad_request", "reason": ["no_such_user", "nobody"]}),
        ),
        (
            "/vhost-limits/nope/max-queues",
            r#"{"value": 1}"#,
            serde_json::json!({"error": "not_found", "reason": "vhost_not_found"}),
        ),
    ] {
        let (st, b) = api_call(&s, "PUT", path, body).await;
        let got: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(got, want, "PUT {path} {body}");
        assert_eq!(
            st,
            if path.contains("nope") { 404 } else { 400 },
            "PUT {path} {body}"
        );
    }
    assert_eq!(get_json(&s, "/api/vhost-limits/nope").await.0, 404);
    assert_eq!(get_json(&s, "/api/user-limits/nobody").await.0, 404);
    // Only administrators may set limits.
    let lb = "bGI6cA=="; // lb:p
    api_ok(
        &s,
        "PUT",
        "/users/lb",
        r#"{"password":"p","tags":"management"}"#,
    )
    .await;
    let (st, _) = raw(
        &s,
        "PUT",
        "/api/vhost-limits/la/max-queues",
        Some(lb),
        r#"{"value": 5}"#,
    )
    .await;
    assert_eq!(st, 401);
    // Deleting the last limit leaves none.
    api_ok(&s, "DELETE", "/vhost-limits/la/max-connections", "").await;
    api_ok(&s, "DELETE", "/vhost-limits/la/max-queues", "").await;
    api_ok(&s, "DELETE", "/user-limits/lb/max-channels", "").await;
    assert_eq!(get_ok(&s, "/api/vhost-limits").await, serde_json::json!([]));
    assert_eq!(get_ok(&s, "/api/user-limits").await, serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_persist_and_travel_with_definitions() {
    let dir = temp_dir("limits-restart");
    {
        let s = start_on(dir.path()).await;
        api_ok(&s, "PUT", "/vhosts/lp", "").await;
        user_in(&s, "lu2", "lp").await;
        api_ok(&s, "PUT", "/vhost-limits/lp/max-queues", r#"{"value": 0}"#).await;
        api_ok(
            &s,
            "PUT",
            "/user-limits/lu2/max-connections",
            r#"{"value": 0}"#,
        )
        .await;
        let defs = get_ok(&s, "/api/definitions").await;
        let params = defs["parameters"].as_array().unwrap();
        assert!(
            params.contains(&serde_json::json!({
                "vhost": "lp", "component": "vhost-limits", "name": "limits",
                "value": {"max-queues": 0}
            })),
            "{params:?}"
        );
        let u = defs["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == "lu2")
            .unwrap()
            .clone();
        assert_eq!(u["limits"], serde_json::json!({"max-connections": 0}));
        s.shutdown().await;
    }
    let s = start_on(dir.path()).await;
    assert_eq!(
        get_ok(&s, "/api/vhost-limits/lp").await,
        serde_json::json!([{"vhost": "lp", "value": {"max-queues": 0}}])
    );
    let (code, text, _, _) = Raw::open_as(&s, "lu2", "p", "lp").await.err().unwrap();
    assert_eq!(
        (code, text.contains("user connection limit (0)")),
        (530, true),
        "{text}"
    );
    let c = connect_to(&s, "lp").await;
    let ch = c.create_channel().await.unwrap();
    let e = ch
        .queue_declare("q".into(), Default::default(), t())
        .await
        .unwrap_err();
    assert_eq!(soft_code(&e).0, 406);
    // An import on a fresh broker brings the vhost limit and enforces it.
    let fresh = start().await;
    let doc = serde_json::json!({
        "vhosts": [{"name": "imp"}],
        "permissions": [{"user": "guest", "vhost": "imp", "configure": ".*", "write": ".*", "read": ".*"}],
        "parameters": [{"vhost": "imp", "component": "vhost-limits", "name": "limits", "value": {"max-queues": 1}}],
    });
    api_ok(&fresh, "POST", "/definitions", &doc.to_string()).await;
    let c = connect_to(&fresh, "imp").await;
    let ch = c.create_channel().await.unwrap();
    queue(&ch, "one", false).await;
    let e = ch
        .queue_declare("two".into(), Default::default(), t())
        .await
        .unwrap_err();
    assert_eq!(soft_code(&e).0, 406);
}

// ---------------------------------------------------------------------------
// connection_max and the HTTP listeners

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_connection_max_clients_wait_for_a_free_place() {
    let s = start_with(|c| c.limits.connection_max = 1).await;
    let first = Raw::open_guest(&s).await;
    let mut second = Raw::connect(&s).await;
    second.send(codec::PROTOCOL_HEADER).await;
    // Not refused: it waits (RabbitMQ's ranch stops accepting the same way).
    let mut buf = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(300), second.s.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "the second client was served past connection_max"
    );
    drop(first);
    match second.method().await {
        AMQPClass::Connection(connection::AMQPMethod::Start(_)) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http_connections_are_bounded_and_closed_and_amqp_still_connects() {
    let s = start_with(|c| {
        c.limits.http_max_connections = 4;
        c.limits.http_unauthenticated_timeout_secs = 1;
        c.limits.http_idle_timeout_secs = 1;
    })
    .await;
    let started = tokio::time::Instant::now();
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(tokio::net::TcpStream::connect(s.http_addr()).await.unwrap());
    }
    // Behind 8 silent clients, a 9th asks at once; with 4 served at a
    // time it is answered only once two waves were closed (1 s each).
    let mut asker = tokio::net::TcpStream::connect(s.http_addr()).await.unwrap();
    let req = format!(
        "GET /api/whoami HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {GUEST}\r\nConnection: close\r\n\r\n"
    );
    asker.write_all(req.as_bytes()).await.unwrap();
    // AMQP is untouched by the HTTP port's crowd.
    let c = connect(&s).await;
    c.create_channel().await.unwrap();
    let mut answer = Vec::new();
    within(asker.read_to_end(&mut answer)).await.unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "answered after {:?}: more than 4 HTTP connections were served at once",
        started.elapsed()
    );
    // Every idle socket was closed, without an answer.
    for mut sock in idle {
        let mut buf = [0u8; 64];
        let n = within(sock.read(&mut buf)).await.unwrap_or(0);
        assert_eq!(n, 0, "no answer is expected, only the close");
    }
    // A client that logs in is served, and then closed once idle too.
    let mut sock = tokio::net::TcpStream::connect(s.http_addr()).await.unwrap();
    let req =
        format!("GET /api/whoami HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {GUEST}\r\n\r\n");
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = within(async {
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => break true,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_http_client_is_closed_even_while_busy() {
    let s = start_with(|c| {
        c.limits.http_unauthenticated_timeout_secs = 1;
        c.limits.http_idle_timeout_secs = 60;
    })
    .await;
    // Headers trickle in forever; no request ever completes.
    let mut sock = tokio::net::TcpStream::connect(s.http_addr()).await.unwrap();
    sock.write_all(b"GET /api/overview HTTP/1.1\r\n")
        .await
        .unwrap();
    within(async {
        loop {
            if sock.write_all(b"X-Slow: 1\r\n").await.is_err() {
                return;
            }
            let mut buf = [0u8; 64];
            match tokio::time::timeout(Duration::from_millis(200), sock.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                _ => {}
            }
        }
    })
    .await;
    // A logged-in client stays past that deadline while it keeps asking.
    let mut sock = tokio::net::TcpStream::connect(s.http_addr()).await.unwrap();
    let end = tokio::time::Instant::now() + Duration::from_millis(1500);
    while tokio::time::Instant::now() < end {
        let req =
            format!("GET /api/whoami HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {GUEST}\r\n\r\n");
        sock.write_all(req.as_bytes()).await.unwrap();
        let mut buf = [0u8; 4096];
        let n = within(sock.read(&mut buf)).await.unwrap();
        assert!(
            n > 0 && buf.starts_with(b"HTTP/1.1 200"),
            "closed while logged in"
        );
    }
}
