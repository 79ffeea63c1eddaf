//! Durability: the data directory, durable definitions, and group commit.
//!
//! Definitions (durable exchanges, queues and the bindings between durable
//! ends; users, vhosts, permissions, policies and operator policies, and
//! the parameters kept for definitions export) are JSON documents in the sled tree
//! `definitions`, keyed so one prefix scan per kind restores them. Kinds:
//! `x` exchange, `q` queue, `b` binding, and (see [`Doc`]) the access
//! documents; a vhost's name is always the first key part of the kinds
//! that live in one, so deleting a vhost is a prefix sweep. Messages live in the `queues`
//! crate's [`Disk`]. The [`Flusher`] thread makes writes durable for many
//! publishers at once: callers register a waiter after writing, and every
//! waiter registered before a flush starts is told once it is done.
//!
//! Definition writes go to sled's in-memory log and are made durable by
//! the same group commit as messages, never by an fsync of their own: a
//! declare ran on a tokio worker, inside a DashMap shard, and an fsync
//! there stalled every connection on that worker and every lookup in that
//! shard. Callers that answer a client (declare-ok, the API's 201) wait for
//! [`Persistence::definitions_pending`] to clear first, as confirms do.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use warren_exchanges::{Table, Value};
use warren_queues::{Disk, DiskError};

/// Definition writes made and made durable, so a reply can wait for
/// exactly the flush that covers the writes before it.
#[derive(Default)]
struct DefCounters {
    /// Definition writes (puts and removes) so far.
    written: AtomicU64,
    /// `written` as it was when the last successful flush started.
    durable: AtomicU64,
}

/// How long writes without a waiter (acks, delivery marks) may wait for
/// a flush: they gather for this long after the store turns dirty.
const IDLE_FLUSH: std::time::Duration = std::time::Duration::from_millis(200);

/// Called once the writes before it are durable (`true`) or failed.
pub type Waiter = Box<dyn FnOnce(bool) + Send>;

/// Called on the flusher thread just before a flush starts: takes what
/// that flush covers (writes made before this call) and returns what to
/// call once it is done. Lets a caller keep adding to one pending batch
/// until the flush starts, rather than register a waiter per write.
pub type Sealer = Box<dyn FnOnce() -> Waiter + Send>;

/// Blocking work the next flush runs on the flusher thread after the
/// sealers and before the store's own flush (a stream's write and fsync):
/// `false` fails that flush's waiters, as a failed store flush does.
pub type SyncJob = Box<dyn FnOnce() -> bool + Send>;

#[derive(Default)]
struct FlushQueue {
    waiting: Vec<Waiter>,
    sealing: Vec<Sealer>,
    syncing: Vec<SyncJob>,
    /// The store turned dirty since the flusher last looked.
    dirty: bool,
    stop: bool,
}

/// The group-commit thread: one for the process's lifetime. It sleeps
/// until a waiter registers or the store turns dirty (the store calls
/// back on that transition), so an idle broker never wakes it and never
/// syncs.
pub struct Flusher {
    shared: Arc<(Mutex<FlushQueue>, Condvar)>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Flusher {
    fn start(disk: Arc<Disk>, defs: Arc<DefCounters>) -> Self {
        let shared: Arc<(Mutex<FlushQueue>, Condvar)> = Arc::default();
        let on_dirty = shared.clone();
        disk.set_on_dirty(Box::new(move || {
            let (lock, cv) = &*on_dirty;
            lock.lock().unwrap_or_else(|e| e.into_inner()).dirty = true;
            cv.notify_one();
        }));
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("warren-flusher".into())
            .spawn(move || loop {
                let Some((mut batch, sealers, jobs)) = Self::next_batch(&s) else {
                    return;
                };
                // Before anything is written out: what a sealer takes was
                // written before the flush, so the flush covers it.
                batch.extend(sealers.into_iter().map(|seal| seal()));
                // After the sealers: a job writes out everything appended
                // before it runs, so every publish a sealer took (and so
                // will confirm) is covered.
                let mut jobs_ok = true;
                for job in jobs {
                    jobs_ok &= job();
                }
                // Read before the flush starts: every definition write
                // counted here is in sled's log and covered by the flush.
                let defs_written = defs.written.load(Ordering::SeqCst);
                let ok = jobs_ok
                    && match disk.flush() {
                        Ok(()) => {
                            defs.durable.fetch_max(defs_written, Ordering::SeqCst);
                            true
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "flush failed; publishes are nacked");
                            false
                        }
                    };
                for w in batch {
                    w(ok);
                }
            })
            .expect("spawn the flusher thread");
        Flusher {
            shared,
            thread: Mutex::new(Some(thread)),
        }
    }

    /// Sleeps until there is something to flush; returns the waiters the
    /// flush will answer, or `None` once stopped with nothing left.
    fn next_batch(s: &(Mutex<FlushQueue>, Condvar)) -> Option<Batch> {
        let (lock, cv) = s;
        let mut q = lock.lock().unwrap_or_else(|e| e.into_inner());
        let take = |q: &mut FlushQueue| {
            (
                std::mem::take(&mut q.waiting),
                std::mem::take(&mut q.sealing),
                std::mem::take(&mut q.syncing),
            )
        };
        loop {
            if !q.waiting.is_empty() || !q.sealing.is_empty() || !q.syncing.is_empty() {
                return Some(take(&mut q));
            }
            if q.stop {
                return None;
            }
            if q.dirty {
                // Writes nobody waits for: let more gather (a waiter
                // arriving meanwhile ends the wait), then flush them.
                q.dirty = false;
                q = cv
                    .wait_timeout(q, IDLE_FLUSH)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                return Some(take(&mut q));
            }
            q = cv.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Calls `w` after the next flush that starts from now.
    pub fn after_flush(&self, w: Waiter) {
        let (lock, cv) = &*self.shared;
        lock.lock()
            .unwrap_or_else(|e| e.into_inner())
            .waiting
            .push(w);
        cv.notify_one();
    }

    /// Calls `seal` as the next flush starts, and what it returns once
    /// that flush is done (see [`Sealer`]).
    pub fn before_flush(&self, seal: Sealer) {
        let (lock, cv) = &*self.shared;
        lock.lock()
            .unwrap_or_else(|e| e.into_inner())
            .sealing
            .push(seal);
        cv.notify_one();
    }

    /// Runs `job` on the flusher thread in the next flush (see [`SyncJob`]).
    pub fn sync_job(&self, job: SyncJob) {
        let (lock, cv) = &*self.shared;
        lock.lock()
            .unwrap_or_else(|e| e.into_inner())
            .syncing
            .push(job);
        cv.notify_one();
    }

    /// Flushes what is pending and stops the thread.
    pub fn stop(&self) {
        {
            let (lock, cv) = &*self.shared;
            lock.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
            cv.notify_one();
        }
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

/// What one flush takes: waiters, sealers and sync jobs.
type Batch = (Vec<Waiter>, Vec<Sealer>, Vec<SyncJob>);

/// The access documents' kinds (their key byte) and key parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Doc {
    /// `[vhost]`: the vhost's metadata.
    Vhost = b'v',
    /// `[name]`: a user with its password hash and tags.
    User = b'u',
    /// `[vhost, user]`: configure/write/read patterns.
    Permission = b'p',
    /// `[vhost, user, exchange]`: kept as imported (not enforced).
    TopicPermission = b't',
    /// `[vhost, name]`: a policy, in RabbitMQ's JSON (see `policy::Policy`).
    Policy = b'y',
    /// `[vhost, name]`: an operator policy, as a policy.
    OperatorPolicy = b'o',
    /// `[vhost, component, name]`: kept as imported.
    Parameter = b'r',
    /// `[name]`: kept as imported.
    GlobalParameter = b'g',
    /// `[name]`: broker bookkeeping, e.g. whether the first start's seeding happened.
    Meta = b'm',
}

impl Doc {
    /// Kinds whose first key part is a vhost.
    pub const IN_VHOST: [Doc; 6] = [
        Doc::Vhost,
        Doc::Permission,
        Doc::TopicPermission,
        Doc::Policy,
        Doc::OperatorPolicy,
        Doc::Parameter,
    ];
}

/// A durable queue's definition.
#[derive(Debug, Clone)]
pub struct QueueDef {
    pub vhost: String,
    pub name: String,
    pub id: u64,
    pub auto_delete: bool,
    pub arguments: Table,
}

#[derive(Debug, Clone)]
pub struct ExchangeDef {
    pub vhost: String,
    pub name: String,
    pub kind: String,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: Table,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BindingDef {
    pub vhost: String,
    pub source: String,
    /// "queue" or "exchange", as in RabbitMQ's definitions.
    pub destination_type: String,
    pub destination: String,
    pub routing_key: String,
    pub arguments: Table,
}

/// Storage settings from the configuration.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub data_dir: std::path::PathBuf,
    /// sled's page cache.
    pub cache_bytes: u64,
    /// Bytes of message bodies a durable queue keeps in memory before it
    /// leaves further ones on disk only.
    pub queue_memory_bytes: u64,
    /// Bytes a stream may hold appended but not yet synced before its
    /// publishers are held back.
    pub stream_unsynced_bytes: u64,
}

pub struct Persistence {
    pub disk: Arc<Disk>,
    /// The data directory (stream logs live under `streams/`).
    pub data_dir: std::path::PathBuf,
    defs: sled::Tree,
    def_counts: Arc<DefCounters>,
    pub flusher: Flusher,
    pub queue_memory_bytes: u64,
    pub stream_unsynced_bytes: u64,
    /// Stream readers running on the node: they share one budget of
    /// unwritten bytes (see `stream.rs`'s `write_window`).
    pub stream_readers: std::sync::atomic::AtomicU32,
}

/// A definition key: the kind, then each part with a u32 length prefix
/// (names may hold any byte, NUL included).
fn key(kind: u8, parts: &[&str]) -> Vec<u8> {
    let mut k = vec![kind];
    for p in parts {
        k.extend_from_slice(&(p.len() as u32).to_be_bytes());
        k.extend_from_slice(p.as_bytes());
    }
    k
}

fn key_parts(mut k: &[u8]) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    while !k.is_empty() {
        let n = u32::from_be_bytes(k.get(..4)?.try_into().ok()?) as usize;
        let p = k.get(4..4 + n)?;
        parts.push(String::from_utf8(p.to_vec()).ok()?);
        k = &k[4 + n..];
    }
    Some(parts)
}

impl Persistence {
    pub fn open(cfg: &StorageConfig) -> Result<Arc<Self>, DiskError> {
        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| {
            DiskError::Corrupt(format!("cannot create {}: {e}", cfg.data_dir.display()))
        })?;
        let disk = Disk::open(Path::new(&cfg.data_dir), cfg.cache_bytes)?;
        let defs = disk.db().open_tree("definitions")?;
        check_definitions(&defs, &cfg.data_dir)?;
        let def_counts = Arc::new(DefCounters::default());
        let flusher = Flusher::start(disk.clone(), def_counts.clone());
        Ok(Arc::new(Persistence {
            disk,
            data_dir: cfg.data_dir.clone(),
            defs,
            def_counts,
            flusher,
            queue_memory_bytes: cfg.queue_memory_bytes,
            stream_unsynced_bytes: cfg.stream_unsynced_bytes,
            stream_readers: Default::default(),
        }))
    }

    /// A new, never reused queue id.
    pub fn new_queue_id(&self) -> Result<u64, DiskError> {
        Ok(self.disk.db().generate_id()? + 1)
    }

    fn put(&self, k: Vec<u8>, v: serde_json::Value) {
        if let Err(e) = self.defs.insert(k, v.to_string().into_bytes()) {
            tracing::error!(error = %e, "cannot store a definition");
        }
        self.wrote();
    }

    fn remove(&self, k: Vec<u8>) {
        if let Err(e) = self.defs.remove(k) {
            tracing::error!(error = %e, "cannot remove a definition");
        }
        self.wrote();
    }

    /// Counts a definition write (after it is in sled) for
    /// [`Persistence::definitions_pending`].
    fn wrote(&self) {
        self.def_counts.written.fetch_add(1, Ordering::SeqCst);
        self.disk.mark_dirty();
    }

    /// Whether some definition write made so far is not yet durable.
    /// Definitions are written (to sled's in-memory log) while the object
    /// changes, under the locks that order them; a reply that promises
    /// them (declare-ok, delete-ok, bind-ok, an API 201/204) waits until
    /// this is false (see [`Persistence::definitions_durable`]).
    pub fn definitions_pending(&self) -> bool {
        self.def_counts.written.load(Ordering::SeqCst)
            > self.def_counts.durable.load(Ordering::SeqCst)
    }

    /// Definition writes so far: a caller that must wait for the ones made
    /// before now waits until [`Persistence::definitions_durable_upto`]
    /// reaches this.
    pub fn definitions_written(&self) -> u64 {
        self.def_counts.written.load(Ordering::SeqCst)
    }

    /// How many definition writes are known durable.
    pub fn definitions_durable_upto(&self) -> u64 {
        self.def_counts.durable.load(Ordering::SeqCst)
    }

    /// Waits until every definition written so far is durable (at once
    /// if nothing is pending); `false` if the flush failed.
    pub async fn definitions_durable(&self) -> bool {
        if !self.definitions_pending() {
            return true;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.flusher.after_flush(Box::new(move |ok| {
            let _ = tx.send(ok);
        }));
        rx.await.unwrap_or(false)
    }

    /// Makes every write so far durable, on this thread (blocking: call it
    /// off the async workers).
    pub fn flush_now(&self) {
        let written = self.def_counts.written.load(Ordering::SeqCst);
        match self.disk.flush() {
            Ok(()) => {
                self.def_counts.durable.fetch_max(written, Ordering::SeqCst);
            }
            Err(e) => tracing::error!(error = %e, "cannot flush definitions"),
        }
    }

    /// Runs `f` (many definition writes, e.g. a definitions import or a
    /// vhost deletion), then makes everything durable with one flush before
    /// returning. Call it off the async workers (`spawn_blocking`): the
    /// flush blocks.
    pub fn batch<R>(&self, f: impl FnOnce() -> R) -> R {
        let r = f();
        self.flush_now();
        r
    }

    pub fn put_exchange(&self, d: &ExchangeDef) {
        let v = serde_json::json!({
            "type": d.kind, "auto_delete": d.auto_delete, "internal": d.internal,
            "arguments": table_to_json(&d.arguments),
        });
        self.put(key(b'x', &[&d.vhost, &d.name]), v);
    }

    pub fn remove_exchange(&self, vhost: &str, name: &str) {
        self.remove(key(b'x', &[vhost, name]));
        self.remove_bindings_where(vhost, |b| {
            b.source == name || (b.destination_type == "exchange" && b.destination == name)
        });
    }

    pub fn put_queue(&self, d: &QueueDef) {
        let v = serde_json::json!({
            "id": d.id, "auto_delete": d.auto_delete,
            "arguments": table_to_json(&d.arguments),
        });
        self.put(key(b'q', &[&d.vhost, &d.name]), v);
    }

    pub fn remove_queue(&self, vhost: &str, name: &str) {
        self.remove(key(b'q', &[vhost, name]));
        self.remove_bindings_where(vhost, |b| {
            b.destination_type == "queue" && b.destination == name
        });
    }

    fn binding_key(b: &BindingDef) -> Vec<u8> {
        key(
            b'b',
            &[
                &b.vhost,
                &b.source,
                &b.destination_type,
                &b.destination,
                &b.routing_key,
                &table_to_json(&b.arguments).to_string(),
            ],
        )
    }

    pub fn put_binding(&self, b: &BindingDef) {
        let v = serde_json::json!({
            "vhost": b.vhost, "source": b.source, "destination_type": b.destination_type,
            "destination": b.destination, "routing_key": b.routing_key,
            "arguments": table_to_json(&b.arguments),
        });
        self.put(Self::binding_key(b), v);
    }

    pub fn remove_binding(&self, b: &BindingDef) {
        self.remove(Self::binding_key(b));
    }

    /// Only the vhost's bindings are read (its key prefix), not every one.
    fn remove_bindings_where(&self, vhost: &str, f: impl Fn(&BindingDef) -> bool) {
        for b in Self::binding_defs(self.defs.scan_prefix(key(b'b', &[vhost]))) {
            if b.vhost == vhost && f(&b) {
                self.remove(Self::binding_key(&b));
            }
        }
    }

    fn scan(&self, kind: u8) -> Vec<(Vec<String>, serde_json::Value)> {
        let mut out = Vec::new();
        for kv in self.defs.scan_prefix([kind]) {
            let Ok((k, v)) = kv else { continue };
            let Some(parts) = key_parts(&k[1..]) else {
                tracing::error!("skipping a definition with an unreadable key");
                continue;
            };
            match read_json(&v) {
                Ok(json) => out.push((parts, json)),
                Err(e) => tracing::error!(error = %e, "skipping an unreadable definition"),
            }
        }
        out
    }

    pub fn exchanges(&self) -> Vec<ExchangeDef> {
        self.scan(b'x')
            .into_iter()
            .filter(|(p, _)| p.len() == 2)
            .map(|(p, v)| ExchangeDef {
                vhost: p[0].clone(),
                name: p[1].clone(),
                kind: v["type"].as_str().unwrap_or("direct").to_owned(),
                auto_delete: v["auto_delete"].as_bool().unwrap_or(false),
                internal: v["internal"].as_bool().unwrap_or(false),
                arguments: table_from_json(&v["arguments"]),
            })
            .collect()
    }

    pub fn queues(&self) -> Vec<QueueDef> {
        self.scan(b'q')
            .into_iter()
            .filter(|(p, v)| p.len() == 2 && v["id"].is_u64())
            .map(|(p, v)| QueueDef {
                vhost: p[0].clone(),
                name: p[1].clone(),
                id: v["id"].as_u64().unwrap_or(0),
                auto_delete: v["auto_delete"].as_bool().unwrap_or(false),
                arguments: table_from_json(&v["arguments"]),
            })
            .collect()
    }

    /// Stores a document of kind `kind` (one of [`Doc`]) under `parts`.
    pub fn put_doc(&self, kind: Doc, parts: &[&str], v: serde_json::Value) {
        self.put(key(kind as u8, parts), v);
    }

    pub fn remove_doc(&self, kind: Doc, parts: &[&str]) {
        self.remove(key(kind as u8, parts));
    }

    /// Every document of a kind, with its key parts.
    pub fn docs(&self, kind: Doc) -> Vec<(Vec<String>, serde_json::Value)> {
        self.scan(kind as u8)
    }

    /// Removes every definition (of any kind) that lives in `vhost`.
    pub fn remove_vhost_docs(&self, vhost: &str) {
        for kind in [b'x', b'q', b'b']
            .into_iter()
            .chain(Doc::IN_VHOST.map(|d| d as u8))
        {
            let prefix = key(kind, &[vhost]);
            let keys: Vec<sled::IVec> = self
                .defs
                .scan_prefix(&prefix)
                .keys()
                .filter_map(|k| k.ok())
                .collect();
            for k in keys {
                if let Err(e) = self.defs.remove(k) {
                    tracing::error!(error = %e, "cannot remove a definition");
                }
                self.wrote();
            }
        }
    }

    pub fn bindings(&self) -> Vec<BindingDef> {
        Self::binding_defs(self.defs.scan_prefix([b'b']))
    }

    fn binding_defs(it: sled::Iter) -> Vec<BindingDef> {
        it.values()
            .filter_map(|v| match read_json(&v.ok()?) {
                Ok(j) => Some(j),
                Err(e) => {
                    tracing::error!(error = %e, "skipping an unreadable definition");
                    None
                }
            })
            .map(|v| BindingDef {
                vhost: v["vhost"].as_str().unwrap_or("/").to_owned(),
                source: v["source"].as_str().unwrap_or_default().to_owned(),
                destination_type: v["destination_type"].as_str().unwrap_or("queue").to_owned(),
                destination: v["destination"].as_str().unwrap_or_default().to_owned(),
                routing_key: v["routing_key"].as_str().unwrap_or_default().to_owned(),
                arguments: table_from_json(&v["arguments"]),
            })
            .collect()
    }
}

/// Reads a stored definition. Arguments nest up to
/// [`MAX_TABLE_DEPTH`](super::properties::MAX_TABLE_DEPTH) levels, two JSON
/// levels each: past serde_json's default limit, so the limit is lifted,
/// after a flat scan has bounded the depth (a corrupt record cannot
/// exhaust the stack).
fn read_json(v: &[u8]) -> Result<serde_json::Value, String> {
    use serde::Deserialize;
    let max = 2 * super::properties::MAX_TABLE_DEPTH + 8;
    if json_depth(v) > max {
        return Err(format!("nested more than {max} levels deep"));
    }
    let mut de = serde_json::Deserializer::from_slice(v);
    de.disable_recursion_limit();
    let value = serde_json::Value::deserialize(&mut de).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(value)
}

/// The deepest nesting of arrays and objects in a JSON text.
fn json_depth(v: &[u8]) -> usize {
    let (mut depth, mut max, mut in_str, mut escaped) = (0usize, 0usize, false, false);
    for &c in v {
        if in_str {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// What a definition key names, for an error message.
fn describe(kind: u8, parts: &[String]) -> String {
    match (kind, parts) {
        (b'x', [vhost, name]) => format!("exchange '{name}' in vhost '{vhost}'"),
        (b'q', [vhost, name]) => format!("queue '{name}' in vhost '{vhost}'"),
        (b'b', [vhost, source, dtype, dest, key, ..]) => format!(
            "binding of {dtype} '{dest}' to exchange '{source}' (routing key '{key}') in vhost '{vhost}'"
        ),
        _ => format!("definition '{}' {parts:?}", kind as char),
    }
}

/// Every stored definition must read back: one that does not stops the
/// start, naming it, rather than being skipped (a skipped durable queue
/// would take its confirmed messages with it).
fn check_definitions(defs: &sled::Tree, dir: &Path) -> Result<(), DiskError> {
    let corrupt = |what: String| {
        DiskError::Corrupt(format!(
            "{what}; the data directory {} needs repair (or that record removed)",
            dir.display()
        ))
    };
    for kv in defs.iter() {
        let (k, v) = kv?;
        let kind = k.first().copied().unwrap_or(0);
        let Some(parts) = key_parts(k.get(1..).unwrap_or_default()) else {
            return Err(corrupt(format!("unreadable definition key {:?}", &k[..])));
        };
        let what = describe(kind, &parts);
        let json = read_json(&v).map_err(|e| corrupt(format!("unreadable {what}: {e}")))?;
        if kind == b'q' && !json["id"].is_u64() {
            return Err(corrupt(format!("unreadable {what}: no queue id")));
        }
    }
    Ok(())
}

/// A table as JSON that keeps every value's AMQP type: a list of
/// `[name, type, value]`.
pub fn table_to_json(t: &Table) -> serde_json::Value {
    serde_json::Value::Array(
        t.iter()
            .map(|(k, v)| {
                let (ty, val) = value_to_json(v);
                serde_json::json!([k, ty, val])
            })
            .collect(),
    )
}

fn value_to_json(v: &Value) -> (&'static str, serde_json::Value) {
    use serde_json::json;
    match v {
        Value::Bool(b) => ("t", json!(b)),
        Value::ShortShortInt(i) => ("b", json!(i)),
        Value::ShortShortUInt(i) => ("B", json!(i)),
        Value::ShortInt(i) => ("s", json!(i)),
        Value::ShortUInt(i) => ("u", json!(i)),
        Value::LongInt(i) => ("I", json!(i)),
        Value::LongUInt(i) => ("i", json!(i)),
        Value::LongLongInt(i) => ("l", json!(i)),
        Value::Float(f) => ("f", json!(f)),
        Value::Double(f) => ("d", json!(f)),
        Value::Decimal { scale, value } => ("D", json!([scale, value])),
        Value::ShortString(s) => ("ss", json!(s)),
        Value::LongString(b) => ("S", json!(b)),
        Value::Array(a) => (
            "A",
            serde_json::Value::Array(
                a.iter()
                    .map(|v| {
                        let (t, x) = value_to_json(v);
                        json!([t, x])
                    })
                    .collect(),
            ),
        ),
        Value::Timestamp(t) => ("T", json!(t)),
        Value::Table(t) => ("F", table_to_json(t)),
        Value::ByteArray(b) => ("x", json!(b)),
        Value::Void => ("V", serde_json::Value::Null),
    }
}

fn bytes_from_json(v: &serde_json::Value) -> Vec<u8> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|b| b.as_u64().map(|b| b as u8))
                .collect()
        })
        .unwrap_or_default()
}

fn value_from_json(ty: &str, v: &serde_json::Value) -> Value {
    let i = || v.as_i64().unwrap_or(0);
    let u = || v.as_u64().unwrap_or(0);
    match ty {
        "t" => Value::Bool(v.as_bool().unwrap_or(false)),
        "b" => Value::ShortShortInt(i() as i8),
        "B" => Value::ShortShortUInt(u() as u8),
        "s" => Value::ShortInt(i() as i16),
        "u" => Value::ShortUInt(u() as u16),
        "I" => Value::LongInt(i() as i32),
        "i" => Value::LongUInt(u() as u32),
        "l" => Value::LongLongInt(i()),
        "f" => Value::Float(v.as_f64().unwrap_or(0.0) as f32),
        "d" => Value::Double(v.as_f64().unwrap_or(0.0)),
        "D" => Value::Decimal {
            scale: v[0].as_u64().unwrap_or(0) as u8,
            value: v[1].as_u64().unwrap_or(0) as u32,
        },
        "ss" => Value::ShortString(v.as_str().unwrap_or_default().to_owned()),
        "S" => Value::LongString(bytes_from_json(v)),
        "A" => Value::Array(
            v.as_array()
                .map(|a| {
                    a.iter()
                        .map(|e| value_from_json(e[0].as_str().unwrap_or("V"), &e[1]))
                        .collect()
                })
                .unwrap_or_default(),
        ),
        "T" => Value::Timestamp(u()),
        "F" => Value::Table(table_from_json(v)),
        "x" => Value::ByteArray(bytes_from_json(v)),
        _ => Value::Void,
    }
}

pub fn table_from_json(j: &serde_json::Value) -> Table {
    Table(
        j.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| {
                        let k = e[0].as_str()?.to_owned();
                        let ty = e[1].as_str()?;
                        Some((k, value_from_json(ty, &e[2])))
                    })
                    .collect()
            })
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `{"a": {"a": ... {}}}`, `depth` tables deep (the outer one counts).
    fn nested(depth: usize) -> Table {
        let mut t = Table::default();
        for _ in 1..depth {
            let mut o = Table::default();
            o.insert("a", Value::Table(t));
            t = o;
        }
        t
    }

    #[test]
    fn the_deepest_accepted_arguments_read_back_from_the_store() {
        let dir = std::env::temp_dir().join(format!("warren-persist-deep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = StorageConfig {
            data_dir: dir.clone(),
            cache_bytes: 1 << 20,
            queue_memory_bytes: 1 << 20,
            stream_unsynced_bytes: 1 << 20,
        };
        let args = nested(crate::broker::properties::MAX_TABLE_DEPTH);
        {
            let p = Persistence::open(&cfg).unwrap();
            p.put_queue(&QueueDef {
                vhost: "/".into(),
                name: "deep".into(),
                id: 7,
                auto_delete: false,
                arguments: args.clone(),
            });
            p.flusher.stop();
        }
        let p = Persistence::open(&cfg).expect("a stored definition reads back");
        let qs = p.queues();
        assert_eq!(qs.len(), 1);
        assert_eq!(qs[0].arguments, args);
        p.flusher.stop();
        drop(p);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn json_depth_ignores_brackets_in_strings() {
        assert_eq!(json_depth(br#"{"a":[["x]]]\"[["]]}"#), 3);
        assert!(read_json(&[b'['; 10_000]).is_err());
    }

    #[test]
    fn tables_round_trip_through_json_with_their_types() {
        let mut inner = Table::default();
        inner.insert("deep", Value::LongLongInt(-5));
        let t = Table(vec![
            ("a".into(), Value::LongInt(1)),
            ("b".into(), Value::LongString(b"x\0y".to_vec())),
            (
                "c".into(),
                Value::Array(vec![Value::Bool(true), Value::ShortString("s".into())]),
            ),
            ("d".into(), Value::Table(inner)),
            (
                "e".into(),
                Value::Decimal {
                    scale: 2,
                    value: 314,
                },
            ),
            ("f".into(), Value::Void),
            ("g".into(), Value::Double(1.5)),
        ]);
        assert_eq!(table_from_json(&table_to_json(&t)), t);
    }
}
