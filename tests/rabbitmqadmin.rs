//! RabbitMQ's own `rabbitmqadmin` (v1, the Python script Debian's
//! `rabbitmq-server` package installs as /usr/bin/rabbitmqadmin) run against
//! Warren's management API: if RabbitMQ's tool works unchanged, so do the
//! scripts admins have written around it.
//!
//! `.ci/run` installs the package without starting its RabbitMQ (nothing
//! here talks to one); a missing script fails these tests, it never skips
//! them. `WARREN_RABBITMQADMIN` may point at another copy of the script.

mod common;

use common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use serde_json::Value as J;

fn script() -> String {
    std::env::var("WARREN_RABBITMQADMIN").unwrap_or_else(|_| "/usr/bin/rabbitmqadmin".into())
}

/// The output of one `rabbitmqadmin` run.
struct Run {
    ok: bool,
    out: String,
    err: String,
}

/// Runs rabbitmqadmin against `s` with `args`, as `user`/`pass`.
async fn admin_as(s: &warren::server::Server, user: &str, pass: &str, args: &[&str]) -> Run {
    let port = s.http_addr().port().to_string();
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(script())
        .args(["-H", "127.0.0.1", "-P", &port, "-u", user, "-p", pass])
        .args(args);
    let o = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("python3 {} cannot run: {e}", script()));
    let run = Run {
        ok: o.status.success(),
        out: String::from_utf8_lossy(&o.stdout).into_owned(),
        err: String::from_utf8_lossy(&o.stderr).into_owned(),
    };
    assert!(
        std::path::Path::new(&script()).exists(),
        "{} is missing: install Debian's rabbitmq-server package (.ci/run does)",
        script()
    );
    run
}

/// Runs rabbitmqadmin as guest and requires success; returns stdout.
async fn admin(s: &warren::server::Server, args: &[&str]) -> String {
    let r = admin_as(s, "guest", "guest", args).await;
    assert!(
        r.ok,
        "rabbitmqadmin {args:?} failed:\nstdout: {}\nstderr: {}",
        r.out, r.err
    );
    r.out
}

/// A `list ...` in raw JSON, parsed.
async fn list(s: &warren::server::Server, what: &[&str]) -> Vec<J> {
    let mut args = vec!["-f", "raw_json", "list"];
    args.extend_from_slice(what);
    let out = admin(s, &args).await;
    match serde_json::from_str(&out) {
        Ok(J::Array(items)) => items,
        other => panic!("list {what:?}: not a JSON array: {other:?}\n{out}"),
    }
}

fn names(items: &[J], field: &str) -> Vec<String> {
    items
        .iter()
        .filter_map(|i| i[field].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn declare_list_publish_get_purge_delete() {
    let s = start().await;

    let out = admin(&s, &["show", "overview"]).await;
    assert!(out.contains("rabbitmq_version"), "{out}");

    assert!(
        admin(&s, &["declare", "exchange", "name=adm.x", "type=topic"])
            .await
            .contains("exchange declared")
    );
    admin(&s, &["declare", "queue", "name=adm.q", "durable=true"]).await;
    admin(
        &s,
        &[
            "declare",
            "binding",
            "source=adm.x",
            "destination=adm.q",
            "routing_key=a.*",
        ],
    )
    .await;

    let ex = list(&s, &["exchanges"]).await;
    let x = ex
        .iter()
        .find(|e| e["name"] == "adm.x")
        .expect("adm.x listed");
    assert_eq!(x["type"], "topic");
    let qs = list(&s, &["queues"]).await;
    assert!(names(&qs, "name").contains(&"adm.q".to_owned()), "{qs:?}");
    let bs = list(&s, &["bindings"]).await;
    assert!(
        bs.iter().any(|b| b["source"] == "adm.x"
            && b["destination"] == "adm.q"
            && b["routing_key"] == "a.*"),
        "{bs:?}"
    );

    // The table format with rabbitmqadmin's default columns.
    let table = admin(&s, &["list", "queues"]).await;
    assert!(table.contains("adm.q"), "{table}");

    // Publish through the topic exchange; an unmatched key is not routed.
    let out = admin(
        &s,
        &[
            "publish",
            "exchange=adm.x",
            "routing_key=a.b",
            "payload=hello from rabbitmqadmin",
        ],
    )
    .await;
    assert!(out.contains("Message published"), "{out}");
    assert!(!out.contains("NOT routed"), "{out}");
    let out = admin(
        &s,
        &[
            "publish",
            "exchange=adm.x",
            "routing_key=b.b",
            "payload=lost",
        ],
    )
    .await;
    assert!(out.contains("NOT routed"), "{out}");

    let q = list(&s, &["queues", "name", "messages"]).await;
    let q = q.iter().find(|q| q["name"] == "adm.q").unwrap();
    assert_eq!(q["messages"], 1, "{q}");

    // get (requeue), then get and drop.
    let got = admin(&s, &["-f", "raw_json", "get", "queue=adm.q"]).await;
    let got: J = serde_json::from_str(&got).unwrap();
    assert_eq!(got[0]["payload"], "hello from rabbitmqadmin");
    assert_eq!(got[0]["routing_key"], "a.b");
    assert_eq!(got[0]["exchange"], "adm.x");
    let got = admin(
        &s,
        &[
            "-f",
            "raw_json",
            "get",
            "queue=adm.q",
            "ackmode=ack_requeue_false",
        ],
    )
    .await;
    let got: J = serde_json::from_str(&got).unwrap();
    assert_eq!(got[0]["payload"], "hello from rabbitmqadmin");
    assert_eq!(got[0]["redelivered"], true, "requeued by the first get");
    let got = admin(&s, &["-f", "raw_json", "get", "queue=adm.q"]).await;
    assert_eq!(serde_json::from_str::<J>(&got).unwrap(), J::Array(vec![]));

    // Purge.
    for i in 0..3 {
        let p = format!("payload=m{i}");
        admin(&s, &["publish", "routing_key=adm.q", &p]).await;
    }
    let conn = connect(&s).await;
    let ch = conn.create_channel().await.unwrap();
    assert_eq!(passive(&ch, "adm.q").await.unwrap().message_count(), 3);
    assert!(admin(&s, &["purge", "queue", "name=adm.q"])
        .await
        .contains("queue purged"));
    assert_eq!(passive(&ch, "adm.q").await.unwrap().message_count(), 0);

    // Delete the binding, the queue and the exchange.
    admin(
        &s,
        &[
            "delete",
            "binding",
            "source=adm.x",
            "destination_type=queue",
            "destination=adm.q",
            "properties_key=a.*",
        ],
    )
    .await;
    let bs = list(&s, &["bindings"]).await;
    assert!(!bs.iter().any(|b| b["source"] == "adm.x"), "{bs:?}");
    admin(&s, &["delete", "queue", "name=adm.q"]).await;
    admin(&s, &["delete", "exchange", "name=adm.x"]).await;
    assert!(passive(&ch, "adm.q").await.is_err());
    assert!(!names(&list(&s, &["exchanges"]).await, "name").contains(&"adm.x".to_owned()));
}

#[tokio::test]
async fn users_permissions_and_vhosts() {
    let s = start().await;
    admin(&s, &["declare", "vhost", "name=adm-vh"]).await;
    admin(
        &s,
        &[
            "declare",
            "user",
            "name=adm-bob",
            "password=s3cret",
            "tags=administrator",
        ],
    )
    .await;
    admin(
        &s,
        &[
            "declare",
            "permission",
            "vhost=adm-vh",
            "user=adm-bob",
            "configure=.*",
            "write=.*",
            "read=^amq",
        ],
    )
    .await;
    assert!(names(&list(&s, &["vhosts"]).await, "name").contains(&"adm-vh".to_owned()));
    let users = list(&s, &["users"]).await;
    let bob = users.iter().find(|u| u["name"] == "adm-bob").expect("bob");
    // RabbitMQ 3.10 renders tags as a list (older versions as a string).
    let tags = bob["tags"].to_string();
    assert!(tags.contains("administrator"), "{bob}");
    let perms = list(&s, &["permissions"]).await;
    assert!(
        perms
            .iter()
            .any(|p| p["user"] == "adm-bob" && p["vhost"] == "adm-vh" && p["read"] == "^amq"),
        "{perms:?}"
    );

    // The new user and vhost work over AMQP and over the API.
    let url = format!("amqp://adm-bob:s3cret@{}/adm-vh", s.amqp_addr());
    let c = lapin::Connection::connect(&url, Default::default())
        .await
        .expect("bob logs in to adm-vh");
    c.close(200, "bye".into()).await.unwrap();
    let r = admin_as(&s, "adm-bob", "s3cret", &["list", "vhosts"]).await;
    assert!(r.ok && r.out.contains("adm-vh"), "{} {}", r.out, r.err);
    let r = admin_as(&s, "adm-bob", "wrong", &["list", "vhosts"]).await;
    assert!(
        !r.ok && r.err.contains("Access refused"),
        "{} {}",
        r.out,
        r.err
    );

    admin(
        &s,
        &["delete", "permission", "vhost=adm-vh", "user=adm-bob"],
    )
    .await;
    assert!(!list(&s, &["permissions"])
        .await
        .iter()
        .any(|p| p["user"] == "adm-bob"));
    admin(&s, &["delete", "user", "name=adm-bob"]).await;
    assert!(!names(&list(&s, &["users"]).await, "name").contains(&"adm-bob".to_owned()));
    assert!(lapin::Connection::connect(&url, Default::default())
        .await
        .is_err());
    admin(&s, &["delete", "vhost", "name=adm-vh"]).await;
    assert!(!names(&list(&s, &["vhosts"]).await, "name").contains(&"adm-vh".to_owned()));
}

#[tokio::test]
async fn connections_channels_consumers_and_close() {
    let s = start().await;
    let conn = connect(&s).await;
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        "adm.c".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut consumer = ch
        .basic_consume(
            "adm.c".into(),
            "adm-tag".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    // Channel and consumer snapshots refresh once a second.
    eventually(|| async {
        !list(&s, &["channels"]).await.is_empty()
            && list(&s, &["consumers"])
                .await
                .iter()
                .any(|c| c["consumer_tag"] == "adm-tag")
    })
    .await;
    let conns = list(&s, &["connections"]).await;
    assert_eq!(conns.len(), 1, "{conns:?}");
    assert_eq!(conns[0]["user"], "guest");
    let name = conns[0]["name"].as_str().unwrap().to_owned();

    let arg = format!("name={name}");
    assert!(admin(&s, &["close", "connection", &arg])
        .await
        .contains("connection closed"));
    // The client sees the connection closed by the broker.
    within(async { while consumer.next().await.is_some() {} }).await;
    eventually(|| async { !conn.status().connected() }).await;
    eventually(|| async { list(&s, &["connections"]).await.is_empty() }).await;
}

#[tokio::test]
async fn export_then_import_into_another_broker() {
    let a = start().await;
    admin(&a, &["declare", "exchange", "name=exp.x", "type=direct"]).await;
    admin(
        &a,
        &[
            "declare",
            "queue",
            "name=exp.q",
            r#"arguments={"x-max-length": 10}"#,
        ],
    )
    .await;
    admin(
        &a,
        &[
            "declare",
            "binding",
            "source=exp.x",
            "destination=exp.q",
            "routing_key=k",
        ],
    )
    .await;
    admin(
        &a,
        &["declare", "user", "name=exp-u", "password=pw", "tags="],
    )
    .await;
    admin(
        &a,
        &[
            "declare",
            "permission",
            "vhost=/",
            "user=exp-u",
            "configure=.*",
            "write=.*",
            "read=.*",
        ],
    )
    .await;
    // The guard removes `<dir>.json` too, when the test ends.
    let tmp = temp_dir("defs");
    let file = tmp.with_extension("json");
    let f = file.to_str().unwrap();
    admin(&a, &["export", f]).await;
    let defs: J = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert!(
        defs["queues"]
            .as_array()
            .unwrap()
            .iter()
            .any(|q| q["name"] == "exp.q" && q["arguments"]["x-max-length"] == 10),
        "{defs}"
    );

    let b = start().await;
    admin(&b, &["import", f]).await;
    let qs = list(&b, &["queues"]).await;
    let q = qs
        .iter()
        .find(|q| q["name"] == "exp.q")
        .expect("queue imported");
    assert_eq!(q["durable"], true);
    assert_eq!(q["arguments"]["x-max-length"], 10);
    assert!(list(&b, &["bindings"])
        .await
        .iter()
        .any(|x| x["source"] == "exp.x" && x["destination"] == "exp.q" && x["routing_key"] == "k"));
    assert!(names(&list(&b, &["users"]).await, "name").contains(&"exp-u".to_owned()));
    assert!(list(&b, &["permissions"])
        .await
        .iter()
        .any(|p| p["user"] == "exp-u" && p["vhost"] == "/" && p["write"] == ".*"));
    // The imported user's password hash works on the other broker.
    let r = admin_as(&b, "exp-u", "pw", &["list", "queues"]).await;
    // exp-u has no management tag: logged in, but refused as RabbitMQ does.
    assert!(
        !r.ok && r.err.contains("Access refused"),
        "{} {}",
        r.out,
        r.err
    );
    let url = format!("amqp://exp-u:pw@{}/%2f", b.amqp_addr());
    lapin::Connection::connect(&url, Default::default())
        .await
        .expect("imported user logs in over AMQP");
    let _ = std::fs::remove_file(&file);
}

#[tokio::test]
async fn declare_list_and_delete_policies() {
    let s = start().await;
    let out = admin(
        &s,
        &[
            "declare",
            "policy",
            "name=adm-pol",
            "pattern=^adm\\.",
            "definition={\"max-length\": 10, \"alternate-exchange\": \"adm.ae\"}",
            "priority=3",
            "apply-to=all",
        ],
    )
    .await;
    assert!(out.contains("policy declared"), "{out}");
    admin(
        &s,
        &[
            "declare",
            "operator_policy",
            "name=adm-op",
            "pattern=.*",
            "definition={\"max-length\": 5}",
            "apply-to=queues",
        ],
    )
    .await;
    let ps = list(&s, &["policies"]).await;
    let p = ps.iter().find(|p| p["name"] == "adm-pol").expect("listed");
    assert_eq!(p["vhost"], "/");
    assert_eq!(p["pattern"], "^adm\\.");
    assert_eq!(p["priority"], 3);
    assert_eq!(p["apply-to"], "all");
    assert_eq!(p["definition"]["max-length"], 10);
    let ops = list(&s, &["operator_policies"]).await;
    assert_eq!(names(&ops, "name"), ["adm-op"]);

    admin(&s, &["declare", "queue", "name=adm.q"]).await;
    let q = list(&s, &["queues", "name", "policy", "operator_policy"]).await;
    let q = q.iter().find(|q| q["name"] == "adm.q").unwrap();
    assert_eq!(q["policy"], "adm-pol");
    assert_eq!(q["operator_policy"], "adm-op");

    // A bad definition: rabbitmqadmin shows RabbitMQ's reason and fails.
    let r = admin_as(
        &s,
        "guest",
        "guest",
        &[
            "declare",
            "policy",
            "name=bad",
            "pattern=x",
            "definition={\"max-length\": -1}",
        ],
    )
    .await;
    assert!(!r.ok, "{}", r.out);
    assert!(
        r.out.contains("is not a valid maximum length")
            || r.err.contains("is not a valid maximum length"),
        "{} {}",
        r.out,
        r.err
    );

    admin(&s, &["delete", "policy", "name=adm-pol"]).await;
    admin(&s, &["delete", "operator_policy", "name=adm-op"]).await;
    assert!(list(&s, &["policies"]).await.is_empty());
    assert!(list(&s, &["operator_policies"]).await.is_empty());
    s.shutdown().await;
}
