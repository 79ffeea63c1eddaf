//! The command assembler: per channel, turns method, content-header and
//! body frames into whole commands (RabbitMQ's rabbit_command_assembler).
//!
//! Pure: it sees frames and returns commands or the 505 UNEXPECTED_FRAME
//! text; it does no I/O and knows nothing of the broker.

use super::codec::{
    parse_content_header, ContentHeader, Frame, FRAME_BODY, FRAME_HEADER, FRAME_METHOD,
};
use bytes::{Bytes, BytesMut};

/// A whole command: a method and, for basic.publish, its content.
#[derive(Debug)]
pub struct Command {
    /// The method frame payload: class id, method id, arguments.
    pub method: Bytes,
    pub content: Option<Content>,
}

#[derive(Debug)]
pub struct Content {
    pub header: ContentHeader,
    pub body: Bytes,
}

impl Command {
    pub fn class_method(&self) -> (u16, u16) {
        class_method(&self.method)
    }
}

pub fn class_method(payload: &[u8]) -> (u16, u16) {
    if payload.len() < 4 {
        return (0, 0);
    }
    (
        u16::from_be_bytes([payload[0], payload[1]]),
        u16::from_be_bytes([payload[2], payload[3]]),
    )
}

/// Only basic.publish carries content from a client.
fn has_content(payload: &[u8]) -> bool {
    class_method(payload) == (60, 40)
}

#[derive(Debug, Default)]
enum State {
    #[default]
    Idle,
    Header {
        method: Bytes,
    },
    Body {
        method: Bytes,
        header: ContentHeader,
        /// A single-frame body is kept as the frame's own bytes (no copy).
        first: Option<Bytes>,
        acc: BytesMut,
        remaining: u64,
    },
}

/// A frame that breaks the method/header/body order (505), a body larger
/// than the broker accepts, or one that does not fit beside the other
/// unfinished bodies of the connection (the caller maps them).
#[derive(Debug, PartialEq, Eq)]
pub enum AssembleError {
    Unexpected(String),
    TooLarge { size: u64, max: u64 },
    NoRoom { size: u64, room: u64 },
}

/// What a content header's body may take: at most `max_body` bytes, and
/// at most `room` (what the connection's other unfinished bodies leave).
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub max_body: u64,
    pub room: u64,
}

#[derive(Debug, Default)]
pub struct Assembler {
    state: State,
}

impl Assembler {
    /// The announced size of the body being received; 0 when none is.
    pub fn pending_body(&self) -> u64 {
        match &self.state {
            State::Body { header, .. } => header.body_size,
            _ => 0,
        }
    }

    /// Feeds one method, header or body frame.
    pub fn frame(
        &mut self,
        frame: Frame,
        limits: BodyLimits,
    ) -> Result<Option<Command>, AssembleError> {
        let max_body = limits.max_body;
        let state = std::mem::take(&mut self.state);
        match (state, frame.kind) {
            (State::Idle, FRAME_METHOD) => {
                if has_content(&frame.payload) {
                    self.state = State::Header {
                        method: frame.payload,
                    };
                    Ok(None)
                } else {
                    Ok(Some(Command {
                        method: frame.payload,
                        content: None,
                    }))
                }
            }
            (State::Idle, _) => Err(AssembleError::Unexpected(
                "expected method frame, got non method frame instead".into(),
            )),
            (State::Header { method }, FRAME_HEADER) => {
                let (class, _) = class_method(&method);
                let Some(header) = parse_content_header(&frame.payload) else {
                    return Err(AssembleError::Unexpected(format!(
                        "malformed content header for class {class}"
                    )));
                };
                if header.class_id != class {
                    return Err(AssembleError::Unexpected(format!(
                        "expected content header for class {class}, got one for class {} instead",
                        header.class_id
                    )));
                }
                if header.body_size > max_body {
                    return Err(AssembleError::TooLarge {
                        size: header.body_size,
                        max: max_body,
                    });
                }
                if header.body_size > limits.room {
                    return Err(AssembleError::NoRoom {
                        size: header.body_size,
                        room: limits.room,
                    });
                }
                if header.body_size == 0 {
                    return Ok(Some(Command {
                        method,
                        content: Some(Content {
                            header,
                            body: Bytes::new(),
                        }),
                    }));
                }
                let remaining = header.body_size;
                self.state = State::Body {
                    method,
                    header,
                    first: None,
                    acc: BytesMut::new(),
                    remaining,
                };
                Ok(None)
            }
            (State::Header { method }, _) => Err(AssembleError::Unexpected(format!(
                "expected content header for class {}, got non content header frame instead",
                class_method(&method).0
            ))),
            (
                State::Body {
                    method,
                    header,
                    mut first,
                    mut acc,
                    remaining,
                },
                FRAME_BODY,
            ) => {
                let n = frame.payload.len() as u64;
                if n > remaining {
                    return Err(AssembleError::Unexpected(
                        "content body is longer than its header announced".into(),
                    ));
                }
                let remaining = remaining - n;
                if first.is_none() && acc.is_empty() && remaining == 0 {
                    first = Some(frame.payload);
                } else {
                    if acc.is_empty() {
                        acc.reserve(header.body_size as usize);
                        if let Some(f) = first.take() {
                            acc.extend_from_slice(&f);
                        }
                    }
                    acc.extend_from_slice(&frame.payload);
                }
                if remaining == 0 {
                    let body = first.unwrap_or_else(|| acc.freeze());
                    return Ok(Some(Command {
                        method,
                        content: Some(Content { header, body }),
                    }));
                }
                self.state = State::Body {
                    method,
                    header,
                    first,
                    acc,
                    remaining,
                };
                Ok(None)
            }
            (State::Body { .. }, _) => Err(AssembleError::Unexpected(
                "expected content body, got non content body frame instead".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amqp::codec::FRAME_HEADER;

    fn f(kind: u8, payload: &[u8]) -> Frame {
        Frame {
            kind,
            channel: 1,
            payload: Bytes::copy_from_slice(payload),
        }
    }

    fn header(size: u64) -> Vec<u8> {
        let mut h = vec![0, 60, 0, 0];
        h.extend_from_slice(&size.to_be_bytes());
        h.extend_from_slice(&[0, 0]);
        h
    }

    fn lim(max_body: u64) -> BodyLimits {
        BodyLimits {
            max_body,
            room: u64::MAX,
        }
    }

    const PUBLISH: &[u8] = &[0, 60, 0, 40, 0, 0, 0, 1, b'q', 0];

    #[test]
    fn publish_with_two_body_frames() {
        let mut a = Assembler::default();
        assert!(a
            .frame(f(FRAME_METHOD, PUBLISH), lim(1000))
            .unwrap()
            .is_none());
        assert!(a
            .frame(f(FRAME_HEADER, &header(5)), lim(1000))
            .unwrap()
            .is_none());
        assert!(a.frame(f(FRAME_BODY, b"ab"), lim(1000)).unwrap().is_none());
        let c = a.frame(f(FRAME_BODY, b"cde"), lim(1000)).unwrap().unwrap();
        assert_eq!(&c.content.unwrap().body[..], b"abcde");
    }

    #[test]
    fn empty_body_completes_at_header() {
        let mut a = Assembler::default();
        a.frame(f(FRAME_METHOD, PUBLISH), lim(1000)).unwrap();
        let c = a
            .frame(f(FRAME_HEADER, &header(0)), lim(1000))
            .unwrap()
            .unwrap();
        assert!(c.content.unwrap().body.is_empty());
    }

    #[test]
    fn out_of_order_frames_are_unexpected() {
        let mut a = Assembler::default();
        assert!(matches!(
            a.frame(f(FRAME_BODY, b"x"), lim(1000)),
            Err(AssembleError::Unexpected(_))
        ));
        let mut a = Assembler::default();
        a.frame(f(FRAME_METHOD, PUBLISH), lim(1000)).unwrap();
        assert_eq!(
            a.frame(f(FRAME_METHOD, PUBLISH), lim(1000)).unwrap_err(),
            AssembleError::Unexpected(
                "expected content header for class 60, got non content header frame instead".into()
            )
        );
        let mut a = Assembler::default();
        a.frame(f(FRAME_METHOD, PUBLISH), lim(1000)).unwrap();
        a.frame(f(FRAME_HEADER, &header(1)), lim(1000)).unwrap();
        assert!(
            a.frame(f(FRAME_BODY, b"xy"), lim(1000)).is_err(),
            "longer than announced"
        );
    }

    #[test]
    fn a_body_without_room_is_refused_at_header() {
        let mut a = Assembler::default();
        a.frame(f(FRAME_METHOD, PUBLISH), lim(1000)).unwrap();
        let tight = BodyLimits {
            max_body: 1000,
            room: 10,
        };
        assert_eq!(
            a.frame(f(FRAME_HEADER, &header(11)), tight).unwrap_err(),
            AssembleError::NoRoom { size: 11, room: 10 }
        );
        let mut a = Assembler::default();
        a.frame(f(FRAME_METHOD, PUBLISH), lim(1000)).unwrap();
        a.frame(f(FRAME_HEADER, &header(10)), tight).unwrap();
        assert_eq!(a.pending_body(), 10);
        a.frame(f(FRAME_BODY, &[0; 10]), tight).unwrap().unwrap();
        assert_eq!(a.pending_body(), 0);
    }

    #[test]
    fn oversized_body_is_refused_at_header() {
        let mut a = Assembler::default();
        a.frame(f(FRAME_METHOD, PUBLISH), lim(1000)).unwrap();
        assert_eq!(
            a.frame(f(FRAME_HEADER, &header(2000)), lim(1000))
                .unwrap_err(),
            AssembleError::TooLarge {
                size: 2000,
                max: 1000
            }
        );
    }
}
