//! The shards' mailboxes: one bounded inbox and one doorbell per shard, shared by every thread.
//!
//! A sender pushes an [`Envelope`] to the receiving shard's crossbeam channel and then rings
//! its doorbell, an eventfd the shard waits on beside its socket. A shard arms its bell only
//! before it sleeps, and checks its inbox once more after arming (the two fences pair up); a
//! sender writes the eventfd only when it finds the bell armed, and disarms it, so a busy
//! shard costs its senders nothing, an idle one is woken at once, and one sleep costs at most
//! one write.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use meshgate_shard::ids::LinkKey;
use meshgate_shard::router::ShardMsg;
use meshgate_shard::{Shard, ShardId};

use crate::health::ShardReport;

/// What travels on a shard's inbox.
pub struct Envelope {
    pub from: ShardId,
    pub body: Body,
}

pub enum Body {
    /// A message of the shard protocol.
    Shard(ShardMsg),
    /// A datagram that reached another shard's socket but belongs to a connection here.
    Datagram { data: Box<[u8]>, from: SocketAddr },
    /// A request for this shard's metrics.
    Report(std::sync::mpsc::SyncSender<ShardReport>),
    /// The address a dial's host name resolved to, from a helper thread (`None`: it did not).
    Resolved {
        link: LinkKey,
        addr: Option<SocketAddr>,
    },
    /// End every session and stop.
    Shutdown,
}

/// The channels and doorbells of every shard, shared by all threads.
pub struct Shared {
    inboxes: Vec<Sender<Envelope>>,
    bells: Vec<Bell>,
}

/// A shard's doorbell: armed while the shard sleeps, rung by writing its eventfd.
struct Bell {
    armed: AtomicBool,
    fd: OwnedFd,
}

impl Bell {
    fn new() -> std::io::Result<Bell> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Bell {
            armed: AtomicBool::new(false),
            // SAFETY: `fd` was just made and nothing else owns it.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Wakes the shard if it sleeps (or is about to): once per sleep.
    fn ring(&self) {
        if self.armed.swap(false, Ordering::SeqCst) {
            let one: u64 = 1;
            // SAFETY: writes the 8 bytes of `one` to the eventfd. It cannot fail short of the
            // counter's overflow, which one write per sleep never reaches.
            unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }

    /// Empties the eventfd's counter after a ring.
    fn clear(&self) {
        let mut count: u64 = 0;
        // SAFETY: reads at most 8 bytes into `count`; EAGAIN (nothing rung) leaves it alone.
        unsafe { libc::read(self.fd.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
    }
}

impl Shared {
    /// Bounded inboxes of `capacity` messages, one per shard, and their doorbells.
    pub fn new(
        shards: usize,
        capacity: usize,
    ) -> std::io::Result<(Arc<Shared>, Vec<Receiver<Envelope>>)> {
        let (inboxes, receivers) = (0..shards)
            .map(|_| crossbeam_channel::bounded(capacity))
            .unzip();
        let bells = (0..shards).map(|_| Bell::new()).collect::<Result<_, _>>()?;
        Ok((Arc::new(Shared { inboxes, bells }), receivers))
    }

    /// Queues an envelope for shard `to` and wakes it; gives the envelope back when the inbox
    /// is full.
    pub fn post(&self, to: ShardId, envelope: Envelope) -> Result<(), Envelope> {
        self.try_push(to, envelope)?;
        self.wake(to);
        Ok(())
    }

    fn try_push(&self, to: ShardId, envelope: Envelope) -> Result<(), Envelope> {
        match self.inboxes[to.index()].try_send(envelope) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(e) | TrySendError::Disconnected(e)) => Err(e),
        }
    }

    fn wake(&self, to: ShardId) {
        // Pairs with the fence between arming the bell and the last inbox check.
        fence(Ordering::SeqCst);
        self.bells[to.index()].ring();
    }
}

/// One shard's end of the mailboxes: its inbox, its doorbell, and the way to the others.
pub struct Mailbox {
    id: ShardId,
    shards: u16,
    inbox: Receiver<Envelope>,
    shared: Arc<Shared>,
}

impl Mailbox {
    pub fn new(id: ShardId, shards: u16, inbox: Receiver<Envelope>, shared: Arc<Shared>) -> Self {
        Mailbox {
            id,
            shards,
            inbox,
            shared,
        }
    }

    /// The next envelope of the inbox, if one is waiting.
    pub fn next(&self) -> Option<Envelope> {
        self.inbox.try_recv().ok()
    }

    pub fn is_empty(&self) -> bool {
        self.inbox.is_empty()
    }

    /// Hands a datagram to the shard that owns its connection; false when that shard's inbox
    /// is full.
    pub fn forward(&self, owner: ShardId, data: &[u8], from: SocketAddr) -> bool {
        let envelope = Envelope {
            from: self.id,
            body: Body::Datagram {
                data: data.into(),
                from,
            },
        };
        self.shared.post(owner, envelope).is_ok()
    }

    /// A way for another thread to post to this shard's own inbox.
    pub fn return_address(&self) -> ReturnAddress {
        ReturnAddress {
            id: self.id,
            shared: self.shared.clone(),
        }
    }

    /// Moves the shard's outbox to the other shards' inboxes, in order, leaving what does not
    /// fit for the next turn; wakes each shard that got something.
    pub fn flush_outbox(&self, shard: &mut Shard) {
        for to in 0..self.shards {
            let to = ShardId(to);
            if to == self.id {
                continue;
            }
            let mut sent = false;
            let outbox = shard.outbox(to);
            while let Some(msg) = outbox.pop_front() {
                match self.shared.try_push(
                    to,
                    Envelope {
                        from: self.id,
                        body: Body::Shard(msg),
                    },
                ) {
                    Ok(()) => sent = true,
                    Err(Envelope {
                        body: Body::Shard(msg),
                        ..
                    }) => {
                        outbox.push_front(msg);
                        break;
                    }
                    Err(_) => break,
                }
            }
            if sent {
                self.shared.wake(to);
            }
        }
    }

    /// Arms the doorbell before the shard sleeps, then looks at the inbox once more: true when
    /// something is waiting, so the shard must not sleep.
    pub fn arm_bell(&self) -> bool {
        self.bell().armed.store(true, Ordering::SeqCst);
        // Pairs with the fence of `Shared::wake`: a sender that pushed before this point is
        // seen below, and one that pushes after it finds the bell armed.
        fence(Ordering::SeqCst);
        !self.inbox.is_empty()
    }

    /// Disarms the doorbell once the shard is awake (senders need not wake a busy shard), and
    /// empties its eventfd if it `rang`.
    pub fn disarm_bell(&self, rang: bool) {
        self.bell().armed.store(false, Ordering::SeqCst);
        if rang {
            self.bell().clear();
        }
    }

    /// The doorbell's eventfd, readable once a sender rang it.
    pub fn bell_fd(&self) -> RawFd {
        self.bell().fd.as_raw_fd()
    }

    fn bell(&self) -> &Bell {
        &self.shared.bells[self.id.index()]
    }
}

/// A shard's inbox, as a helper thread of the shard posts to it.
pub struct ReturnAddress {
    id: ShardId,
    shared: Arc<Shared>,
}

impl ReturnAddress {
    /// Posts `body` to the shard, waiting up to a second while its inbox is full; false if it
    /// never took it.
    pub fn post(&self, body: Body) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        let mut envelope = Envelope {
            from: self.id,
            body,
        };
        loop {
            match self.shared.post(self.id, envelope) {
                Ok(()) => return true,
                Err(_) if std::time::Instant::now() >= deadline => return false,
                Err(back) => envelope = back,
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use meshgate_shard::{Config, Limits, NodeId, RealmConfig, SessionKey, Time};

    use super::*;

    fn shard(id: u16, shards: u16) -> Shard {
        let config = Config {
            shard: ShardId(id),
            shards,
            node_id: NodeId([0; 32]),
            realms: vec![RealmConfig {
                name: b"macula.test".to_vec().into(),
                tokens: Vec::new(),
            }],
            limits: Limits::default(),
            wall_clock_offset_ms: 0,
            counts: Arc::default(),
            mesh: None,
            seed: 0,
        };
        Shard::new(config, Time::ZERO)
    }

    fn admitted(session: u64) -> ShardMsg {
        ShardMsg::Admitted {
            session: SessionKey::from_u64(session),
        }
    }

    /// The sessions of the `Admitted` messages waiting in an inbox, in order.
    fn admitted_in(inbox: &Receiver<Envelope>) -> Vec<u64> {
        inbox
            .try_iter()
            .map(|e| match e.body {
                Body::Shard(ShardMsg::Admitted { session }) => session.to_u64(),
                _ => panic!("an Admitted message"),
            })
            .collect()
    }

    #[test]
    fn the_outbox_moves_what_the_inbox_takes_in_order_and_keeps_the_rest() {
        let (shared, inboxes) = Shared::new(3, 2).expect("eventfds");
        let mut inboxes = inboxes.into_iter();
        let mine = inboxes.next().expect("shard 0's inbox");
        let (one, two) = (inboxes.next(), inboxes.next());
        let (one, two) = (one.expect("shard 1's inbox"), two.expect("shard 2's inbox"));
        let mailbox = Mailbox::new(ShardId(0), 3, mine, shared);
        let mut s = shard(0, 3);
        s.outbox(ShardId(1))
            .extend([admitted(1), admitted(2), admitted(3)]);

        mailbox.flush_outbox(&mut s);
        assert_eq!(admitted_in(&one), [1, 2]);
        assert_eq!(s.outbox(ShardId(1)).len(), 1, "the third waits for room");
        assert!(two.is_empty());

        mailbox.flush_outbox(&mut s);
        assert_eq!(admitted_in(&one), [3]);
        assert!(s.outbox(ShardId(1)).is_empty());
    }

    #[test]
    fn a_datagram_forwarded_to_a_full_inbox_is_refused() {
        let (shared, inboxes) = Shared::new(2, 1).expect("eventfds");
        let mut inboxes = inboxes.into_iter();
        let mine = inboxes.next().expect("shard 0's inbox");
        let other = inboxes.next().expect("shard 1's inbox");
        let mailbox = Mailbox::new(ShardId(0), 2, mine, shared);
        let from = "127.0.0.1:5555".parse().expect("an address");
        assert!(mailbox.forward(ShardId(1), b"first", from));
        assert!(!mailbox.forward(ShardId(1), b"second", from));
        let envelope = other.try_recv().expect("the first datagram");
        assert_eq!(envelope.from, ShardId(0));
        assert!(matches!(envelope.body, Body::Datagram { data, .. } if &*data == b"first"));
    }

    /// Whether the doorbell's eventfd is readable now (a zero-timeout poll).
    fn rung(mailbox: &Mailbox) -> bool {
        let mut fd = libc::pollfd {
            fd: mailbox.bell_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut fd, 1, 0) == 1 }
    }

    #[test]
    fn the_doorbell_rings_only_for_an_armed_shard_and_once_per_sleep() {
        let (shared, inboxes) = Shared::new(2, 8).expect("eventfds");
        let mut inboxes = inboxes.into_iter();
        let zero = inboxes.next().expect("shard 0's inbox");
        let one = inboxes.next().expect("shard 1's inbox");
        let sleeper = Mailbox::new(ShardId(0), 2, zero, shared.clone());
        let sender = Mailbox::new(ShardId(1), 2, one, shared);
        let post = || assert!(sender.forward(ShardId(0), b"x", "127.0.0.1:1".parse().unwrap()));

        // A busy shard (bell not armed): a post queues but does not ring.
        post();
        assert!(!rung(&sleeper));
        // Arming with something waiting says so: the shard must not sleep.
        assert!(sleeper.arm_bell());
        sleeper.disarm_bell(false);
        while sleeper.next().is_some() {}

        // An armed, empty shard: the first post rings, the second finds the bell disarmed.
        assert!(!sleeper.arm_bell());
        post();
        post();
        let mut count: u64 = 0;
        // SAFETY: reads the eventfd's 8-byte counter into `count`.
        let read = unsafe { libc::read(sleeper.bell_fd(), (&mut count as *mut u64).cast(), 8) };
        assert_eq!((read, count), (8, 1), "one write for two posts");
        sleeper.disarm_bell(false);
        while sleeper.next().is_some() {}

        // The shard disarms the bell it woke by, emptying its eventfd.
        assert!(!sleeper.arm_bell());
        post();
        assert!(rung(&sleeper));
        sleeper.disarm_bell(true);
        assert!(
            !rung(&sleeper),
            "disarming after a ring empties the eventfd"
        );
        post();
        assert!(!rung(&sleeper), "awake again: posts do not ring");
    }
}
