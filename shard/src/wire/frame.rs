//! The 8-byte frame header and an incremental reader that reassembles frames from a byte stream.

use super::WireError;

/// The only protocol version byte.
pub const VERSION: u8 = 0x01;
/// Bytes in a frame header.
pub const HEADER_LEN: usize = 8;

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub frame_type: u8,
    pub payload_len: u32,
}

/// One complete frame, borrowed from the reader's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawFrame<'a> {
    pub frame_type: u8,
    pub payload: &'a [u8],
}

/// Reassembles frames from bytes that arrive in pieces of any size.
///
/// A header whose length is over the maximum is rejected as soon as its 8 bytes are in, before
/// any of its payload is buffered.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    max_frame: u32,
}

impl FrameReader {
    pub fn new(max_frame: u32) -> FrameReader {
        FrameReader { buf: Vec::new(), start: 0, max_frame }
    }

    /// Takes the next piece of the byte stream.
    pub fn push(&mut self, data: &[u8]) -> Result<(), WireError> {
        let _ = data;
        todo!("frame reader")
    }

    /// The next complete frame, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<RawFrame<'_>>, WireError> {
        todo!("frame reader")
    }

    /// Bytes buffered and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }
}
