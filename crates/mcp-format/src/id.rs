//! The `format` byte of REQUEST, RESPONSE and NOTIFY frames.

use core::fmt;

/// The wire id of a body format: the `format` byte of a REQUEST, RESPONSE or NOTIFY frame
/// (docs/protocol.md section 4).
///
/// | id | meaning |
/// |---|---|
/// | 0 | raw bytes ([`FormatId::RAW`]) |
/// | 1 | JSON, UTF-8 ([`FormatId::JSON`]) |
/// | 2 | Protocol Buffers ([`FormatId::PROTOBUF`]) |
/// | 3..=127 | reserved: a server answers ERROR 3 (UNSUPPORTED_FORMAT) |
/// | 128..=255 | application-defined |
///
/// Every byte value is a `FormatId`: the type names ids, it does not vouch that anyone
/// implements them. Its `Display` says what the range means, e.g. `json (1)`,
/// `reserved (7)`, `user-defined (200)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FormatId(u8);

impl FormatId {
    /// Raw bytes: the body is passed through untouched.
    pub const RAW: Self = Self(0);
    /// JSON text in UTF-8.
    pub const JSON: Self = Self(1);
    /// Protocol Buffers (proto3 wire encoding).
    pub const PROTOBUF: Self = Self(2);

    /// The id for a byte value, whatever range it is in.
    pub const fn new(id: u8) -> Self {
        Self(id)
    }

    /// The id for an application-defined format, or `None` if `id` is below 128 (ids 0..=127
    /// belong to the protocol).
    pub const fn user_defined(id: u8) -> Option<Self> {
        if id >= 128 { Some(Self(id)) } else { None }
    }

    /// The byte written on the wire.
    pub const fn get(self) -> u8 {
        self.0
    }

    /// Whether the protocol defines this id (0 raw, 1 JSON, 2 Protobuf).
    pub const fn is_standard(self) -> bool {
        self.0 <= 2
    }

    /// Whether the id is reserved for future versions of the protocol (3..=127).
    pub const fn is_reserved(self) -> bool {
        matches!(self.0, 3..=127)
    }

    /// Whether the id is free for application-defined formats (128..=255).
    pub const fn is_user_defined(self) -> bool {
        self.0 >= 128
    }

    /// A short label for the id's meaning: `raw`, `json`, `protobuf`, `reserved` or
    /// `user-defined`.
    pub const fn label(self) -> &'static str {
        match self.0 {
            0 => "raw",
            1 => "json",
            2 => "protobuf",
            3..=127 => "reserved",
            _ => "user-defined",
        }
    }
}

impl From<u8> for FormatId {
    fn from(id: u8) -> Self {
        Self(id)
    }
}

impl From<FormatId> for u8 {
    fn from(id: FormatId) -> Self {
        id.0
    }
}

impl fmt::Display for FormatId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.label(), self.0)
    }
}

/// A format as errors name it: its wire id and its [`Format::name`](crate::Format::name).
///
/// `Display` prints `name (id)`, e.g. `json (1)` or `cbor (200)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FormatInfo {
    id: FormatId,
    name: &'static str,
}

impl FormatInfo {
    /// A format's id and name.
    pub const fn new(id: FormatId, name: &'static str) -> Self {
        Self { id, name }
    }

    /// The wire id.
    pub const fn id(self) -> FormatId {
        self.id
    }

    /// The format's name, e.g. `json`.
    pub const fn name(self) -> &'static str {
        self.name
    }
}

impl fmt::Display for FormatInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.id.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_every_byte_exactly_once() {
        for byte in 0..=u8::MAX {
            let id = FormatId::new(byte);
            let classes = [id.is_standard(), id.is_reserved(), id.is_user_defined()];
            assert_eq!(classes.iter().filter(|c| **c).count(), 1, "{byte}");
            assert_eq!(u8::from(id), byte);
            assert_eq!(FormatId::user_defined(byte).is_some(), byte >= 128);
        }
    }

    #[test]
    fn display_names_the_range() {
        assert_eq!(FormatId::RAW.to_string(), "raw (0)");
        assert_eq!(FormatId::JSON.to_string(), "json (1)");
        assert_eq!(FormatId::PROTOBUF.to_string(), "protobuf (2)");
        assert_eq!(FormatId::new(3).to_string(), "reserved (3)");
        assert_eq!(FormatId::new(127).to_string(), "reserved (127)");
        assert_eq!(FormatId::new(128).to_string(), "user-defined (128)");
        assert_eq!(
            FormatInfo::new(FormatId::new(200), "cbor").to_string(),
            "cbor (200)"
        );
    }
}
