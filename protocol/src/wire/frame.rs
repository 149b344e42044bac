//! The 8-byte frame header and an incremental reader that reassembles frames from a byte stream.

use super::WireError;

/// The only protocol version byte.
pub const VERSION: u8 = 0x01;
/// Bytes in a frame header.
pub const HEADER_LEN: usize = 8;

/// A reader holding more capacity than this gives it back once it has handed out every byte,
/// so that an idle session keeps a small footprint whatever frames it once received.
const RELEASE_CAPACITY: usize = 16 * 1024;
/// The consumed prefix of the buffer is shifted out once it is at least this long and at least
/// as long as what follows it, which bounds the copying to once per byte on average.
const SHIFT_MIN: usize = 4 * 1024;

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub frame_type: u8,
    pub payload_len: u32,
}

impl FrameHeader {
    /// Reads a header, refusing a version other than [`VERSION`] and a payload longer than
    /// `max_frame`. The flags and reserved bytes are ignored.
    pub fn parse(bytes: &[u8; HEADER_LEN], max_frame: u32) -> Result<FrameHeader, WireError> {
        let [version, frame_type, _flags, _reserved, l0, l1, l2, l3] = *bytes;
        if version != VERSION {
            return Err(WireError::BadVersion(version));
        }
        let payload_len = u32::from_be_bytes([l0, l1, l2, l3]);
        if payload_len > max_frame {
            return Err(WireError::FrameTooLarge {
                len: payload_len,
                max: max_frame,
            });
        }
        Ok(FrameHeader {
            frame_type,
            payload_len,
        })
    }

    /// The header's 8 bytes, with flags and reserved set to zero.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let [l0, l1, l2, l3] = self.payload_len.to_be_bytes();
        [VERSION, self.frame_type, 0, 0, l0, l1, l2, l3]
    }

    /// Header and payload together, in bytes.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + usize::try_from(self.payload_len).unwrap_or(usize::MAX - HEADER_LEN)
    }
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
///
/// Once [`push`](FrameReader::push) has failed, the reader is failed for good: `push` returns
/// the same error again, and [`next_frame`](FrameReader::next_frame) returns the complete
/// frames that came before the bad header, then that error.
#[derive(Debug, Default)]
pub struct FrameReader {
    /// `buf[start..checked]` holds whole frames whose headers are checked; `buf[checked..]`
    /// the beginning of the next frame, whose header, once complete, is checked too.
    buf: Vec<u8>,
    start: usize,
    checked: usize,
    max_frame: u32,
    failed: Option<WireError>,
}

impl FrameReader {
    pub fn new(max_frame: u32) -> FrameReader {
        FrameReader {
            buf: Vec::new(),
            start: 0,
            checked: 0,
            max_frame,
            failed: None,
        }
    }

    /// Takes the next piece of the byte stream.
    ///
    /// The bytes are copied frame by frame, and each header is checked as soon as it is whole:
    /// a bad one fails the push before any byte after it is copied.
    pub fn push(&mut self, data: &[u8]) -> Result<(), WireError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.compact();
        let mut data = data;
        loop {
            let have = self.buf.len() - self.checked;
            if have < HEADER_LEN {
                let n = data.len().min(HEADER_LEN - have);
                let (head, rest) = data.split_at(n);
                self.buf.extend_from_slice(head);
                data = rest;
            }
            let Some(header) = self.buf.get(self.checked..).and_then(|b| b.first_chunk()) else {
                // The header is still incomplete, so `data` is used up.
                return Ok(());
            };
            let header = match FrameHeader::parse(header, self.max_frame) {
                Ok(header) => header,
                Err(e) => {
                    self.failed = Some(e.clone());
                    return Err(e);
                }
            };
            let frame_len = header.frame_len();
            let have = self.buf.len() - self.checked;
            let n = data.len().min(frame_len - have);
            let (body, rest) = data.split_at(n);
            self.buf.extend_from_slice(body);
            data = rest;
            if have + n < frame_len {
                return Ok(());
            }
            self.checked += frame_len;
        }
    }

    /// The next complete frame, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<RawFrame<'_>>, WireError> {
        if self.start == self.checked {
            self.compact();
            return match &self.failed {
                Some(e) => Err(e.clone()),
                None => Ok(None),
            };
        }
        // `buf[start..checked]` is a sequence of whole frames, so a header begins at `start`,
        // and the frame it announces ends at or before `checked`.
        let frames = &self.buf[self.start..self.checked];
        let Some((header, rest)) = frames.split_first_chunk::<HEADER_LEN>() else {
            debug_assert!(false, "checked frames end inside a header");
            return Ok(None);
        };
        let [_, frame_type, _, _, l0, l1, l2, l3] = *header;
        let payload_len = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
        let Some(payload) = rest.get(..payload_len) else {
            debug_assert!(false, "checked frames end inside a payload");
            return Ok(None);
        };
        self.start += HEADER_LEN + payload_len;
        Ok(Some(RawFrame {
            frame_type,
            payload,
        }))
    }

    /// Bytes buffered and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Whether a complete frame is buffered.
    pub fn has_frame(&self) -> bool {
        self.start < self.checked
    }

    /// Whether the bytes buffered end inside a frame: the stream stopping here would cut it.
    pub fn is_mid_frame(&self) -> bool {
        self.buf.len() > self.checked
    }

    /// Bytes of memory the buffer holds.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Drops the bytes already handed out: all at once when nothing else is buffered (giving
    /// back a large allocation), or by shifting the rest down when the consumed prefix is long.
    fn compact(&mut self) {
        if self.start == 0 {
            return;
        }
        if self.start == self.buf.len() {
            if self.buf.capacity() > RELEASE_CAPACITY {
                self.buf = Vec::new();
            } else {
                self.buf.clear();
            }
            self.start = 0;
            self.checked = 0;
        } else if self.start >= SHIFT_MIN && self.start >= self.buf.len() - self.start {
            self.buf.drain(..self.start);
            self.checked -= self.start;
            self.start = 0;
            if self.buf.capacity() > RELEASE_CAPACITY && self.buf.len() < self.buf.capacity() / 4 {
                self.buf.shrink_to(self.buf.len().max(RELEASE_CAPACITY));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(ty: u8, payload: &[u8]) -> Vec<u8> {
        let header = FrameHeader {
            frame_type: ty,
            payload_len: payload.len() as u32,
        };
        let mut out = header.to_bytes().to_vec();
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn a_drained_reader_gives_back_a_large_buffer() {
        let mut r = FrameReader::new(1 << 20);
        r.push(&frame(0x10, &[0x80; 100_000])).unwrap();
        assert!(r.capacity() >= 100_000);
        assert!(r.next_frame().unwrap().is_some());
        assert_eq!(r.next_frame(), Ok(None));
        assert_eq!(r.buffered(), 0);
        assert!(r.capacity() <= RELEASE_CAPACITY);
    }

    #[test]
    fn a_long_consumed_prefix_is_shifted_out_before_more_bytes_are_buffered() {
        let mut r = FrameReader::new(1 << 20);
        let one = frame(0x03, &[0x80; 92]);
        let mut stream = one.repeat(100);
        stream.extend_from_slice(&one[..50]);
        r.push(&stream).unwrap();
        for _ in 0..100 {
            assert!(r.next_frame().unwrap().is_some());
        }
        assert_eq!(r.next_frame(), Ok(None));
        r.push(&one[50..]).unwrap();
        assert_eq!(r.buf.len(), one.len());
        assert_eq!(r.next_frame().unwrap().map(|f| f.payload.len()), Some(92));
    }

    #[test]
    fn the_header_is_checked_when_its_last_byte_arrives() {
        let mut r = FrameReader::new(10);
        let header = FrameHeader {
            frame_type: 0x03,
            payload_len: 11,
        }
        .to_bytes();
        r.push(&header[..7]).unwrap();
        assert_eq!(
            r.push(&header[7..]),
            Err(WireError::FrameTooLarge { len: 11, max: 10 })
        );
    }
}
