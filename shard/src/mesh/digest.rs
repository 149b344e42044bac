//! The interest digest (PROTOCOL.md 9.6): XOR, over a table's entries, of FNV-1a-64 of each
//! entry's bytes. A pattern's bytes are 0x01 ‖ pattern; a procedure's are
//! 0x02 ‖ name ‖ 0x00 ‖ count (u32, big-endian). The empty table's digest is 0.
//!
//! XOR makes the digest incremental: adding an entry and removing it are the same operation,
//! and a procedure's count changes by removing the old entry and adding the new one. No entry
//! is ever copied to compute its hash.

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a-64 over the concatenation of `parts`.
pub fn fnv1a64(parts: &[&[u8]]) -> u64 {
    parts
        .iter()
        .flat_map(|p| p.iter())
        .fold(FNV_OFFSET, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
        })
}

/// FNV-1a, 32 bits: which shard holds a link dialed to an address (9.10).
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The digest of one interest table (one peer, one realm), kept up to date as it changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterestDigest(u64);

impl InterestDigest {
    /// The digest of an empty table.
    pub const EMPTY: InterestDigest = InterestDigest(0);

    pub fn value(self) -> u64 {
        self.0
    }

    /// A pattern entered or left the table.
    pub fn toggle_pattern(&mut self, pattern: &[u8]) {
        self.0 ^= fnv1a64(&[&[0x01], pattern]);
    }

    /// A procedure's count went from `old` to `new` (0: no entry).
    pub fn set_procedure(&mut self, name: &[u8], old: u32, new: u32) {
        if old == new {
            return;
        }
        for count in [old, new] {
            if count > 0 {
                self.0 ^= fnv1a64(&[&[0x02], name, &[0x00], &count.to_be_bytes()]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_reference_values() {
        assert_eq!(fnv1a64(&[]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(&[b"a"]), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(&[b"foobar"]), 0x8594_4171_f739_67e8);
        assert_eq!(fnv1a64(&[b"foo", b"", b"bar"]), fnv1a64(&[b"foobar"]));
    }

    #[test]
    fn the_digest_of_a_table_is_the_xor_of_its_entries_hashes() {
        let mut d = InterestDigest::EMPTY;
        d.toggle_pattern(b"a.*");
        d.set_procedure(b"svc.echo", 0, 3);
        let want = fnv1a64(&[b"\x01a.*"]) ^ fnv1a64(&[b"\x02svc.echo\x00\x00\x00\x00\x03"]);
        assert_eq!(d.value(), want);
    }

    #[test]
    fn a_table_built_in_any_order_has_one_digest_and_emptied_it_is_zero() {
        let mut a = InterestDigest::EMPTY;
        a.toggle_pattern(b"x");
        a.toggle_pattern(b"y.**");
        a.set_procedure(b"p", 0, 1);
        a.set_procedure(b"p", 1, 2);
        let mut b = InterestDigest::EMPTY;
        b.set_procedure(b"p", 0, 2);
        b.toggle_pattern(b"y.**");
        b.toggle_pattern(b"x");
        assert_eq!(a, b);
        a.toggle_pattern(b"x");
        a.toggle_pattern(b"y.**");
        a.set_procedure(b"p", 2, 0);
        assert_eq!(a, InterestDigest::EMPTY);
    }

    #[test]
    fn a_count_that_does_not_change_leaves_the_digest() {
        let mut d = InterestDigest::EMPTY;
        d.set_procedure(b"p", 4, 4);
        assert_eq!(d, InterestDigest::EMPTY);
    }
}
