//! Warren: an AMQP 0-9-1 message broker, a drop-in for RabbitMQ.
//!
//! Layers, with dependencies pointing one way: [`amqp`] (the wire) calls
//! into [`broker`] (vhosts, exchanges, queues), which builds on the
//! `warren-exchanges` and `warren-queues` crates. [`mgmt`] (the HTTP
//! management API) reads broker snapshots, never the wire. [`server`] binds
//! the listeners, [`tls`] makes their rustls acceptors for AMQPS and HTTPS,
//! and [`config`] reads `rabbit.toml`.

pub mod amqp;
pub mod broker;
pub mod config;
pub mod mgmt;
pub mod server;
pub mod tls;
