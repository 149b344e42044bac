//! `Registry`: procedure → providers, per realm, with expiry, refresh and round-robin pick.

use crate::ids::{RealmId, SessionRef, Time};

/// What a register did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Registered {
    /// A new (procedure, provider) pair.
    New,
    /// The pair existed: its expiry was moved.
    Refreshed,
}

/// One removed registration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removed {
    pub realm: RealmId,
    pub procedure: Box<[u8]>,
    pub provider: SessionRef,
}

pub struct Registry {
    _todo: (),
}

impl Registry {
    pub fn new() -> Self {
        todo!()
    }

    /// Registers or refreshes `provider` for `procedure`. `expires` is `None` for an entry that
    /// lives until it is unregistered (a replica of another shard's registration).
    pub fn register(&mut self, realm: RealmId, procedure: &[u8], provider: SessionRef, expires: Option<Time>) -> Registered {
        let _ = (realm, procedure, provider, expires);
        todo!()
    }

    /// Removes one registration; false if absent.
    pub fn unregister(&mut self, realm: RealmId, procedure: &[u8], provider: SessionRef) -> bool {
        let _ = (realm, procedure, provider);
        todo!()
    }

    /// Removes every registration of `provider`, appending them to `out`.
    pub fn remove_provider(&mut self, provider: SessionRef, out: &mut Vec<Removed>) {
        let _ = (provider, out);
        todo!()
    }

    /// The next provider of `procedure`, round-robin.
    pub fn pick(&mut self, realm: RealmId, procedure: &[u8]) -> Option<SessionRef> {
        let _ = (realm, procedure);
        todo!()
    }

    /// Removes every registration whose expiry is at or before `now`, appending them to `out`.
    pub fn prune(&mut self, now: Time, out: &mut Vec<Removed>) {
        let _ = (now, out);
        todo!()
    }

    /// Registrations of `provider`.
    pub fn count_of(&self, provider: SessionRef) -> usize {
        let _ = provider;
        todo!()
    }

    /// (procedure, provider) pairs held.
    pub fn len(&self) -> usize {
        todo!()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}
