//! The W3C Trace Context `traceparent` value: parsing and formatting, strictly per the spec
//! (<https://www.w3.org/TR/trace-context/#traceparent-header>).

use std::cell::Cell;
use std::fmt;

/// The flags this client understands and passes on: `sampled` (level 1) and `random`
/// (level 2). Other bits are set to zero when the value is written as version 00.
const KNOWN_FLAGS: u8 = 0x03;
/// The `sampled` flag.
const SAMPLED: u8 = 0x01;
/// Length of a version-00 `traceparent`.
const LEN: usize = 55;

/// A W3C trace context: trace id, the span id of the sender's span, flags, and the opaque
/// `tracestate` that goes with them.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
    tracestate: Option<String>,
}

/// Why a `traceparent` value was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TraceParseError {
    /// Version 00 must be exactly 55 characters; later versions at least 55.
    #[error("traceparent has the wrong length")]
    Length,
    /// The fields are not separated by `-` where the format says.
    #[error("traceparent fields are not separated by '-'")]
    Layout,
    /// A field holds something other than lowercase hex digits.
    #[error("traceparent holds a character that is not a lowercase hex digit")]
    NotHex,
    /// Version `ff` is forbidden.
    #[error("traceparent version ff is invalid")]
    Version,
    /// The trace id or the parent id is all zeros.
    #[error("traceparent has an all-zero id")]
    ZeroId,
}

impl TraceContext {
    /// A context from its parts, or `None` if an id is all zeros (invalid per the spec).
    pub fn new(trace_id: [u8; 16], span_id: [u8; 8], flags: u8) -> Option<Self> {
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            flags,
            tracestate: None,
        })
    }

    /// A new trace with random ids, sampled.
    pub fn new_root() -> Self {
        Self {
            trace_id: nonzero_random(),
            span_id: nonzero_random(),
            // The ids are random, which level 2 of the spec announces with flag 0x02.
            flags: SAMPLED | 0x02,
            tracestate: None,
        }
    }

    /// The same trace with a new random span id: the context an outgoing call sends when
    /// `self` is its parent. Flags and `tracestate` are kept.
    pub fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id,
            span_id: nonzero_random(),
            flags: self.flags,
            tracestate: self.tracestate.clone(),
        }
    }

    /// Attaches a `tracestate` value, passed on unchanged with the context.
    #[must_use]
    pub fn with_tracestate(mut self, tracestate: impl Into<String>) -> Self {
        let state = tracestate.into();
        self.tracestate = if state.is_empty() { None } else { Some(state) };
        self
    }

    /// Parses a `traceparent` value strictly: lowercase hex, ids not all zeros, version
    /// `ff` refused, version 00 exactly 55 characters. A later version is read as version 00
    /// when its first 55 characters follow that layout and anything after them starts with
    /// `-` (the spec's rule for forward compatibility).
    pub fn parse(value: &str) -> Result<Self, TraceParseError> {
        let b = value.as_bytes();
        if b.len() < LEN {
            return Err(TraceParseError::Length);
        }
        let version = hex_byte(&b[0..2])?;
        if version == 0xff {
            return Err(TraceParseError::Version);
        }
        if version == 0 && b.len() != LEN {
            return Err(TraceParseError::Length);
        }
        if b.len() > LEN && b[LEN] != b'-' {
            return Err(TraceParseError::Layout);
        }
        if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return Err(TraceParseError::Layout);
        }
        let mut trace_id = [0u8; 16];
        for (i, byte) in trace_id.iter_mut().enumerate() {
            *byte = hex_byte(&b[3 + 2 * i..5 + 2 * i])?;
        }
        let mut span_id = [0u8; 8];
        for (i, byte) in span_id.iter_mut().enumerate() {
            *byte = hex_byte(&b[36 + 2 * i..38 + 2 * i])?;
        }
        let flags = hex_byte(&b[53..55])?;
        Self::new(trace_id, span_id, flags).ok_or(TraceParseError::ZeroId)
    }

    /// The trace id.
    pub fn trace_id(&self) -> [u8; 16] {
        self.trace_id
    }

    /// The span id (the parent id a receiver sees).
    pub fn span_id(&self) -> [u8; 8] {
        self.span_id
    }

    /// The trace flags.
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// Whether the caller records this trace (flag 0x01).
    pub fn is_sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// The `tracestate` carried along, if any.
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The span id as 16 lowercase hex digits.
    pub fn span_id_hex(&self) -> String {
        hex(&self.span_id)
    }

    /// The `traceparent` value, version 00: 55 ASCII characters.
    pub fn to_traceparent(&self) -> String {
        String::from_utf8_lossy(&self.traceparent_bytes()).into_owned()
    }

    /// The `traceparent` value as bytes, written without the formatting machinery: every
    /// call sends one.
    pub(crate) fn traceparent_bytes(&self) -> [u8; LEN] {
        let mut out = [b'-'; LEN];
        out[0] = b'0';
        out[1] = b'0';
        write_hex(&mut out[3..35], &self.trace_id);
        write_hex(&mut out[36..52], &self.span_id);
        write_hex(&mut out[53..55], &[self.flags & KNOWN_FLAGS]);
        out
    }
}

/// Formats as the `traceparent` value (version 00).
impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only ASCII is written, so this never fails.
        f.write_str(std::str::from_utf8(&self.traceparent_bytes()).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceContext")
            .field("traceparent", &self.to_string())
            .field("tracestate", &self.tracestate)
            .finish()
    }
}

impl std::str::FromStr for TraceContext {
    type Err = TraceParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

thread_local! {
    /// A per-thread SplitMix64 state, seeded once from the operating system's generator.
    /// Trace and span ids must be unpredictable enough not to collide, not secret, and a
    /// cryptographic generator per call is measurable on the call path.
    static ID_STATE: Cell<u64> = Cell::new(rand::random());
}

/// The next SplitMix64 output of this thread.
fn next_u64() -> u64 {
    ID_STATE.with(|state| {
        let next = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        state.set(next);
        let mut z = next;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

fn nonzero_random<const N: usize>() -> [u8; N] {
    loop {
        let mut bytes = [0u8; N];
        for chunk in bytes.chunks_mut(8) {
            let word = next_u64().to_be_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        if bytes != [0; N] {
            return bytes;
        }
    }
}

fn hex_digit(c: u8) -> Result<u8, TraceParseError> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(TraceParseError::NotHex),
    }
}

fn hex_byte(two: &[u8]) -> Result<u8, TraceParseError> {
    match two {
        [hi, lo] => Ok(hex_digit(*hi)? << 4 | hex_digit(*lo)?),
        _ => Err(TraceParseError::Length),
    }
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// The two lowercase hex digits of every byte: one load a byte instead of two lookups and
/// the shifts (every call writes 25 bytes of `traceparent`).
const HEX_PAIRS: [[u8; 2]; 256] = {
    let mut pairs = [[0u8; 2]; 256];
    let mut b = 0;
    while b < 256 {
        pairs[b] = [HEX_DIGITS[b >> 4], HEX_DIGITS[b & 0x0f]];
        b += 1;
    }
    pairs
};

/// Writes `bytes` as lowercase hex into `out`, which is twice as long.
fn write_hex(out: &mut [u8], bytes: &[u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(*b)]);
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    write_hex(&mut out, bytes);
    String::from_utf8_lossy(&out).into_owned()
}
