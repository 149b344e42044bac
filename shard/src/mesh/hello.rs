//! The checks of a received PEER_HELLO (PROTOCOL.md 9.3 step 4) and the realms two gateways
//! share (9.9).

use crate::ids::NodeId;
use crate::wire::{LinkReason, PeerHello, Reason, PEER_VERSION};

use super::proof::{verify, Role};

/// What a gateway checks a peer's HELLO against.
#[derive(Clone, Copy, Debug)]
pub struct Own<'a> {
    pub node_id: NodeId,
    pub node_name: &'a [u8],
    pub max_frame: u64,
    /// The cluster token file's lines.
    pub tokens: &'a [Box<[u8]>],
    /// The nonce this gateway sent on the link (the peer's proof covers it).
    pub nonce: &'a [u8; 32],
}

/// Checks `hello` in the order of 9.3 step 4: `version` and `max_frame`, then `node_id`, then
/// `node_name`, then the proof when it must carry one (`proof_from` is the sender's role: the
/// acceptor's HELLO carries one, the dialer proves itself later in PEER_AUTH). The refusal
/// is the reason to close the link with.
pub fn check_hello(
    hello: &PeerHello<'_>,
    own: &Own<'_>,
    proof_from: Option<Role>,
) -> Result<(), LinkReason> {
    if hello.version != PEER_VERSION || hello.max_frame != own.max_frame {
        return Err(LinkReason::ConfigMismatch);
    }
    if hello.node_id == own.node_id {
        return Err(LinkReason::DuplicateLink);
    }
    if hello.node_name == own.node_name {
        return Err(LinkReason::NameConflict);
    }
    if let Some(role) = proof_from {
        let proven = hello
            .proof
            .is_some_and(|p| verify(own.tokens, p, role, own.nonce, &hello.node_id));
        if !proven {
            return Err(LinkReason::Session(Reason::Unauthorized));
        }
    }
    Ok(())
}

/// A realm of this gateway: its name and its auth digest (empty without tokens).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RealmAuth {
    pub name: Box<[u8]>,
    pub digest: Vec<u8>,
}

/// Of this gateway's realms, those the peer serves with the same digest (shared) and those it
/// serves with another (not shared: logged, and listed in `/peers`).
pub fn shared_realms<'a>(
    own: &'a [RealmAuth],
    hello: &PeerHello<'_>,
) -> (Vec<&'a [u8]>, Vec<&'a [u8]>) {
    let (mut shared, mut unshared) = (Vec::new(), Vec::new());
    for realm in own {
        let theirs = hello.realms.iter().find(|r| r.realm == &*realm.name);
        match theirs {
            Some(r) if r.digest_bytes() == realm.digest.as_slice() => shared.push(&*realm.name),
            Some(_) => unshared.push(&*realm.name),
            None => {}
        }
    }
    (shared, unshared)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::proof::proof;
    use crate::wire::{Entries, RealmDigest};

    const NONCE: [u8; 32] = [5; 32];

    fn hello<'a>(realms: &'a [RealmDigest<'a>], proof: Option<&'a [u8; 32]>) -> PeerHello<'a> {
        PeerHello {
            version: PEER_VERSION,
            node_id: NodeId([2; 32]),
            node_name: b"b",
            incarnation: 1,
            nonce: &[9; 32],
            advertise: b"127.0.0.1:1",
            realms: Entries::List(realms),
            max_frame: 1 << 20,
            dial: None,
            proof,
        }
    }

    fn own(tokens: &[Box<[u8]>]) -> Own<'_> {
        Own {
            node_id: NodeId([1; 32]),
            node_name: b"a",
            max_frame: 1 << 20,
            tokens,
            nonce: &NONCE,
        }
    }

    #[test]
    fn a_hello_is_checked_in_order_version_and_frame_then_id_then_name_then_proof() {
        let tokens: Vec<Box<[u8]>> = vec![b"t"[..].into()];
        let me = own(&tokens);
        let good = proof(b"t", Role::Acceptor, &NONCE, &NodeId([2; 32]));
        let ok = hello(&[], Some(&good));
        assert_eq!(check_hello(&ok, &me, Some(Role::Acceptor)), Ok(()));
        let mut h = ok;
        h.max_frame = 1;
        h.node_id = me.node_id;
        assert_eq!(
            check_hello(&h, &me, Some(Role::Acceptor)),
            Err(LinkReason::ConfigMismatch)
        );
        let mut h = ok;
        h.version = b"2";
        assert_eq!(check_hello(&h, &me, None), Err(LinkReason::ConfigMismatch));
        let mut h = ok;
        h.node_id = me.node_id;
        h.node_name = b"a";
        assert_eq!(check_hello(&h, &me, None), Err(LinkReason::DuplicateLink));
        let mut h = ok;
        h.node_name = b"a";
        h.proof = None;
        assert_eq!(
            check_hello(&h, &me, Some(Role::Acceptor)),
            Err(LinkReason::NameConflict)
        );
        let mut h = ok;
        h.proof = None;
        let unauthorized = Err(LinkReason::Session(Reason::Unauthorized));
        assert_eq!(check_hello(&h, &me, Some(Role::Acceptor)), unauthorized);
        assert_eq!(
            check_hello(&h, &me, None),
            Ok(()),
            "the dialer's HELLO has no proof"
        );
        let wrong = proof(b"other", Role::Acceptor, &NONCE, &NodeId([2; 32]));
        assert_eq!(
            check_hello(&hello(&[], Some(&wrong)), &me, Some(Role::Acceptor)),
            unauthorized
        );
    }

    #[test]
    fn realms_are_shared_only_with_equal_digests() {
        let own = [
            RealmAuth {
                name: b"open"[..].into(),
                digest: Vec::new(),
            },
            RealmAuth {
                name: b"secure"[..].into(),
                digest: vec![7; 32],
            },
            RealmAuth {
                name: b"mine"[..].into(),
                digest: Vec::new(),
            },
        ];
        let theirs = [
            RealmDigest {
                realm: b"open",
                digest: None,
            },
            RealmDigest {
                realm: b"secure",
                digest: Some(&[8; 32]),
            },
            RealmDigest {
                realm: b"theirs",
                digest: None,
            },
        ];
        let (shared, unshared) = shared_realms(&own, &hello(&theirs, None));
        assert_eq!(shared, [&b"open"[..]]);
        assert_eq!(unshared, [&b"secure"[..]]);
    }
}
