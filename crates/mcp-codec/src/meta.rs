//! Metadata: the `count u8 | count x (key_len u8 | key | value_len u16 | value)` block.

use core::fmt;

use crate::Error;
use crate::frame::{PayloadWriter, Sink};

/// The well-known key carrying a W3C `traceparent`.
pub const TRACEPARENT: &str = "traceparent";
/// The well-known key carrying a W3C `tracestate`.
pub const TRACESTATE: &str = "tracestate";
/// The well-known key carrying the caller's remaining budget, u32 milliseconds.
pub const DEADLINE: &str = "deadline";

/// A metadata key/value pair given by a sender: `(key, value)`.
pub type MetaPair<'a> = (&'a str, &'a [u8]);

/// The `deadline` rule of docs/protocol.md section 4 over `(key, value)` entries, keys as bytes:
/// the smallest value of the `deadline` entries that are 4 bytes long (big-endian
/// milliseconds), others ignored; `None` without one. One rule for every holder of
/// metadata (this crate's views, the transport's owned `Meta`).
pub fn deadline_ms_of<'a>(entries: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Option<u32> {
    let mut min = None;
    for (key, value) in entries {
        if key == DEADLINE.as_bytes() {
            if let Ok(value) = <[u8; 4]>::try_from(value) {
                let value = u32::from_be_bytes(value);
                min = Some(min.map_or(value, |m: u32| m.min(value)));
            }
        }
    }
    min
}

/// Checks a metadata key: 1..=255 bytes of `[a-z0-9._-]`.
#[inline]
pub fn validate_key(key: &[u8]) -> Result<(), Error> {
    if key.is_empty() {
        return Err(Error::Empty {
            field: "metadata key",
        });
    }
    if key.len() > 255 {
        return Err(Error::FieldTooLong {
            field: "metadata key",
            len: key.len(),
            max: 255,
        });
    }
    if key_bytes_valid(key) {
        Ok(())
    } else {
        Err(invalid_key_byte(key))
    }
}

/// Whether every byte of `key` is one of `[a-z0-9._-]`.
///
/// One table load and one AND a byte, with no branch inside the loop: the per-byte
/// `matches!` over three ranges and two bytes with an early exit cost about 8 instructions
/// a byte, and each key was checked that way once on the sending side and once on the
/// receiving side.
#[inline]
fn key_bytes_valid(key: &[u8]) -> bool {
    key.iter()
        .fold(true, |valid, &b| valid & KEY_BYTE[usize::from(b)])
}

/// The error for a key that [`key_bytes_valid`] refused: its first invalid byte.
#[cold]
#[inline(never)]
fn invalid_key_byte(key: &[u8]) -> Error {
    let byte = key.iter().copied().find(|&b| !is_key_byte(b)).unwrap_or(0);
    Error::InvalidMetaKey { byte }
}

const fn is_key_byte(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-')
}

/// `KEY_BYTE[b]`: whether `b` may appear in a metadata key ([`is_key_byte`] as a table).
static KEY_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = is_key_byte(b as u8);
        b += 1;
    }
    table
};

/// Checks the `count` entries at the front of `buf` as a receiver does (every length in
/// bounds, every key valid) and returns how many bytes they take.
///
/// Each entry is looked at once: its lengths are read straight from the slice and its key
/// checked as it goes by. The errors, and which one wins when several apply, are those of
/// reading the fields in wire order: the first field cut short, or the first invalid key
/// before it.
#[inline]
pub(crate) fn scan_entries(count: u8, buf: &[u8]) -> Result<usize, Error> {
    let mut at = 0usize;
    for _ in 0..count {
        let Some(&key_len) = buf.get(at) else {
            return Err(truncated("metadata key length"));
        };
        let key_end = at + 1 + usize::from(key_len);
        let Some(key) = buf.get(at + 1..key_end) else {
            return Err(truncated("metadata key"));
        };
        validate_key(key)?;
        let Some(&[hi, lo]) = buf.get(key_end..key_end + 2) else {
            return Err(truncated("metadata value length"));
        };
        let end = key_end + 2 + usize::from(u16::from_be_bytes([hi, lo]));
        if end > buf.len() {
            return Err(truncated("metadata value"));
        }
        at = end;
    }
    Ok(at)
}

#[cold]
fn truncated(field: &'static str) -> Error {
    Error::Truncated { field }
}

/// Metadata values (and blocks written whole) up to this long are written with the
/// envelope's other fields and fed to the CRC with them in one run; longer ones are fed from
/// the caller's bytes as they are copied (see `Sink` in `frame.rs`). A `traceparent`
/// (55 bytes) is one of the short ones, and so is the block of a `traceparent` and a
/// `deadline` (84 bytes).
const GATHERED_VALUE: usize = 256;

/// Bytes of a metadata block given as pairs, count byte included, or the first error in
/// entry order (too many entries first).
#[inline]
fn pairs_len<'p>(count: usize, pairs: impl Iterator<Item = MetaPair<'p>>) -> Result<usize, Error> {
    if count > 255 {
        return Err(Error::TooManyMeta { count });
    }
    // Count byte, and per entry a key length byte and a 2-byte value length.
    let mut len = 1 + 3 * count;
    for (key, value) in pairs {
        validate_key(key.as_bytes())?;
        if value.len() > usize::from(u16::MAX) {
            return Err(Error::FieldTooLong {
                field: "metadata value",
                len: value.len(),
                max: usize::from(u16::MAX),
            });
        }
        len += key.len() + value.len();
    }
    Ok(len)
}

/// Writes a block given as pairs whose lengths [`pairs_len`] accepted.
#[inline]
fn write_pairs<'p, S: Sink>(
    w: &mut PayloadWriter<'_, S>,
    count: usize,
    pairs: impl Iterator<Item = MetaPair<'p>>,
) {
    // Lossless casts: lengths were checked by `pairs_len`.
    w.put_u8(count as u8);
    for (key, value) in pairs {
        w.put_u8(key.len() as u8);
        w.put_gathered(key.as_bytes());
        w.put_u16(value.len() as u16);
        if value.len() <= GATHERED_VALUE {
            w.put_gathered(value);
        } else {
            w.put(value);
        }
    }
}

/// The metadata of an envelope, borrowed: either a block read off the wire (validated when
/// parsed) or a slice of pairs given by a sender (validated when encoded).
///
/// Keys may repeat; iteration yields entries in wire order.
#[derive(Clone, Copy)]
pub struct Metadata<'a> {
    repr: Repr<'a>,
}

#[derive(Clone, Copy)]
enum Repr<'a> {
    /// The entries as they are on the wire, after the count byte; every key is valid.
    Wire { count: u8, entries: &'a [u8] },
    /// Pairs to be encoded.
    Pairs(&'a [MetaPair<'a>]),
    /// Owned pairs to be encoded.
    #[cfg(feature = "alloc")]
    Owned(&'a [OwnedMetaPair]),
}

/// An owned metadata entry, `(key, value)`.
#[cfg(feature = "alloc")]
pub type OwnedMetaPair = (alloc::string::String, alloc::vec::Vec<u8>);

impl<'a> Metadata<'a> {
    /// No metadata.
    pub const EMPTY: Metadata<'static> = Metadata {
        repr: Repr::Pairs(&[]),
    };

    /// Metadata to send, from key/value pairs. Keys are checked when the envelope is
    /// encoded.
    pub const fn from_pairs(pairs: &'a [MetaPair<'a>]) -> Self {
        Metadata {
            repr: Repr::Pairs(pairs),
        }
    }

    /// Metadata to send, from owned pairs. Keys are checked when the envelope is encoded.
    #[cfg(feature = "alloc")]
    pub const fn from_owned(pairs: &'a [OwnedMetaPair]) -> Self {
        Metadata {
            repr: Repr::Owned(pairs),
        }
    }

    /// Copies the entries into owned pairs.
    #[cfg(feature = "alloc")]
    pub fn to_owned_pairs(&self) -> alloc::vec::Vec<OwnedMetaPair> {
        self.iter().map(|(k, v)| (k.into(), v.to_vec())).collect()
    }

    /// Metadata laid out as on the wire: `count` entries in `entries` (the block after its
    /// count byte), such as a block kept from a received frame or built in one buffer.
    ///
    /// The entries are checked exactly as a receiver checks a block it reads, with the same
    /// errors; bytes after the last entry are refused ([`Error::TrailingBytes`]). Encoding
    /// then writes the block as it is, without looking at its entries again.
    pub fn from_wire(count: u8, entries: &'a [u8]) -> Result<Self, Error> {
        let used = scan_entries(count, entries)?;
        match entries.len() - used {
            0 => Ok(Metadata {
                repr: Repr::Wire { count, entries },
            }),
            extra => Err(Error::TrailingBytes {
                frame: "metadata",
                extra,
            }),
        }
    }

    /// Reads and validates the metadata block at the front of `buf`; returns it and the
    /// bytes after it (the body).
    #[inline]
    pub(crate) fn split(buf: &'a [u8]) -> Result<(Self, &'a [u8]), Error> {
        let Some((&count, rest)) = buf.split_first() else {
            return Err(truncated("metadata count"));
        };
        // No metadata, the common case of a RESPONSE: no call into the scan.
        let used = if count == 0 {
            0
        } else {
            scan_entries(count, rest)?
        };
        // `used` is at most `rest.len()`.
        let (entries, rest) = rest.split_at_checked(used).unwrap_or((rest, &[]));
        Ok((
            Metadata {
                repr: Repr::Wire { count, entries },
            },
            rest,
        ))
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        match self.repr {
            Repr::Wire { count, .. } => usize::from(count),
            Repr::Pairs(pairs) => pairs.len(),
            #[cfg(feature = "alloc")]
            Repr::Owned(pairs) => pairs.len(),
        }
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Iterates over `(key, value)` entries in order.
    pub fn iter(&self) -> MetaIter<'a> {
        MetaIter { repr: self.repr }
    }

    /// The value of the first entry with `key`.
    pub fn get(&self, key: &str) -> Option<&'a [u8]> {
        // Keys compared as bytes: no entry's key needs its UTF-8 check to be compared.
        let mut it = self.iter();
        while let Some((k, v)) = it.next_raw() {
            if k == key.as_bytes() {
                return Some(v);
            }
        }
        None
    }

    /// The `deadline` entry in milliseconds: the smallest of the 4-byte values if the key
    /// repeats; values that are not 4 bytes are ignored (docs/protocol.md section 4).
    pub fn deadline_ms(&self) -> Option<u32> {
        let mut it = self.iter();
        deadline_ms_of(core::iter::from_fn(|| it.next_raw()))
    }

    /// Bytes this block takes on the wire, count byte included, or an error if it cannot
    /// be encoded (bad key, too many entries, value over 65,535 bytes).
    #[inline]
    pub fn encoded_len(&self) -> Result<usize, Error> {
        match self.repr {
            Repr::Wire { entries, .. } => Ok(1 + entries.len()),
            Repr::Pairs([]) => Ok(1),
            Repr::Pairs(pairs) => pairs_len(pairs.len(), pairs.iter().copied()),
            #[cfg(feature = "alloc")]
            Repr::Owned(pairs) => pairs_len(
                pairs.len(),
                pairs.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
            ),
        }
    }

    /// Writes the block; `encoded_len` must have succeeded first.
    #[inline]
    pub(crate) fn write<S: Sink>(&self, w: &mut PayloadWriter<'_, S>) {
        match self.repr {
            Repr::Wire { count, entries } => {
                w.put_u8(count);
                if entries.len() <= GATHERED_VALUE {
                    w.put_gathered(entries);
                } else {
                    w.put(entries);
                }
            }
            Repr::Pairs(pairs) => write_pairs(w, pairs.len(), pairs.iter().copied()),
            #[cfg(feature = "alloc")]
            Repr::Owned(pairs) => write_pairs(
                w,
                pairs.len(),
                pairs.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
            ),
        }
    }
}

impl Default for Metadata<'_> {
    fn default() -> Self {
        Metadata::EMPTY
    }
}

impl PartialEq for Metadata<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Metadata<'_> {}

impl fmt::Debug for Metadata<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<'a> IntoIterator for &Metadata<'a> {
    type Item = (&'a str, &'a [u8]);
    type IntoIter = MetaIter<'a>;
    fn into_iter(self) -> MetaIter<'a> {
        self.iter()
    }
}

/// Iterator over metadata entries, `(key, value)`.
#[derive(Debug, Clone)]
pub struct MetaIter<'a> {
    repr: Repr<'a>,
}

impl fmt::Debug for Repr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Repr::Wire { count, entries } => {
                write!(f, "Wire({count} entries, {} bytes)", entries.len())
            }
            Repr::Pairs(p) => write!(f, "Pairs({})", p.len()),
            #[cfg(feature = "alloc")]
            Repr::Owned(p) => write!(f, "Owned({})", p.len()),
        }
    }
}

impl<'a> MetaIter<'a> {
    /// The next entry with its key as bytes (no UTF-8 check), for lookups by key.
    #[inline]
    fn next_raw(&mut self) -> Option<(&'a [u8], &'a [u8])> {
        match &mut self.repr {
            Repr::Pairs(pairs) => {
                let (&(key, value), rest) = pairs.split_first()?;
                *pairs = rest;
                Some((key.as_bytes(), value))
            }
            #[cfg(feature = "alloc")]
            Repr::Owned(pairs) => {
                let (first, rest) = pairs.split_first()?;
                *pairs = rest;
                Some((first.0.as_bytes(), first.1.as_slice()))
            }
            Repr::Wire { count, entries } => {
                if *count == 0 {
                    return None;
                }
                // The block was validated when read, so these reads succeed; should they
                // not, iteration simply ends instead of panicking.
                let (&key_len, tail) = entries.split_first()?;
                let (key, tail) = tail.split_at_checked(usize::from(key_len))?;
                let (&[hi, lo], tail) = tail.split_first_chunk::<2>()?;
                let (value, tail) =
                    tail.split_at_checked(usize::from(u16::from_be_bytes([hi, lo])))?;
                *entries = tail;
                *count -= 1;
                Some((key, value))
            }
        }
    }
}

impl<'a> Iterator for MetaIter<'a> {
    type Item = (&'a str, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.repr {
            Repr::Pairs(pairs) => {
                let (first, rest) = pairs.split_first()?;
                *pairs = rest;
                Some(*first)
            }
            #[cfg(feature = "alloc")]
            Repr::Owned(pairs) => {
                let (first, rest) = pairs.split_first()?;
                *pairs = rest;
                Some((first.0.as_str(), first.1.as_slice()))
            }
            Repr::Wire { .. } => {
                let (key, value) = self.next_raw()?;
                // Valid keys are ASCII, hence UTF-8.
                let key = core::str::from_utf8(key).ok()?;
                Some((key, value))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Envelope, Flags, Request};

    /// The checks as they were written before the table: a reference for the fast ones.
    fn reference_key(key: &[u8]) -> Result<(), Error> {
        if key.is_empty() {
            return Err(Error::Empty {
                field: "metadata key",
            });
        }
        if key.len() > 255 {
            return Err(Error::FieldTooLong {
                field: "metadata key",
                len: key.len(),
                max: 255,
            });
        }
        match key.iter().find(|&&b| !is_key_byte(b)) {
            Some(&byte) => Err(Error::InvalidMetaKey { byte }),
            None => Ok(()),
        }
    }

    #[test]
    fn key_table_is_the_key_rule() {
        for b in 0..=255u8 {
            assert_eq!(KEY_BYTE[usize::from(b)], is_key_byte(b), "{b:#04x}");
            for key in [[b, b'a', b'b'], [b'a', b, b'b'], [b'a', b'b', b]] {
                assert_eq!(validate_key(&key), reference_key(&key), "{key:?}");
            }
        }
        assert_eq!(validate_key(b""), reference_key(b""));
        assert_eq!(validate_key(&[b'k'; 256]), reference_key(&[b'k'; 256]));
        assert_eq!(
            validate_key(b"aXbY"),
            Err(Error::InvalidMetaKey { byte: b'X' })
        );
    }

    /// A REQUEST payload (id 1, method `m`) around a metadata block, count byte first.
    fn request_payload(block: &[u8]) -> [u8; 64] {
        let mut p = [0u8; 64];
        p[..7].copy_from_slice(&[0, 0, 0, 1, 0, 0, 1]);
        p[7] = b'm';
        p[8..8 + block.len()].copy_from_slice(block);
        p
    }

    #[test]
    fn from_wire_checks_as_a_receiver_does() {
        let good: &[u8] = &[
            2, 2, b'k', b'1', 0, 1, b'v', 8, b'd', b'e', b'a', b'd', b'l', b'i', b'n', b'e', 0, 4,
            0, 0, 0, 9,
        ];
        // Every prefix, and every byte of the good block replaced by a few values: the
        // receiver's parse and `from_wire` agree on the error, or both accept.
        for len in 1..=good.len() {
            for pos in 0..len {
                for value in [0u8, 1, 2, 3, 0xFF, b'K', b'/', b'z'] {
                    let mut block = [0u8; 32];
                    block[..len].copy_from_slice(&good[..len]);
                    block[pos] = value;
                    let block = &block[..len];
                    let (count, entries) = (block[0], &block[1..]);
                    // The parse reads a block of exactly `len` bytes when the payload ends
                    // there: compare on a payload whose body is empty.
                    let payload = request_payload(block);
                    let parsed = Request::parse(&payload[..8 + len]).map(|r| r.body.len());
                    let wire = Metadata::from_wire(count, entries);
                    match (parsed, wire) {
                        (Ok(0), Ok(m)) => {
                            assert_eq!(m.len(), usize::from(count));
                            assert_eq!(m.encoded_len(), Ok(len));
                        }
                        (Ok(extra), Err(e)) => {
                            assert_eq!(
                                e,
                                Error::TrailingBytes {
                                    frame: "metadata",
                                    extra
                                }
                            );
                        }
                        (Err(a), Err(b)) => assert_eq!(a, b, "{block:?}"),
                        (a, b) => panic!("{block:?}: parse {a:?}, from_wire {b:?}"),
                    }
                }
            }
        }
    }

    #[test]
    fn a_block_encodes_as_its_pairs() {
        let deadline = 2000u32.to_be_bytes();
        let traceparent = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let long = [7u8; 300];
        let pairs: [MetaPair<'_>; 4] = [
            (TRACEPARENT, traceparent),
            (DEADLINE, &deadline),
            ("empty", b""),
            ("long", &long),
        ];
        let mut block = [0u8; 512];
        let mut len = 0;
        for (key, value) in pairs {
            block[len] = key.len() as u8;
            block[len + 1..len + 1 + key.len()].copy_from_slice(key.as_bytes());
            len += 1 + key.len();
            block[len..len + 2].copy_from_slice(&(value.len() as u16).to_be_bytes());
            block[len + 2..len + 2 + value.len()].copy_from_slice(value);
            len += 2 + value.len();
        }
        for n in 0..=pairs.len() {
            let size: usize = pairs[..n].iter().map(|(k, v)| 3 + k.len() + v.len()).sum();
            let from_pairs = Metadata::from_pairs(&pairs[..n]);
            let from_wire = Metadata::from_wire(n as u8, &block[..size]).expect("valid");
            assert_eq!(from_pairs, from_wire);
            let request = |meta| Request {
                id: 9,
                flags: Flags::NONE,
                format: 0,
                method: "m",
                meta,
                body: &[1, 2, 3],
            };
            let (mut a, mut b) = ([0u8; 600], [0u8; 600]);
            let la = request(from_pairs).encode(&mut a).expect("fits");
            let lb = request(from_wire).encode(&mut b).expect("fits");
            assert_eq!(a[..la], b[..lb]);
            let Ok(crate::Decoded::Frame { frame, .. }) = crate::decode_frame(&a[..la]) else {
                panic!("a frame")
            };
            assert_eq!(
                Envelope::parse(frame),
                Ok(Envelope::Request(request(from_pairs)))
            );
        }
    }

    #[test]
    fn lookups_by_key() {
        let five = 5u32.to_be_bytes();
        let three = 3u32.to_be_bytes();
        let pairs: [MetaPair<'_>; 5] = [
            ("a", b"1"),
            (DEADLINE, &five),
            (DEADLINE, b"xx"),
            ("a", b"2"),
            (DEADLINE, &three),
        ];
        let meta = Metadata::from_pairs(&pairs);
        assert_eq!(meta.get("a"), Some(&b"1"[..]));
        assert_eq!(meta.get("b"), None);
        assert_eq!(meta.deadline_ms(), Some(3));
        assert_eq!(Metadata::from_pairs(&pairs[..1]).deadline_ms(), None);
        assert_eq!(Metadata::from_pairs(&pairs[2..3]).deadline_ms(), None);
    }
}
