//! An exchange as the broker runs it: metadata plus the `exchanges` router.

use super::policy::{alternate_exchange, Applied};
use super::route::Dest;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use warren_exchanges::{ArgumentError, BindError, ExchangeType, Router, Table};

/// How an exchange routes: one of the router's types, or the default
/// exchange (every queue by its name), which has no bindings of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    Default,
    Typed(ExchangeType),
}

impl ExchangeKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ExchangeKind::Default => "direct",
            ExchangeKind::Typed(t) => t.as_str(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeOptions {
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: Table,
}

#[derive(Debug)]
pub struct Exchange {
    pub name: String,
    pub kind: ExchangeKind,
    pub opts: ExchangeOptions,
    /// publish_in / publish_out (management API).
    pub stats: super::registry::MessageCounters,
    /// Sampled history of the counters, for the charts.
    pub history: super::history::SharedHistory,
    /// The effective alternate exchange: the `alternate-exchange`
    /// argument, else the policy's (read only for unroutable messages).
    alternate: RwLock<Option<Arc<str>>>,
    /// Whether `alternate` is set, for the per-publish check.
    has_alternate: AtomicBool,
    /// The policy and operator policy that apply.
    policies: Mutex<Applied>,
    router: RwLock<Router<Dest>>,
    /// Bindings from here to other exchanges: when there are none, routing
    /// never needs to look past the routing key of a non-headers exchange.
    exchange_dests: AtomicUsize,
    deleted: AtomicBool,
}

impl Exchange {
    /// An exchange; `Err` when its arguments do not suit its type (for
    /// example both `hash-header` and `hash-property`).
    pub fn new(
        name: String,
        kind: ExchangeKind,
        opts: ExchangeOptions,
    ) -> Result<Self, ArgumentError> {
        let rk = match kind {
            ExchangeKind::Default => ExchangeType::Direct,
            ExchangeKind::Typed(t) => t,
        };
        let router = Router::with_arguments(rk, &opts.arguments)?;
        let alternate = alternate_exchange(&opts.arguments, &Applied::default());
        Ok(Exchange {
            name,
            kind,
            has_alternate: AtomicBool::new(alternate.is_some()),
            alternate: RwLock::new(alternate.map(Arc::from)),
            policies: Mutex::new(Applied::default()),
            opts,
            stats: Default::default(),
            history: super::history::SharedHistory::new(
                super::history::BASIC,
                super::history::EXCHANGE_SERIES,
            ),
            router: RwLock::new(router),
            exchange_dests: AtomicUsize::new(0),
            deleted: AtomicBool::new(false),
        })
    }

    pub fn router(&self) -> RwLockReadGuard<'_, Router<Dest>> {
        self.router.read().unwrap_or_else(|e| e.into_inner())
    }

    fn router_mut(&self) -> RwLockWriteGuard<'_, Router<Dest>> {
        self.router.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a binding from this exchange; `Ok(false)` if it existed.
    pub fn bind(&self, dest: Dest, key: &str, args: Table) -> Result<bool, BindError> {
        let is_exchange = matches!(dest, Dest::Exchange(_));
        let added = self.router_mut().bind(dest, key, args)?;
        if added && is_exchange {
            self.exchange_dests.fetch_add(1, Ordering::Relaxed);
        }
        Ok(added)
    }

    /// Removes a binding; returns whether it existed.
    pub fn unbind(&self, dest: &Dest, key: &str, args: &Table) -> bool {
        let removed = self.router_mut().unbind(dest, key, args);
        if removed && matches!(dest, Dest::Exchange(_)) {
            self.exchange_dests.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// Removes every binding to `dest`; returns how many went.
    pub fn unbind_destination(&self, dest: &Dest) -> usize {
        let n = self.router_mut().unbind_destination(dest);
        if n > 0 && matches!(dest, Dest::Exchange(_)) {
            self.exchange_dests.fetch_sub(n, Ordering::Relaxed);
        }
        n
    }

    /// Whether routing from here may read more than the routing key
    /// (headers, properties), here or further along the graph.
    pub fn needs_message_details(&self) -> bool {
        if self.has_alternate.load(Ordering::Relaxed)
            || self.exchange_dests.load(Ordering::Relaxed) > 0
        {
            return true;
        }
        let r = self.router();
        r.needs_headers() || r.needs_properties()
    }

    /// The effective alternate exchange's name.
    pub fn alternate(&self) -> Option<Arc<str>> {
        if !self.has_alternate.load(Ordering::Relaxed) {
            return None;
        }
        self.alternate
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The policy and operator policy that apply to this exchange.
    pub fn applied_policies(&self) -> Applied {
        self.policies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Re-reads which policies apply (under this exchange's policy lock,
    /// as `Queue::refresh_policies`) and updates the effective alternate
    /// exchange.
    pub(crate) fn refresh_policies(&self, matching: impl FnOnce() -> Applied) {
        let mut p = self.policies.lock().unwrap_or_else(|e| e.into_inner());
        let applied = matching();
        if applied.same(&p) {
            return;
        }
        let ae = alternate_exchange(&self.opts.arguments, &applied).map(Arc::<str>::from);
        self.has_alternate.store(ae.is_some(), Ordering::Relaxed);
        *self.alternate.write().unwrap_or_else(|e| e.into_inner()) = ae;
        *p = applied;
    }

    pub fn is_deleted(&self) -> bool {
        // SeqCst, as the queue's: binds check it after writing their record
        // (see `Vhost::bind_exchange`).
        self.deleted.load(Ordering::SeqCst)
    }

    pub(crate) fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::SeqCst);
    }
}
