//! Owned forms of the envelopes (needs `alloc`), for code that keeps messages past the
//! buffer they arrived in.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::Error;
use crate::envelope::{
    Cancel, Continuation, Envelope, ErrorCode, ErrorFrame, Flags, GoAway, GoAwayCode, Notify, Ping,
    Pong, Request, Response,
};
use crate::meta::{Metadata, OwnedMetaPair};

/// An owned REQUEST.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OwnedRequest {
    /// The request id, never 0.
    pub id: u32,
    /// The body format.
    pub format: u8,
    /// The method.
    pub method: String,
    /// Metadata entries.
    pub meta: Vec<OwnedMetaPair>,
    /// The whole body.
    pub body: Vec<u8>,
}

/// An owned RESPONSE.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OwnedResponse {
    /// The id of the request answered.
    pub id: u32,
    /// The body format.
    pub format: u8,
    /// Metadata entries.
    pub meta: Vec<OwnedMetaPair>,
    /// The whole body.
    pub body: Vec<u8>,
}

/// An owned NOTIFY.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OwnedNotify {
    /// The body format.
    pub format: u8,
    /// The topic.
    pub topic: String,
    /// Metadata entries.
    pub meta: Vec<OwnedMetaPair>,
    /// The whole body.
    pub body: Vec<u8>,
}

/// An owned envelope of any type. Messages hold their whole body; MORE is implied by the
/// body's size when encoding ([`crate::MessageFrames`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OwnedEnvelope {
    /// REQUEST.
    Request(OwnedRequest),
    /// RESPONSE.
    Response(OwnedResponse),
    /// NOTIFY.
    Notify(OwnedNotify),
    /// ERROR.
    Error {
        /// Request id, or 0 for the connection.
        id: u32,
        /// Error code.
        code: ErrorCode,
        /// Message.
        message: String,
    },
    /// PING.
    Ping(Ping),
    /// PONG.
    Pong(Pong),
    /// CANCEL.
    Cancel(Cancel),
    /// GOAWAY.
    GoAway {
        /// Last accepted id.
        last_id: u32,
        /// Code.
        code: GoAwayCode,
        /// Reason.
        reason: String,
    },
    /// CONTINUATION.
    Continuation {
        /// Flags.
        flags: Flags,
        /// Chunk.
        chunk: Vec<u8>,
    },
}

impl OwnedEnvelope {
    /// Copies a borrowed envelope. For a head frame, `body` is only the head's part.
    pub fn from_envelope(envelope: &Envelope<'_>) -> Self {
        match *envelope {
            Envelope::Request(m) => OwnedEnvelope::Request(OwnedRequest {
                id: m.id,
                format: m.format,
                method: m.method.to_string(),
                meta: m.meta.to_owned_pairs(),
                body: m.body.to_vec(),
            }),
            Envelope::Response(m) => OwnedEnvelope::Response(OwnedResponse {
                id: m.id,
                format: m.format,
                meta: m.meta.to_owned_pairs(),
                body: m.body.to_vec(),
            }),
            Envelope::Notify(m) => OwnedEnvelope::Notify(OwnedNotify {
                format: m.format,
                topic: m.topic.to_string(),
                meta: m.meta.to_owned_pairs(),
                body: m.body.to_vec(),
            }),
            Envelope::Error(m) => OwnedEnvelope::Error {
                id: m.id,
                code: m.code,
                message: m.message.to_string(),
            },
            Envelope::Ping(p) => OwnedEnvelope::Ping(p),
            Envelope::Pong(p) => OwnedEnvelope::Pong(p),
            Envelope::Cancel(c) => OwnedEnvelope::Cancel(c),
            Envelope::GoAway(m) => OwnedEnvelope::GoAway {
                last_id: m.last_id,
                code: m.code,
                reason: m.reason.to_string(),
            },
            Envelope::Continuation(m) => OwnedEnvelope::Continuation {
                flags: m.flags,
                chunk: m.chunk.to_vec(),
            },
        }
    }

    /// A borrowed view of this envelope, MORE cleared.
    pub fn as_envelope(&self) -> Envelope<'_> {
        match self {
            OwnedEnvelope::Request(m) => Envelope::Request(Request {
                id: m.id,
                flags: Flags::NONE,
                format: m.format,
                method: &m.method,
                meta: Metadata::from_owned(&m.meta),
                body: &m.body,
            }),
            OwnedEnvelope::Response(m) => Envelope::Response(Response {
                id: m.id,
                flags: Flags::NONE,
                format: m.format,
                meta: Metadata::from_owned(&m.meta),
                body: &m.body,
            }),
            OwnedEnvelope::Notify(m) => Envelope::Notify(Notify {
                flags: Flags::NONE,
                format: m.format,
                topic: &m.topic,
                meta: Metadata::from_owned(&m.meta),
                body: &m.body,
            }),
            OwnedEnvelope::Error { id, code, message } => Envelope::Error(ErrorFrame {
                id: *id,
                code: *code,
                message,
            }),
            OwnedEnvelope::Ping(p) => Envelope::Ping(*p),
            OwnedEnvelope::Pong(p) => Envelope::Pong(*p),
            OwnedEnvelope::Cancel(c) => Envelope::Cancel(*c),
            OwnedEnvelope::GoAway {
                last_id,
                code,
                reason,
            } => Envelope::GoAway(GoAway {
                last_id: *last_id,
                code: *code,
                reason,
            }),
            OwnedEnvelope::Continuation { flags, chunk } => Envelope::Continuation(Continuation {
                flags: *flags,
                chunk,
            }),
        }
    }

    /// Appends this envelope to `out` as one frame, or as a head frame and CONTINUATION
    /// frames when its body does not fit in one.
    pub fn encode_to_vec(&self, out: &mut Vec<u8>) -> Result<usize, Error> {
        let envelope = self.as_envelope();
        if envelope.body().is_some() {
            crate::MessageFrames::new(envelope)?.write_all_to_vec(out)
        } else {
            envelope.encode_to_vec(out)
        }
    }
}
