//! What proves a peer holds the cluster token, and what tells two gateways their realms' token
//! sets are equal (PROTOCOL.md 9.3 and 9.9).

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::ids::NodeId;

type HmacSha256 = Hmac<Sha256>;

/// Which end of a link made a proof.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The gateway that accepted the link: byte `A`.
    Acceptor,
    /// The gateway that dialed it: byte `D`.
    Dialer,
}

impl Role {
    fn byte(self) -> u8 {
        match self {
            Role::Acceptor => b'A',
            Role::Dialer => b'D',
        }
    }
}

fn mac(token: &[u8], role: Role, their_nonce: &[u8; 32], own_id: &NodeId) -> HmacSha256 {
    // HMAC takes a key of any length.
    let mut mac = HmacSha256::new_from_slice(token).unwrap_or_else(|_| unreachable!());
    mac.update(b"meshgate-peer-1");
    mac.update(&[role.byte()]);
    mac.update(their_nonce);
    mac.update(&own_id.0);
    mac
}

/// HMAC-SHA256(token, "meshgate-peer-1" ‖ role ‖ the other side's nonce ‖ own node_id).
pub fn proof(token: &[u8], role: Role, their_nonce: &[u8; 32], own_id: &NodeId) -> [u8; 32] {
    mac(token, role, their_nonce, own_id)
        .finalize()
        .into_bytes()
        .into()
}

/// Whether `proof` was made with one of `tokens` by the `role` end whose node id is
/// `their_id`, over `our_nonce`. Each comparison takes constant time.
pub fn verify(
    tokens: &[Box<[u8]>],
    proof: &[u8],
    role: Role,
    our_nonce: &[u8; 32],
    their_id: &NodeId,
) -> bool {
    tokens.iter().fold(false, |ok, token| {
        ok | mac(token, role, our_nonce, their_id)
            .verify_slice(proof)
            .is_ok()
    })
}

/// A realm's auth digest in PEER_HELLO: SHA-256("meshgate-realm-1" ‖ realm ‖ 0x00 ‖ its tokens
/// sorted bytewise and joined by 0x0A); empty for a realm without tokens.
pub fn realm_digest(realm: &[u8], tokens: &[Box<[u8]>]) -> Vec<u8> {
    if tokens.is_empty() {
        return Vec::new();
    }
    let mut sorted: Vec<&[u8]> = tokens.iter().map(|t| &**t).collect();
    sorted.sort_unstable();
    let mut h = Sha256::new();
    h.update(b"meshgate-realm-1");
    h.update(realm);
    h.update([0x00]);
    for (i, token) in sorted.iter().enumerate() {
        if i > 0 {
            h.update([0x0a]);
        }
        h.update(token);
    }
    h.finalize().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    const NONCE: [u8; 32] = {
        let mut n = [0u8; 32];
        let mut i = 0;
        while i < 32 {
            n[i] = i as u8;
            i += 1;
        }
        n
    };

    #[test]
    fn proofs_match_an_independent_hmac_sha256() {
        // Reference values from Python's hmac and hashlib.
        let id = NodeId([0xab; 32]);
        assert_eq!(
            hex(&proof(b"cluster-secret", Role::Acceptor, &NONCE, &id)),
            "7e1bc0a37cfa82cd2fc1bd17044c6be4a74da0db11b5faec0c9ebeb634d5930d"
        );
        assert_eq!(
            hex(&proof(b"cluster-secret", Role::Dialer, &NONCE, &id)),
            "9b5e764f70df7dbaefa527683a9d570612ce107f87bbf3f9bd44f04619d32e0e"
        );
    }

    #[test]
    fn a_proof_checks_out_against_any_line_of_the_token_file_and_nothing_else() {
        let id = NodeId([7; 32]);
        let p = proof(b"new", Role::Dialer, &NONCE, &id);
        let tokens: Vec<Box<[u8]>> = vec![b"old"[..].into(), b"new"[..].into()];
        assert!(verify(&tokens, &p, Role::Dialer, &NONCE, &id));
        assert!(
            !verify(&tokens, &p, Role::Acceptor, &NONCE, &id),
            "other role"
        );
        assert!(
            !verify(&tokens, &p, Role::Dialer, &[9; 32], &id),
            "other nonce"
        );
        assert!(
            !verify(&tokens, &p, Role::Dialer, &NONCE, &NodeId([8; 32])),
            "other id"
        );
        assert!(
            !verify(&tokens[..1], &p, Role::Dialer, &NONCE, &id),
            "other token"
        );
        assert!(
            !verify(&tokens, &p[..31], Role::Dialer, &NONCE, &id),
            "short proof"
        );
    }

    #[test]
    fn a_realms_digest_depends_on_its_token_set_not_the_order() {
        let a: Vec<Box<[u8]>> = vec![b"zeta"[..].into(), b"alpha"[..].into()];
        let b: Vec<Box<[u8]>> = vec![b"alpha"[..].into(), b"zeta"[..].into()];
        assert_eq!(
            hex(&realm_digest(b"macula.default", &a)),
            "a1078d240d539d438a7f20f32ecd72e236168e163439eab6bc67c5230b6328f4"
        );
        assert_eq!(
            realm_digest(b"macula.default", &a),
            realm_digest(b"macula.default", &b)
        );
        assert!(realm_digest(b"macula.default", &[]).is_empty());
    }
}
