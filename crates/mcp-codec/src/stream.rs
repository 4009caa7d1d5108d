//! A buffering stream decoder for byte streams (needs `alloc`).

use alloc::vec::Vec;

use crate::Error;
use crate::frame::{CRC_LEN, Decoded, Frame, FrameDecoder, HEADER_LEN};

/// Accepts a byte stream in chunks of any size and yields its frames in order.
///
/// It owns one growing buffer holding what was fed and not yet taken out as frames. A caller
/// that takes every frame after each feed (as a socket reader does) holds at most one
/// partial frame, which the payload limit bounds (a frame longer than the limit is refused
/// from its header, before its bytes are buffered), plus the chunk it just fed. Consumed
/// bytes are dropped lazily on the next [`StreamDecoder::feed`], so a returned frame can
/// borrow the buffer without copying.
///
/// In strict mode the first error poisons the decoder: every later call returns the same
/// error, because a byte stream cannot be trusted after a framing error.
#[derive(Debug, Clone, Default)]
pub struct StreamDecoder {
    decoder: FrameDecoder,
    buf: Vec<u8>,
    start: usize,
    failed: Option<Error>,
}

impl StreamDecoder {
    /// A stream decoder using `decoder`'s limit and mode.
    pub fn new(decoder: FrameDecoder) -> Self {
        StreamDecoder {
            decoder,
            buf: Vec::new(),
            start: 0,
            failed: None,
        }
    }

    /// Appends received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Bytes skipped while resynchronising.
    pub fn skipped_bytes(&self) -> u64 {
        self.decoder.skipped_bytes()
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, Error> {
        if let Some(err) = self.failed {
            return Err(err);
        }
        loop {
            match self.decoder.decode(&self.buf[self.start..]) {
                Ok(Decoded::Frame { len, .. }) => {
                    let frame = &self.buf[self.start..self.start + len];
                    self.start += len;
                    // The bytes were just verified; rebuild the view on `self.buf` so that
                    // it borrows `self` for the caller without a second CRC pass.
                    let payload = &frame[HEADER_LEN..frame.len() - CRC_LEN];
                    return Ok(Some(Frame::with_type_byte(frame[3], payload)));
                }
                Ok(Decoded::NeedMore { .. }) => return Ok(None),
                Ok(Decoded::Skip { len }) => self.start += len,
                Err(err) => {
                    self.failed = Some(err);
                    return Err(err);
                }
            }
        }
    }
}
