//! Counters a shard keeps, and the gauges it reads off its tables, for `/metrics`.

use crate::router::CallError;
use crate::wire::{LinkReason, Reason};

/// The metrics PROTOCOL.md section 8 lists, which `/metrics` serves gateway-wide and per shard
/// beside meshgate's own.
pub const PROTOCOL_METRICS: [&str; 15] = [
    "meshgate_clients",
    "meshgate_clients_refused_total",
    "meshgate_handshakes",
    "meshgate_subscriptions",
    "meshgate_registrations",
    "meshgate_registrations_expired_total",
    "meshgate_pending_calls",
    "meshgate_calls_total",
    "meshgate_late_replies_total",
    "meshgate_publishes_total",
    "meshgate_deliveries_total",
    "meshgate_dropped_total",
    "meshgate_peers",
    "meshgate_peers_evicted_total",
    "meshgate_resident_memory_bytes",
];

/// How a call ended, as counted in `meshgate_calls_total{outcome}`.
///
/// Each variant's value is its slot in [`Counters::calls`] and its place in
/// [`CallOutcome::ALL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallOutcome {
    Ok = 0,
    ProcedureNotFound = 1,
    Timeout = 2,
    ProviderGone = 3,
    Overloaded = 4,
    CallerGone = 5,
    InvalidCall = 6,
    DuplicateCallId = 7,
}

impl CallOutcome {
    pub const ALL: [CallOutcome; 8] = [
        CallOutcome::Ok,
        CallOutcome::ProcedureNotFound,
        CallOutcome::Timeout,
        CallOutcome::ProviderGone,
        CallOutcome::Overloaded,
        CallOutcome::CallerGone,
        CallOutcome::InvalidCall,
        CallOutcome::DuplicateCallId,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CallOutcome::Ok => "ok",
            CallOutcome::ProcedureNotFound => "procedure_not_found",
            CallOutcome::Timeout => "timeout",
            CallOutcome::ProviderGone => "provider_gone",
            CallOutcome::Overloaded => "overloaded",
            CallOutcome::CallerGone => "caller_gone",
            CallOutcome::InvalidCall => "invalid_call",
            CallOutcome::DuplicateCallId => "duplicate_call_id",
        }
    }
}

impl From<CallError> for CallOutcome {
    fn from(e: CallError) -> Self {
        match e {
            CallError::ProcedureNotFound => CallOutcome::ProcedureNotFound,
            CallError::Timeout => CallOutcome::Timeout,
            CallError::ProviderGone => CallOutcome::ProviderGone,
            CallError::Overloaded => CallOutcome::Overloaded,
            CallError::InvalidCall => CallOutcome::InvalidCall,
            CallError::DuplicateCallId => CallOutcome::DuplicateCallId,
        }
    }
}

/// Why a message was not delivered, as counted in `meshgate_dropped_total{reason}`.
///
/// Each variant's value is its slot in [`Counters::dropped`] and its place in
/// [`DropReason::ALL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The subscriber's output was over `--max-output`.
    SlowConsumer = 0,
    /// The link to another shard was backed up.
    ShardBacklog = 1,
    /// A datagram for a connection of another shard found that shard's inbox full
    /// (`--max-inbox`).
    InboxFull = 2,
    /// An Initial waiting for a later turn's accept budget found the queue full.
    InitialBacklog = 3,
    /// An Initial in a datagram under 1,200 bytes (RFC 9000 14.1).
    ShortInitial = 4,
    /// A PUBLISH from a peer matched no session (interest changed on the way).
    NoInterest = 5,
    /// A PUBLISH for a peer whose link was over `--max-peer-output`.
    PeerSlow = 6,
}

impl DropReason {
    pub const ALL: [DropReason; 7] = [
        DropReason::SlowConsumer,
        DropReason::ShardBacklog,
        DropReason::InboxFull,
        DropReason::InitialBacklog,
        DropReason::ShortInitial,
        DropReason::NoInterest,
        DropReason::PeerSlow,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::SlowConsumer => "slow_consumer",
            DropReason::ShardBacklog => "shard_backlog",
            DropReason::InboxFull => "inbox_full",
            DropReason::InitialBacklog => "initial_backlog",
            DropReason::ShortInitial => "short_initial",
            DropReason::NoInterest => "no_interest",
            DropReason::PeerSlow => "peer_slow",
        }
    }
}

/// How a peer link ended, or that it came up, as counted in
/// `meshgate_peer_links_total{result}` (PROTOCOL.md 9.11).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkResult {
    Up = 0,
    Unauthorized = 1,
    DuplicateLink = 2,
    NameConflict = 3,
    ConfigMismatch = 4,
    Replaced = 5,
    Evicted = 6,
    DialFailed = 7,
    ConnectTimeout = 8,
    Lost = 9,
}

impl LinkResult {
    pub const ALL: [LinkResult; 10] = [
        LinkResult::Up,
        LinkResult::Unauthorized,
        LinkResult::DuplicateLink,
        LinkResult::NameConflict,
        LinkResult::ConfigMismatch,
        LinkResult::Replaced,
        LinkResult::Evicted,
        LinkResult::DialFailed,
        LinkResult::ConnectTimeout,
        LinkResult::Lost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LinkResult::Up => "up",
            LinkResult::Unauthorized => "unauthorized",
            LinkResult::DuplicateLink => "duplicate_link",
            LinkResult::NameConflict => "name_conflict",
            LinkResult::ConfigMismatch => "config_mismatch",
            LinkResult::Replaced => "replaced",
            LinkResult::Evicted => "evicted",
            LinkResult::DialFailed => "dial_failed",
            LinkResult::ConnectTimeout => "connect_timeout",
            LinkResult::Lost => "lost",
        }
    }

    /// The result a link that never came up counts for the reason it was closed with, if
    /// that reason is a result label.
    pub fn of_reason(reason: LinkReason) -> Option<LinkResult> {
        Some(match reason {
            LinkReason::Session(Reason::Unauthorized) => LinkResult::Unauthorized,
            LinkReason::Session(Reason::Replaced) => LinkResult::Replaced,
            LinkReason::Session(Reason::ConnectTimeout) => LinkResult::ConnectTimeout,
            LinkReason::DuplicateLink => LinkResult::DuplicateLink,
            LinkReason::NameConflict => LinkResult::NameConflict,
            LinkReason::ConfigMismatch => LinkResult::ConfigMismatch,
            LinkReason::PeerEvicted => LinkResult::Evicted,
            LinkReason::Session(_) => return None,
        })
    }
}

/// Monotonic counters of one shard.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Indexed like [`Reason::ALL`] (see [`reason_index`]).
    pub clients_refused: [u64; Reason::ALL.len()],
    /// Indexed like [`Reason::ALL`] (see [`reason_index`]): sessions ended, by reason.
    pub sessions_closed: [u64; Reason::ALL.len()],
    pub registrations_expired: u64,
    /// Indexed like [`CallOutcome::ALL`].
    pub calls: [u64; CallOutcome::ALL.len()],
    pub late_replies: u64,
    pub publishes: u64,
    pub deliveries: u64,
    /// Indexed like [`DropReason::ALL`].
    pub dropped: [u64; DropReason::ALL.len()],
    pub peers_evicted: u64,
    /// Indexed like [`LinkResult::ALL`].
    pub peer_links: [u64; LinkResult::ALL.len()],
    /// Snapshots asked for after a digest mismatch, all peers.
    pub peer_resyncs: u64,
    /// Messages received from other shards.
    pub shard_messages_in: u64,
    /// Messages queued to other shards.
    pub shard_messages_out: u64,
}

impl Counters {
    pub fn refused(&mut self, reason: Reason) {
        self.clients_refused[reason_index(reason)] += 1;
    }

    pub fn closed(&mut self, reason: Reason) {
        self.sessions_closed[reason_index(reason)] += 1;
    }

    pub fn call(&mut self, outcome: CallOutcome) {
        self.calls[outcome as usize] += 1;
    }

    pub fn drop(&mut self, reason: DropReason) {
        self.dropped[reason as usize] += 1;
    }

    pub fn link_result(&mut self, result: LinkResult) {
        self.peer_links[result as usize] += 1;
    }

    pub fn link_results_of(&self, result: LinkResult) -> u64 {
        self.peer_links[result as usize]
    }

    pub fn calls_of(&self, outcome: CallOutcome) -> u64 {
        self.calls[outcome as usize]
    }

    pub fn refused_of(&self, reason: Reason) -> u64 {
        self.clients_refused[reason_index(reason)]
    }

    pub fn dropped_of(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize]
    }
}

/// The slot of `reason` in the counters indexed like [`Reason::ALL`]. Written out, so that a
/// new reason does not compile until it has a slot of its own.
pub fn reason_index(reason: Reason) -> usize {
    match reason {
        Reason::Normal => 0,
        Reason::ProtocolError => 1,
        Reason::FrameTooLarge => 2,
        Reason::RealmMismatch => 3,
        Reason::Unauthorized => 4,
        Reason::MaxClientsReached => 5,
        Reason::Replaced => 6,
        Reason::SlowConsumer => 7,
        Reason::ConnectTimeout => 8,
        Reason::ShuttingDown => 9,
    }
}

/// A shard's gauges and counters at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metrics {
    /// Sessions past CONNECT homed on this shard.
    pub clients: u64,
    /// Sessions homed here still waiting for CONNECT or its admission.
    pub awaiting_connect: u64,
    /// Nodes in this shard's part of the client directory.
    pub directory: u64,
    /// Session-pattern pairs of this shard's sessions.
    pub subscriptions: u64,
    /// Session-procedure pairs of this shard's sessions.
    pub registrations: u64,
    /// Calls in flight made by this shard's sessions.
    pub pending_calls: u64,
    /// Bytes queued to this shard's sessions.
    pub output_bytes: u64,
    /// Timers in the wheel.
    pub timers: u64,
    pub counters: Counters,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counted_variant_has_the_slot_of_its_place_in_all() {
        for (i, outcome) in CallOutcome::ALL.into_iter().enumerate() {
            assert_eq!(outcome as usize, i, "{outcome:?}");
        }
        for (i, reason) in DropReason::ALL.into_iter().enumerate() {
            assert_eq!(reason as usize, i, "{reason:?}");
        }
        for (i, result) in LinkResult::ALL.into_iter().enumerate() {
            assert_eq!(result as usize, i, "{result:?}");
        }
        for (i, reason) in Reason::ALL.into_iter().enumerate() {
            assert_eq!(reason_index(reason), i, "{reason:?}");
        }
    }

    #[test]
    fn each_call_outcome_is_counted_in_its_own_slot() {
        let mut counters = Counters::default();
        for (i, outcome) in CallOutcome::ALL.into_iter().enumerate() {
            for _ in 0..=i {
                counters.call(outcome);
            }
        }
        for (i, outcome) in CallOutcome::ALL.into_iter().enumerate() {
            assert_eq!(counters.calls_of(outcome), i as u64 + 1, "{outcome:?}");
        }
    }
}
