//! Per-peer frame and byte counters (PROTOCOL.md 9.11): `meshgate_peer_frames_sent_total`,
//! `meshgate_peer_frames_received_total` by frame type, and the bytes each way. Tests count
//! frames with them, so every frame a link carries is counted once, exactly.

use crate::wire::FrameType;

/// The frame types a peer link carries, in the order the counters are kept and rendered.
pub const LINK_FRAMES: [FrameType; 12] = [
    FrameType::PeerHello,
    FrameType::PeerAuth,
    FrameType::PeerMembers,
    FrameType::Interest,
    FrameType::Sync,
    FrameType::Ping,
    FrameType::Pong,
    FrameType::Disconnect,
    FrameType::Publish,
    FrameType::Call,
    FrameType::Reply,
    FrameType::Cancel,
];

/// The slot of a link frame type in [`LINK_FRAMES`]; `None` for client-only types, which a
/// link never carries.
pub fn slot(ty: FrameType) -> Option<usize> {
    Some(match ty {
        FrameType::PeerHello => 0,
        FrameType::PeerAuth => 1,
        FrameType::PeerMembers => 2,
        FrameType::Interest => 3,
        FrameType::Sync => 4,
        FrameType::Ping => 5,
        FrameType::Pong => 6,
        FrameType::Disconnect => 7,
        FrameType::Publish => 8,
        FrameType::Call => 9,
        FrameType::Reply => 10,
        FrameType::Cancel => 11,
        FrameType::Connect
        | FrameType::Error
        | FrameType::Subscribe
        | FrameType::Unsubscribe
        | FrameType::Register
        | FrameType::Unregister => return None,
    })
}

/// What one link carried, each way.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkCounters {
    pub frames_sent: [u64; LINK_FRAMES.len()],
    pub frames_received: [u64; LINK_FRAMES.len()],
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Snapshots asked for after a digest mismatch (`meshgate_peer_resyncs_total`).
    pub resyncs: u64,
}

impl LinkCounters {
    /// A frame of `len` bytes (header included) went out on the link.
    pub fn sent(&mut self, ty: FrameType, len: usize) {
        if let Some(i) = slot(ty) {
            self.frames_sent[i] += 1;
        }
        self.bytes_sent += len as u64;
    }

    /// A frame of `len` bytes (header included) came in on the link.
    pub fn received(&mut self, ty: FrameType, len: usize) {
        if let Some(i) = slot(ty) {
            self.frames_received[i] += 1;
        }
        self.bytes_received += len as u64;
    }

    /// Frames of `ty` sent and received.
    pub fn frames_of(&self, ty: FrameType) -> (u64, u64) {
        slot(ty).map_or((0, 0), |i| (self.frames_sent[i], self.frames_received[i]))
    }

    /// Adds another link's counts (one peer's links over time).
    pub fn add(&mut self, other: &LinkCounters) {
        for (a, b) in self.frames_sent.iter_mut().zip(&other.frames_sent) {
            *a += b;
        }
        for (a, b) in self.frames_received.iter_mut().zip(&other.frames_received) {
            *a += b;
        }
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
        self.resyncs += other.resyncs;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_link_frame_has_its_own_slot_and_client_frames_none() {
        for (i, ty) in LINK_FRAMES.into_iter().enumerate() {
            assert_eq!(slot(ty), Some(i), "{}", ty.name());
        }
        for b in 0..=255u8 {
            if let Some(ty) = FrameType::from_u8(b) {
                assert_eq!(
                    slot(ty).is_some(),
                    LINK_FRAMES.contains(&ty),
                    "{}",
                    ty.name()
                );
            }
        }
    }

    #[test]
    fn counts_of_two_links_add_up() {
        let (mut a, mut b) = (LinkCounters::default(), LinkCounters::default());
        a.sent(FrameType::Publish, 10);
        b.sent(FrameType::Publish, 20);
        b.received(FrameType::Call, 5);
        b.resyncs = 1;
        a.add(&b);
        assert_eq!(a.frames_of(FrameType::Publish), (2, 0));
        assert_eq!(a.frames_of(FrameType::Call), (0, 1));
        assert_eq!((a.bytes_sent, a.bytes_received, a.resyncs), (30, 5, 1));
    }

    #[test]
    fn frames_and_bytes_are_counted_each_way() {
        let mut c = LinkCounters::default();
        c.sent(FrameType::Publish, 100);
        c.sent(FrameType::Publish, 50);
        c.received(FrameType::Reply, 30);
        assert_eq!(c.frames_of(FrameType::Publish), (2, 0));
        assert_eq!(c.frames_of(FrameType::Reply), (0, 1));
        assert_eq!((c.bytes_sent, c.bytes_received), (150, 30));
    }
}
