//! Owned messages as the transport hands them out: bodies are `bytes::Bytes`, sliced without
//! copying from the read buffer when the message came in one frame.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mcp_codec::{ErrorCode, GoAwayCode, Metadata};
use tokio::time::Instant;

/// Owned metadata: received entries (kept as the wire block, sliced from the read buffer)
/// or entries to send.
///
/// Keys may repeat; iteration yields entries in order. Keys are checked when a message
/// carrying them is encoded (1..=255 bytes of `[a-z0-9._-]`).
#[derive(Clone, Default)]
pub struct Meta {
    repr: MetaRepr,
}

#[derive(Clone)]
enum MetaRepr {
    /// The entries after the count byte: as received (validated by the codec), or laid out
    /// by [`Meta::from_entries`] (lengths checked; keys are checked when encoded).
    Wire { count: u8, entries: Bytes },
    /// Entries added locally.
    Pairs(Vec<(Cow<'static, str>, Bytes)>),
}

impl Default for MetaRepr {
    fn default() -> Self {
        MetaRepr::Pairs(Vec::new())
    }
}

/// Entries up to which [`Meta`] hands the codec a borrowed view built on the stack.
const STACK_META: usize = 8;

/// Bytes up to which [`Meta::from_entries`] lays a block out on the stack in one pass.
const STACK_BLOCK: usize = 256;

impl Meta {
    /// No entries.
    pub const fn new() -> Self {
        Meta {
            repr: MetaRepr::Pairs(Vec::new()),
        }
    }

    /// `entries`, in order, laid out as a metadata block in one buffer (one allocation,
    /// where [`Meta::push`] makes one per value and grows a list): the form for metadata
    /// built on every call, such as the client's `traceparent` and `deadline`.
    ///
    /// Entries the wire cannot carry (an empty key or one over 255 bytes, a value over
    /// 65,535 bytes, more than 255 entries) are kept as they are, so that encoding refuses
    /// them with the usual error, as it refuses a key outside `[a-z0-9._-]`.
    pub fn from_entries<'a, I>(entries: I) -> Meta
    where
        I: IntoIterator<Item = (&'a str, &'a [u8])>,
        I::IntoIter: Clone,
    {
        let entries = entries.into_iter();
        // The usual block (a `traceparent` and a `deadline`: 84 bytes) is laid out in one
        // pass on the stack and copied once; a longer one takes a second pass.
        let mut stack = [0u8; STACK_BLOCK];
        let mut len = 0usize;
        let mut count = 0usize;
        let mut fits = true;
        for (key, value) in entries.clone() {
            let entry = 1 + key.len() + 2 + value.len();
            fits &= (1..=255).contains(&key.len()) && value.len() <= usize::from(u16::MAX);
            if fits && len + entry <= STACK_BLOCK {
                // Both lengths were checked just above.
                stack[len] = key.len() as u8;
                stack[len + 1..][..key.len()].copy_from_slice(key.as_bytes());
                let at = len + 1 + key.len();
                stack[at..at + 2].copy_from_slice(&(value.len() as u16).to_be_bytes());
                stack[at + 2..][..value.len()].copy_from_slice(value);
            }
            len += entry;
            count += 1;
        }
        if count == 0 {
            return Meta::new();
        }
        let (Ok(count), true) = (u8::try_from(count), fits) else {
            return Meta::copied(entries);
        };
        let block = if len <= STACK_BLOCK {
            Bytes::copy_from_slice(&stack[..len])
        } else {
            let mut block = bytes::BytesMut::with_capacity(len);
            for (key, value) in entries {
                // Both lengths were checked in the first pass.
                block.extend_from_slice(&[key.len() as u8]);
                block.extend_from_slice(key.as_bytes());
                block.extend_from_slice(&(value.len() as u16).to_be_bytes());
                block.extend_from_slice(value);
            }
            block.freeze()
        };
        Meta {
            repr: MetaRepr::Wire {
                count,
                entries: block,
            },
        }
    }

    /// Entries that do not fit a metadata block, copied as pairs for encoding to refuse.
    fn copied<'a>(entries: impl Iterator<Item = (&'a str, &'a [u8])>) -> Meta {
        Meta {
            repr: MetaRepr::Pairs(
                entries
                    .map(|(k, v)| (Cow::Owned(k.to_owned()), Bytes::copy_from_slice(v)))
                    .collect(),
            ),
        }
    }

    /// These entries plus `key: value`.
    pub fn with(mut self, key: impl Into<Cow<'static, str>>, value: impl Into<Bytes>) -> Self {
        self.push(key, value);
        self
    }

    /// Appends an entry.
    pub fn push(&mut self, key: impl Into<Cow<'static, str>>, value: impl Into<Bytes>) {
        if let MetaRepr::Wire { .. } = self.repr {
            let pairs = self
                .iter()
                .map(|(k, v)| (Cow::Owned(k.to_owned()), Bytes::copy_from_slice(v)))
                .collect();
            self.repr = MetaRepr::Pairs(pairs);
        }
        if let MetaRepr::Pairs(pairs) = &mut self.repr {
            pairs.push((key.into(), value.into()));
        }
    }

    /// Removes every entry with `key`.
    pub fn remove(&mut self, key: &str) {
        if self.get(key).is_none() {
            return;
        }
        let pairs = self
            .iter()
            .filter(|(k, _)| *k != key)
            .map(|(k, v)| (Cow::Owned(k.to_owned()), Bytes::copy_from_slice(v)))
            .collect();
        self.repr = MetaRepr::Pairs(pairs);
    }

    /// These entries with every `deadline` replaced by one saying `remaining` (whole
    /// milliseconds, rounded down, saturating), or `None` when there is no `deadline` to
    /// replace. For a request that waited (for a connection, a connect, queue space)
    /// after its `deadline` was computed: the value sent is the time left when the frame
    /// is written (docs/protocol.md section 4.2).
    pub fn with_deadline_left(&self, remaining: std::time::Duration) -> Option<Meta> {
        self.get(mcp_codec::DEADLINE)?;
        let ms = u32::try_from(remaining.as_millis()).unwrap_or(u32::MAX);
        let mut meta = self.clone();
        meta.remove(mcp_codec::DEADLINE);
        meta.push(
            mcp_codec::DEADLINE,
            Bytes::copy_from_slice(&ms.to_be_bytes()),
        );
        Some(meta)
    }

    /// Bytes of keys and values (the memory a received block holds).
    pub(crate) fn byte_len(&self) -> usize {
        match &self.repr {
            MetaRepr::Wire { entries, .. } => entries.len(),
            MetaRepr::Pairs(p) => p.iter().map(|(k, v)| k.len() + v.len()).sum(),
        }
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        match &self.repr {
            MetaRepr::Wire { count, .. } => usize::from(*count),
            MetaRepr::Pairs(p) => p.len(),
        }
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Iterates over `(key, value)` entries in order.
    pub fn iter(&self) -> MetaIter<'_> {
        match &self.repr {
            MetaRepr::Wire { count, entries } => MetaIter {
                inner: IterRepr::Wire {
                    count: *count,
                    rest: entries,
                },
            },
            MetaRepr::Pairs(p) => MetaIter {
                inner: IterRepr::Pairs(p.iter()),
            },
        }
    }

    /// The value of the first entry with `key`.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        // Keys compared as bytes: no entry's key needs its UTF-8 check to be compared.
        let mut it = self.iter();
        while let Some((k, v)) = it.next_raw() {
            if k == key.as_bytes() {
                return Some(v);
            }
        }
        None
    }

    /// The `deadline` entry in milliseconds: the smallest 4-byte value if repeated, values
    /// of another length ignored (docs/protocol.md section 4).
    pub fn deadline_ms(&self) -> Option<u32> {
        let mut it = self.iter();
        mcp_codec::deadline_ms_of(std::iter::from_fn(|| it.next_raw()))
    }

    /// Metadata received in a frame: the `count` entries of its block (after the count
    /// byte), sliced from the frame so that nothing is copied.
    pub(crate) fn from_wire_entries(count: u8, entries: Bytes) -> Meta {
        if count == 0 {
            return Meta::new();
        }
        Meta {
            repr: MetaRepr::Wire { count, entries },
        }
    }

    /// A copy of borrowed metadata (messages reassembled from several frames, whose head
    /// frame is gone when they are handed out).
    pub(crate) fn copy_of(meta: &Metadata<'_>) -> Meta {
        if meta.is_empty() {
            return Meta::new();
        }
        Meta {
            repr: MetaRepr::Pairs(
                meta.iter()
                    .map(|(k, v)| (Cow::Owned(k.to_owned()), Bytes::copy_from_slice(v)))
                    .collect(),
            ),
        }
    }

    /// Runs `f` with a borrowed codec view of these entries, built on the stack for up to
    /// eight entries, so that encoding a request allocates nothing.
    ///
    /// Entries already laid out as a block (received, or built by [`Meta::from_entries`])
    /// are handed over as that block, checked once as a receiver would check it, so that
    /// encoding copies it whole instead of walking the entries again; a block that fails
    /// the check goes the way of pairs, so that encoding refuses it with the usual error.
    pub fn with_metadata<R>(&self, f: impl FnOnce(Metadata<'_>) -> R) -> R {
        let n = match &self.repr {
            MetaRepr::Wire { count, entries } => match Metadata::from_wire(*count, entries) {
                Ok(block) => return f(block),
                Err(_) => usize::from(*count),
            },
            MetaRepr::Pairs(p) => p.len(),
        };
        if n == 0 {
            return f(Metadata::EMPTY);
        }
        if n <= STACK_META {
            let mut pairs: [(&str, &[u8]); STACK_META] = [("", &[]); STACK_META];
            let mut filled = 0;
            for (slot, pair) in pairs.iter_mut().zip(self.iter()) {
                *slot = pair;
                filled += 1;
            }
            return f(Metadata::from_pairs(&pairs[..filled]));
        }
        let pairs: Vec<(&str, &[u8])> = self.iter().collect();
        f(Metadata::from_pairs(&pairs))
    }
}

impl fmt::Debug for Meta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|(k, v)| (k, Bytes::copy_from_slice(v))))
            .finish()
    }
}

impl PartialEq for Meta {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Meta {}

/// Iterator over the entries of a [`Meta`].
#[derive(Debug, Clone)]
pub struct MetaIter<'a> {
    inner: IterRepr<'a>,
}

#[derive(Debug, Clone)]
enum IterRepr<'a> {
    Wire { count: u8, rest: &'a [u8] },
    Pairs(std::slice::Iter<'a, (Cow<'static, str>, Bytes)>),
}

impl<'a> MetaIter<'a> {
    /// The next entry with its key as bytes (no UTF-8 check), for lookups by key.
    fn next_raw(&mut self) -> Option<(&'a [u8], &'a [u8])> {
        match &mut self.inner {
            IterRepr::Pairs(it) => it.next().map(|(k, v)| (k.as_bytes(), v.as_ref())),
            IterRepr::Wire { count, rest } => {
                if *count == 0 {
                    return None;
                }
                // The codec validated the block; if it were short anyway, iteration ends
                // rather than panicking.
                let (&key_len, tail) = rest.split_first()?;
                let key = tail.get(..usize::from(key_len))?;
                let tail = tail.get(usize::from(key_len)..)?;
                let value_len = usize::from(u16::from_be_bytes([*tail.first()?, *tail.get(1)?]));
                let value = tail.get(2..2 + value_len)?;
                *rest = tail.get(2 + value_len..)?;
                *count -= 1;
                Some((key, value))
            }
        }
    }
}

impl<'a> Iterator for MetaIter<'a> {
    type Item = (&'a str, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.inner {
            IterRepr::Pairs(it) => it.next().map(|(k, v)| (k.as_ref(), v.as_ref())),
            IterRepr::Wire { .. } => {
                let (key, value) = self.next_raw()?;
                Some((std::str::from_utf8(key).ok()?, value))
            }
        }
    }
}

/// A method or topic, validated as UTF-8 once, by the codec, and shared from then on.
///
/// It is a `str` and not a slice of the frame: reading it ([`InboundRequest::method`],
/// [`Push::topic`]) is then free, where a slice had to be checked as UTF-8 again on every
/// read, and receivers see the same few names over and over, so [`Names`] hands out one
/// shared copy of each instead of a slice (a reference count either way).
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct Text(Arc<str>);

impl Text {
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Methods and topics a decoder kept, so that a name it has seen lately costs a comparison
/// and a reference count instead of an allocation.
pub(crate) const NAMES_KEPT: usize = 8;

/// The last [`NAMES_KEPT`] distinct methods and topics one decoder received (at most 255 bytes
/// each), replaced oldest first.
#[derive(Debug, Default)]
pub(crate) struct Names {
    slots: [Option<Text>; NAMES_KEPT],
    next: usize,
}

impl Names {
    /// `name` (already validated as UTF-8) as a shared [`Text`].
    #[inline]
    pub(crate) fn text(&mut self, name: &str) -> Text {
        for text in self.slots.iter().flatten() {
            if text.as_str() == name {
                return text.clone();
            }
        }
        self.insert(name)
    }

    #[cold]
    fn insert(&mut self, name: &str) -> Text {
        let text = Text(Arc::from(name));
        if let Some(slot) = self.slots.get_mut(self.next) {
            *slot = Some(text.clone());
        }
        self.next = (self.next + 1) % NAMES_KEPT;
        text
    }
}

/// A REQUEST as a server receives it.
#[derive(Debug, Clone)]
pub struct InboundRequest {
    pub(crate) id: u32,
    pub(crate) format: u8,
    pub(crate) method: Text,
    pub(crate) meta: Meta,
    pub(crate) body: Bytes,
}

impl InboundRequest {
    /// The request id.
    pub fn id(&self) -> u32 {
        self.id
    }
    /// The body's format byte.
    pub fn format(&self) -> u8 {
        self.format
    }
    /// The method.
    pub fn method(&self) -> &str {
        self.method.as_str()
    }
    /// The metadata.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }
    /// The whole body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }
    /// Takes the body out.
    pub fn into_body(self) -> Bytes {
        self.body
    }
}

/// A RESPONSE as a client receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundResponse {
    pub(crate) id: u32,
    pub(crate) format: u8,
    pub(crate) meta: Meta,
    pub(crate) body: Bytes,
}

impl InboundResponse {
    /// The id of the request answered.
    pub fn id(&self) -> u32 {
        self.id
    }
    /// The body's format byte.
    pub fn format(&self) -> u8 {
        self.format
    }
    /// The metadata.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }
    /// The whole body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }
    /// Takes the body out.
    pub fn into_body(self) -> Bytes {
        self.body
    }
}

/// A NOTIFY: a push from the server (client side) or a one-way message (server side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    pub(crate) format: u8,
    pub(crate) topic: Text,
    pub(crate) meta: Meta,
    pub(crate) body: Bytes,
}

impl Push {
    /// The body's format byte.
    pub fn format(&self) -> u8 {
        self.format
    }
    /// The topic.
    pub fn topic(&self) -> &str {
        self.topic.as_str()
    }
    /// The metadata.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }
    /// The whole body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }
    /// Takes the body out.
    pub fn into_body(self) -> Bytes {
        self.body
    }

    /// The bytes this push holds in a subscriber's queue (topic, metadata and body), as
    /// counted against [`ConnectionConfig::push_queue_bytes`](crate::ConnectionConfig).
    pub(crate) fn queued_len(&self) -> usize {
        self.topic.as_str().len() + self.meta.byte_len() + self.body.len()
    }
}

/// An ERROR the server answered a request with: code and message as the server sent
/// them. One type for the workspace: `mcp-client` re-exports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteError {
    code: ErrorCode,
    message: String,
}

impl RemoteError {
    /// An ERROR answer with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RemoteError {
            code,
            message: message.into(),
        }
    }

    /// The code: 1..=11 are the protocol's (docs/protocol.md section 6), 1000 and up the
    /// application's.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The server's message (may be empty), as it sent it; its `Display` shows it escaped.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the code is application-defined (1000..=65535).
    pub fn is_application(&self) -> bool {
        self.code.is_application()
    }

    /// Whether the server says it did not process the request (OVERLOADED, UNAVAILABLE).
    pub fn is_not_processed(&self) -> bool {
        self.code.is_not_processed()
    }
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            write!(f, "server answered ERROR {}", self.code)
        } else {
            // The message is the peer's text: one line, nothing that acts on a terminal.
            let message = crate::text::one_line(&self.message);
            write!(f, "server answered ERROR {}: {message}", self.code)
        }
    }
}

impl std::error::Error for RemoteError {}

/// The server's answer to a call: a RESPONSE or an ERROR with the call's id.
///
/// ERROR 6 (UNAVAILABLE) is not a reply: the transport turns it into a
/// [`TransportError`](crate::TransportError) "not processed, retry elsewhere", like a
/// request refused by GOAWAY.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// RESPONSE.
    Response(InboundResponse),
    /// ERROR.
    Error(RemoteError),
}

impl Answer {
    /// The response, or the remote error as `Err`.
    pub fn into_result(self) -> Result<InboundResponse, RemoteError> {
        match self {
            Answer::Response(r) => Ok(r),
            Answer::Error(e) => Err(e),
        }
    }
}

/// A frame or message received on one byte stream, owned.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Inbound {
    /// REQUEST (server role only).
    Request(InboundRequest),
    /// RESPONSE (client role only).
    Response(InboundResponse),
    /// NOTIFY.
    Notify(Push),
    /// ERROR; id 0 is about the whole connection.
    Error {
        /// The request's id, or 0.
        id: u32,
        /// The code.
        code: ErrorCode,
        /// The message.
        message: String,
    },
    /// PING; answer with PONG carrying the same bytes.
    Ping([u8; 8]),
    /// PONG.
    Pong([u8; 8]),
    /// CANCEL (server role only).
    Cancel(u32),
    /// GOAWAY.
    GoAway {
        /// The last request id the peer accepted.
        last_id: u32,
        /// Why.
        code: GoAwayCode,
        /// The reason text.
        reason: String,
    },
    /// A REQUEST past the maximum message size (server role): answer ERROR 7 with this id;
    /// its remaining frames are skipped.
    RequestTooLarge {
        /// The request's id.
        id: u32,
    },
    /// A REQUEST dropped while its frames were arriving, because the bytes it would hold
    /// did not fit in the budget its reader shares with others (server role,
    /// [`crate::FrameReader::with_partial_budget`]): answer ERROR 5 with this id; its
    /// remaining frames are skipped.
    RequestShed {
        /// The request's id.
        id: u32,
    },
    /// A malformed REQUEST whose id could be read (server role): answer ERROR 1 with this
    /// id and keep the connection.
    MalformedRequest {
        /// The request's id.
        id: u32,
        /// What was wrong.
        error: mcp_codec::Error,
    },
}

/// Per-call options.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallDeadline {
    /// An absolute deadline for the call.
    pub deadline: Option<Instant>,
    /// A timeout from now (for one attempt); the earlier of this and `deadline` wins. With
    /// neither, the pool's default timeout applies (a bare connection waits forever).
    pub timeout: Option<Duration>,
}

impl CallDeadline {
    /// Options with a timeout from now.
    pub fn timeout(timeout: Duration) -> Self {
        CallDeadline {
            deadline: None,
            timeout: Some(timeout),
        }
    }

    /// Options with an absolute deadline.
    pub fn deadline(deadline: Instant) -> Self {
        CallDeadline {
            deadline: Some(deadline),
            timeout: None,
        }
    }

    /// The effective deadline: the earlier of `deadline` and now + `timeout`, else
    /// now + `default` when given.
    pub fn resolve(&self, default: Option<Duration>) -> Option<Instant> {
        let from_timeout = self.timeout.or(match self.deadline {
            Some(_) => None,
            None => default,
        });
        // The clock is read only when a timeout is to be counted from now (a call with a
        // deadline alone, as the client makes, needs no clock read here).
        let from_timeout = from_timeout.and_then(|t| Instant::now().checked_add(t));
        match (self.deadline, from_timeout) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}
