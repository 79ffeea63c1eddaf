//! A client speaking raw AMQP frames over a socket, for the tests that
//! send what lapin never would (bad headers, frames out of order, tune-ok
//! limits): the connection, frame reads with a deadline, the handshake
//! steps, and the byte builders for frames and methods. Test files add
//! their own handshakes in an `impl Raw` of their own.

use super::within;
use amq_protocol::protocol::{channel, connection, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warren::amqp::codec::{self, Frame};

/// A raw AMQP connection: the socket and what was read and not yet parsed.
pub struct Raw {
    pub s: TcpStream,
    pub buf: BytesMut,
}

/// The bytes of method `m` on channel `ch`.
pub fn method_bytes(ch: u16, m: AMQPClass) -> Vec<u8> {
    let mut b = BytesMut::new();
    codec::write_method(&mut b, ch, m);
    b.to_vec()
}

/// One frame of `kind` on `channel` around `payload`.
pub fn frame_bytes(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![kind];
    f.extend_from_slice(&channel.to_be_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f.push(codec::FRAME_END);
    f
}

pub fn close_ok() -> Vec<u8> {
    method_bytes(
        0,
        AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
    )
}

pub fn channel_open(ch: u16) -> Vec<u8> {
    method_bytes(
        ch,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    )
}

impl Raw {
    pub async fn connect(s: &warren::server::Server) -> Raw {
        Raw {
            s: TcpStream::connect(s.amqp_addr()).await.unwrap(),
            buf: BytesMut::new(),
        }
    }

    pub async fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).await.unwrap();
    }

    pub async fn method_out(&mut self, ch: u16, m: AMQPClass) {
        self.send(&method_bytes(ch, m)).await;
    }

    /// The next frame; `None` when the server closed the socket.
    pub async fn frame(&mut self) -> Option<Frame> {
        within(async {
            loop {
                if let Some(f) = codec::read_frame(&mut self.buf, 0).unwrap() {
                    return Some(f);
                }
                let n = self.s.read_buf(&mut self.buf).await.unwrap_or(0);
                if n == 0 {
                    return None;
                }
            }
        })
        .await
    }

    /// The next method, skipping heartbeats.
    pub async fn method(&mut self) -> AMQPClass {
        loop {
            let f = self.frame().await.expect("a frame, not EOF");
            if f.kind == codec::FRAME_HEARTBEAT {
                continue;
            }
            assert_eq!(f.kind, codec::FRAME_METHOD, "{f:?}");
            return amq_protocol::protocol::parse_class(&f.payload[..])
                .unwrap()
                .1;
        }
    }

    /// The server closed the connection (answered with close-ok):
    /// (code, text, class, method).
    pub async fn expect_close(&mut self) -> (u16, String, u16, u16) {
        loop {
            if let AMQPClass::Connection(connection::AMQPMethod::Close(c)) = self.method().await {
                self.send(&close_ok()).await;
                return (
                    c.reply_code,
                    c.reply_text.as_str().to_owned(),
                    c.class_id,
                    c.method_id,
                );
            }
        }
    }

    /// The server closed the connection with `code`; returns the text.
    pub async fn expect_close_code(&mut self, code: u16) -> String {
        let (got, text, _, _) = self.expect_close().await;
        assert_eq!(got, code, "{text}");
        text
    }

    /// The socket reaches EOF with no message data before it.
    pub async fn expect_eof(&mut self) {
        while let Some(f) = self.frame().await {
            assert_ne!(f.kind, codec::FRAME_BODY, "unexpected data before EOF");
        }
    }

    /// The protocol header; returns the server's connection.start.
    pub async fn start(&mut self) -> connection::Start {
        self.send(codec::PROTOCOL_HEADER).await;
        match self.method().await {
            AMQPClass::Connection(connection::AMQPMethod::Start(s)) => s,
            other => panic!("{other:?}"),
        }
    }

    /// start-ok with PLAIN credentials; capabilities: consumer_cancel_notify
    /// and authentication_failure_close as `auth_close` says.
    pub async fn start_ok(&mut self, user: &str, pass: &str, auth_close: bool) {
        let mut caps = FieldTable::default();
        caps.insert(
            "authentication_failure_close".into(),
            AMQPValue::Boolean(auth_close),
        );
        caps.insert("consumer_cancel_notify".into(), AMQPValue::Boolean(true));
        let mut props = FieldTable::default();
        props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
        self.method_out(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: props,
                mechanism: "PLAIN".into(),
                response: LongString::from(format!("\0{user}\0{pass}").into_bytes()),
                locale: "en_US".into(),
            })),
        )
        .await;
    }

    /// Protocol header through start-ok as guest: the next frame is tune.
    pub async fn login(s: &warren::server::Server) -> Raw {
        let mut r = Raw::connect(s).await;
        r.start().await;
        r.start_ok("guest", "guest", true).await;
        r
    }

    /// After start-ok: answers connection.tune (no heartbeats), sends
    /// connection.open for `vhost` and returns the broker's answer
    /// (open-ok, or the close that refused it).
    pub async fn tune_open(&mut self, vhost: &str) -> AMQPClass {
        let tune = match self.method().await {
            AMQPClass::Connection(connection::AMQPMethod::Tune(t)) => t,
            other => panic!("expected connection.tune: {other:?}"),
        };
        self.method_out(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: tune.channel_max,
                frame_max: tune.frame_max,
                heartbeat: 0,
            })),
        )
        .await;
        self.method_out(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: vhost.into(),
            })),
        )
        .await;
        self.method().await
    }

    /// [`Raw::tune_open`] that must succeed.
    pub async fn tune_open_ok(&mut self, vhost: &str) {
        match self.tune_open(vhost).await {
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)) => {}
            other => panic!("expected connection.open-ok: {other:?}"),
        }
    }

    pub async fn open_channel(&mut self, ch: u16) {
        self.send(&channel_open(ch)).await;
        match self.method().await {
            AMQPClass::Channel(channel::AMQPMethod::OpenOk(_)) => {}
            other => panic!("channel {ch}: {other:?}"),
        }
    }
}
