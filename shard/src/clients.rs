//! `ClientTable`: the directory of connected nodes that a shard owns (the nodes whose id hashes
//! to it), with a capacity and a (realm, node id) index.

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

pub struct ClientTable {
    _todo: GenSlab<ClientKey, ClientEntry>,
}

impl ClientTable {
    pub fn new(capacity: usize) -> Self {
        let _ = capacity;
        todo!()
    }

    /// Admits `node` in `realm` for `session`. A node already present is replaced, even when
    /// the table is full.
    pub fn admit(&mut self, realm: RealmId, node: NodeId, session: SessionRef) -> Result<Admission, Refusal> {
        let _ = (realm, node, session);
        todo!()
    }

    /// Removes the node if its entry still belongs to `session` (a replaced session's leave
    /// must not remove its successor).
    pub fn leave(&mut self, realm: RealmId, node: NodeId, session: SessionRef) -> Option<ClientEntry> {
        let _ = (realm, node, session);
        todo!()
    }

    pub fn remove(&mut self, key: ClientKey) -> Option<ClientEntry> {
        let _ = key;
        todo!()
    }

    pub fn get(&self, key: ClientKey) -> Option<&ClientEntry> {
        let _ = key;
        todo!()
    }

    pub fn find(&self, realm: RealmId, node: NodeId) -> Option<ClientKey> {
        let _ = (realm, node);
        todo!()
    }

    pub fn len(&self) -> usize {
        todo!()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        todo!()
    }
}
