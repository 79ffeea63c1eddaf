//! Super streams (RabbitMQ's partitioned streams) over AMQP 0-9-1: the
//! one-call layout of `rabbitmq-streams add_super_stream`, its removal,
//! the listing of a super stream's partitions, and the consume of a
//! consumer group member on a partition (consumer argument
//! [`SUPER_STREAM_KEY`]).
//!
//! The layout is RabbitMQ's (`rabbit_stream_manager:create_super_stream`):
//! a durable direct exchange `NAME` with the argument `x-super-stream:
//! true`, durable stream queues `NAME-<key>` (keys `0..N-1` by default;
//! `x-queue-leader-locator: balanced` unless given), each bound from the exchange with its key and the binding argument
//! `x-stream-partition-order: <index>`. Warren adds one exchange argument,
//! `x-super-stream-routing: hash`, routing each routing key to one
//! partition by its hash (see `warren_exchanges::partition`).

use super::super::authz::{Caller, Kind};
use super::super::exchange::{Exchange, ExchangeOptions};
use super::super::queue::{ConsumeRequest, Queue, QueueOptions, QueueRef};
use super::super::route::Dest;
use super::super::vhost::Vhost;
use super::super::{BrokerError, ErrorKind, Result};
use super::GROUP_KEY;
use std::sync::Arc;
use warren_exchanges::partition::{self, ORDER_ARG, ROUTING_ARG};
use warren_exchanges::{Routing, Table, Value};

/// The exchange argument marking a super stream, and the consumer
/// argument by which a group member names the super stream it consumes.
pub const SUPER_STREAM_KEY: &str = "x-super-stream";
/// At most this many partitions in one super stream.
pub const MAX_PARTITIONS: usize = 1000;

/// What to create: one partition per binding key, in partition order.
#[derive(Debug, Clone, Default)]
pub struct SuperStreamSpec {
    pub binding_keys: Vec<String>,
    pub routing: Routing,
    /// Stream arguments every partition is declared with
    /// (`x-max-length-bytes`, `x-max-age`, …).
    pub arguments: Table,
}

impl SuperStreamSpec {
    /// `n` partitions keyed `0..n-1`, as `add_super_stream --partitions n`.
    pub fn numbered(n: usize) -> Vec<String> {
        (0..n).map(|i| i.to_string()).collect()
    }
}

/// One partition of a super stream.
#[derive(Clone)]
pub struct Partition {
    /// Its place in partition order (0-based).
    pub index: u32,
    pub binding_key: String,
    pub queue: Arc<Queue>,
}

/// A super stream: its exchange's name and routing, and its partitions.
#[derive(Clone)]
pub struct SuperStreamInfo {
    pub name: String,
    pub routing: Routing,
    pub partitions: Vec<Partition>,
}

/// Whether an exchange is a super stream's (`x-super-stream: true`).
pub fn is_super_stream(ex: &Exchange) -> bool {
    matches!(
        ex.opts.arguments.get(SUPER_STREAM_KEY),
        Some(Value::Bool(true))
    )
}

/// A super stream's partitions: the stream queues bound from its exchange,
/// by `x-stream-partition-order` (those without one last, by key).
fn partitions(ex: &Exchange) -> Vec<Partition> {
    let router = ex.router();
    let mut found: Vec<(i64, String, Arc<Queue>)> = router
        .bindings()
        .iter()
        .filter_map(|b| match &b.destination {
            Dest::Queue(QueueRef(q)) if q.stream().is_some() => Some((
                partition::order(&b.arguments).unwrap_or(i64::MAX),
                b.routing_key.clone(),
                q.clone(),
            )),
            _ => None,
        })
        .collect();
    found.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let mut out: Vec<Partition> = Vec::with_capacity(found.len());
    for (_, key, q) in found {
        if !out.iter().any(|p| Arc::ptr_eq(&p.queue, &q)) {
            out.push(Partition {
                index: out.len() as u32,
                binding_key: key,
                queue: q,
            });
        }
    }
    out
}

fn failed(text: String) -> BrokerError {
    BrokerError::new(ErrorKind::PreconditionFailed, text)
}

impl Vhost {
    /// Creates super stream `name` as `add_super_stream` does; `Ok(false)`
    /// when it exists already with the same partitions (nothing changes).
    /// Every permission is checked before anything is created, and a
    /// failure part-way removes what was created. Creations and deletions
    /// in a vhost run one at a time.
    pub async fn create_super_stream(
        &self,
        name: &str,
        spec: &SuperStreamSpec,
        caller: &Caller,
    ) -> Result<bool> {
        let _one_at_a_time = self.super_streams.lock().await;
        self.create_super_stream_now(name, spec, caller)
    }

    /// [`Self::create_super_stream`], under the vhost's super stream lock.
    fn create_super_stream_now(
        &self,
        name: &str,
        spec: &SuperStreamSpec,
        caller: &Caller,
    ) -> Result<bool> {
        let keys = &spec.binding_keys;
        if name.is_empty() {
            return Err(failed("a super stream needs a name".into()));
        }
        if keys.is_empty() || keys.len() > MAX_PARTITIONS {
            return Err(failed(format!(
                "a super stream has 1 to {MAX_PARTITIONS} partitions, not {}",
                keys.len()
            )));
        }
        if keys.iter().any(String::is_empty) {
            return Err(failed("binding keys must not be empty".into()));
        }
        let names: Vec<String> = keys.iter().map(|k| format!("{name}-{k}")).collect();
        if (1..names.len()).any(|i| names[..i].contains(&names[i])) {
            return Err(failed(format!(
                "Duplicate partition names found {}",
                names.join(", ")
            )));
        }
        if let Ok(ex) = self.exchange(name) {
            let same = is_super_stream(&ex)
                && ex.router().routing() == spec.routing
                && partitions(&ex)
                    .iter()
                    .map(|p| p.queue.name.as_str())
                    .eq(names.iter().map(String::as_str));
            if same {
                return Ok(false);
            }
            return Err(failed(format!("there is already an exchange named {name}")));
        }
        if let Some(q) = names.iter().find(|q| self.queue(q).is_some()) {
            return Err(failed(format!("there is already a queue named {q}")));
        }
        let mut xargs = Table::default();
        xargs.insert(SUPER_STREAM_KEY, Value::Bool(true));
        if spec.routing == Routing::Hash {
            xargs.insert(ROUTING_ARG, Value::LongString(b"hash".to_vec()));
        }
        let mut qargs = spec.arguments.clone();
        qargs.insert("x-queue-type", Value::LongString(b"stream".to_vec()));
        // RabbitMQ's default_super_stream_arguments (3.13): kept, as on
        // any single node it changes nothing.
        if qargs.get("x-queue-leader-locator").is_none() {
            qargs.insert(
                "x-queue-leader-locator",
                Value::LongString(b"balanced".to_vec()),
            );
        }
        let qopts = QueueOptions {
            durable: true,
            exclusive: false,
            auto_delete: false,
            arguments: qargs,
        };
        caller.check_exchange_declare(self, name, "direct", &xargs)?;
        for q in &names {
            caller.check_queue_declare(self, q, &qopts.arguments)?;
            caller.check_bind(Kind::Queue, q, name)?;
        }
        // The partitions' arguments are checked before anything exists.
        super::check_declare(&names[0], &self.name, &qopts)?;
        let xopts = ExchangeOptions {
            durable: true,
            auto_delete: false,
            internal: false,
            arguments: xargs,
        };
        let ex = self.declare_exchange(name, "direct", false, xopts)?;
        let mut made: Vec<&str> = Vec::new();
        let res = names
            .iter()
            .zip(keys)
            .enumerate()
            .try_for_each(|(i, (q, key))| {
                self.declare_queue_as(q, false, qopts.clone(), caller)?;
                made.push(q);
                let mut bargs = Table::default();
                bargs.insert(ORDER_ARG, Value::LongInt(i as i32));
                self.bind_queue(q, name, key, bargs, caller.conn)
            });
        if let Err(e) = res {
            for q in made {
                if let Some(q) = self.queue(q) {
                    self.remove_queue(&q);
                }
            }
            self.remove_exchange(&ex);
            return Err(e);
        }
        tracing::info!(vhost = %self.name, name, partitions = names.len(), routing = spec.routing.as_str(), "super stream created");
        Ok(true)
    }

    /// Deletes super stream `name`: its exchange and its partitions (with
    /// their logs and groups); not while one is being created or deleted.
    pub async fn delete_super_stream(&self, name: &str, caller: &Caller) -> Result<()> {
        let _one_at_a_time = self.super_streams.lock().await;
        self.delete_super_stream_now(name, caller)
    }

    /// [`Self::delete_super_stream`], under the vhost's super stream lock.
    fn delete_super_stream_now(&self, name: &str, caller: &Caller) -> Result<()> {
        let ex = self.exchange(name)?;
        if !is_super_stream(&ex) {
            return Err(failed(format!(
                "exchange '{name}' in vhost '{}' is not a super stream",
                self.name
            )));
        }
        let parts = partitions(&ex);
        caller.check_delete(Kind::Exchange, name)?;
        for p in &parts {
            caller.check_delete(Kind::Queue, &p.queue.name)?;
        }
        self.delete_exchange(name, false)?;
        for p in &parts {
            self.remove_queue(&p.queue);
        }
        tracing::info!(vhost = %self.name, name, partitions = parts.len(), "super stream deleted");
        Ok(())
    }

    /// Super stream `name`, if its exchange is one.
    pub fn super_stream(&self, name: &str) -> Option<SuperStreamInfo> {
        let ex = self.exchange(name).ok()?;
        is_super_stream(&ex).then(|| SuperStreamInfo {
            name: ex.name.clone(),
            routing: ex.router().routing(),
            partitions: partitions(&ex),
        })
    }

    /// Every super stream of the vhost, by name.
    pub fn super_streams(&self) -> Vec<SuperStreamInfo> {
        let mut out: Vec<SuperStreamInfo> = self
            .exchanges()
            .iter()
            .filter(|ex| is_super_stream(ex))
            .filter_map(|ex| self.super_stream(&ex.name))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// basic.consume on `q`: a consumer group member naming a super stream
    /// ([`SUPER_STREAM_KEY`]) consumes `q` as that super stream's
    /// partition, its group sharing the partitions among its members.
    pub fn consume(&self, q: &Arc<Queue>, req: ConsumeRequest) -> Result<()> {
        let partition = match req.arguments.get(SUPER_STREAM_KEY) {
            Some(v) if q.stream().is_some() => Some(self.partition_index(v, q, &req.arguments)?),
            _ => None,
        };
        q.consume_partition(req, partition)
    }

    /// `q`'s index in the super stream `v` names, for a consume.
    fn partition_index(&self, v: &Value, q: &Queue, args: &Table) -> Result<u32> {
        let invalid = |why: String| {
            failed(format!(
                "invalid arg '{SUPER_STREAM_KEY}' for queue '{}' in vhost '{}': {why}",
                q.name, self.name
            ))
        };
        let Some(name) = v.as_str() else {
            return Err(invalid(format!("{v}")));
        };
        if args.get(GROUP_KEY).is_none() {
            return Err(invalid(format!(
                "it needs a consumer group ('{GROUP_KEY}')"
            )));
        }
        let ex = self.exchange(name)?;
        if !is_super_stream(&ex) {
            return Err(invalid(format!("exchange '{name}' is not a super stream")));
        }
        partitions(&ex)
            .iter()
            .find(|p| std::ptr::eq(Arc::as_ptr(&p.queue), q))
            .map(|p| p.index)
            .ok_or_else(|| invalid(format!("the queue is not a partition of '{name}'")))
    }
}
