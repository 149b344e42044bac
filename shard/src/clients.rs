//! `ClientTable`: the directory of connected nodes that a shard owns (the nodes whose id hashes
//! to it), with a capacity and a (realm, node id) index.

use std::collections::hash_map::Entry;

use ahash::AHashMap;

use crate::genslab::GenSlab;
use crate::ids::{slab_key, NodeId, RealmId, SessionRef};

slab_key!(
    /// An entry of a [`ClientTable`].
    ClientKey
);

/// One connected node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientEntry {
    pub realm: RealmId,
    pub node: NodeId,
    /// Where the node's session lives.
    pub session: SessionRef,
}

/// A successful admission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// A new node.
    Admitted(ClientKey),
    /// The node was connected already: its entry now points at the new session; `old` is the
    /// session it replaced, which the caller ends.
    Replaced { key: ClientKey, old: SessionRef },
}

/// Why an admission was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The table holds `capacity` nodes already.
    #[error("client table full ({capacity} clients)")]
    Full { capacity: usize },
}

/// The connected nodes a shard owns, found by key or by (realm, node id).
///
/// Invariant: `index` and `entries` hold the same nodes; `index` maps each entry's (realm, node)
/// to its key.
pub struct ClientTable {
    entries: GenSlab<ClientKey, ClientEntry>,
    index: AHashMap<(RealmId, NodeId), ClientKey>,
    capacity: usize,
}

impl ClientTable {
    /// An empty table admitting at most `capacity` nodes.
    pub fn new(capacity: usize) -> Self {
        ClientTable {
            entries: GenSlab::new(),
            index: AHashMap::new(),
            capacity,
        }
    }

    /// Admits `node` in `realm` for `session`. A node already present is replaced, even when
    /// the table is full.
    pub fn admit(
        &mut self,
        realm: RealmId,
        node: NodeId,
        session: SessionRef,
    ) -> Result<Admission, Refusal> {
        match self.index.entry((realm, node)) {
            Entry::Occupied(mut present) => {
                let key = *present.get();
                match self.entries.get_mut(key) {
                    Some(entry) => {
                        let old = std::mem::replace(&mut entry.session, session);
                        Ok(Admission::Replaced { key, old })
                    }
                    None => {
                        debug_assert!(false, "every indexed key is live: removal drops both");
                        let key = self.entries.insert(ClientEntry {
                            realm,
                            node,
                            session,
                        });
                        present.insert(key);
                        Ok(Admission::Admitted(key))
                    }
                }
            }
            Entry::Vacant(_) if self.entries.len() >= self.capacity => Err(Refusal::Full {
                capacity: self.capacity,
            }),
            Entry::Vacant(vacant) => {
                let key = self.entries.insert(ClientEntry {
                    realm,
                    node,
                    session,
                });
                vacant.insert(key);
                Ok(Admission::Admitted(key))
            }
        }
    }

    /// Removes the node if its entry still belongs to `session` (a replaced session's leave
    /// must not remove its successor).
    pub fn leave(
        &mut self,
        realm: RealmId,
        node: NodeId,
        session: SessionRef,
    ) -> Option<ClientEntry> {
        let key = self.find(realm, node)?;
        if self.entries.get(key)?.session != session {
            return None;
        }
        self.remove(key)
    }

    /// Removes the entry of `key`; `None` if the key is stale.
    pub fn remove(&mut self, key: ClientKey) -> Option<ClientEntry> {
        let entry = self.entries.remove(key)?;
        let indexed = self.index.remove(&(entry.realm, entry.node));
        debug_assert_eq!(
            indexed,
            Some(key),
            "every entry is indexed under its own key"
        );
        Some(entry)
    }

    pub fn get(&self, key: ClientKey) -> Option<&ClientEntry> {
        self.entries.get(key)
    }

    /// The key of `node` in `realm`, if connected.
    pub fn find(&self, realm: RealmId, node: NodeId) -> Option<ClientKey> {
        self.index.get(&(realm, node)).copied()
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (ClientKey, &ClientEntry)> {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

impl std::fmt::Debug for ClientTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTable")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{SessionKey, ShardId};

    fn node(n: u8) -> NodeId {
        NodeId([n; 32])
    }

    fn session(n: u64) -> SessionRef {
        SessionRef {
            shard: ShardId(0),
            key: SessionKey::from_u64(n),
        }
    }

    const REALM: RealmId = RealmId(0);

    #[test]
    fn admit_refuses_a_new_node_when_full() {
        let mut table = ClientTable::new(2);
        assert!(matches!(
            table.admit(REALM, node(1), session(1)),
            Ok(Admission::Admitted(_))
        ));
        assert!(matches!(
            table.admit(REALM, node(2), session(2)),
            Ok(Admission::Admitted(_))
        ));
        assert_eq!(
            table.admit(REALM, node(3), session(3)),
            Err(Refusal::Full { capacity: 2 })
        );
        assert_eq!(table.len(), 2);
        assert_eq!(table.find(REALM, node(3)), None);
    }

    #[test]
    fn a_reconnecting_node_replaces_its_old_session_even_when_full() {
        let mut table = ClientTable::new(1);
        let Ok(Admission::Admitted(key)) = table.admit(REALM, node(1), session(1)) else {
            panic!("room for one node");
        };
        assert_eq!(
            table.admit(REALM, node(1), session(2)),
            Ok(Admission::Replaced {
                key,
                old: session(1)
            })
        );
        assert_eq!(table.get(key).map(|entry| entry.session), Some(session(2)));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn leave_of_a_replaced_session_keeps_its_successor() {
        let mut table = ClientTable::new(4);
        table.admit(REALM, node(1), session(1)).unwrap();
        table.admit(REALM, node(1), session(2)).unwrap();
        assert_eq!(table.leave(REALM, node(1), session(1)), None);
        assert!(table.find(REALM, node(1)).is_some());
        let left = table.leave(REALM, node(1), session(2));
        assert_eq!(
            left,
            Some(ClientEntry {
                realm: REALM,
                node: node(1),
                session: session(2)
            })
        );
        assert!(table.is_empty());
        assert_eq!(table.find(REALM, node(1)), None);
    }

    #[test]
    fn the_same_node_in_two_realms_is_two_entries() {
        let mut table = ClientTable::new(4);
        table.admit(RealmId(0), node(1), session(1)).unwrap();
        assert!(matches!(
            table.admit(RealmId(1), node(1), session(2)),
            Ok(Admission::Admitted(_))
        ));
        assert_eq!(table.len(), 2);
        assert!(table.leave(RealmId(0), node(1), session(1)).is_some());
        assert!(table.find(RealmId(1), node(1)).is_some());
    }

    #[test]
    fn a_removed_entry_frees_room_and_its_key_goes_stale() {
        let mut table = ClientTable::new(1);
        let Ok(Admission::Admitted(old)) = table.admit(REALM, node(1), session(1)) else {
            panic!("room for one node");
        };
        assert!(table.remove(old).is_some());
        assert_eq!(table.remove(old), None);
        let Ok(Admission::Admitted(new)) = table.admit(REALM, node(2), session(2)) else {
            panic!("the removal made room");
        };
        assert_eq!(old.index(), new.index());
        assert_eq!(table.get(old), None);
        assert_eq!(table.remove(old), None);
        assert_eq!(table.find(REALM, node(2)), Some(new));
    }
}
