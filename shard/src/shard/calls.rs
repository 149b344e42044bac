//! Calls (PROTOCOL.md 5.3, 5.4). A pending call lives on the caller's shard, which holds its
//! deadline; the provider sees a [`CallToken`] naming that shard, so that its REPLY crosses
//! at most once back. Every CALL gets exactly one REPLY unless the caller is gone.

use std::time::Duration;

use crate::genslab::SlabKey;
use crate::ids::{SessionKey, SessionRef};
use crate::metrics::CallOutcome;
use crate::names::is_valid_topic;
use crate::pending::{CallKey, OwnedCallId};
use crate::router::{CallError, CallToken, CancelReason, OwnedOutcome, ShardMsg};
use crate::wire::{Call, CallIdRef, Cancel, Message, Outcome, Reply};

use super::outbox::Shedding;
use super::session::State;
use super::{Shard, Timer};

impl Shard {
    // ---------------------------------------------------------------------------------------
    // On the caller's shard
    // ---------------------------------------------------------------------------------------

    /// CALL: refused at once, or made pending and forwarded to a provider picked round-robin.
    pub(super) fn on_call(&mut self, key: SessionKey, c: Call<'_>) {
        let me = self.id();
        let Some(s) = self.sessions.get(key) else {
            return;
        };
        let realm = s.realm;
        let Some(call_id) = c
            .call_id
            .and_then(OwnedCallId::from_wire)
            .filter(|_| is_valid_topic(c.procedure))
        else {
            self.fail(key, c.call_id, CallError::InvalidCall);
            return;
        };
        if self.pending.contains_id(key, &call_id) {
            self.fail(key, c.call_id, CallError::DuplicateCallId);
            return;
        }
        if self.pending.len() >= self.config.limits.max_pending_calls {
            self.fail(key, c.call_id, CallError::Overloaded);
            return;
        }
        let Some(provider) = self.registry.pick(realm, c.procedure) else {
            self.fail(key, c.call_id, CallError::ProcedureNotFound);
            return;
        };
        let busy = if provider.shard == me {
            // A provider picked from the registry is active: its registrations go when it
            // ends. Whatever the refusal, the call fails as `overloaded`.
            self.provider_refusal(provider.key).is_some()
        } else {
            self.outbox.is_backlogged(provider.shard)
        };
        if busy {
            self.fail(key, c.call_id, CallError::Overloaded);
            return;
        }
        let limits = &self.config.limits;
        let timeout = match c.timeout_ms {
            Some(ms) if ms > 0 => Duration::from_millis(ms).min(limits.max_call_timeout),
            _ => limits.call_timeout,
        };
        let call = self.pending.vacant_key();
        let deadline = self.wheel.insert(self.now + timeout, Timer::Call(call));
        if self
            .pending
            .insert(key, call_id, provider, deadline)
            .is_err()
        {
            // The duplicate check above ran on the same table an instant ago.
            debug_assert!(false, "duplicate call id after the check");
            self.wheel.cancel(deadline);
            return;
        }
        let token = self.token(call);
        let mut frame = std::mem::take(&mut self.scratch.frame);
        frame.clear();
        let forwarded = Call {
            procedure: c.procedure,
            args: c.args,
            call_id: Some(CallIdRef::Uint(token.0)),
            timeout_ms: Some(timeout.as_millis() as u64),
        };
        Message::Call(forwarded).encode(&mut frame);
        if provider.shard == me {
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
        self.complete_call(token, provider, outcome.as_wire());
    }

    /// A call's deadline passed: the caller gets `timeout`, the provider CANCEL.
    pub(super) fn on_call_timeout(&mut self, call: CallKey) {
        if let Some(c) = self.pending.remove(call) {
            self.fail(c.caller, Some(c.call_id.as_wire()), CallError::Timeout);
            let token = self.token(call);
            self.cancel_provider(c.provider, token, CancelReason::Timeout);
        }
    }

    /// A caller ended: its calls in flight are dropped, and each provider gets CANCEL.
    pub(super) fn caller_gone(&mut self, caller: SessionKey) {
        let mut calls = std::mem::take(&mut self.scratch.calls);
        calls.clear();
        self.pending.of_caller(caller, &mut calls);
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
    /// sessions sent it fail with `provider_gone`.
    pub(super) fn provider_gone(&mut self, provider: SessionRef) {
        let mut removed = std::mem::take(&mut self.scratch.removed);
        removed.clear();
        self.registry.remove_provider(provider, &mut removed);
        removed.clear();
        self.scratch.removed = removed;
        let mut calls = std::mem::take(&mut self.scratch.calls);
        calls.clear();
        self.pending.of_provider(provider, &mut calls);
        for &call in &calls {
            self.fail_call(call, CallError::ProviderGone);
        }
        self.scratch.calls = calls;
    }

    /// The provider answered call `token`: the caller gets the REPLY, with its own `call_id`.
    /// A REPLY for a call no longer pending, or from another session, is late.
    fn complete_call(&mut self, token: CallToken, provider: SessionRef, outcome: Outcome<'_>) {
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
        self.counters.call(CallOutcome::Ok);
        let reply = Reply {
            call_id: Some(c.call_id.as_wire()),
            outcome,
        };
        self.write(c.caller, &Message::Reply(reply));
    }

    /// The gateway fails a pending call.
    fn fail_call(&mut self, call: CallKey, error: CallError) {
        let Some(c) = self.pending.remove(call) else {
            return;
        };
        self.wheel.cancel(c.deadline);
        self.fail(c.caller, Some(c.call_id.as_wire()), error);
    }

    /// Counts a call the gateway failed and answers its caller with the error.
    fn fail(&mut self, caller: SessionKey, call_id: Option<CallIdRef<'_>>, error: CallError) {
        self.counters.call(error.into());
        self.reply_error(caller, call_id, error);
    }

    /// The `call_id` the provider sees for this shard's call.
    fn token(&self, call: CallKey) -> CallToken {
        CallToken::new(self.id(), SlabKey::index(call), SlabKey::generation(call))
    }

    /// Tells a provider, here or on its shard, to stop working on a call.
    fn cancel_provider(&mut self, provider: SessionRef, token: CallToken, reason: CancelReason) {
        if provider.shard == self.id() {
            self.cancel_at_provider(provider.key, token, reason);
        } else {
            let cancel = ShardMsg::Cancel {
                token,
                provider: provider.key,
                reason,
            };
            self.send(provider.shard, cancel);
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
            self.complete_call(token, provider, r.outcome);
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
}
