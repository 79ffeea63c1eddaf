//! What the management API can see of live connections, their channels and
//! consumers, and the message counters with their sampled rates.
//!
//! Plain values only (no AMQP types): the connection task fills a
//! [`ConnectionInfo`] at registration and refreshes its channel snapshot
//! now and then; the API reads copies. Message counters are relaxed atomic
//! increments on the hot path; a sampler turns them into rates every few
//! seconds, so reading stats never touches a queue or a connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use tokio::sync::Notify;

/// Message counts since start, and their per-second rates at the last sample.
#[derive(Debug, Default)]
pub struct MessageCounters {
    publish: AtomicU64,
    deliver: AtomicU64,
    ack: AtomicU64,
    /// Counts at the last sample, to compute rates from.
    last: [AtomicU64; 3],
    /// Rates as `f64` bits, so readers never take a lock.
    rates: [AtomicU64; 3],
}

/// A copy of [`MessageCounters`] for display.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MessageStats {
    pub publish: u64,
    pub deliver: u64,
    pub ack: u64,
    pub publish_rate: f64,
    pub deliver_rate: f64,
    pub ack_rate: f64,
}

impl MessageCounters {
    pub fn published(&self, n: u64) {
        self.publish.fetch_add(n, Ordering::Relaxed);
    }

    pub fn delivered(&self, n: u64) {
        self.deliver.fetch_add(n, Ordering::Relaxed);
    }

    pub fn acked(&self, n: u64) {
        self.ack.fetch_add(n, Ordering::Relaxed);
    }

    /// Turns the counts since the last sample into per-second rates.
    pub fn sample(&self, secs: f64) {
        let now = [
            self.publish.load(Ordering::Relaxed),
            self.deliver.load(Ordering::Relaxed),
            self.ack.load(Ordering::Relaxed),
        ];
        for (i, n) in now.into_iter().enumerate() {
            let before = self.last[i].swap(n, Ordering::Relaxed);
            let rate = if secs > 0.0 {
                n.saturating_sub(before) as f64 / secs
            } else {
                0.0
            };
            self.rates[i].store(rate.to_bits(), Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> MessageStats {
        let rate = |i: usize| f64::from_bits(self.rates[i].load(Ordering::Relaxed));
        MessageStats {
            publish: self.publish.load(Ordering::Relaxed),
            deliver: self.deliver.load(Ordering::Relaxed),
            ack: self.ack.load(Ordering::Relaxed),
            publish_rate: rate(0),
            deliver_rate: rate(1),
            ack_rate: rate(2),
        }
    }
}

/// The part of a client's connection.start-ok properties the API shows.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    pub product: String,
    pub platform: String,
    pub version: String,
    pub connection_name: String,
    pub capabilities: Vec<(String, bool)>,
}

/// One consumer as the API shows it.
#[derive(Debug, Clone)]
pub struct ConsumerSnapshot {
    pub tag: String,
    pub queue: String,
    pub ack_required: bool,
    pub prefetch: u32,
    pub exclusive: bool,
}

/// One channel as the API shows it.
#[derive(Debug, Clone)]
pub struct ChannelSnapshot {
    pub number: u16,
    /// basic.qos global=false: what new consumers get.
    pub prefetch_count: u32,
    /// basic.qos global=true: shared by the channel's consumers.
    pub global_prefetch_count: u32,
    pub unacked: usize,
    pub confirm: bool,
    pub transactional: bool,
    pub consumers: Vec<ConsumerSnapshot>,
}

/// A live, logged-in connection.
#[derive(Debug)]
pub struct ConnectionInfo {
    pub id: u64,
    /// RabbitMQ's name: "PEER -> LOCAL".
    pub name: String,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub user: String,
    pub vhost: String,
    /// Milliseconds since the Unix epoch.
    pub connected_at: u64,
    pub channel_max: u16,
    pub frame_max: u32,
    pub heartbeat: u16,
    pub client: ClientInfo,
    channels: Mutex<Vec<ChannelSnapshot>>,
    close_reason: Mutex<Option<String>>,
    close: Notify,
}

impl ConnectionInfo {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u64,
        peer: SocketAddr,
        local: SocketAddr,
        user: String,
        vhost: String,
        channel_max: u16,
        frame_max: u32,
        heartbeat: u16,
        client: ClientInfo,
    ) -> Self {
        let connected_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        ConnectionInfo {
            id,
            name: format!("{peer} -> {local}"),
            peer,
            local,
            user,
            vhost,
            connected_at,
            channel_max,
            frame_max,
            heartbeat,
            client,
            channels: Mutex::new(Vec::new()),
            close_reason: Mutex::new(None),
            close: Notify::new(),
        }
    }

    /// Replaces the channel snapshot (the connection task calls this).
    pub fn set_channels(&self, channels: Vec<ChannelSnapshot>) {
        *self.channels.lock().unwrap_or_else(|e| e.into_inner()) = channels;
    }

    pub fn channels(&self) -> Vec<ChannelSnapshot> {
        self.channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Asks the connection to close; its task sends 320 CONNECTION_FORCED.
    pub fn request_close(&self, reason: &str) {
        *self.close_reason.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.to_owned());
        // notify_one keeps a permit if the task is not waiting right now.
        self.close.notify_one();
    }

    /// Resolves with the reason once [`ConnectionInfo::request_close`] was called.
    pub async fn close_requested(&self) -> String {
        loop {
            self.close.notified().await;
            if let Some(r) = self
                .close_reason
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
            {
                return r;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_counts_per_second_since_the_last_sample() {
        let c = MessageCounters::default();
        c.published(10);
        c.sample(5.0);
        let s = c.snapshot();
        assert_eq!(s.publish, 10);
        assert_eq!(s.publish_rate, 2.0);
        c.sample(5.0);
        assert_eq!(c.snapshot().publish_rate, 0.0);
    }
}
