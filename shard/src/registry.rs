//! `Registry`: procedure → providers, per realm, with expiry, refresh and round-robin pick.
//!
//! Every (procedure, provider) pair is a registration, held once in a slab and reached from
//! three indexes: the procedure's provider list (in registration order, for the round-robin),
//! the provider's list (so that a session's end removes its registrations without a scan) and
//! the expiries in time order (so that pruning touches only what it removes).

use std::collections::BTreeSet;

use ahash::AHashMap;
use slab::Slab;

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
    /// Each realm's procedures by name, by realm id.
    by_name: Vec<AHashMap<Box<[u8]>, ProcedureIx>>,
    /// Procedures with at least one provider; a procedure goes with its last provider.
    procedures: Slab<Procedure>,
    registrations: Slab<Registration>,
    /// The registrations of each provider that has one.
    by_provider: AHashMap<SessionRef, Vec<RegistrationIx>>,
    /// Every registration that expires, soonest first.
    expiries: BTreeSet<(Time, RegistrationIx)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ProcedureIx(usize);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct RegistrationIx(usize);

struct Procedure {
    realm: RealmId,
    name: Box<[u8]>,
    /// In the order they registered; never empty.
    providers: Vec<Provision>,
    /// The position in `providers` of the next pick; `providers.len()` means the first.
    cursor: usize,
}

#[derive(Clone, Copy)]
struct Provision {
    provider: SessionRef,
    registration: RegistrationIx,
}

struct Registration {
    procedure: ProcedureIx,
    provider: SessionRef,
    expires: Option<Time>,
}

impl Registry {
    pub fn new() -> Self {
        Registry {
            by_name: Vec::new(),
            procedures: Slab::new(),
            registrations: Slab::new(),
            by_provider: AHashMap::new(),
            expiries: BTreeSet::new(),
        }
    }

    /// Registers or refreshes `provider` for `procedure`. `expires` is `None` for an entry that
    /// lives until it is unregistered (a replica of another shard's registration).
    pub fn register(
        &mut self,
        realm: RealmId,
        procedure: &[u8],
        provider: SessionRef,
        expires: Option<Time>,
    ) -> Registered {
        let slot = usize::from(realm.0);
        if self.by_name.len() <= slot {
            self.by_name.resize_with(slot + 1, AHashMap::new);
        }
        let ix = match self.by_name[slot].get(procedure) {
            Some(&ix) => ix,
            None => {
                let ix = ProcedureIx(self.procedures.insert(Procedure {
                    realm,
                    name: procedure.into(),
                    providers: Vec::new(),
                    cursor: 0,
                }));
                self.by_name[slot].insert(procedure.into(), ix);
                ix
            }
        };
        let entry = &mut self.procedures[ix.0];
        if let Some(known) = entry.providers.iter().find(|p| p.provider == provider) {
            let registration = &mut self.registrations[known.registration.0];
            if let Some(old) = registration.expires {
                self.expiries.remove(&(old, known.registration));
            }
            registration.expires = expires;
            if let Some(new) = expires {
                self.expiries.insert((new, known.registration));
            }
            return Registered::Refreshed;
        }
        let registration = RegistrationIx(self.registrations.insert(Registration {
            procedure: ix,
            provider,
            expires,
        }));
        entry.providers.push(Provision {
            provider,
            registration,
        });
        self.by_provider
            .entry(provider)
            .or_default()
            .push(registration);
        if let Some(at) = expires {
            self.expiries.insert((at, registration));
        }
        Registered::New
    }

    /// Removes one registration; false if absent.
    pub fn unregister(&mut self, realm: RealmId, procedure: &[u8], provider: SessionRef) -> bool {
        let Some(ix) = self.procedure(realm, procedure) else {
            return false;
        };
        let found = self.procedures[ix.0]
            .providers
            .iter()
            .find(|p| p.provider == provider);
        match found.map(|p| p.registration) {
            Some(registration) => self.detach(registration).is_some(),
            None => false,
        }
    }

    /// Removes every registration of `provider`, appending them to `out`.
    pub fn remove_provider(&mut self, provider: SessionRef, out: &mut Vec<Removed>) {
        let Some(registrations) = self.by_provider.remove(&provider) else {
            return;
        };
        out.extend(registrations.into_iter().filter_map(|r| self.detach(r)));
    }

    /// The next provider of `procedure`, round-robin.
    pub fn pick(&mut self, realm: RealmId, procedure: &[u8]) -> Option<SessionRef> {
        let ix = self.procedure(realm, procedure)?;
        let entry = &mut self.procedures[ix.0];
        let at = if entry.cursor < entry.providers.len() {
            entry.cursor
        } else {
            0
        };
        let picked = entry.providers.get(at)?.provider;
        entry.cursor = at + 1;
        Some(picked)
    }

    /// Removes every registration whose expiry is at or before `now`, appending them to `out`.
    pub fn prune(&mut self, now: Time, out: &mut Vec<Removed>) {
        while let Some(&(at, registration)) = self.expiries.first() {
            if at > now {
                break;
            }
            self.expiries.pop_first();
            out.extend(self.detach(registration));
        }
    }

    /// Providers of `procedure` in `realm`.
    pub fn providers_of(&self, realm: RealmId, procedure: &[u8]) -> usize {
        self.procedure(realm, procedure)
            .map_or(0, |ix| self.procedures[ix.0].providers.len())
    }

    /// Registrations of `provider`.
    pub fn count_of(&self, provider: SessionRef) -> usize {
        self.by_provider.get(&provider).map_or(0, Vec::len)
    }

    /// (procedure, provider) pairs held.
    pub fn len(&self) -> usize {
        self.registrations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Procedures with at least one provider, all realms together.
    #[doc(hidden)]
    pub fn procedure_count(&self) -> usize {
        self.procedures.len()
    }

    fn procedure(&self, realm: RealmId, procedure: &[u8]) -> Option<ProcedureIx> {
        self.by_name
            .get(usize::from(realm.0))?
            .get(procedure)
            .copied()
    }

    /// Removes `registration` from the slab and from every index that still holds it, with its
    /// procedure if it was the last provider.
    fn detach(&mut self, registration: RegistrationIx) -> Option<Removed> {
        let Registration {
            procedure: ix,
            provider,
            expires,
        } = self.registrations.try_remove(registration.0)?;
        if let Some(at) = expires {
            self.expiries.remove(&(at, registration));
        }
        if let Some(list) = self.by_provider.get_mut(&provider) {
            if let Some(at) = list.iter().position(|&r| r == registration) {
                list.swap_remove(at);
            }
            if list.is_empty() {
                self.by_provider.remove(&provider);
            }
        }
        let entry = &mut self.procedures[ix.0];
        if let Some(at) = entry
            .providers
            .iter()
            .position(|p| p.registration == registration)
        {
            entry.providers.remove(at);
            // Keep the cursor on the provider that was next.
            if at < entry.cursor {
                entry.cursor -= 1;
            }
        }
        let realm = entry.realm;
        let procedure = if entry.providers.is_empty() {
            let gone = self.procedures.remove(ix.0);
            if let Some(names) = self.by_name.get_mut(usize::from(realm.0)) {
                names.remove(&gone.name);
            }
            gone.name
        } else {
            entry.name.clone()
        };
        Some(Removed {
            realm,
            procedure,
            provider,
        })
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{SessionKey, ShardId};

    const R: RealmId = RealmId(0);

    fn session(n: u64) -> SessionRef {
        SessionRef {
            shard: ShardId(0),
            key: SessionKey::from_u64(n),
        }
    }

    fn at(ms: u64) -> Option<Time> {
        Some(Time::from_millis(ms))
    }

    #[test]
    fn registering_twice_refreshes() {
        let mut registry = Registry::new();
        assert_eq!(
            registry.register(R, b"p", session(1), at(10)),
            Registered::New
        );
        assert_eq!(
            registry.register(R, b"p", session(1), at(20)),
            Registered::Refreshed
        );
        assert_eq!(registry.len(), 1);
        assert_eq!(registry.count_of(session(1)), 1);
    }

    #[test]
    fn a_refresh_moves_the_expiry() {
        let mut registry = Registry::new();
        registry.register(R, b"p", session(1), at(10));
        registry.register(R, b"p", session(1), at(20));
        let mut out = Vec::new();
        registry.prune(Time::from_millis(15), &mut out);
        assert!(out.is_empty());
        registry.prune(Time::from_millis(20), &mut out);
        assert_eq!(
            out,
            [Removed {
                realm: R,
                procedure: (*b"p").into(),
                provider: session(1)
            }]
        );
        assert!(registry.is_empty());
    }

    #[test]
    fn a_registration_without_expiry_survives_every_prune() {
        let mut registry = Registry::new();
        registry.register(R, b"p", session(1), None);
        registry.register(R, b"p", session(2), at(5));
        let mut out = Vec::new();
        registry.prune(Time::from_millis(u64::MAX), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(registry.pick(R, b"p"), Some(session(1)));
    }

    #[test]
    fn a_refresh_without_expiry_makes_the_registration_permanent() {
        let mut registry = Registry::new();
        registry.register(R, b"p", session(1), at(5));
        registry.register(R, b"p", session(1), None);
        let mut out = Vec::new();
        registry.prune(Time::from_millis(100), &mut out);
        assert!(out.is_empty());
        assert_eq!(registry.len(), 1);
    }

    #[test]
    fn pick_rotates_through_every_provider_in_turn() {
        let mut registry = Registry::new();
        for n in 1..=3 {
            registry.register(R, b"p", session(n), None);
        }
        let picks: Vec<_> = (0..7).map(|_| registry.pick(R, b"p")).collect();
        let expected: Vec<_> = [1, 2, 3, 1, 2, 3, 1]
            .iter()
            .map(|&n| Some(session(n)))
            .collect();
        assert_eq!(picks, expected);
    }

    #[test]
    fn pick_goes_on_with_the_next_provider_after_a_removal() {
        let mut registry = Registry::new();
        for n in 1..=4 {
            registry.register(R, b"p", session(n), None);
        }
        assert_eq!(registry.pick(R, b"p"), Some(session(1)));
        assert_eq!(registry.pick(R, b"p"), Some(session(2)));
        assert!(registry.unregister(R, b"p", session(1)));
        assert_eq!(registry.pick(R, b"p"), Some(session(3)));
        assert!(registry.unregister(R, b"p", session(3)));
        assert_eq!(registry.pick(R, b"p"), Some(session(4)));
        assert!(registry.unregister(R, b"p", session(4)));
        assert_eq!(registry.pick(R, b"p"), Some(session(2)));
        assert_eq!(registry.pick(R, b"p"), Some(session(2)));
    }

    #[test]
    fn pick_finds_nothing_for_an_unknown_procedure_or_realm() {
        let mut registry = Registry::new();
        registry.register(R, b"p", session(1), None);
        assert_eq!(registry.pick(R, b"q"), None);
        assert_eq!(registry.pick(RealmId(1), b"p"), None);
        assert_eq!(registry.pick(RealmId(500), b"p"), None);
    }

    #[test]
    fn realms_are_isolated() {
        let mut registry = Registry::new();
        registry.register(RealmId(0), b"p", session(1), None);
        registry.register(RealmId(2), b"p", session(2), None);
        assert_eq!(registry.pick(RealmId(0), b"p"), Some(session(1)));
        assert_eq!(registry.pick(RealmId(2), b"p"), Some(session(2)));
        assert!(!registry.unregister(RealmId(0), b"p", session(2)));
    }

    #[test]
    fn removing_a_provider_removes_all_its_registrations() {
        let mut registry = Registry::new();
        registry.register(R, b"p", session(1), at(10));
        registry.register(R, b"q", session(1), None);
        registry.register(RealmId(1), b"p", session(1), at(10));
        registry.register(R, b"p", session(2), at(10));
        let mut out = Vec::new();
        registry.remove_provider(session(1), &mut out);
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|r| r.provider == session(1)));
        assert_eq!(registry.count_of(session(1)), 0);
        assert_eq!(registry.len(), 1);
        assert_eq!(registry.pick(R, b"q"), None);
        registry.prune(Time::from_millis(10), &mut out);
        assert_eq!(out.len(), 4);
        assert!(registry.is_empty());
        assert_eq!(registry.procedure_count(), 0);
    }

    #[test]
    fn unregistering_an_unknown_registration_is_a_no_op() {
        let mut registry = Registry::new();
        assert!(!registry.unregister(R, b"p", session(1)));
        registry.register(R, b"p", session(1), None);
        assert!(!registry.unregister(R, b"p", session(2)));
        assert!(!registry.unregister(R, b"q", session(1)));
        assert!(registry.unregister(R, b"p", session(1)));
        assert!(!registry.unregister(R, b"p", session(1)));
        assert_eq!(registry.procedure_count(), 0);
    }
}
