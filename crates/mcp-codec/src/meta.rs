//! Metadata: the `count u8 | count x (key_len u8 | key | value_len u16 | value)` block.

use core::fmt;

use crate::Error;
use crate::frame::{PayloadWriter, Sink};
use crate::read::Reader;

/// The well-known key carrying a W3C `traceparent`.
pub const TRACEPARENT: &str = "traceparent";
/// The well-known key carrying a W3C `tracestate`.
pub const TRACESTATE: &str = "tracestate";
/// The well-known key carrying the caller's remaining budget, u32 milliseconds.
pub const DEADLINE: &str = "deadline";

/// A metadata key/value pair given by a sender: `(key, value)`.
pub type MetaPair<'a> = (&'a str, &'a [u8]);

/// Checks a metadata key: 1..=255 bytes of `[a-z0-9._-]`.
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
    match key.iter().find(|&&b| !is_key_byte(b)) {
        Some(&byte) => Err(Error::InvalidMetaKey { byte }),
        None => Ok(()),
    }
}

const fn is_key_byte(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-')
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

    /// Reads and validates a metadata block at the reader's position.
    pub(crate) fn read(r: &mut Reader<'a>) -> Result<Self, Error> {
        let count = r.u8("metadata count")?;
        let start = r.position();
        for _ in 0..count {
            let key_len = r.u8("metadata key length")?;
            let key = r.bytes(usize::from(key_len), "metadata key")?;
            validate_key(key)?;
            let value_len = r.u16("metadata value length")?;
            r.bytes(usize::from(value_len), "metadata value")?;
        }
        Ok(Metadata {
            repr: Repr::Wire {
                count,
                entries: r.since(start),
            },
        })
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
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// The `deadline` entry in milliseconds: the smallest of the 4-byte values if the key
    /// repeats; values that are not 4 bytes are ignored (PROTOCOL.md section 3).
    pub fn deadline_ms(&self) -> Option<u32> {
        self.iter()
            .filter(|(k, _)| *k == DEADLINE)
            .filter_map(|(_, v)| <[u8; 4]>::try_from(v).ok())
            .map(u32::from_be_bytes)
            .min()
    }

    /// Bytes this block takes on the wire, count byte included, or an error if it cannot
    /// be encoded (bad key, too many entries, value over 65,535 bytes).
    pub fn encoded_len(&self) -> Result<usize, Error> {
        match self.repr {
            Repr::Wire { entries, .. } => Ok(1 + entries.len()),
            _ => {
                if self.len() > 255 {
                    return Err(Error::TooManyMeta { count: self.len() });
                }
                let mut len = 1;
                for (key, value) in self.iter() {
                    validate_key(key.as_bytes())?;
                    if value.len() > usize::from(u16::MAX) {
                        return Err(Error::FieldTooLong {
                            field: "metadata value",
                            len: value.len(),
                            max: usize::from(u16::MAX),
                        });
                    }
                    len += 1 + key.len() + 2 + value.len();
                }
                Ok(len)
            }
        }
    }

    /// Writes the block; `encoded_len` must have succeeded first.
    pub(crate) fn write<S: Sink>(&self, w: &mut PayloadWriter<'_, S>) {
        match self.repr {
            Repr::Wire { count, entries } => {
                w.put_u8(count);
                w.put(entries);
            }
            _ => {
                // Lossless casts: lengths were checked by `encoded_len`.
                w.put_u8(self.len() as u8);
                for (key, value) in self.iter() {
                    w.put_u8(key.len() as u8);
                    w.put(key.as_bytes());
                    w.put_u16(value.len() as u16);
                    w.put(value);
                }
            }
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
            Repr::Wire { count, entries } => {
                if *count == 0 {
                    return None;
                }
                // The block was validated when read, so these reads succeed; should they
                // not, iteration simply ends instead of panicking.
                let mut r = Reader::new(entries);
                let key_len = r.u8("").ok()?;
                let key = r.bytes(usize::from(key_len), "").ok()?;
                let value_len = r.u16("").ok()?;
                let value = r.bytes(usize::from(value_len), "").ok()?;
                *entries = r.rest();
                *count -= 1;
                // Valid keys are ASCII, hence UTF-8.
                let key = core::str::from_utf8(key).ok()?;
                Some((key, value))
            }
        }
    }
}
