//! Abusive clients among clients that behave, on two shards. The abusers send corrupted frames:
//! valid frames with bits flipped, a byte replaced, cut short, stretched with random bytes,
//! retyped, or with a wrong length in their header, and bare random bytes; they also send valid
//! frames, stop reading, end their streams and go away. Whatever they send:
//! - no shard panics, and every frame a shard sends them is valid (the simulator decodes each);
//! - the clients that behave lose nothing: every message published reaches the subscriber, in
//!   order, every call gets its reply, and none of them is closed or sent an error;
//! - once every client has left, no shard holds any state.
//!
//! The abusers connect to a realm of their own, so that a valid frame of theirs (a REGISTER of
//! the procedure the behaving clients use, say) cannot take the behaving clients' traffic as
//! it is entitled to within one realm.

mod sim;

use std::time::Duration;

use meshgate_shard::metrics::reason_index;
use meshgate_shard::wire::{
    Call, CallIdRef, Cancel, Connect, Disconnect, Message, Outcome, Ping, Publish, Raw, Reason,
    Register, Reply, Strings, Subscribe, Unregister, Unsubscribe, HEADER_LEN,
};
use meshgate_shard::StreamEnd;
use sim::{node, seeds, ClientId, SeedGuard, Sim};

/// The abusers' realm: one the simulator's gateway serves besides the behaving clients'.
const ABUSERS: &str = "other.realm";
const GOOD_TOPIC: &str = "good.news";
const GOOD_PROCEDURE: &str = "good.proc";

/// A valid frame of a random type, as an abuser starts from.
fn valid_frame(rng: &mut fastrand::Rng) -> Vec<u8> {
    let topics: [&[u8]; 5] = [b"a", b"a.b", b"a.*", b"**", GOOD_TOPIC.as_bytes()];
    let procedures: [&[u8]; 2] = [b"p.one", GOOD_PROCEDURE.as_bytes()];
    let topic = topics[rng.usize(..topics.len())];
    let procedure = procedures[rng.usize(..procedures.len())];
    let list = [topic];
    let msg = match rng.u8(..32) {
        0 => Message::Connect(Connect {
            version: b"1.0",
            node_id: node(rng.u32(500..600)),
            realm: ABUSERS.as_bytes(),
            capabilities: None,
            token: None,
        }),
        1 => Message::Disconnect(Disconnect {
            reason: b"normal",
            message: None,
        }),
        2..=5 => Message::Subscribe(Subscribe {
            topics: Strings::List(&list),
            qos: None,
        }),
        6..=7 => Message::Unsubscribe(Unsubscribe {
            topics: Strings::List(&list),
        }),
        8..=13 => Message::Publish(Publish::new(topic, b"payload")),
        14..=16 => Message::Register(Register {
            procedure,
            ttl_s: Some(rng.u64(1..5)),
        }),
        17 => Message::Unregister(Unregister { procedure }),
        18..=22 => Message::Call(Call {
            procedure,
            args: Raw(&[0x2a]),
            call_id: Some(CallIdRef::Uint(rng.u64(..8))),
            timeout_ms: Some(rng.u64(1..500)),
        }),
        23..=25 => Message::Reply(Reply {
            call_id: Some(CallIdRef::Uint(rng.u64(..64))),
            outcome: Outcome::Result(Raw(&[0x2a])),
        }),
        26..=27 => Message::Cancel(Cancel {
            call_id: CallIdRef::Uint(rng.u64(..64)),
            reason: b"timeout",
        }),
        _ => Message::Ping(Ping::new(rng.u64(..))),
    };
    let mut out = Vec::new();
    msg.encode(&mut out);
    out
}

/// `frame` corrupted one way or another, or random bytes in its place.
fn corrupt(rng: &mut fastrand::Rng, mut frame: Vec<u8>) -> Vec<u8> {
    match rng.u8(..8) {
        0 => {
            // Bits of the payload flipped: the header still frames it.
            for _ in 0..rng.usize(1..4) {
                let i = rng.usize(HEADER_LEN..frame.len());
                frame[i] ^= 1 << rng.u8(..8);
            }
        }
        1 => {
            let i = rng.usize(..frame.len());
            frame[i] = rng.u8(..);
        }
        // Cut short: whatever follows is read as the rest of this frame.
        2 => frame.truncate(rng.usize(..frame.len())),
        3 => frame.extend((0..rng.usize(1..16)).map(|_| rng.u8(..))),
        // Another frame type (known or not) over the same payload.
        4 => frame[1] = rng.u8(..),
        // A payload length that is not the payload's: shorter, longer, or far too long.
        5 => {
            let len = match rng.u8(..3) {
                0 => rng.u32(..8),
                1 => (frame.len() - HEADER_LEN) as u32 + rng.u32(1..8),
                _ => rng.u32(1 << 24..),
            };
            frame[4..8].copy_from_slice(&len.to_be_bytes());
        }
        6 => frame[2] = rng.u8(1..),
        _ => {
            frame.clear();
            frame.extend((0..rng.usize(1..64)).map(|_| rng.u8(..)));
        }
    }
    frame
}

/// The behaving clients: a publisher and a subscriber, a caller and a provider.
struct Good {
    publisher: ClientId,
    subscriber: ClientId,
    caller: ClientId,
    provider: ClientId,
    published: Vec<Vec<u8>>,
    called: u64,
    /// The CALLs the provider has answered: the first ones it received.
    answered: usize,
}

impl Good {
    fn connect(sim: &mut Sim) -> Good {
        let good = Good {
            publisher: sim.connect(0, node(1)),
            subscriber: sim.connect(1, node(2)),
            caller: sim.connect(0, node(3)),
            provider: sim.connect(1, node(4)),
            published: Vec::new(),
            called: 0,
            answered: 0,
        };
        sim.subscribe(good.subscriber, &[GOOD_TOPIC]);
        sim.register(good.provider, GOOD_PROCEDURE, None);
        sim.sync(good.subscriber);
        sim.sync(good.provider);
        good
    }

    fn publish(&mut self, sim: &mut Sim) {
        let payload = (self.published.len() as u64).to_be_bytes().to_vec();
        sim.publish(self.publisher, GOOD_TOPIC, &payload);
        self.published.push(payload);
    }

    fn call(&mut self, sim: &mut Sim) {
        sim.call(self.caller, GOOD_PROCEDURE, self.called, None);
        self.called += 1;
    }

    /// The provider answers each CALL it has received, once.
    fn answer(&mut self, sim: &mut Sim) {
        let calls = sim.calls(self.provider);
        for (_, id, _) in &calls[self.answered..] {
            sim.reply(self.provider, *id, &[0x2a]);
        }
        self.answered = calls.len();
    }

    fn ids(&self) -> [ClientId; 4] {
        [self.publisher, self.subscriber, self.caller, self.provider]
    }

    /// Every publish reached the subscriber in order, every call got its result, and no
    /// behaving client was closed or sent an ERROR.
    fn check(&self, sim: &Sim) {
        let received: Vec<Vec<u8>> = sim
            .publishes(self.subscriber)
            .into_iter()
            .map(|(_, payload, _)| payload)
            .collect();
        assert_eq!(received, self.published, "the subscriber's messages");
        let replies = sim.replies(self.caller);
        assert_eq!(replies.len() as u64, self.called, "a reply for every call");
        for (id, outcome) in replies {
            assert_eq!(outcome, Ok(vec![0x2a]), "the result of call {id}");
        }
        for id in self.ids() {
            assert_eq!(sim.clients[id].closed, None, "behaving client {id} closed");
            assert_eq!(
                sim.errors(id),
                Vec::<(String, String)>::new(),
                "errors sent to behaving client {id}"
            );
        }
    }
}

fn run(seed: u64, ops: usize) {
    let _guard = SeedGuard(seed);
    let mut sim = Sim::with(2, seed, |c| {
        c.limits.max_output = 4_096;
        c.limits.max_clients = 24;
        c.limits.call_timeout = Duration::from_millis(300);
        c.limits.slow_consumer_timeout = Duration::from_millis(500);
        c.limits.prune_interval = Duration::from_secs(1);
    });
    let mut good = Good::connect(&mut sim);
    let mut rng = fastrand::Rng::with_seed(seed ^ 0xab05e);
    let mut abusers: Vec<ClientId> = Vec::new();
    for _ in 0..ops {
        abusers.retain(|&c| sim.clients[c].closed.is_none());
        let abuser = (!abusers.is_empty()).then(|| abusers[rng.usize(..abusers.len())]);
        match (rng.u32(..100), abuser) {
            (0..=9, _) | (_, None) => {
                let shard = rng.u16(..2);
                let c = if rng.u8(..4) == 0 {
                    sim.open_session(shard, node(700))
                } else {
                    sim.open(shard, node(rng.u32(500..600)), ABUSERS, None)
                };
                abusers.push(c);
            }
            (10..=24, Some(c)) => {
                let valid = valid_frame(&mut rng);
                let frame = corrupt(&mut rng, valid);
                sim.send_bytes(c, &frame);
            }
            (25..=69, Some(c)) => {
                let frame = valid_frame(&mut rng);
                sim.send_bytes(c, &frame);
            }
            (70..=72, Some(c)) => sim.drop_connection(c),
            (73..=74, Some(c)) => {
                let ends = [
                    StreamEnd::Finished,
                    StreamEnd::Reset,
                    StreamEnd::StopSending,
                ];
                sim.end_stream(c, ends[rng.usize(..ends.len())]);
            }
            (75..=77, Some(c)) => sim.clients[c].reading = !sim.clients[c].reading,
            (78..=83, _) => sim.advance(Duration::from_millis(rng.u64(1..100))),
            (84..=91, _) => good.publish(&mut sim),
            _ => good.call(&mut sim),
        }
        sim.drive();
        good.answer(&mut sim);
    }
    sim.drive();
    good.answer(&mut sim);
    sim.drive();
    good.check(&sim);
    assert!(
        !good.published.is_empty() && good.called > 0,
        "the run published and called"
    );

    // What the abusers met: sessions closed for protocol errors, ERROR frames for frames that
    // decoded but were refused, PONGs for their valid PINGs, and each other's messages.
    let protocol_errors = sim.total(|c| c.sessions_closed[reason_index(Reason::ProtocolError)]);
    assert!(
        protocol_errors > 0,
        "the run closed abusers for protocol errors"
    );
    let abusers = (0..sim.clients.len()).filter(|c| !good.ids().contains(c));
    let (errors, pongs) = abusers.fold((0, 0), |(e, p), c| {
        (e + sim.errors(c).len(), p + sim.pongs(c))
    });
    assert!(errors > 0 && pongs > 0, "errors {errors}, pongs {pongs}");
    assert!(
        sim.total(|c| c.deliveries) > good.published.len() as u64,
        "abusers delivered messages among themselves too"
    );

    sim.assert_empty_once_all_leave();
}

#[test]
fn abusive_clients_never_panic_a_shard_nor_disturb_those_that_behave_and_leave_nothing() {
    for seed in seeds(300, 12) {
        run(seed, 5_000);
    }
}
