//! Calls (PROTOCOL.md 5.3, 5.4, 9.8). A pending call lives on the caller's shard, which holds
//! its deadline; the provider sees a [`CallToken`] naming that shard, so that its REPLY crosses
//! at most once back. Every CALL gets exactly one REPLY unless the caller is gone.
//!
//! In a mesh the caller may be a peer gateway (a CALL received on a link: its pending call lives
//! on the link's shard) and the provider may be one (a CALL forwarded on a link).

use std::time::Duration;

use crate::genslab::SlabKey;
use crate::ids::{LinkKey, LinkRef, RealmId, SessionKey, SessionRef};
use crate::mesh::choice::{Attempt, Candidate, Choice, Local};
use crate::mesh::wrr::SmoothWrr;
use crate::metrics::CallOutcome;
use crate::names::is_valid_topic;
use crate::pending::{CallKey, Caller, NewCall, OwnedCallId, Provider, Relay};
use crate::router::{CallError, CallToken, CancelReason, OwnedOutcome, ShardMsg};
use crate::wire::{
    Call, CallIdRef, Cancel, LinkCall, LinkCancel, LinkReply, Message, Outcome, PeerMessage, Raw,
    Reason, Reply,
};

use super::outbox::Shedding;
use super::session::State;
use super::{Shard, Timer};

/// A CALL as the gateway is about to hand it to a provider or a peer.
struct Outgoing<'a> {
    realm: RealmId,
    procedure: &'a [u8],
    args: Raw<'a>,
    timeout: Duration,
}

impl Shard {
    // ---------------------------------------------------------------------------------------
    // On the caller's shard
    // ---------------------------------------------------------------------------------------

    /// CALL: refused at once, or made pending and sent to a provider: a local one picked
    /// round-robin, else (in a mesh) a peer's.
    pub(super) fn on_call(&mut self, key: SessionKey, c: Call<'_>) {
        let Some(s) = self.sessions.get(key) else {
            return;
        };
        let realm = s.realm;
        let caller = Caller::Session(key);
        let Some(call_id) = c
            .call_id
            .and_then(OwnedCallId::from_wire)
            .filter(|_| is_valid_topic(c.procedure))
        else {
            self.fail(key, c.call_id, CallError::InvalidCall);
            return;
        };
        let Ok(new_call) = self.pending.check(caller, call_id) else {
            self.fail(key, c.call_id, CallError::DuplicateCallId);
            return;
        };
        if self.pending.len() >= self.config.limits.max_pending_calls {
            self.fail(key, c.call_id, CallError::Overloaded);
            return;
        }
        let limits = &self.config.limits;
        let timeout = match c.timeout_ms {
            Some(ms) if ms > 0 => Duration::from_millis(ms).min(limits.max_call_timeout),
            _ => limits.call_timeout,
        };
        let call = Outgoing {
            realm,
            procedure: c.procedure,
            args: c.args,
            timeout,
        };
        let (local, provider) = self.pick_local(realm, c.procedure);
        if local == Local::Ready {
            if let Some(provider) = provider {
                self.call_provider(new_call, provider, &call);
            }
            return;
        }
        if self.mesh_on() {
            self.call_across(key, new_call, local, &call, c.call_id);
            return;
        }
        let error = match local {
            Local::OverBound => CallError::Overloaded,
            _ => CallError::ProcedureNotFound,
        };
        self.fail(key, c.call_id, error);
    }

    /// The local provider for a call, if any, and whether it can take it.
    fn pick_local(&mut self, realm: RealmId, procedure: &[u8]) -> (Local, Option<SessionRef>) {
        let Some(provider) = self.registry.pick(realm, procedure) else {
            return (Local::None, None);
        };
        let busy = if provider.shard == self.id() {
            // A provider picked from the registry is active: its registrations go when it
            // ends. Whatever the refusal, the call fails as `overloaded`.
            self.provider_refusal(provider.key).is_some()
        } else {
            self.outbox.is_backlogged(provider.shard)
        };
        if busy {
            (Local::OverBound, Some(provider))
        } else {
            (Local::Ready, Some(provider))
        }
    }

    /// Makes the call pending and sends it to a provider session, here or on its shard.
    fn call_provider(&mut self, new_call: NewCall, provider: SessionRef, call: &Outgoing<'_>) {
        let pending = self.make_pending(new_call, Provider::Session(provider), call);
        let token = self.token(pending);
        let mut frame = std::mem::take(&mut self.scratch.frame);
        frame.clear();
        let forwarded = Call {
            procedure: call.procedure,
            args: call.args,
            call_id: Some(CallIdRef::Uint(token.0)),
            timeout_ms: Some(call.timeout.as_millis() as u64),
        };
        Message::Call(forwarded).encode(&mut frame);
        if provider.shard == self.id() {
            self.queue_output(provider.key, &frame);
        } else {
            let msg = ShardMsg::Call {
                token,
                provider: provider.key,
                frame: frame.as_slice().into(),
            };
            let queued = self.queue_to(provider.shard, msg, Shedding::IfBacklogged);
            debug_assert!(queued, "the link was not backed up an instant ago");
        }
        self.scratch.frame = frame;
    }

    /// A pending call with its deadline.
    fn make_pending(
        &mut self,
        new_call: NewCall,
        provider: Provider,
        call: &Outgoing<'_>,
    ) -> CallKey {
        let key = self.pending.vacant_key();
        let deadline = self.wheel.insert(self.now + call.timeout, Timer::Call(key));
        self.pending.insert(new_call, provider, deadline)
    }

    /// No local provider can take the call: the peers that advertise the procedure, weighted
    /// by their counts (9.8).
    fn call_across(
        &mut self,
        key: SessionKey,
        new_call: NewCall,
        local: Local,
        call: &Outgoing<'_>,
        wire_id: Option<CallIdRef<'_>>,
    ) {
        let mut attempt = Attempt::default();
        let choice = match self.remote_providers(call.realm, call.procedure) {
            Some((candidates, wrr)) => attempt.first(local, &candidates, wrr),
            None => attempt.first(local, &[], &mut SmoothWrr::default()),
        };
        let link = match choice {
            Choice::Link(link) => link,
            Choice::Local | Choice::Fail { overloaded: false } => {
                self.fail(key, wire_id, CallError::ProcedureNotFound);
                return;
            }
            Choice::Fail { overloaded: true } => {
                self.fail(key, wire_id, CallError::Overloaded);
                return;
            }
        };
        let pending = self.make_pending(new_call, Provider::Link(link), call);
        let relay = Relay {
            procedure: call.procedure.into(),
            args: call.args.0.into(),
            deadline_at: self.now + call.timeout,
            attempt,
        };
        self.pending.set_relay(pending, Box::new(relay));
        self.send_link_call(pending, link);
    }

    /// The links that may take a call of `procedure` in `realm`, and the weighted round-robin
    /// among them; `None` when no peer advertises it.
    fn remote_providers(
        &mut self,
        realm: RealmId,
        procedure: &[u8],
    ) -> Option<(Vec<Candidate<LinkRef>>, &mut SmoothWrr)> {
        let m = self.mesh.as_mut()?;
        let entry = m.procs.get_mut(usize::from(realm.0))?.get_mut(procedure)?;
        let candidates = entry
            .links
            .iter()
            .filter_map(|&(link, providers)| {
                let view = m.up.get(&link)?;
                view.realms.contains(&realm).then_some(Candidate {
                    link,
                    providers,
                    over_bound: view.over,
                })
            })
            .collect();
        Some((candidates, &mut entry.wrr))
    }

    /// Sends pending call `call` (forwarded across the mesh) on `link`, with the caller's
    /// remaining time.
    fn send_link_call(&mut self, call: CallKey, link: LinkRef) {
        let token = self.token(call);
        let Some(p) = self.pending.get(call) else {
            return;
        };
        let (Caller::Session(caller), Some(relay)) = (p.caller, p.relay.as_ref()) else {
            return;
        };
        let Some(s) = self.sessions.get(caller) else {
            return;
        };
        let remaining = relay.deadline_at.saturating_since(self.now).as_millis() as u64;
        let realm = &self.config.realms[usize::from(s.realm.0)].name;
        let mut frame = std::mem::take(&mut self.scratch.frame);
        frame.clear();
        let msg = PeerMessage::Call(LinkCall {
            realm,
            procedure: &relay.procedure,
            args: Raw(&relay.args),
            call_id: token.0,
            timeout_ms: remaining.max(1),
            caller: s.node,
        });
        msg.encode(&mut frame);
        if link.shard == self.id() {
            self.on_link_call_out(link.key, token, &frame);
        } else {
            let msg = ShardMsg::LinkCall {
                link: link.key,
                token,
                frame: frame.as_slice().into(),
            };
            self.send(link.shard, msg);
        }
        self.scratch.frame = frame;
    }

    /// The provider's shard could not deliver call `token`.
    pub(super) fn on_call_failed(&mut self, token: CallToken, error: CallError) {
        if let Some(call) = self.pending.find(token.index(), token.generation()) {
            self.fail_call(call, error);
        }
    }

    /// Another shard's provider answered call `token`.
    pub(super) fn on_forwarded_reply(
        &mut self,
        token: CallToken,
        provider: SessionRef,
        outcome: &OwnedOutcome,
    ) {
        self.complete_call(token, Provider::Session(provider), outcome.as_wire());
    }

    /// A peer answered call `token`, forwarded on `link`. `procedure_not_found` and
    /// `overloaded` mean no provider there took it: the next peer is tried.
    pub(super) fn on_link_reply_back(
        &mut self,
        token: CallToken,
        link: LinkRef,
        outcome: &OwnedOutcome,
    ) {
        let provider = Provider::Link(link);
        let call = self
            .pending
            .find(token.index(), token.generation())
            .filter(|&k| self.pending.get(k).is_some_and(|c| c.provider == provider));
        let refused = match outcome {
            OwnedOutcome::Error { code, .. } if **code == *b"overloaded" => Some(true),
            OwnedOutcome::Error { code, .. } if **code == *b"procedure_not_found" => Some(false),
            _ => None,
        };
        if let (Some(call), Some(overloaded)) = (call, refused) {
            if self.pending.get(call).is_some_and(|c| c.relay.is_some()) {
                self.try_next_peer(call, overloaded);
                return;
            }
        }
        self.complete_call(token, provider, outcome.as_wire());
    }

    /// The peer tried last took no provider: the next candidate, or the caller's error.
    fn try_next_peer(&mut self, call: CallKey, overloaded: bool) {
        let Some((realm, procedure)) = self.pending.get(call).and_then(|c| {
            let Caller::Session(caller) = c.caller else {
                return None;
            };
            let realm = self.sessions.get(caller)?.realm;
            Some((realm, c.relay.as_ref()?.procedure.clone()))
        }) else {
            self.fail_call(call, CallError::ProviderGone);
            return;
        };
        let mut relay = self.pending.take_relay(call).expect("checked above");
        let choice = match self.remote_providers(realm, &procedure) {
            Some((candidates, wrr)) => relay.attempt.refused(overloaded, &candidates, wrr),
            None => relay
                .attempt
                .refused(overloaded, &[], &mut SmoothWrr::default()),
        };
        self.pending.set_relay(call, relay);
        match choice {
            Choice::Link(link) => {
                self.pending.set_provider(call, Provider::Link(link));
                self.send_link_call(call, link);
            }
            Choice::Local | Choice::Fail { overloaded: false } => {
                self.fail_call(call, CallError::ProcedureNotFound);
            }
            Choice::Fail { overloaded: true } => self.fail_call(call, CallError::Overloaded),
        }
    }

    /// A call's deadline passed: the caller gets `timeout`, the provider CANCEL.
    pub(super) fn on_call_timeout(&mut self, call: CallKey) {
        if let Some(c) = self.pending.remove(call) {
            self.answer_error(c.caller, &c.call_id, CallError::Timeout);
            let token = self.token(call);
            self.cancel_provider(c.provider, token, CancelReason::Timeout);
        }
    }

    /// A caller ended: its calls in flight are dropped, and each provider gets CANCEL.
    pub(super) fn caller_gone(&mut self, caller: SessionKey) {
        let mut calls = std::mem::take(&mut self.scratch.calls);
        calls.clear();
        self.pending.of_caller(Caller::Session(caller), &mut calls);
        for &call in &calls {
            if let Some(c) = self.pending.remove(call) {
                self.wheel.cancel(c.deadline);
                self.counters.call(CallOutcome::CallerGone);
                let token = self.token(call);
                self.cancel_provider(c.provider, token, CancelReason::CallerGone);
            }
        }
        self.scratch.calls = calls;
    }

    /// A provider ended (here or elsewhere): its registrations go, and the calls this shard's
    /// callers sent it fail with `provider_gone`.
    pub(super) fn provider_gone(&mut self, provider: SessionRef) {
        let mut removed = std::mem::take(&mut self.scratch.removed);
        removed.clear();
        self.registry.remove_provider(provider, &mut removed);
        for r in &removed {
            self.mesh_procedure(r.realm, &r.procedure);
        }
        removed.clear();
        self.scratch.removed = removed;
        let mut calls = std::mem::take(&mut self.scratch.calls);
        calls.clear();
        self.pending
            .of_provider(Provider::Session(provider), &mut calls);
        for &call in &calls {
            self.fail_call(call, CallError::ProviderGone);
        }
        self.scratch.calls = calls;
    }

    /// The provider answered call `token`: the caller gets the REPLY, with its own `call_id`.
    /// A REPLY for a call no longer pending, or from another provider, is late.
    fn complete_call(&mut self, token: CallToken, provider: Provider, outcome: Outcome<'_>) {
        let call = self.pending.find(token.index(), token.generation());
        let Some(call) =
            call.filter(|&k| self.pending.get(k).is_some_and(|c| c.provider == provider))
        else {
            self.counters.late_replies += 1;
            return;
        };
        let Some(c) = self.pending.remove(call) else {
            return;
        };
        self.wheel.cancel(c.deadline);
        match c.caller {
            Caller::Session(caller) => {
                self.counters.call(CallOutcome::Ok);
                let reply = Reply {
                    call_id: Some(c.call_id.as_wire()),
                    outcome,
                };
                self.write(caller, &Message::Reply(reply));
            }
            Caller::Link(link) => self.link_reply(link, &c.call_id, outcome),
        }
    }

    /// The gateway fails a pending call.
    pub(super) fn fail_call(&mut self, call: CallKey, error: CallError) {
        let Some(c) = self.pending.remove(call) else {
            return;
        };
        self.wheel.cancel(c.deadline);
        self.answer_error(c.caller, &c.call_id, error);
    }

    /// REPLY with the gateway's error, to a session (counted) or to a peer.
    fn answer_error(&mut self, caller: Caller, call_id: &OwnedCallId, error: CallError) {
        match caller {
            Caller::Session(key) => self.fail(key, Some(call_id.as_wire()), error),
            Caller::Link(link) => {
                let outcome = Outcome::Error {
                    code: error.code().as_bytes(),
                    message: Some(error.message().as_bytes()),
                };
                self.link_reply(link, call_id, outcome);
            }
        }
    }

    /// Counts a call the gateway failed and answers its caller with the error.
    fn fail(&mut self, caller: SessionKey, call_id: Option<CallIdRef<'_>>, error: CallError) {
        self.counters.call(error.into());
        self.reply_error(caller, call_id, error);
    }

    /// The `call_id` the provider sees for this shard's call.
    pub(super) fn token(&self, call: CallKey) -> CallToken {
        CallToken::new(self.id(), SlabKey::index(call), SlabKey::generation(call))
    }

    /// Tells a provider, here, on its shard or across a link, to stop working on a call.
    pub(super) fn cancel_provider(
        &mut self,
        provider: Provider,
        token: CallToken,
        reason: CancelReason,
    ) {
        match provider {
            Provider::Session(p) if p.shard == self.id() => {
                self.cancel_at_provider(p.key, token, reason);
            }
            Provider::Session(p) => {
                let cancel = ShardMsg::Cancel {
                    token,
                    provider: p.key,
                    reason,
                };
                self.send(p.shard, cancel);
            }
            Provider::Link(l) => {
                let cancel = ShardMsg::LinkCancel {
                    link: l.key,
                    token,
                    reason,
                };
                self.send(l.shard, cancel);
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // On the provider's shard
    // ---------------------------------------------------------------------------------------

    /// Why this shard's session `provider` cannot take a CALL now, if it cannot: it must be
    /// active, with its output under its bound (PROTOCOL.md 5.5).
    fn provider_refusal(&self, provider: SessionKey) -> Option<CallError> {
        match self.sessions.get(provider) {
            Some(p) if p.state == State::Active => {
                (p.out.len() >= self.config.limits.max_output).then_some(CallError::Overloaded)
            }
            _ => Some(CallError::ProviderGone),
        }
    }

    /// A CALL from another shard's session for this shard's `provider`.
    pub(super) fn on_forwarded_call(
        &mut self,
        token: CallToken,
        provider: SessionKey,
        frame: &[u8],
    ) {
        match self.provider_refusal(provider) {
            None => self.queue_output(provider, frame),
            Some(error) => self.send(token.shard(), ShardMsg::CallFailed { token, error }),
        }
    }

    /// REPLY from a provider: to the caller's shard named by its `call_id`.
    pub(super) fn on_reply(&mut self, key: SessionKey, r: Reply<'_>) {
        let me = self.id();
        let Some(CallIdRef::Uint(raw)) = r.call_id else {
            self.counters.late_replies += 1;
            return;
        };
        let token = CallToken(raw);
        let caller_shard = token.shard();
        if caller_shard.0 >= self.config.shards {
            self.counters.late_replies += 1;
            return;
        }
        let provider = SessionRef { shard: me, key };
        if caller_shard == me {
            self.complete_call(token, Provider::Session(provider), r.outcome);
            return;
        }
        let reply = ShardMsg::Reply {
            token,
            provider: key,
            outcome: OwnedOutcome::from_wire(r.outcome),
        };
        self.send(caller_shard, reply);
    }

    /// Tells this shard's session `provider` to stop working on call `token`.
    pub(super) fn cancel_at_provider(
        &mut self,
        provider: SessionKey,
        token: CallToken,
        reason: CancelReason,
    ) {
        if self
            .sessions
            .get(provider)
            .is_some_and(|s| s.state == State::Active)
        {
            let cancel = Cancel {
                call_id: CallIdRef::Uint(token.0),
                reason: reason.as_str().as_bytes(),
            };
            self.write(provider, &Message::Cancel(cancel));
        }
    }

    // ---------------------------------------------------------------------------------------
    // On a link's shard
    // ---------------------------------------------------------------------------------------

    /// A CALL forwarded by this gateway, for one of this shard's links.
    pub(super) fn on_link_call_out(&mut self, link: LinkKey, token: CallToken, frame: &[u8]) {
        let up = self
            .link(link)
            .is_some_and(|l| l.state == super::link::LinkState::Up);
        if !up {
            // Queued on a link that is gone: `provider_gone`, even though it never left.
            self.link_call_failed(token);
            return;
        }
        if let Some(l) = self.link_mut(link) {
            l.out_calls.insert(token.0);
        }
        self.link_write_encoded(link, crate::wire::FrameType::Call, frame);
    }

    /// CANCEL for a call this gateway forwarded on one of this shard's links.
    pub(super) fn on_link_cancel_out(
        &mut self,
        link: LinkKey,
        token: CallToken,
        reason: CancelReason,
    ) {
        let in_flight = self
            .link_mut(link)
            .is_some_and(|l| l.out_calls.remove(&token.0));
        if in_flight {
            let cancel = PeerMessage::Cancel(LinkCancel {
                call_id: token.0,
                reason: reason.as_str().as_bytes(),
            });
            self.link_write(link, &cancel);
        }
    }

    /// A CALL from a peer: only this gateway's own providers may take it (9.8).
    pub(super) fn on_link_call(&mut self, key: LinkKey, c: LinkCall<'_>) {
        let Some(realm) = self.shared_realm(key, c.realm) else {
            return;
        };
        let caller = Caller::Link(key);
        let Ok(new_call) = self.pending.check(caller, OwnedCallId::Uint(c.call_id)) else {
            let message = "a CALL reused a call_id still in flight";
            self.close_link(key, Reason::ProtocolError.into(), message);
            return;
        };
        if !is_valid_topic(c.procedure) {
            self.answer_error(caller, new_call.call_id(), CallError::InvalidCall);
            return;
        }
        if self.pending.len() >= self.config.limits.max_pending_calls {
            self.answer_error(caller, new_call.call_id(), CallError::Overloaded);
            return;
        }
        let (local, provider) = self.pick_local(realm, c.procedure);
        match (local, provider) {
            (Local::Ready, Some(provider)) => {
                let timeout =
                    Duration::from_millis(c.timeout_ms).min(self.config.limits.max_call_timeout);
                let call = Outgoing {
                    realm,
                    procedure: c.procedure,
                    args: c.args,
                    timeout,
                };
                self.call_provider(new_call, provider, &call);
            }
            (Local::OverBound, _) => {
                self.answer_error(caller, new_call.call_id(), CallError::Overloaded)
            }
            _ => self.answer_error(caller, new_call.call_id(), CallError::ProcedureNotFound),
        }
    }

    /// REPLY from a peer to a call this gateway forwarded: to the caller's shard.
    pub(super) fn on_link_reply(&mut self, key: LinkKey, r: LinkReply<'_>) {
        let in_flight = self
            .link_mut(key)
            .is_some_and(|l| l.out_calls.remove(&r.call_id));
        let token = CallToken(r.call_id);
        if !in_flight || token.shard().0 >= self.config.shards {
            self.counters.late_replies += 1;
            return;
        }
        let msg = ShardMsg::LinkReply {
            token,
            link: key,
            outcome: OwnedOutcome::from_wire(r.outcome),
        };
        self.send(token.shard(), msg);
    }

    /// CANCEL from a peer for a call it sent here: dropped, and its provider told.
    pub(super) fn on_link_cancel(&mut self, key: LinkKey, call_id: u64, reason: &[u8]) {
        let Some(call) = self
            .pending
            .by_id(Caller::Link(key), &OwnedCallId::Uint(call_id))
        else {
            return;
        };
        let reason = if reason == b"timeout" {
            CancelReason::Timeout
        } else {
            CancelReason::CallerGone
        };
        if let Some(c) = self.pending.remove(call) {
            self.wheel.cancel(c.deadline);
            let token = self.token(call);
            self.cancel_provider(c.provider, token, reason);
        }
    }

    /// REPLY on a link, for a call the peer sent.
    fn link_reply(&mut self, key: LinkKey, call_id: &OwnedCallId, outcome: Outcome<'_>) {
        let OwnedCallId::Uint(id) = *call_id else {
            return;
        };
        let reply = PeerMessage::Reply(LinkReply {
            call_id: id,
            outcome,
        });
        self.link_write(key, &reply);
    }
}
