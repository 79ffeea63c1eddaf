//! An exchange as the broker runs it: metadata plus the `exchanges` router.

use super::queue::QueueRef;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use warren_exchanges::{ExchangeType, Router, Table};

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
    router: RwLock<Router<QueueRef>>,
    deleted: AtomicBool,
}

impl Exchange {
    pub fn new(name: String, kind: ExchangeKind, opts: ExchangeOptions) -> Self {
        let rk = match kind {
            ExchangeKind::Default => ExchangeType::Direct,
            ExchangeKind::Typed(t) => t,
        };
        Exchange {
            name,
            kind,
            opts,
            router: RwLock::new(Router::new(rk)),
            deleted: AtomicBool::new(false),
        }
    }

    pub fn router(&self) -> RwLockReadGuard<'_, Router<QueueRef>> {
        self.router.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn router_mut(&self) -> RwLockWriteGuard<'_, Router<QueueRef>> {
        self.router.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether routing needs the message's headers table.
    pub fn needs_headers(&self) -> bool {
        self.kind == ExchangeKind::Typed(ExchangeType::Headers)
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    pub(crate) fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::Release);
    }
}
