//! Reassembly of large messages from CONTINUATION frames (needs `alloc`).

use alloc::vec::Vec;

use crate::Error;
use crate::envelope::{Continuation, Envelope, Flags, Request};
use crate::frame::{Frame, FrameType};

/// The default maximum message size: 16 MiB of body.
pub const DEFAULT_MAX_MESSAGE_LEN: usize = 16 * 1024 * 1024;

/// What one frame meant, once the assembler has seen it.
#[derive(Debug)]
#[non_exhaustive]
pub enum Assembled<'a> {
    /// A frame complete by itself: a single-frame REQUEST, RESPONSE or NOTIFY (its `body` is
    /// the whole body), or ERROR, PING, PONG, CANCEL or GOAWAY. Borrows the frame.
    Envelope(Envelope<'a>),
    /// The last frame of a message that spanned several frames. `head` is the head frame's
    /// envelope (its `body` field holds only the head's part); `body` is the whole body.
    Message {
        /// The envelope of the head frame, kept by the assembler.
        head: Envelope<'a>,
        /// The reassembled body.
        body: Vec<u8>,
    },
    /// A REQUEST whose body exceeded the maximum message size. The receiver answers ERROR
    /// TOO_LARGE with this id; the request's remaining frames are skipped.
    RequestTooLarge {
        /// The request's id.
        id: u32,
    },
    /// A REQUEST that is malformed but whose id could be read: the receiver answers ERROR
    /// MALFORMED with this id and keeps the connection (docs/protocol.md section 4).
    MalformedRequest {
        /// The request's id.
        id: u32,
        /// What was wrong.
        error: Error,
    },
    /// Nothing for the caller: a CONTINUATION was absorbed, or a frame of an unknown type
    /// was skipped (and counted).
    Absorbed,
}

#[derive(Debug, Clone, Default)]
enum State {
    #[default]
    Idle,
    /// Collecting a message: the head frame's payload (to re-borrow its envelope) and the
    /// body so far.
    Collecting {
        frame_type: FrameType,
        head: Vec<u8>,
        body: Vec<u8>,
    },
    /// Dropping the rest of a request that is too large or malformed.
    Skipping,
    /// Idle, but keeping the head payload of the message just completed, which the
    /// returned envelope borrows.
    Done { head: Vec<u8> },
}

/// Turns verified frames into whole messages, enforcing docs/protocol.md section 5.
///
/// - A head frame with MORE starts a message; CONTINUATION frames extend it; the one
///   without MORE completes it.
/// - Between the frames of one message only PING and PONG may appear; anything else,
///   unknown types included, is an error.
/// - Outside a message, frames of unknown types are skipped and counted.
/// - The body never grows past the maximum message size: past it, a REQUEST is refused with
///   [`Assembled::RequestTooLarge`] and its remaining frames skipped; any other message is
///   [`Error::MessageTooLarge`], fatal for the connection.
///
/// Every error returned is fatal: the receiver answers ERROR id 0 with
/// [`Error::error_code`] and closes.
#[derive(Debug, Clone)]
pub struct Assembler {
    max_message_len: usize,
    state: State,
    unknown_frames: u64,
}

impl Default for Assembler {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_MESSAGE_LEN)
    }
}

impl Assembler {
    /// An assembler that accepts bodies of up to `max_message_len` bytes.
    pub fn new(max_message_len: usize) -> Self {
        Assembler {
            max_message_len,
            state: State::Idle,
            unknown_frames: 0,
        }
    }

    /// The configured maximum body size.
    pub fn max_message_len(&self) -> usize {
        self.max_message_len
    }

    /// Frames of unknown types skipped so far.
    pub fn unknown_frames(&self) -> u64 {
        self.unknown_frames
    }

    /// Whether a message is in progress (its last frame not yet seen).
    pub fn in_message(&self) -> bool {
        matches!(self.state, State::Collecting { .. } | State::Skipping)
    }

    /// Body bytes held for the message in progress (0 when none is being collected).
    pub fn partial_len(&self) -> usize {
        match &self.state {
            State::Collecting { head, body, .. } => head.len() + body.len(),
            _ => 0,
        }
    }

    /// Drops the message being collected, and skips its remaining frames: what a receiver
    /// does when it cannot hold the message (its memory budget, say). Returns the message's
    /// type and, for a REQUEST, its id (the receiver answers it); `None` if no message was
    /// being collected.
    pub fn abandon(&mut self) -> Option<(FrameType, Option<u32>)> {
        if !matches!(self.state, State::Collecting { .. }) {
            return None;
        }
        let State::Collecting {
            frame_type, head, ..
        } = core::mem::take(&mut self.state)
        else {
            return None;
        };
        // Collecting means the last frame seen had MORE set: continuations follow.
        self.state = State::Skipping;
        let id = match frame_type {
            FrameType::Request => Request::peek_id(&head),
            _ => None,
        };
        Some((frame_type, id))
    }

    /// Whether a REQUEST, RESPONSE or NOTIFY that a receiver parsed itself from the next
    /// frame, with these `flags` and a body of `body_len` bytes, is a whole message by
    /// itself: no message is in progress, MORE is clear and the body is within the maximum.
    ///
    /// For such a frame [`Assembler::push`] would return [`Assembled::Envelope`] with the
    /// same envelope and change nothing, so the receiver may take the message as it is and
    /// skip `push` (and a second parse): the fast path of the common single-frame message.
    /// Any other frame, one that failed to parse included, goes to `push`.
    #[inline]
    pub fn is_whole(&self, flags: Flags, body_len: usize) -> bool {
        !flags.more() && body_len <= self.max_message_len && !self.in_message()
    }

    /// Takes the next frame of the stream.
    pub fn push<'a>(&'a mut self, frame: Frame<'a>) -> Result<Assembled<'a>, Error> {
        let Some(frame_type) = frame.frame_type() else {
            if self.in_message() {
                return Err(unexpected(frame.type_byte()));
            }
            self.unknown_frames += 1;
            return Ok(Assembled::Absorbed);
        };
        match (&mut self.state, frame_type) {
            (_, FrameType::Ping | FrameType::Pong) => {
                Ok(Assembled::Envelope(Envelope::parse(frame)?))
            }
            (State::Idle | State::Done { .. }, FrameType::Continuation) => {
                Err(Error::UnexpectedFrame {
                    frame_type: frame.type_byte(),
                    context: "CONTINUATION without a message in progress",
                })
            }
            (State::Idle | State::Done { .. }, _) => self.start(frame_type, frame),
            (State::Skipping, FrameType::Continuation) => {
                if !Continuation::parse(frame.payload())?.flags.more() {
                    self.state = State::Idle;
                }
                Ok(Assembled::Absorbed)
            }
            (State::Collecting { .. }, FrameType::Continuation) => self.extend(frame),
            (_, _) => Err(unexpected(frame.type_byte())),
        }
    }

    fn start<'a>(
        &'a mut self,
        frame_type: FrameType,
        frame: Frame<'a>,
    ) -> Result<Assembled<'a>, Error> {
        let envelope = match Envelope::parse(frame) {
            Ok(envelope) => envelope,
            Err(error) if frame_type == FrameType::Request => {
                let payload = frame.payload();
                let Some(id) = Request::peek_id(payload) else {
                    return Err(error);
                };
                // A flags byte with MORE set announces continuations we must skip; with
                // reserved bits set its meaning is unknown, so we trust only MORE alone.
                if payload.get(4) == Some(&0x01) {
                    self.state = State::Skipping;
                }
                return Ok(Assembled::MalformedRequest { id, error });
            }
            Err(error) => return Err(error),
        };
        let body_len = envelope.body().map_or(0, <[u8]>::len);
        if body_len > self.max_message_len {
            return self.too_large(&envelope, body_len);
        }
        if !envelope.flags().is_some_and(|f| f.more()) {
            return Ok(Assembled::Envelope(envelope));
        }
        let mut body = Vec::new();
        body.extend_from_slice(envelope.body().unwrap_or(&[]));
        self.state = State::Collecting {
            frame_type,
            head: frame.payload().to_vec(),
            body,
        };
        Ok(Assembled::Absorbed)
    }

    fn extend<'a>(&'a mut self, frame: Frame<'a>) -> Result<Assembled<'a>, Error> {
        let continuation = Continuation::parse(frame.payload())?;
        let State::Collecting { body, .. } = &mut self.state else {
            return Err(unexpected(frame.type_byte()));
        };
        let len = body.len() + continuation.chunk.len();
        if len > self.max_message_len {
            let State::Collecting {
                frame_type, head, ..
            } = core::mem::take(&mut self.state)
            else {
                return Err(unexpected(frame.type_byte()));
            };
            if frame_type == FrameType::Request {
                if continuation.flags.more() {
                    self.state = State::Skipping;
                }
                return Ok(Assembled::RequestTooLarge {
                    id: Request::peek_id(&head).unwrap_or(0),
                });
            }
            return Err(Error::MessageTooLarge {
                len,
                limit: self.max_message_len,
            });
        }
        body.extend_from_slice(continuation.chunk);
        if continuation.flags.more() {
            return Ok(Assembled::Absorbed);
        }
        let State::Collecting {
            frame_type,
            head,
            body,
        } = core::mem::take(&mut self.state)
        else {
            return Err(unexpected(frame.type_byte()));
        };
        self.state = State::Done { head };
        let State::Done { head } = &self.state else {
            return Err(unexpected(frame.type_byte()));
        };
        let head = Envelope::parse(Frame::new(frame_type, head))?;
        Ok(Assembled::Message { head, body })
    }

    fn too_large<'a>(
        &mut self,
        envelope: &Envelope<'a>,
        len: usize,
    ) -> Result<Assembled<'a>, Error> {
        match envelope {
            Envelope::Request(request) => {
                if request.flags.more() {
                    self.state = State::Skipping;
                }
                Ok(Assembled::RequestTooLarge { id: request.id })
            }
            _ => Err(Error::MessageTooLarge {
                len,
                limit: self.max_message_len,
            }),
        }
    }
}

fn unexpected(frame_type: u8) -> Error {
    Error::UnexpectedFrame {
        frame_type,
        context: "only PING and PONG may come between the frames of one message",
    }
}
