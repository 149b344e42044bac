//! What the fuzz targets in `fuzz_targets/` share.

use meshgate_protocol::wire::{FrameReader, HEADER_LEN};

/// Reads `bytes`, one encoded frame, back through a frame reader, and returns its type and
/// payload. Panics unless the reader takes the bytes as exactly one whole frame.
pub fn read_back(bytes: &[u8]) -> (u8, Vec<u8>) {
    let mut reader = FrameReader::new(u32::MAX);
    reader.push(bytes).expect("an encoded frame is refused");
    let frame = reader
        .next_frame()
        .expect("reader failed")
        .expect("no frame");
    assert_eq!(HEADER_LEN + frame.payload.len(), bytes.len());
    (frame.frame_type, frame.payload.to_vec())
}
