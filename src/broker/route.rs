//! Routing through the exchange graph: a message enters one exchange and
//! reaches queues through queue bindings, exchange-to-exchange bindings and
//! alternate exchanges.
//!
//! The walk is breadth-first over exchanges with a seen-set, so cycles are
//! safe and a queue reached by several paths gets one copy. An exchange
//! that routes a message nowhere hands it to its alternate exchange, which
//! may hand it on to its own (RabbitMQ's `process_alternate`).

use super::exchange::{Exchange, ExchangeKind};
use super::queue::QueueRef;
use super::vhost::Vhost;
use std::sync::Arc;
use warren_exchanges::RouteInput;

/// Where a binding leads.
#[derive(Clone, Debug)]
pub enum Dest {
    Queue(QueueRef),
    Exchange(Arc<Exchange>),
}

impl PartialEq for Dest {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Dest::Queue(a), Dest::Queue(b)) => a == b,
            (Dest::Exchange(a), Dest::Exchange(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}
impl Eq for Dest {}
impl std::hash::Hash for Dest {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        match self {
            Dest::Queue(q) => q.hash(state),
            Dest::Exchange(e) => (Arc::as_ptr(e) as usize).hash(state),
        }
    }
}

/// Buffers reused across publishes so routing allocates nothing in the
/// common case.
#[derive(Default)]
pub struct RouteScratch {
    pub queues: Vec<QueueRef>,
    dests: Vec<Dest>,
    work: Vec<Arc<Exchange>>,
    seen: Vec<*const Exchange>,
    /// More than one exchange or key contributed: `queues` may repeat.
    may_repeat: bool,
    /// Publish counters (broker, exchanges, queues) gathered over the
    /// owner's turn; see [`RouteScratch::flush_counts`].
    pub(crate) counts: super::registry::CounterFold,
}

// The raw pointers are identities only, never dereferenced.
unsafe impl Send for RouteScratch {}

impl RouteScratch {
    /// Adds the publish counters gathered since the last call to the
    /// shared ones (the management API's). A connection calls it once per
    /// turn; dropping the scratch does it too.
    pub fn flush_counts(&mut self) {
        self.counts.flush();
    }

    pub fn clear(&mut self) {
        self.queues.clear();
        self.may_repeat = false;
    }

    /// Removes repeated queues, keeping the first of each.
    pub fn dedup(&mut self) {
        if !self.may_repeat || self.queues.len() < 2 {
            return;
        }
        let mut seen = std::collections::HashSet::with_capacity(self.queues.len());
        self.queues
            .retain(|q| seen.insert(Arc::as_ptr(&q.0) as usize));
    }
}

impl Vhost {
    /// Appends the queues `input` reaches from `ex` to `scratch.queues`.
    pub fn route(&self, ex: &Arc<Exchange>, input: &RouteInput<'_>, scratch: &mut RouteScratch) {
        if !scratch.queues.is_empty() {
            scratch.may_repeat = true;
        }
        // Fast path: one exchange that routes only to queues.
        scratch.work.clear();
        scratch.seen.clear();
        scratch.work.push(ex.clone());
        let mut visited = 0;
        while let Some(x) = scratch.work.pop() {
            let p = Arc::as_ptr(&x);
            if scratch.seen.contains(&p) {
                continue;
            }
            scratch.seen.push(p);
            visited += 1;
            scratch.dests.clear();
            match x.kind {
                ExchangeKind::Default => {
                    if let Some(q) = self.queue(input.routing_key) {
                        scratch.dests.push(Dest::Queue(QueueRef(q)));
                    }
                }
                ExchangeKind::Typed(_) => x.router().route(input, &mut scratch.dests),
            }
            if scratch.dests.is_empty() {
                if let Some(ae) = x.alternate().and_then(|name| self.exchange(&name).ok()) {
                    scratch.work.push(ae);
                }
                continue;
            }
            for d in scratch.dests.drain(..) {
                match d {
                    Dest::Queue(q) => scratch.queues.push(q),
                    Dest::Exchange(e) => scratch.work.push(e),
                }
            }
        }
        if visited > 1 {
            scratch.may_repeat = true;
        }
    }
}

/// One hop of a routing trace: a binding, or a hand-over to an alternate
/// exchange.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteStep {
    pub source: String,
    pub destination: String,
    pub to_queue: bool,
    /// The binding's key (for an alternate hop: none).
    pub routing_key: String,
    pub arguments: warren_exchanges::Table,
    /// An alternate-exchange hop, not a binding.
    pub alternate: bool,
}

/// Where a message would go and how: what the routing tester shows.
#[derive(Clone, Debug, Default)]
pub struct RouteTrace {
    /// Each queue reached once, with the first path that reached it.
    pub queues: Vec<(Arc<super::queue::Queue>, Vec<RouteStep>)>,
    /// Exchanges the message passed through, in the order first visited.
    pub exchanges: Vec<String>,
}

impl Vhost {
    /// The explaining twin of [`Vhost::route`]: the same walk (same order,
    /// same seen-set per routing key, same alternate-exchange rule), run
    /// for the routing key and then each CC/BCC key, recording the path to
    /// every queue. Nothing is published and no counter moves.
    pub fn route_trace(
        &self,
        ex: &Arc<Exchange>,
        input: &RouteInput<'_>,
        extra_keys: &[String],
    ) -> RouteTrace {
        let mut trace = RouteTrace::default();
        let keys = std::iter::once(input.routing_key).chain(extra_keys.iter().map(String::as_str));
        for key in keys {
            let input = RouteInput {
                routing_key: key,
                ..*input
            };
            self.trace_key(ex, &input, &mut trace);
        }
        trace
    }

    fn trace_key(&self, ex: &Arc<Exchange>, input: &RouteInput<'_>, trace: &mut RouteTrace) {
        let mut work: Vec<(Arc<Exchange>, Vec<RouteStep>)> = vec![(ex.clone(), Vec::new())];
        let mut seen: Vec<*const Exchange> = Vec::new();
        while let Some((x, path)) = work.pop() {
            let p = Arc::as_ptr(&x);
            if seen.contains(&p) {
                continue;
            }
            seen.push(p);
            if !trace.exchanges.contains(&x.name) {
                trace.exchanges.push(x.name.clone());
            }
            // (destination, step) for every matching binding.
            let mut hits: Vec<(Dest, RouteStep)> = Vec::new();
            match x.kind {
                ExchangeKind::Default => {
                    if let Some(q) = self.queue(input.routing_key) {
                        hits.push((
                            Dest::Queue(QueueRef(q.clone())),
                            RouteStep {
                                source: x.name.clone(),
                                destination: q.name.clone(),
                                to_queue: true,
                                routing_key: input.routing_key.to_owned(),
                                arguments: Default::default(),
                                alternate: false,
                            },
                        ));
                    }
                }
                ExchangeKind::Typed(_) => {
                    let router = x.router();
                    for b in router.explain(input) {
                        let (destination, to_queue) = match &b.destination {
                            Dest::Queue(q) => (q.0.name.clone(), true),
                            Dest::Exchange(e) => (e.name.clone(), false),
                        };
                        hits.push((
                            b.destination.clone(),
                            RouteStep {
                                source: x.name.clone(),
                                destination,
                                to_queue,
                                routing_key: b.routing_key.clone(),
                                arguments: b.arguments.clone(),
                                alternate: false,
                            },
                        ));
                    }
                }
            }
            if hits.is_empty() {
                if let Some(ae) = x.alternate().and_then(|name| self.exchange(&name).ok()) {
                    let mut next = path.clone();
                    next.push(RouteStep {
                        source: x.name.clone(),
                        destination: ae.name.clone(),
                        to_queue: false,
                        routing_key: String::new(),
                        arguments: Default::default(),
                        alternate: true,
                    });
                    work.push((ae, next));
                }
                continue;
            }
            for (d, step) in hits {
                let mut next = path.clone();
                next.push(step);
                match d {
                    Dest::Queue(q) => {
                        if !trace.queues.iter().any(|(t, _)| Arc::ptr_eq(t, &q.0)) {
                            trace.queues.push((q.0, next));
                        }
                    }
                    Dest::Exchange(e) => work.push((e, next)),
                }
            }
        }
    }
}
