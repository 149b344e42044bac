//! Registrations (PROTOCOL.md 5.4): REGISTER_PROCEDURE and UNREGISTER_PROCEDURE, their
//! replication to every shard, and the periodic removal of those that expired.

use std::time::Duration;

use crate::ids::{RealmId, SessionKey, SessionRef};
use crate::names::is_valid_topic;
use crate::registry::Registered;
use crate::router::{ErrorCode, ShardMsg};
use crate::wire::{FrameType, Register};

use super::{Event, Shard, Timer};

impl Shard {
    pub(super) fn on_register(&mut self, key: SessionKey, r: Register<'_>) {
        let me = self.id();
        let limits = &self.config.limits;
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        let answers = FrameType::Register;
        if !is_valid_topic(r.procedure) {
            let code = ErrorCode::InvalidProcedure;
            self.send_error(key, code, answers, None, Some(r.procedure));
            return;
        }
        let known = s.procedures.iter().any(|p| **p == *r.procedure);
        if !known && s.procedures.len() >= limits.max_registrations {
            let code = ErrorCode::TooManyRegistrations;
            self.send_error(key, code, answers, None, Some(r.procedure));
            return;
        }
        let ttl = match r.ttl_s {
            Some(secs) if secs > 0 => Duration::from_secs(secs).min(limits.service_ttl),
            _ => limits.service_ttl,
        };
        let realm = s.realm;
        let this = SessionRef { shard: me, key };
        let expires = Some(self.now + ttl);
        if self.registry.register(realm, r.procedure, this, expires) == Registered::New {
            s.procedures.push(r.procedure.into());
            s.provider = true;
            let msg = ShardMsg::Provider {
                realm,
                procedure: r.procedure.into(),
                session: key,
                add: true,
            };
            self.replicate(key, msg);
            self.mesh_procedure(realm, r.procedure);
        }
    }

    pub(super) fn on_unregister(&mut self, key: SessionKey, procedure: &[u8]) {
        let me = self.id();
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        if !is_valid_topic(procedure) {
            let code = ErrorCode::InvalidProcedure;
            self.send_error(key, code, FrameType::Unregister, None, Some(procedure));
            return;
        }
        let realm = s.realm;
        let this = SessionRef { shard: me, key };
        if !self.registry.unregister(realm, procedure, this) {
            return;
        }
        if let Some(i) = s.procedures.iter().position(|p| **p == *procedure) {
            s.procedures.swap_remove(i);
        }
        let msg = ShardMsg::Provider {
            realm,
            procedure: procedure.into(),
            session: key,
            add: false,
        };
        self.replicate(key, msg);
        self.mesh_procedure(realm, procedure);
    }

    /// Another shard's session `provider` now provides (or no longer provides) `procedure`.
    pub(super) fn on_remote_provider(
        &mut self,
        realm: RealmId,
        procedure: &[u8],
        provider: SessionRef,
        add: bool,
    ) {
        if add {
            self.registry.register(realm, procedure, provider, None);
        } else {
            self.registry.unregister(realm, procedure, provider);
        }
        self.mesh_procedure(realm, procedure);
    }

    /// The periodic prune: removes what expired and sets the next one.
    pub(super) fn on_prune_timer(&mut self) {
        self.prune();
        let next = self.now + self.config.limits.prune_interval;
        self.wheel.insert(next, Timer::Prune);
    }

    /// Removes the registrations of this shard's sessions that expired.
    fn prune(&mut self) {
        let mut removed = std::mem::take(&mut self.scratch.removed);
        removed.clear();
        self.registry.prune(self.now, &mut removed);
        if !removed.is_empty() {
            self.events.push_back(Event::Pruned {
                removed: removed.len(),
            });
        }
        for r in removed.drain(..) {
            self.counters.registrations_expired += 1;
            if let Some(s) = self.sessions.get_mut(r.provider.key) {
                if let Some(i) = s.procedures.iter().position(|p| *p == r.procedure) {
                    s.procedures.swap_remove(i);
                }
            }
            self.mesh_procedure(r.realm, &r.procedure);
            self.broadcast(ShardMsg::Provider {
                realm: r.realm,
                procedure: r.procedure,
                session: r.provider.key,
                add: false,
            });
        }
        self.scratch.removed = removed;
    }
}
