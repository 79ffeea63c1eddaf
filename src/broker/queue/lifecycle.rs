//! A queue's lifecycle as the broker runs it: the timer that sweeps
//! expired messages off the head and deletes the queue when `x-expires`
//! says it went unused, and the republishing of the messages the core
//! dropped to the dead-letter exchange.
//!
//! Each queue that needs a timer gets one small tokio task, started the
//! first time a deadline is armed. It sleeps until the earliest of the
//! head's deadline and the unused deadline (no polling); a sweep expires
//! at most [`SWEEP_BATCH`] messages per hold of the queue's lock and
//! yields between batches, so a million messages expiring at once never
//! stall the queue's publishers or other queues.
//!
//! At-least-once dead-lettering: a message dead-lettered from a durable
//! queue stays held by its store (not acked on disk) until the flush that
//! makes its copies durable has finished; a crash before that brings it
//! back in the source, never loses it.

use super::{ConsumerHandle, Queue};
use crate::broker::dead_letter;
use crate::broker::registry::unix_ms;
use crate::broker::vhost::Vhost;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;
use tokio::sync::Notify;
use warren_queues::{DeadMessage, Message, QueueCore, QueueLimits};

/// Expirations per hold of a queue's lock.
pub const SWEEP_BATCH: usize = 1000;

/// What a queue did with a published message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishOutcome {
    Queued,
    /// A length limit refused it (reject-publish[-dlx]).
    Refused,
    /// The queue was being deleted.
    Deleted,
}

/// Where a queue's dead letters go: (exchange, routing key).
pub(super) type DeadLetterTo = (String, Option<String>);

/// The lifecycle part of a queue.
#[derive(Default)]
pub(super) struct Life {
    vhost: OnceLock<Weak<Vhost>>,
    /// The vhost's `consumer_timeout` (ms; 0: none), shared rather than
    /// read through `vhost`, so the delivery path upgrades no `Weak`.
    broker_timeout: OnceLock<Arc<AtomicU64>>,
    timer: Arc<Timer>,
    started: AtomicBool,
    /// When the queue was last used (ms, the coarse clock): x-expires.
    last_used: AtomicU64,
    /// x-expires in ms; 0: none.
    expires: AtomicU64,
}

#[derive(Default)]
struct Timer {
    /// The head's deadline the task should wake for; 0: none.
    armed: AtomicU64,
    wake: Notify,
}

impl Queue {
    /// The queue's lifecycle settings, and the vhost it republishes dead
    /// letters into and is deleted from when it expires.
    pub fn with_limits(self, limits: QueueLimits, vhost: Weak<Vhost>) -> Self {
        if let Some(v) = vhost.upgrade() {
            let _ = self.life.broker_timeout.set(v.consumer_timeout_cell());
        }
        let _ = self.life.vhost.set(vhost);
        self.life
            .expires
            .store(limits.expires.unwrap_or(0), Ordering::Relaxed);
        self.life
            .last_used
            .store(self.clock.now_ms(), Ordering::Relaxed);
        self.core().set_limits(limits);
        self
    }

    /// The queue's current lifecycle settings.
    pub fn limits(&self) -> QueueLimits {
        self.core().limits().clone()
    }

    /// Replaces the settings of a running queue (a policy changed): a
    /// lowered length limit trims it at once.
    pub fn set_limits(self: &Arc<Self>, limits: QueueLimits) {
        self.life
            .expires
            .store(limits.expires.unwrap_or(0), Ordering::Relaxed);
        self.touch();
        // A changed consumer timeout applies to what is unacked now: the
        // channels holding the deliveries read it at their next tick.
        self.core().set_limits(limits);
        self.kick();
        self.start_timers();
    }

    /// The consumer timeout in effect (ms; 0: none), for the management
    /// API's consumer list.
    pub fn consumer_timeout_ms(&self) -> u64 {
        let core = self.core();
        self.consumer_timeout(&core).unwrap_or(0)
    }

    /// The consumer timeout in effect (ms) and its action, for the
    /// channels that time the deliveries they hold (see the connection's
    /// tick); `None`: no timeout (a stream, or a deleted queue, times
    /// nothing).
    pub fn consumer_timeout_rule(&self) -> Option<(u64, warren_queues::TimeoutAction)> {
        if self.stream.is_some() || self.is_deleted() {
            return None;
        }
        let core = self.core();
        let t = self.consumer_timeout(&core)?;
        Some((t, core.limits().consumer_timeout_action))
    }

    /// The consumer timeout that applies (ms): the queue's own, else the
    /// broker's `consumer_timeout`; `None`: none (0 means none too).
    fn consumer_timeout(&self, core: &QueueCore<Arc<ConsumerHandle>>) -> Option<u64> {
        let t = match core.limits().consumer_timeout {
            Some(t) => t,
            None => self
                .life
                .broker_timeout
                .get()
                .map_or(0, |t| t.load(Ordering::Relaxed)),
        };
        (t != 0).then_some(t)
    }

    /// The queue was used (a consumer came or went, a basic.get, a
    /// redeclare): x-expires counts from now.
    pub fn touch(&self) {
        if self.life.expires.load(Ordering::Relaxed) != 0 {
            self.life
                .last_used
                .store(self.clock.now_ms(), Ordering::Relaxed);
        }
    }

    /// Starts the timer if the queue has something to time: x-expires,
    /// or messages with deadlines (recovered ones included).
    pub fn start_timers(self: &Arc<Self>) {
        let next = self.core().next_expiry();
        if let Some(at) = next {
            self.arm(at);
        }
        if self.life.expires.load(Ordering::Relaxed) != 0 {
            self.ensure_timer();
            self.life.timer.wake.notify_one();
        }
    }

    /// After a change under the core's lock: trims to the length limits,
    /// expires what is due at the head (a bounded batch; the timer does
    /// the rest), arms the timer for the next deadline, and takes the
    /// messages to dead-letter.
    pub(super) fn after_change(
        self: &Arc<Self>,
        core: &mut QueueCore<Arc<ConsumerHandle>>,
        now: u64,
    ) -> (Vec<DeadMessage>, Option<DeadLetterTo>) {
        core.trim();
        if let Some(next) = core.next_expiry() {
            if next <= now {
                core.expire(now, SWEEP_BATCH);
            }
            if let Some(at) = core.next_expiry() {
                self.arm(at);
            }
        }
        take_dead(core)
    }

    /// [`Queue::after_change`] for basic.get, whose dead letters are sent
    /// once the get is done.
    pub(super) fn after_get(
        self: &Arc<Self>,
        core: &mut QueueCore<Arc<ConsumerHandle>>,
        now: u64,
    ) -> Option<(Vec<DeadMessage>, DeadLetterTo)> {
        match self.after_change(core, now) {
            (dead, Some(to)) => Some((dead, to)),
            _ => None,
        }
    }

    /// Asks the timer to wake by `at` (ms since the epoch).
    pub(super) fn arm(self: &Arc<Self>, at: u64) {
        let t = &self.life.timer;
        let cur = t.armed.load(Ordering::Relaxed);
        if cur == 0 || at < cur {
            t.armed.store(at, Ordering::Relaxed);
            self.ensure_timer();
            t.wake.notify_one();
        }
    }

    fn ensure_timer(self: &Arc<Self>) {
        if self.life.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            // No runtime (a unit test's broker): nothing to run it on.
            self.life.started.store(false, Ordering::Release);
            return;
        };
        rt.spawn(run_timer(Arc::downgrade(self), self.life.timer.clone()));
    }

    /// The queue is going: its timer task ends at its next look.
    pub(super) fn stop_timer(&self) {
        self.life.timer.wake.notify_one();
    }

    /// The time the timer acts on: the real clock, never behind the coarse
    /// one the deadlines were stamped with (so a deadline the timer woke
    /// for is always seen as due).
    fn timer_now(&self) -> u64 {
        unix_ms().max(self.clock.now_ms())
    }

    /// When the timer should next look: the head's deadline or the end
    /// of the unused period, whichever is first.
    fn next_wake(&self) -> Option<u64> {
        let armed = self.life.timer.armed.load(Ordering::Relaxed);
        let expires = self.life.expires.load(Ordering::Relaxed);
        let unused = (expires != 0).then(|| {
            self.life
                .last_used
                .load(Ordering::Relaxed)
                .saturating_add(expires)
        });
        match (armed, unused) {
            (0, u) => u,
            (a, Some(u)) => Some(a.min(u)),
            (a, None) => Some(a),
        }
    }

    /// The timer fired: expire what is due, batch by batch, then delete
    /// the queue if it went unused for its x-expires.
    async fn on_timer(self: &Arc<Self>) {
        loop {
            let now = self.timer_now();
            let (dead, to, more) = {
                let mut core = self.core();
                let (_, more) = core.expire(now, SWEEP_BATCH);
                let next = core.next_expiry().unwrap_or(0);
                self.life.timer.armed.store(next, Ordering::Relaxed);
                self.update_flow(&core);
                let (dead, to) = take_dead(&mut core);
                (dead, to, more)
            };
            if let Some(to) = to {
                self.dead_letter(dead, to);
            }
            if !more {
                break;
            }
            tokio::task::yield_now().await;
        }
        self.expire_if_unused();
    }

    fn expire_if_unused(self: &Arc<Self>) {
        let expires = self.life.expires.load(Ordering::Relaxed);
        if expires == 0 {
            return;
        }
        let now = self.timer_now();
        if self.counts().1 > 0 {
            // In use: the unused period starts when the last consumer goes
            // (cancel touches it); look again one period from now.
            self.life.last_used.store(now, Ordering::Relaxed);
            return;
        }
        let last = self.life.last_used.load(Ordering::Relaxed);
        if now >= last.saturating_add(expires) {
            if let Some(v) = self.life.vhost.get().and_then(Weak::upgrade) {
                tracing::debug!(queue = %self.name, vhost = %v.name, "queue expired (x-expires)");
                v.remove_queue(self);
            }
        }
    }

    /// Republishes messages the core dropped to the dead-letter exchange
    /// (a missing exchange drops them, as RabbitMQ), then lets the store
    /// forget them: at once, or after the flush that makes durable copies
    /// durable.
    pub(super) fn dead_letter(self: &Arc<Self>, dead: Vec<DeadMessage>, to: DeadLetterTo) {
        let (dlx, dl_key) = to;
        let vhost = self.life.vhost.get().and_then(Weak::upgrade);
        let ex = vhost.as_ref().and_then(|v| v.exchange(&dlx).ok());
        let now = self.clock.now_ms();
        let mut seqs = Vec::with_capacity(dead.len());
        let mut written = false;
        let mut scratch = crate::broker::RouteScratch::default();
        for d in dead {
            if let Some(seq) = d.seq {
                seqs.push(seq);
            }
            // Counted as RabbitMQ does: republished (`at_most_once`) when
            // the exchange exists, whatever it then routes to; dropped
            // (`disabled`) when it does not.
            self.dead_counters
                .add(d.reason, vhost.is_some() && ex.is_some(), 1);
            let (Some(v), Some(ex)) = (&vhost, &ex) else {
                continue;
            };
            let message = d
                .message
                .or_else(|| read_stored(v, d.stored?))
                .or_else(|| read_paged(d.paged.as_deref()?));
            let Some(message) = message else {
                tracing::error!(queue = %self.name, "a dead-lettered message's body could not be read");
                continue;
            };
            let Some(dl) =
                dead_letter::dead_lettered(&message, &self.name, d.reason, now, dl_key.as_deref())
            else {
                continue;
            };
            let Ok(copy) = Message::with_bcc(
                &ex.name,
                &dl.routing_key,
                &dl.properties,
                message.body(),
                message.persistent,
                &dl.bcc,
            ) else {
                continue;
            };
            match v.publish_dead(ex, copy, &dl, d.reason, &mut scratch) {
                Ok(p) => written |= p.written,
                Err(e) => {
                    tracing::error!(queue = %self.name, error = %e, "cannot store a dead-lettered message");
                    // Keep it in the source (it comes back at restart)
                    // rather than lose it.
                    if d.seq.is_some() {
                        seqs.pop();
                    }
                }
            }
        }
        scratch.flush_counts();
        if seqs.is_empty() {
            return;
        }
        let persist = vhost.as_ref().and_then(|v| v.persistence().cloned());
        match persist {
            Some(p) if written && self.disk_id.is_some() => {
                let q = self.clone();
                p.flusher.after_flush(Box::new(move |ok| {
                    // A failed flush keeps them held: they come back at
                    // the next start rather than be lost.
                    if ok {
                        q.core().settle_dead(&seqs);
                        q.dead_counters.add_confirmed(seqs.len() as u64);
                    }
                }));
            }
            _ => self.core().settle_dead(&seqs),
        }
    }
}

/// The core's dropped messages and where they go, if there are any.
fn take_dead(
    core: &mut QueueCore<Arc<ConsumerHandle>>,
) -> (Vec<DeadMessage>, Option<DeadLetterTo>) {
    if !core.has_dead() {
        return (Vec::new(), None);
    }
    let l = core.limits();
    let to = (
        l.dead_letter_exchange.clone().unwrap_or_default(),
        l.dead_letter_routing_key.clone(),
    );
    (core.take_dead(), Some(to))
}

/// A durable body on disk only, read off the async workers.
fn read_stored(v: &Vhost, at: warren_queues::StoredRef) -> Option<Arc<Message>> {
    let disk = v.persistence()?.disk.clone();
    off_workers(|| disk.read(at))
}

/// A body paged out to the transient area (a paging queue that a policy
/// gave a length limit or TTL and a dead-letter exchange), read off the
/// async workers; its record is released when the last handle goes.
fn read_paged(paged: &warren_queues::PagedBody) -> Option<Arc<Message>> {
    off_workers(|| paged.read())
}

/// Runs a blocking disk read without holding up a tokio worker.
fn off_workers<E>(read: impl FnOnce() -> Result<Message, E>) -> Option<Arc<Message>> {
    let m = match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(read)
        }
        _ => read(),
    };
    m.ok().map(Arc::new)
}

/// One queue's timer task: sleeps until the next deadline (or a wake-up
/// that brings one earlier), runs the queue's sweep, and ends with the
/// queue.
async fn run_timer(queue: Weak<Queue>, timer: Arc<Timer>) {
    loop {
        let woken = timer.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let (at, now) = match queue.upgrade() {
            Some(q) if !q.is_deleted() => (q.next_wake(), q.timer_now()),
            _ => return,
        };
        match at {
            None => {
                woken.await;
                continue;
            }
            Some(t) if t > now => {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(t - now)) => {}
                    _ = &mut woken => continue,
                }
            }
            Some(_) => {}
        }
        let Some(q) = queue.upgrade() else {
            return;
        };
        if q.is_deleted() {
            return;
        }
        q.on_timer().await;
        drop(q);
        // Never a hot loop, whatever the clocks do.
        tokio::task::yield_now().await;
    }
}
