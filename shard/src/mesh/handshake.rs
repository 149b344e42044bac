//! One peer link's handshake (PROTOCOL.md 9.3 steps 1 to 3 and the admission of step 5), as a
//! state machine: frames and time in, frames to send and an outcome out. The dialer sends
//! PEER_HELLO; the acceptor checks it and answers PEER_HELLO with its proof; the dialer checks
//! that and sends PEER_AUTH with its own proof, and admits the link; the acceptor admits it
//! when the dialer's proof checks out. Either side gives up after 10 s.

use std::time::Duration;

use crate::ids::{NodeId, Time};
use crate::wire::{
    Dial, Entries, LinkReason, PeerAuth, PeerHello, PeerMessage, RealmDigest, Reason, PEER_VERSION,
};

use super::hello::{check_hello, shared_realms, Own, RealmAuth};
use super::links::LinkFacts;
use super::proof::{proof, Role};

/// How long each side waits for the other's next handshake frame.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a gateway says of itself in its PEER_HELLO.
#[derive(Clone, Debug)]
pub struct Identity {
    pub node_id: NodeId,
    pub node_name: Box<[u8]>,
    /// Milliseconds since the Unix epoch at start-up.
    pub incarnation: u64,
    /// `HOST:PORT` peers are told to dial.
    pub advertise: Box<[u8]>,
    pub realms: Vec<RealmAuth>,
    pub max_frame: u64,
    /// The cluster token file's lines; proofs are made with the first.
    pub tokens: Vec<Box<[u8]>>,
}

/// What the link's handshake learned of the peer, once admitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub node_id: NodeId,
    pub node_name: Box<[u8]>,
    pub advertise: Box<[u8]>,
    /// Realms served on both sides with equal digests.
    pub shared: Vec<Box<[u8]>>,
    /// Realms served on both sides with different digests.
    pub unshared: Vec<Box<[u8]>>,
    /// What duplicate resolution compares (9.3 step 5).
    pub facts: LinkFacts,
    /// The dialer's HELLO said the dial came from gossip (9.4); false for links this side dialed.
    pub gossip: bool,
}

/// The outcome of a step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Still shaking hands.
    Pending,
    /// The link is admitted.
    Admitted(Peer),
    /// The link is refused or timed out: close it with this reason (after a DISCONNECT).
    Refused(LinkReason),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for the other side's PEER_HELLO.
    Hello,
    /// The acceptor answered; waiting for PEER_AUTH.
    Auth,
    Done,
}

/// One link's handshake.
#[derive(Clone, Debug)]
pub struct Handshake {
    /// `Some` on the dialer's side: its dial.
    dial: Option<Dial>,
    state: State,
    deadline: Time,
    nonce: [u8; 32],
    /// The acceptor keeps the dialer's HELLO until PEER_AUTH proves it.
    peer: Option<Peer>,
}

impl Handshake {
    /// The dialer's side: appends its PEER_HELLO to `out`.
    pub fn dial(
        me: &Identity,
        nonce: [u8; 32],
        dial: Dial,
        now: Time,
        out: &mut Vec<u8>,
    ) -> Handshake {
        encode_hello(me, &nonce, Some(dial), None, out);
        Handshake {
            dial: Some(dial),
            state: State::Hello,
            deadline: now + HANDSHAKE_TIMEOUT,
            nonce,
            peer: None,
        }
    }

    /// The acceptor's side: waits for the dialer's PEER_HELLO.
    pub fn accept(nonce: [u8; 32], now: Time) -> Handshake {
        Handshake {
            dial: None,
            state: State::Hello,
            deadline: now + HANDSHAKE_TIMEOUT,
            nonce,
            peer: None,
        }
    }

    /// When the handshake times out unless it is over.
    pub fn deadline(&self) -> Option<Time> {
        (self.state != State::Done).then_some(self.deadline)
    }

    /// The time is `now`: past the deadline, the handshake fails with `connect_timeout`.
    pub fn handle_timeout(&mut self, now: Time) -> Outcome {
        if self.state != State::Done && now >= self.deadline {
            self.state = State::Done;
            return Outcome::Refused(LinkReason::Session(Reason::ConnectTimeout));
        }
        Outcome::Pending
    }

    /// A frame from the peer's control stream; what to send is appended to `out`.
    pub fn handle_frame(
        &mut self,
        me: &Identity,
        msg: &PeerMessage<'_>,
        now: Time,
        out: &mut Vec<u8>,
    ) -> Outcome {
        let outcome = match (self.state, msg, self.dial) {
            (State::Hello, PeerMessage::Hello(hello), Some(dial)) => {
                self.dialer_hello(me, hello, dial, out)
            }
            (State::Hello, PeerMessage::Hello(hello), None) => {
                self.acceptor_hello(me, hello, now, out)
            }
            (State::Auth, PeerMessage::Auth(auth), None) => self.acceptor_auth(me, auth),
            _ => Outcome::Refused(LinkReason::Session(Reason::ProtocolError)),
        };
        if outcome != Outcome::Pending {
            self.state = State::Done;
        }
        outcome
    }

    /// The dialer checks the acceptor's HELLO and its proof, sends PEER_AUTH and admits.
    fn dialer_hello(
        &mut self,
        me: &Identity,
        hello: &PeerHello<'_>,
        dial: Dial,
        out: &mut Vec<u8>,
    ) -> Outcome {
        if let Err(reason) = check_hello(hello, &own(me, &self.nonce), Some(Role::Acceptor)) {
            return Outcome::Refused(reason);
        }
        let token = me.tokens.first().map_or(&[][..], |t| &**t);
        let mine = proof(token, Role::Dialer, hello.nonce, &me.node_id);
        PeerMessage::Auth(PeerAuth { proof: &mine }).encode(out);
        Outcome::Admitted(peer_of(me, hello, me.node_name.clone(), dial.seq, false))
    }

    /// The acceptor checks the dialer's HELLO and answers with its own and its proof.
    fn acceptor_hello(
        &mut self,
        me: &Identity,
        hello: &PeerHello<'_>,
        now: Time,
        out: &mut Vec<u8>,
    ) -> Outcome {
        let Some(dial) = hello.dial else {
            return Outcome::Refused(LinkReason::Session(Reason::ProtocolError));
        };
        if let Err(reason) = check_hello(hello, &own(me, &self.nonce), None) {
            return Outcome::Refused(reason);
        }
        let token = me.tokens.first().map_or(&[][..], |t| &**t);
        let mine = proof(token, Role::Acceptor, hello.nonce, &me.node_id);
        encode_hello(me, &self.nonce, None, Some(&mine), out);
        self.peer = Some(peer_of(
            me,
            hello,
            hello.node_name.into(),
            dial.seq,
            dial.gossip,
        ));
        self.state = State::Auth;
        self.deadline = now + HANDSHAKE_TIMEOUT;
        Outcome::Pending
    }

    /// The acceptor admits the link once the dialer's proof checks out.
    fn acceptor_auth(&mut self, me: &Identity, auth: &PeerAuth<'_>) -> Outcome {
        let Some(peer) = self.peer.take() else {
            return Outcome::Refused(LinkReason::Session(Reason::ProtocolError));
        };
        let proven = super::proof::verify(
            &me.tokens,
            auth.proof,
            Role::Dialer,
            &self.nonce,
            &peer.node_id,
        );
        if proven {
            Outcome::Admitted(peer)
        } else {
            Outcome::Refused(LinkReason::Session(Reason::Unauthorized))
        }
    }
}

fn own<'a>(me: &'a Identity, nonce: &'a [u8; 32]) -> Own<'a> {
    Own {
        node_id: me.node_id,
        node_name: &me.node_name,
        max_frame: me.max_frame,
        tokens: &me.tokens,
        nonce,
    }
}

fn peer_of(
    me: &Identity,
    hello: &PeerHello<'_>,
    dialer: Box<[u8]>,
    dial_seq: u64,
    gossip: bool,
) -> Peer {
    let (shared, unshared) = shared_realms(&me.realms, hello);
    Peer {
        node_id: hello.node_id,
        node_name: hello.node_name.into(),
        advertise: hello.advertise.into(),
        shared: shared.into_iter().map(Box::from).collect(),
        unshared: unshared.into_iter().map(Box::from).collect(),
        facts: LinkFacts {
            incarnation: hello.incarnation,
            node_id: hello.node_id,
            dialer,
            dial_seq,
        },
        gossip,
    }
}

fn encode_hello(
    me: &Identity,
    nonce: &[u8; 32],
    dial: Option<Dial>,
    proof: Option<&[u8; 32]>,
    out: &mut Vec<u8>,
) {
    let realms: Vec<RealmDigest<'_>> = me
        .realms
        .iter()
        .map(|r| RealmDigest {
            realm: &r.name,
            digest: <&[u8; 32]>::try_from(r.digest.as_slice()).ok(),
        })
        .collect();
    PeerMessage::Hello(PeerHello {
        version: PEER_VERSION,
        node_id: me.node_id,
        node_name: &me.node_name,
        incarnation: me.incarnation,
        nonce,
        advertise: &me.advertise,
        realms: Entries::List(&realms),
        max_frame: me.max_frame,
        dial,
        proof,
    })
    .encode(out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::FrameReader;

    fn identity(name: &str, id: u8, token: &str) -> Identity {
        Identity {
            node_id: NodeId([id; 32]),
            node_name: name.as_bytes().into(),
            incarnation: 1_000 + u64::from(id),
            advertise: format!("127.0.0.1:{}", 9000 + u16::from(id))
                .into_bytes()
                .into(),
            realms: vec![RealmAuth {
                name: b"macula.default"[..].into(),
                digest: Vec::new(),
            }],
            max_frame: 1 << 20,
            tokens: vec![token.as_bytes().into()],
        }
    }

    /// Hands the frames in `bytes` to `to`, one by one; the last outcome.
    fn deliver(to: &mut Handshake, me: &Identity, bytes: &[u8], out: &mut Vec<u8>) -> Outcome {
        let mut reader = FrameReader::new(u32::MAX);
        reader.push(bytes).unwrap();
        let mut outcome = Outcome::Pending;
        while let Some(f) = reader.next_frame().unwrap() {
            let msg = PeerMessage::decode(f.frame_type, f.payload).unwrap();
            outcome = to.handle_frame(me, &msg, Time::from_millis(1), out);
        }
        outcome
    }

    const T0: Time = Time::from_millis(0);

    fn run(a: &Identity, b: &Identity) -> (Outcome, Outcome) {
        let dial = Dial {
            seq: 3,
            gossip: true,
        };
        let mut to_b = Vec::new();
        let mut dialer = Handshake::dial(a, [1; 32], dial, T0, &mut to_b);
        let mut acceptor = Handshake::accept([2; 32], T0);
        let mut to_a = Vec::new();
        let first = deliver(&mut acceptor, b, &to_b, &mut to_a);
        if first != Outcome::Pending {
            return (Outcome::Pending, first);
        }
        let mut to_b = Vec::new();
        let dialer_outcome = deliver(&mut dialer, a, &to_a, &mut to_b);
        let mut none = Vec::new();
        let acceptor_outcome = deliver(&mut acceptor, b, &to_b, &mut none);
        (dialer_outcome, acceptor_outcome)
    }

    #[test]
    fn two_gateways_with_one_token_admit_the_link_on_both_sides() {
        let (a, b) = (identity("a", 1, "t"), identity("b", 2, "t"));
        let (dialer, acceptor) = run(&a, &b);
        let Outcome::Admitted(b_seen) = dialer else {
            panic!("dialer: {dialer:?}")
        };
        let Outcome::Admitted(a_seen) = acceptor else {
            panic!("acceptor: {acceptor:?}")
        };
        assert_eq!((&*b_seen.node_name, b_seen.node_id), (&b"b"[..], b.node_id));
        assert_eq!((&*a_seen.node_name, a_seen.node_id), (&b"a"[..], a.node_id));
        assert_eq!(b_seen.shared, vec![Box::from(&b"macula.default"[..])]);
        // Both ends see the same dial: dialer "a", dial_seq 3.
        assert_eq!(
            (&*b_seen.facts.dialer, b_seen.facts.dial_seq),
            (&b"a"[..], 3)
        );
        assert_eq!(
            (&*a_seen.facts.dialer, a_seen.facts.dial_seq),
            (&b"a"[..], 3)
        );
        assert!(a_seen.gossip);
    }

    #[test]
    fn a_wrong_token_is_refused_unauthorized_by_whichever_side_checks_first() {
        let (a, b) = (identity("a", 1, "t"), identity("b", 2, "other"));
        let (dialer, _) = run(&a, &b);
        assert_eq!(
            dialer,
            Outcome::Refused(LinkReason::Session(Reason::Unauthorized))
        );
        // A dialer holding both tokens accepts the acceptor's proof; the acceptor then refuses
        // the dialer's, made with its first token.
        let mut a2 = a.clone();
        a2.tokens.push(b"other"[..].into());
        let (dialer, acceptor) = run(&a2, &b);
        assert!(matches!(dialer, Outcome::Admitted(_)));
        assert_eq!(
            acceptor,
            Outcome::Refused(LinkReason::Session(Reason::Unauthorized))
        );
    }

    #[test]
    fn a_link_to_itself_or_to_a_namesake_is_refused() {
        let a = identity("a", 1, "t");
        let (_, acceptor) = run(&a, &a);
        assert_eq!(acceptor, Outcome::Refused(LinkReason::DuplicateLink));
        let (_, acceptor) = run(&a, &identity("a", 2, "t"));
        assert_eq!(acceptor, Outcome::Refused(LinkReason::NameConflict));
    }

    #[test]
    fn a_frame_out_of_turn_is_a_protocol_error_and_silence_a_connect_timeout() {
        let b = identity("b", 2, "t");
        let mut acceptor = Handshake::accept([2; 32], T0);
        let auth = PeerMessage::Auth(PeerAuth { proof: &[0; 32] });
        let outcome = acceptor.handle_frame(&b, &auth, T0, &mut Vec::new());
        assert_eq!(
            outcome,
            Outcome::Refused(LinkReason::Session(Reason::ProtocolError))
        );
        let mut waiting = Handshake::accept([2; 32], T0);
        assert_eq!(
            waiting.handle_timeout(Time::from_millis(9_999)),
            Outcome::Pending
        );
        assert_eq!(
            waiting.handle_timeout(Time::from_millis(10_000)),
            Outcome::Refused(LinkReason::Session(Reason::ConnectTimeout))
        );
        assert_eq!(waiting.deadline(), None);
    }
}
