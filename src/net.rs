//! UDP for the shards: one SO_REUSEPORT socket per core, and batched `recvmmsg`/`sendmmsg` on
//! its descriptor, so that one wake-up moves many datagrams.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Bytes per datagram slot at the least: room for a client's Initial, which it may send larger
/// than the gateway's `--max-udp-payload` before it has learnt that limit.
const MIN_SLOT: usize = 1500;
/// Buffers per `recvmmsg` call.
pub const BATCH: usize = 32;
/// Datagrams one `sendmmsg` call sends at most.
const TX_BATCH: usize = 128;
/// Bytes the send batch holds at the least: the datagrams of a turn are packed in it one after
/// another, so that a burst of small ones and a few large ones take the same memory.
const TX_BYTES: usize = 256 * 1024;
/// Bytes of one GSO message at most: its segments travel as one UDP datagram as far as the
/// kernel can carry them, so together they must fit in one (65,507 bytes over IPv4).
const GSO_MAX_BYTES: usize = 65_000;

/// The largest segment any Ethernet path takes (1500 less the IPv4 and UDP headers): a GSO
/// message of larger segments that the kernel refuses says the path's MTU is smaller, not that
/// the kernel cannot segment.
const ETHERNET_SEGMENT: usize = 1472;

/// The slot size for datagrams of up to `max_payload` bytes.
fn slot_for(max_payload: usize) -> usize {
    max_payload.max(MIN_SLOT)
}

/// A non-blocking UDP socket bound to `addr` with SO_REUSEPORT, so that every shard binds the
/// same address and the kernel spreads flows among them. Unless `fragment`, its datagrams
/// leave with Don't Fragment and are never split: a path MTU probe the path cannot carry is
/// lost (or, larger than the first hop's MTU, refused by the kernel) rather than fragmented.
pub fn reuseport_udp(addr: SocketAddr, fragment: bool) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_port(true)?;
    if !fragment {
        forbid_fragmentation(&s, addr.is_ipv6())?;
    }
    s.set_nonblocking(true)?;
    // Larger kernel buffers absorb bursts; the kernel caps them at its own maximum.
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    Ok(s)
}

/// SO_ATTACH_REUSEPORT_CBPF (asm-generic/socket.h), which the libc crate names for Android only.
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;

/// Byte offsets, in a UDP payload, of a QUIC packet's destination connection ID: after the
/// first byte in a short header; after it, the version and the DCID length in a long one
/// (RFC 9000, 17.2 and 17.3).
const SHORT_DCID: u32 = 1;
const LONG_DCID: u32 = 6;

/// Has the kernel deliver each datagram that reaches the SO_REUSEPORT group of `s` to the
/// socket at index (DCID\[0..4\] as a big-endian word) modulo `shards` in the group, the
/// sockets indexed in the order they joined it, as the shards' were bound: the shard that
/// `endpoint::shard_of` says the connection ID names. The gateway's connection IDs name the
/// shard that holds their connection, so every packet of a connection reaches its shard's
/// socket: a client that moves to a new address or port finds its shard without a detour
/// through another, and the connections of one client socket (a load generator's, or many
/// clients behind one NAT mapping) spread evenly over the shards by the random first connection
/// ID of each one's first Initial, where a hash of the addresses would put all of them on one
/// shard. A datagram too short to hold the word goes to the first socket. Where a network card
/// coalesces (GRO) the datagrams of one client socket for several connections into one
/// buffer, the first one's connection ID steers it, and the driver forwards the others.
/// [`steer`] checks that the group's first sockets are the shards', in order (a socket that
/// joins later gets nothing: no word modulo the shard count names it).
pub fn steer_by_connection_id(s: &Socket, shards: u16) -> io::Result<()> {
    let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    attach_reuseport_program(
        s,
        &[
            // The first byte: bit 7 set is a long header.
            op(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS, 0, 0, 0),
            op(libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K, 0, 2, 0x80),
            op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, LONG_DCID),
            op(libc::BPF_JMP | libc::BPF_JA, 0, 0, 1),
            op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, SHORT_DCID),
            op(
                libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K,
                0,
                0,
                u32::from(shards.max(1)),
            ),
            op(libc::BPF_RET | libc::BPF_A, 0, 0, 0),
        ],
    )
}

/// SO_DETACH_REUSEPORT_BPF (asm-generic/socket.h; Linux 5.8 and later).
const SO_DETACH_REUSEPORT_BPF: libc::c_int = 52;
/// How often a probe is sent again, and how long it is waited for in all.
const PROBE_AGAIN: Duration = Duration::from_millis(100);
const PROBE_PATIENCE: Duration = Duration::from_secs(1);

/// Steers the datagrams of the group of `sockets` (bound in shard order to `addr`) by
/// connection ID, and checks that it works: from a socket of its own, sends each socket a probe
/// whose connection ID names that socket's shard (again every 100 ms, for a second at most) and
/// reads it back there. If a probe reaches another shard's socket, or none (a socket of another
/// process joined the port first, so the group's indexes are not the shards'; or the probes
/// were lost), the program is removed, the kernel's hash of the addresses decides again, and
/// the reason is returned. A program belongs to the whole group: a gateway still draining on
/// the port loses its own steering too. Datagrams of clients read meanwhile are lost, as on any
/// busy socket: QUIC sends them again.
pub fn steer(sockets: &[Socket], addr: SocketAddr) -> Result<(), String> {
    let shards = u16::try_from(sockets.len()).map_err(|_| "too many sockets".to_owned())?;
    if shards < 2 {
        return Ok(());
    }
    steer_by_connection_id(&sockets[0], shards)
        .map_err(|e| format!("the kernel refuses the steering program: {e}"))?;
    let Err(why) = probe_each(sockets, addr) else {
        return Ok(());
    };
    match unsteer(&sockets[0]) {
        Ok(()) => Err(why),
        Err(e) => Err(format!("{why}; and the program could not be removed: {e}")),
    }
}

/// Removes the group's program; where the kernel cannot detach one, puts a program in its
/// place whose answer names no socket, which leaves the choice to the hash.
fn unsteer(s: &Socket) -> io::Result<()> {
    let zero: libc::c_int = 0;
    if set_option(
        s.as_raw_fd(),
        libc::SOL_SOCKET,
        SO_DETACH_REUSEPORT_BPF,
        &zero,
    )
    .is_ok()
    {
        return Ok(());
    }
    let hash = libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: u32::MAX,
    };
    attach_reuseport_program(s, &[hash])
}

/// Sends each of `sockets` its probe until it arrives (there or elsewhere), or the patience
/// runs out.
fn probe_each(sockets: &[Socket], addr: SocketAddr) -> Result<(), String> {
    let to = match addr.ip() {
        ip if !ip.is_unspecified() => addr,
        std::net::IpAddr::V4(_) => SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port())),
        std::net::IpAddr::V6(_) => SocketAddr::from((Ipv6Addr::LOCALHOST, addr.port())),
    };
    let bind: SocketAddr = if to.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let prober =
        std::net::UdpSocket::bind(bind).map_err(|e| format!("no socket to probe from: {e}"))?;
    let mut token = [0u8; 16];
    getrandom::getrandom(&mut token).map_err(|e| format!("no random token: {e}"))?;
    let mut fds: Vec<libc::pollfd> = sockets
        .iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let mut buf = [0u8; 2048];
    for i in 0..sockets.len() {
        // A short header whose connection ID's first word is the socket's index.
        let mut probe = [0u8; 1 + 4 + 16];
        probe[0] = 0x40;
        probe[1..5].copy_from_slice(&(i as u32).to_be_bytes());
        probe[5..].copy_from_slice(&token);
        let deadline = Instant::now() + PROBE_PATIENCE;
        let mut landed = None;
        while landed.is_none() && Instant::now() < deadline {
            // A full queue would drop the probe: what waits (a client's datagram) goes first.
            for s in sockets {
                while recv_now(s, &mut buf).is_some() {}
            }
            prober
                .send_to(&probe, to)
                .map_err(|e| format!("cannot send a probe to {to}: {e}"))?;
            let again = Instant::now() + PROBE_AGAIN;
            while landed.is_none() {
                let left = again.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                // SAFETY: `fds` holds one valid pollfd per socket for the call's duration.
                let ready = unsafe {
                    libc::poll(
                        fds.as_mut_ptr(),
                        fds.len() as libc::nfds_t,
                        left.as_millis().max(1) as libc::c_int,
                    )
                };
                if ready < 1 {
                    continue;
                }
                for (j, (s, fd)) in sockets.iter().zip(&fds).enumerate() {
                    if fd.revents == 0 {
                        continue;
                    }
                    while let Some(n) = recv_now(s, &mut buf) {
                        if buf[..n] == probe {
                            landed = Some(j);
                        }
                    }
                }
            }
        }
        match landed {
            Some(j) if j == i => {}
            Some(j) => {
                return Err(format!(
                    "a datagram for shard {i} reached shard {j}'s socket: a socket of another \
                     process joined port {} first",
                    addr.port()
                ))
            }
            None => {
                return Err(format!(
                    "no probe for shard {i} reached a shard's socket in {PROBE_PATIENCE:?}: a \
                     socket of another process joined port {} first, or the probes to {to} are \
                     lost",
                    addr.port()
                ))
            }
        }
    }
    Ok(())
}

/// A datagram `s` has waiting, into `buf`: its length; `None` if none waits.
fn recv_now(s: &Socket, buf: &mut [u8]) -> Option<usize> {
    // SAFETY: a valid descriptor and a buffer of the given length.
    let n = unsafe {
        libc::recv(
            s.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(n).ok()
}

/// Attaches a classic BPF program to the SO_REUSEPORT group of `s`, replacing any before it.
fn attach_reuseport_program(s: &Socket, program: &[libc::sock_filter]) -> io::Result<()> {
    // `program` outlives the call, and the kernel copies it.
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr().cast_mut(),
    };
    set_option(
        s.as_raw_fd(),
        libc::SOL_SOCKET,
        SO_ATTACH_REUSEPORT_CBPF,
        &fprog,
    )
}

/// Sets socket option `name` of `level` on `fd` to `value`, which the kernel copies.
fn set_option<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: a pointer to a `T` and its size, valid for the call; the kernel reads no more
    // than that, and refuses a size its option does not take. An invalid descriptor only makes
    // the call fail.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// IP_PMTUDISC_PROBE, for IPv6 and (on a dual-stack socket) IPv4: Don't Fragment on every
/// datagram, and no fragmenting to the path MTU the kernel learnt from ICMP, so the sender's
/// own discovery decides the size.
fn forbid_fragmentation(s: &Socket, ipv6: bool) -> io::Result<()> {
    let set = |level, name, value: libc::c_int| set_option(s.as_raw_fd(), level, name, &value);
    if ipv6 {
        set(
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_PROBE,
        )?;
        // A socket bound to `::` takes IPv4 too; one bound to an IPv6 address has no IPv4 side.
        let _ = set(
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_PROBE,
        );
        Ok(())
    } else {
        set(
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_PROBE,
        )
    }
}

fn sockaddr_to_std(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Bytes per slot when the socket coalesces datagrams (GRO): one coalesced buffer holds at
/// most 64 KiB.
const GRO_SLOT: usize = 64 * 1024;

/// Receives up to [`BATCH`] buffers per call into fixed slots, and hands out their datagrams
/// one at a time ([`BatchRx::next`]). With UDP_GRO on the socket, the kernel hands a sender's
/// burst of equal-sized datagrams (a GSO message, or packets coalesced by the device's receive
/// path) over as one buffer with its segment size, so that one entry carries many datagrams.
pub struct BatchRx {
    /// Bytes per slot.
    slot: usize,
    /// The largest datagram handed out: larger ones are dropped.
    max_datagram: usize,
    buf: Box<[u8]>,
    addrs: Box<[libc::sockaddr_storage]>,
    iov: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
    /// Room for each entry's UDP_GRO control message; empty without GRO.
    cmsgs: Box<[Cmsg]>,
    /// Entries of the last batch, and the next one to hand out.
    received: usize,
    next_entry: usize,
    /// The entry being handed out: its sender, where its bytes end in `buf` and its segment
    /// size; and where its next datagram starts.
    current: Option<(SocketAddr, usize, usize)>,
    at: usize,
    /// Datagrams handed out since the start.
    datagrams: u64,
}

impl BatchRx {
    /// Receives on `fd`, turning GRO on when the kernel takes it (its slots are then 64 KiB:
    /// 2 MiB for the batch). Datagrams over `max_payload` bytes (at least [`MIN_SLOT`]) are
    /// dropped.
    pub fn new(fd: RawFd, max_payload: usize) -> Self {
        Self::with_gro(max_payload, enable_gro(fd))
    }

    fn with_gro(max_payload: usize, gro: bool) -> Self {
        let max_datagram = slot_for(max_payload);
        let slot = if gro { GRO_SLOT } else { max_datagram };
        BatchRx {
            slot,
            max_datagram,
            buf: vec![0u8; slot * BATCH].into_boxed_slice(),
            // SAFETY: these C structs are plain data, valid when zeroed.
            addrs: (0..BATCH).map(|_| unsafe { zeroed() }).collect(),
            iov: (0..BATCH).map(|_| unsafe { zeroed() }).collect(),
            hdrs: (0..BATCH).map(|_| unsafe { zeroed() }).collect(),
            cmsgs: vec![[0u64; 4]; if gro { BATCH } else { 0 }].into_boxed_slice(),
            received: 0,
            next_entry: 0,
            current: None,
            at: 0,
            datagrams: 0,
        }
    }

    /// Whether the socket coalesces datagrams.
    pub fn gro(&self) -> bool {
        !self.cmsgs.is_empty()
    }

    /// Receives a new batch, in place of the last one (whose datagrams not yet handed out are
    /// lost): returns how many buffers came, 0 when none was waiting.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.received = 0;
        self.next_entry = 0;
        self.current = None;
        let gro = self.gro();
        for i in 0..BATCH {
            self.iov[i] = libc::iovec {
                iov_base: self.buf[i * self.slot..].as_mut_ptr().cast(),
                iov_len: self.slot,
            };
            let h = &mut self.hdrs[i];
            // SAFETY: msghdr is plain data.
            h.msg_hdr = unsafe { zeroed() };
            h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
            h.msg_hdr.msg_iov = &mut self.iov[i];
            h.msg_hdr.msg_iovlen = 1;
            if gro {
                h.msg_hdr.msg_control = self.cmsgs[i].as_mut_ptr().cast();
                h.msg_hdr.msg_controllen = size_of::<Cmsg>() as _;
            }
            h.msg_len = 0;
        }
        // SAFETY: every header points into buffers owned by self that outlive the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock {
                Ok(0)
            } else {
                Err(e)
            };
        }
        self.received = n as usize;
        Ok(self.received)
    }

    /// The next datagram of the last batch and its sender; `None` once the batch is handed
    /// out.
    pub fn next(&mut self) -> Option<(&mut [u8], SocketAddr)> {
        loop {
            if let Some((from, end, segment)) = self.current {
                if self.at < end {
                    let start = self.at;
                    self.at = (start + segment).min(end);
                    self.datagrams += 1;
                    return Some((&mut self.buf[start..self.at], from));
                }
            }
            if self.next_entry == self.received {
                self.current = None;
                return None;
            }
            let i = self.next_entry;
            self.next_entry += 1;
            self.current = self.entry(i);
            self.at = i * self.slot;
        }
    }

    /// Entry `i`'s sender, where its bytes end in `buf` and its segment size; `None` for an
    /// entry to skip: cut short (MSG_TRUNC), its segment size lost (MSG_CTRUNC), from no IP
    /// sender, or of datagrams over the largest taken.
    fn entry(&self, i: usize) -> Option<(SocketAddr, usize, usize)> {
        let h = &self.hdrs[i];
        let len = (h.msg_len as usize).min(self.slot);
        let segment = gro_segment(&h.msg_hdr).unwrap_or(len);
        let whole = h.msg_hdr.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) == 0;
        if !whole || !(1..=self.max_datagram).contains(&segment) {
            return None;
        }
        let from = sockaddr_to_std(&self.addrs[i])?;
        Some((from, i * self.slot + len, segment))
    }

    /// Datagrams handed out by [`Self::next`] since the start.
    pub fn datagrams(&self) -> u64 {
        self.datagrams
    }
}

/// Asks the kernel to coalesce the datagrams `fd` receives (UDP_GRO); false if it does not.
fn enable_gro(fd: RawFd) -> bool {
    let on: libc::c_int = 1;
    set_option(fd, libc::SOL_UDP, libc::UDP_GRO, &on).is_ok()
}

/// The segment size of a coalesced buffer, from its UDP_GRO control message.
fn gro_segment(h: &libc::msghdr) -> Option<usize> {
    if h.msg_control.is_null() {
        return None;
    }
    // SAFETY: `h` is a header the kernel filled: its control buffer and length describe the
    // control messages it wrote, which CMSG_FIRSTHDR and CMSG_NXTHDR walk within bounds.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                let size = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                return usize::try_from(size).ok();
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

/// Room for one control message carrying a `u16` (UDP_SEGMENT), 8-byte aligned.
type Cmsg = [u64; 4];

/// Collects outgoing datagrams, packed one after another in one buffer, and sends them with
/// `sendmmsg`; it is full at [`TX_BATCH`] datagrams or when the next might not fit. Consecutive
/// datagrams to one destination, all of one size but the last (a connection's burst), go as
/// one message with UDP_SEGMENT (GSO), up to [`GSO_MAX_BYTES`]: the kernel then carries them as
/// one buffer as far as it can, and a receiver with GRO gets them in one read.
pub struct BatchTx {
    /// Bytes of one datagram at most.
    slot: usize,
    buf: Box<[u8]>,
    /// Bytes of `buf` the queued datagrams take.
    used: usize,
    /// Each queued datagram's length; each starts where the one before it ends.
    lens: Vec<usize>,
    /// Each queued datagram's destination; converted to the kernel's form once per message
    /// (`names`), not once per datagram.
    dst: Vec<SocketAddr>,
    names: Box<[SockAddr]>,
    iov: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
    cmsgs: Box<[Cmsg]>,
    /// The first datagram of each message of the last `sendmmsg`.
    starts: Vec<usize>,
    /// Whether the kernel takes UDP_SEGMENT; cleared the first time it refuses segments that
    /// any path carries.
    gso: bool,
    /// Datagrams before this one go one per message: a GSO message of them was refused (their
    /// path's MTU is below their size; sent alone, the kernel fragments them, or, on a socket
    /// that never fragments, refuses those that are too large: path MTU probes).
    unsegmented_to: usize,
    /// Datagrams the kernel took since the start (a GSO message counts each of its segments).
    datagrams: u64,
}

impl BatchTx {
    /// Sends datagrams of up to `max_payload` bytes.
    pub fn new(max_payload: usize) -> Self {
        let slot = slot_for(max_payload);
        BatchTx {
            slot,
            buf: vec![0u8; TX_BYTES.max(8 * slot)].into_boxed_slice(),
            used: 0,
            lens: Vec::with_capacity(TX_BATCH),
            dst: Vec::with_capacity(TX_BATCH),
            names: (0..TX_BATCH)
                .map(|_| SockAddr::from(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))))
                .collect(),
            // SAFETY: these C structs are plain data, valid when zeroed.
            iov: (0..TX_BATCH).map(|_| unsafe { zeroed() }).collect(),
            hdrs: (0..TX_BATCH).map(|_| unsafe { zeroed() }).collect(),
            cmsgs: vec![[0u64; 4]; TX_BATCH].into_boxed_slice(),
            starts: Vec::with_capacity(TX_BATCH + 1),
            gso: true,
            unsegmented_to: 0,
            datagrams: 0,
        }
    }

    /// Datagrams queued.
    pub fn len(&self) -> usize {
        self.lens.len()
    }

    pub fn is_full(&self) -> bool {
        self.lens.len() == TX_BATCH || self.buf.len() - self.used < self.slot
    }

    /// The free room the next datagram is written into: room for the largest.
    pub fn next_slot(&mut self) -> &mut [u8] {
        &mut self.buf[self.used..self.used + self.slot]
    }

    /// Queues the `len` bytes written into [`Self::next_slot`] for `to`.
    pub fn commit(&mut self, len: usize, to: SocketAddr) {
        let len = len.min(self.slot);
        self.lens.push(len);
        self.dst.push(to);
        self.used += len;
    }

    /// The first queued datagram.
    pub fn first(&self) -> Option<(&[u8], SocketAddr)> {
        let to = *self.dst.first()?;
        Some((&self.buf[..self.lens[0]], to))
    }

    /// How many datagrams from `first` one GSO message takes: those that follow to the same
    /// destination, each of the first one's size, and at most one shorter to end it, as many
    /// as fit in [`GSO_MAX_BYTES`].
    fn run_from(&self, first: usize) -> usize {
        if !self.gso || first < self.unsegmented_to {
            return 1;
        }
        let size = self.lens[first];
        let mut k = 1;
        while first + k < self.lens.len()
            && self.dst[first + k] == self.dst[first]
            && self.lens[first + k - 1] == size
            && self.lens[first + k] <= size
            && (k + 1) * size <= GSO_MAX_BYTES
        {
            k += 1;
        }
        k
    }

    /// Sends what the kernel takes: `Ok(true)` when the queue is empty, `Ok(false)` when the
    /// socket is full and datagrams are left.
    pub fn flush(&mut self, fd: RawFd) -> io::Result<bool> {
        let mut off = 0;
        while off < self.lens.len() {
            self.starts.clear();
            let mut entry = off;
            let mut at: usize = self.lens[..off].iter().sum();
            while entry < self.lens.len() {
                let j = self.starts.len();
                self.starts.push(entry);
                let k = self.run_from(entry);
                for s in 0..k {
                    let i = entry + s;
                    self.iov[i] = libc::iovec {
                        iov_base: self.buf[at..].as_mut_ptr().cast(),
                        iov_len: self.lens[i],
                    };
                    at += self.lens[i];
                }
                let h = &mut self.hdrs[j];
                // SAFETY: msghdr is plain data.
                h.msg_hdr = unsafe { zeroed() };
                self.names[j] = SockAddr::from(self.dst[entry]);
                h.msg_hdr.msg_name = self.names[j].as_ptr() as *mut libc::c_void;
                h.msg_hdr.msg_namelen = self.names[j].len();
                h.msg_hdr.msg_iov = &mut self.iov[entry];
                h.msg_hdr.msg_iovlen = k;
                if k > 1 {
                    set_segment(h, &mut self.cmsgs[j], self.lens[entry]);
                }
                entry += k;
            }
            let count = self.starts.len();
            self.starts.push(entry);
            // SAFETY: every header points into buffers owned by self that outlive the call.
            let n = unsafe {
                libc::sendmmsg(fd, self.hdrs.as_mut_ptr(), count as u32, libc::MSG_DONTWAIT)
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock {
                    self.drop_front(off);
                    return Ok(false);
                }
                let segmented = self.starts[1] - self.starts[0] > 1;
                match refusal(segmented, e.raw_os_error(), self.lens[off]) {
                    Refusal::Unsegment => self.unsegmented_to = self.starts[1],
                    Refusal::NoGso => {
                        log::warn!("UDP segmentation offload refused ({e}): sending without it");
                        self.gso = false;
                    }
                    Refusal::Drop => off = self.starts[1],
                }
                continue;
            }
            let taken = self.starts[n as usize];
            self.datagrams += (taken - off) as u64;
            off = taken;
        }
        self.used = 0;
        self.lens.clear();
        self.dst.clear();
        self.unsegmented_to = 0;
        Ok(true)
    }

    /// Datagrams the kernel took since the start, each segment of a GSO message counted.
    pub fn datagrams(&self) -> u64 {
        self.datagrams
    }

    /// Forgets the first `k` queued datagrams.
    pub fn drop_front(&mut self, k: usize) {
        let k = k.min(self.lens.len());
        if k == 0 {
            return;
        }
        let from: usize = self.lens[..k].iter().sum();
        self.buf.copy_within(from..self.used, 0);
        self.used -= from;
        self.lens.drain(..k);
        self.dst.drain(..k);
        self.unsegmented_to = self.unsegmented_to.saturating_sub(k);
    }
}

/// What to do with a message `sendmmsg` refused.
#[derive(Debug, PartialEq)]
enum Refusal {
    /// Its segments are larger than the path's MTU: send its datagrams one per message (the
    /// kernel fragments them).
    Unsegment,
    /// The kernel or the device does not segment: one datagram per message from now on.
    NoGso,
    /// An error for its destination (an ICMP unreachable, say): drop it.
    Drop,
}

/// How to answer the error `errno` for a message, GSO (`segmented`) or not, of datagrams of
/// `segment` bytes. A path narrower than the segments is EMSGSIZE (Linux 5.10 and later) or, on
/// older kernels, EINVAL; EINVAL or EIO for segments any Ethernet path carries says the kernel or
/// the device cannot segment.
fn refusal(segmented: bool, errno: Option<i32>, segment: usize) -> Refusal {
    match errno {
        _ if !segmented => Refusal::Drop,
        Some(libc::EMSGSIZE) => Refusal::Unsegment,
        Some(libc::EIO | libc::EINVAL) if segment > ETHERNET_SEGMENT => Refusal::Unsegment,
        Some(libc::EIO | libc::EINVAL) => Refusal::NoGso,
        _ => Refusal::Drop,
    }
}

/// Attaches a UDP_SEGMENT control message of `size` to `h`, in `space`.
fn set_segment(h: &mut libc::mmsghdr, space: &mut Cmsg, size: usize) {
    h.msg_hdr.msg_control = space.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes a size.
    h.msg_hdr.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as _;
    // SAFETY: the control buffer is 8-byte aligned and holds CMSG_SPACE(2) bytes, so the
    // first header and its data fit in it.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = libc::UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), size as u16);
    }
}

/// The locked-memory limit (soft), in bytes; `u64::MAX` when unlimited.
pub fn memlock_limit() -> u64 {
    // SAFETY: rlimit is plain data and getrlimit only writes it.
    let mut r: libc::rlimit = unsafe { zeroed() };
    // SAFETY: a valid resource and a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } != 0 {
        return 0;
    }
    if r.rlim_cur == libc::RLIM_INFINITY {
        u64::MAX
    } else {
        r.rlim_cur
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    fn queue(tx: &mut BatchTx, len: usize, to: SocketAddr) {
        let slot = tx.next_slot();
        slot[..len].fill(len as u8);
        tx.commit(len, to);
    }

    #[test]
    fn a_burst_to_one_destination_is_one_message_up_to_its_first_short_datagram() {
        let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2000".parse().unwrap();
        let mut tx = BatchTx::new(1350);
        for (len, to) in [
            (1200, a),
            (1200, a),
            (700, a),
            (1200, a),
            (1200, b),
            (900, b),
            (900, b),
        ] {
            queue(&mut tx, len, to);
        }
        assert_eq!(
            tx.run_from(0),
            3,
            "two full-size and the short one that ends the run"
        );
        assert_eq!(
            tx.run_from(3),
            1,
            "the next destination starts a new message"
        );
        assert_eq!(tx.run_from(4), 2, "1200 then a shorter 900 ends it");
        assert_eq!(tx.run_from(6), 1);
        tx.gso = false;
        assert_eq!(tx.run_from(0), 1, "without GSO, one datagram per message");
    }

    #[test]
    fn a_run_of_large_datagrams_is_split_into_messages_of_at_most_the_gso_limit() {
        let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let mut tx = BatchTx::new(8952);
        for _ in 0..10 {
            queue(&mut tx, 8952, a);
        }
        // 7 × 8952 = 62,664 bytes fit in one UDP datagram; 8 would not.
        assert_eq!(tx.run_from(0), 7);
        assert_eq!(tx.run_from(7), 3, "the rest of the run");
    }

    /// The queued datagrams, as `first` would hand each out after the ones before it left.
    fn queued(tx: &BatchTx) -> Vec<(Vec<u8>, SocketAddr)> {
        let mut at = 0;
        (0..tx.lens.len())
            .map(|i| {
                at += tx.lens[i];
                (tx.buf[at - tx.lens[i]..at].to_vec(), tx.dst[i])
            })
            .collect()
    }

    #[test]
    fn the_send_batch_packs_datagrams_and_fills_by_count_or_by_bytes() {
        let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let mut small = BatchTx::new(8952);
        while !small.is_full() {
            queue(&mut small, 100, a);
        }
        assert_eq!(
            small.lens.len(),
            TX_BATCH,
            "small datagrams fill it by count"
        );
        assert_eq!(small.used, 100 * TX_BATCH, "packed one after another");

        let mut large = BatchTx::new(8952);
        while !large.is_full() {
            assert!(large.used + 8952 <= large.buf.len(), "room for the largest");
            queue(&mut large, 8952, a);
        }
        assert_eq!(
            large.lens.len(),
            large.buf.len() / 8952,
            "large ones by bytes"
        );
        assert!(large.lens.len() < TX_BATCH);
    }

    #[test]
    fn dropping_the_front_of_the_send_batch_keeps_the_rest_whole_and_in_order() {
        let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2000".parse().unwrap();
        let mut tx = BatchTx::new(1350);
        for (len, to) in [(1350, a), (40, b), (700, a), (1350, b), (90, a)] {
            queue(&mut tx, len, to);
        }
        let before = queued(&tx);
        tx.drop_front(2);
        assert_eq!(queued(&tx), before[2..], "the rest, moved to the front");
        assert_eq!(
            tx.first().map(|(d, to)| (d.to_vec(), to)),
            Some(before[2].clone())
        );
        queue(&mut tx, 300, b);
        assert_eq!(queued(&tx).last().map(|(d, _)| d.len()), Some(300));
        assert_eq!(
            tx.used,
            700 + 1350 + 90 + 300,
            "a datagram queued after the drop packs on"
        );
        tx.drop_front(10);
        assert!(
            tx.first().is_none() && tx.used == 0,
            "dropping more than queued empties it"
        );
    }

    fn mtu_discover(s: &Socket, level: libc::c_int, name: libc::c_int) -> libc::c_int {
        let mut v: libc::c_int = -1;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: a valid descriptor, and an int with its length for the kernel to fill.
        let r = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                level,
                name,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(r, 0, "{}", io::Error::last_os_error());
        v
    }

    /// The first bytes of the datagram `s` has waiting, within 5 seconds; `None` if none came.
    fn waiting(s: &Socket) -> Option<Vec<u8>> {
        let mut fd = libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the call's duration.
        if unsafe { libc::poll(&mut fd, 1, 5000) } != 1 {
            return None;
        }
        let mut buf = [0u8; 64];
        recv_now(s, &mut buf).map(|n| buf[..n].to_vec())
    }

    /// A group of `n` sockets on one port of 127.0.0.1, bound in order, and its address.
    fn group(n: usize) -> (Vec<Socket>, SocketAddr) {
        let first = reuseport_udp("127.0.0.1:0".parse().unwrap(), true).unwrap();
        let addr = first.local_addr().unwrap().as_socket().unwrap();
        let mut sockets = vec![first];
        sockets.extend((1..n).map(|_| reuseport_udp(addr, true).unwrap()));
        (sockets, addr)
    }

    /// Sends each datagram from one client socket and checks it reaches socket `to` and no
    /// other.
    fn lands(sockets: &[Socket], addr: SocketAddr, sent: &[(Vec<u8>, usize)]) {
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for (datagram, to) in sent {
            client.send_to(datagram, addr).unwrap();
            assert_eq!(
                waiting(&sockets[*to]).as_deref(),
                Some(&datagram[..]),
                "socket {to}"
            );
        }
        let mut buf = [0u8; 64];
        for (i, s) in sockets.iter().enumerate() {
            assert_eq!(
                recv_now(s, &mut buf),
                None,
                "socket {i} got a datagram meant for another"
            );
        }
    }

    #[test]
    fn datagrams_reach_the_socket_their_destination_connection_id_names() {
        // 7 sockets: a word's remainder of 7 depends on its bytes' order (0x12345678 is 5
        // big-endian and 0 little-endian), so the kernel and `shard_of` must agree on it.
        let (sockets, addr) = group(7);
        steer_by_connection_id(&sockets[0], 7).unwrap();
        // The same client socket throughout: the kernel's hash alone would pick one socket.
        let mut sent = Vec::new();
        let words = [
            0u32,
            1,
            6,
            7,
            0x100,
            0x1_0000,
            0x1234_5678,
            0xffff_ffff,
            0x8000_0000,
        ];
        for word in words {
            let w = word.to_be_bytes();
            let to = usize::from(crate::endpoint::shard_of(&w, 7).unwrap().0);
            assert_eq!(to as u32, word % 7);
            // A short header: the connection ID right after the first byte.
            sent.push((vec![0x40, w[0], w[1], w[2], w[3], 0xaa], to));
            // A long header (an Initial): after the version and the connection ID's length.
            sent.push((
                vec![
                    0xc0, 0, 0, 0, 1, 8, w[0], w[1], w[2], w[3], 0, 0, 0, 0, 0xbb,
                ],
                to,
            ));
        }
        // Too short to hold the word, in either form: the first socket.
        sent.push((vec![0x40, 2, 2], 0));
        sent.push((vec![0xc0, 0, 0, 0, 1, 8, 0, 0, 2], 0));
        lands(&sockets, addr, &sent);
    }

    #[test]
    fn steering_is_checked_and_left_to_the_hash_when_another_socket_shares_the_port() {
        let (sockets, addr) = group(3);
        steer(&sockets, addr).unwrap();
        lands(&sockets, addr, &[(vec![0x40, 0, 0, 0, 2, 1], 2)]);

        // A socket of someone else's joined the port first: index 0 is not shard 0's.
        let (mut sockets, addr) = group(1);
        sockets.extend((0..2).map(|_| reuseport_udp(addr, true).unwrap()));
        let outsider = sockets.remove(0);
        let why = steer(&sockets, addr).unwrap_err();
        assert!(why.contains("joined port"), "{why}");
        // The hash decides again: from one client socket, every datagram reaches one socket of
        // the three, whatever its connection ID names.
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let all = [&outsider, &sockets[0], &sockets[1]];
        // The probes that went astray wait where they landed: drained first.
        let mut buf = [0u8; 64];
        for s in all {
            while recv_now(s, &mut buf).is_some() {}
        }
        let mut reached = Vec::new();
        for word in 0u8..6 {
            let datagram = [0x40, 0, 0, 0, word, 0xcc];
            client.send_to(&datagram, addr).unwrap();
            let mut fds = all.map(|s| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
            // SAFETY: three valid pollfds for the call's duration.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), 3, 5000) };
            assert_eq!(ready, 1, "the datagram reached one socket of the group");
            let i = fds.iter().position(|f| f.revents != 0).unwrap();
            assert_eq!(waiting(all[i]).as_deref(), Some(&datagram[..]));
            reached.push(i);
        }
        assert!(reached.windows(2).all(|w| w[0] == w[1]), "{reached:?}");
    }

    #[test]
    fn a_socket_for_path_mtu_discovery_never_fragments_and_one_without_may() {
        let (v4, v6) = ("127.0.0.1:0".parse().unwrap(), "[::]:0".parse().unwrap());
        let probe = reuseport_udp(v4, false).unwrap();
        assert_eq!(
            mtu_discover(&probe, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER),
            libc::IP_PMTUDISC_PROBE
        );
        let plain = reuseport_udp(v4, true).unwrap();
        assert_ne!(
            mtu_discover(&plain, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER),
            libc::IP_PMTUDISC_PROBE
        );
        // A host without IPv6 cannot make the dual-stack socket; IPv4 was checked above.
        let Ok(dual) = reuseport_udp(v6, false) else {
            eprintln!("no IPv6 on this host: the dual-stack socket was not checked");
            return;
        };
        assert_eq!(
            mtu_discover(&dual, libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER),
            libc::IPV6_PMTUDISC_PROBE
        );
        assert_eq!(
            mtu_discover(&dual, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER),
            libc::IP_PMTUDISC_PROBE
        );
    }

    #[test]
    fn datagrams_up_to_the_configured_payload_arrive_whole_through_both_batches() {
        let rx_socket = reuseport_udp("127.0.0.1:0".parse().unwrap(), true).unwrap();
        let to = rx_socket.local_addr().unwrap().as_socket().unwrap();
        let tx_socket = reuseport_udp("127.0.0.1:0".parse().unwrap(), true).unwrap();
        let mut tx = BatchTx::new(8952);
        let lens = [8952, 8952, 8952, 8952, 8952, 8952, 8952, 8952, 8952, 3000];
        for &len in &lens {
            queue(&mut tx, len, to);
        }
        assert!(tx.flush(tx_socket.as_raw_fd()).unwrap());
        let got = receive(&rx_socket, 8952, lens.len());
        assert_eq!(got, lens, "every datagram whole, in order");
    }

    /// The lengths of the first `count` datagrams `socket` receives through a [`BatchRx`]
    /// (fewer if they do not come within 5 seconds), each checked to hold the bytes
    /// [`queue`] wrote.
    fn receive(socket: &Socket, max_payload: usize, count: usize) -> Vec<usize> {
        let mut rx = BatchRx::new(socket.as_raw_fd(), max_payload);
        receive_with(&mut rx, socket, count).0
    }

    /// As [`receive`], through `rx`, with the number of buffers they came in.
    fn receive_with(rx: &mut BatchRx, socket: &Socket, count: usize) -> (Vec<usize>, usize) {
        let mut got = Vec::new();
        let mut buffers = 0;
        let by = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while got.len() < count && std::time::Instant::now() < by {
            let n = rx.recv(socket.as_raw_fd()).unwrap();
            buffers += n;
            while let Some((d, _)) = rx.next() {
                assert!(
                    d.iter().all(|&b| b == d.len() as u8),
                    "a datagram's own bytes"
                );
                got.push(d.len());
            }
            if n == 0 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        (got, buffers)
    }

    #[test]
    fn datagrams_over_the_largest_taken_are_dropped_with_or_without_gro() {
        for gro in [false, true] {
            let rx_socket = reuseport_udp("127.0.0.1:0".parse().unwrap(), true).unwrap();
            let to = rx_socket.local_addr().unwrap().as_socket().unwrap();
            let tx_socket = reuseport_udp("127.0.0.1:0".parse().unwrap(), true).unwrap();
            if gro {
                assert!(enable_gro(rx_socket.as_raw_fd()), "Linux takes UDP_GRO");
            }
            let mut rx = BatchRx::with_gro(1350, gro);
            let mut tx = BatchTx::new(4000);
            // One too large alone, a GSO run of too large ones, then one that fits.
            for lens in [&[3000][..], &[1600, 1600, 1600], &[1200]] {
                for &len in lens {
                    queue(&mut tx, len, to);
                }
                assert!(tx.flush(tx_socket.as_raw_fd()).unwrap());
            }
            let (got, _) = receive_with(&mut rx, &rx_socket, 1);
            assert_eq!(got, [1200], "only the datagram that fits (GRO {gro})");
        }
    }

    #[test]
    fn each_refusal_of_a_message_has_its_answer() {
        use Refusal::*;
        let cases = [
            (true, libc::EMSGSIZE, 1300, Unsegment),
            (true, libc::EMSGSIZE, 8952, Unsegment),
            (true, libc::EINVAL, 8952, Unsegment),
            (true, libc::EIO, 8952, Unsegment),
            (true, libc::EINVAL, 1300, NoGso),
            (true, libc::EIO, 1300, NoGso),
            (true, libc::ECONNREFUSED, 1300, Drop),
            (false, libc::EMSGSIZE, 8952, Drop),
            (false, libc::EINVAL, 1300, Drop),
        ];
        for (segmented, errno, segment, answer) in cases {
            assert_eq!(
                refusal(segmented, Some(errno), segment),
                answer,
                "segmented {segmented}, errno {errno}, segments of {segment}"
            );
        }
    }

    #[test]
    fn a_burst_sent_as_one_gso_message_is_received_as_one_buffer_and_split_whole() {
        let rx_socket = reuseport_udp("127.0.0.1:0".parse().unwrap(), true).unwrap();
        let to = rx_socket.local_addr().unwrap().as_socket().unwrap();
        let tx_socket = reuseport_udp("127.0.0.1:0".parse().unwrap(), true).unwrap();
        let mut rx = BatchRx::new(rx_socket.as_raw_fd(), 1350);
        assert!(rx.gro(), "Linux takes UDP_GRO (since 5.0)");
        let mut tx = BatchTx::new(1350);
        let lens = [1300, 1300, 1300, 1300, 1300, 1300, 1300, 1300, 1300, 800];
        for &len in &lens {
            queue(&mut tx, len, to);
        }
        assert!(tx.flush(tx_socket.as_raw_fd()).unwrap());
        let (got, buffers) = receive_with(&mut rx, &rx_socket, lens.len());
        assert_eq!(got, lens, "every datagram whole, in order");
        assert_eq!(buffers, 1, "the GSO message arrives as one buffer");
        assert_eq!(
            tx.datagrams(),
            10,
            "the GSO message's segments count one by one"
        );
        assert_eq!(rx.datagrams(), 10);
        // A datagram sent alone comes alone, its segment size its length.
        queue(&mut tx, 300, to);
        assert!(tx.flush(tx_socket.as_raw_fd()).unwrap());
        assert_eq!(receive_with(&mut rx, &rx_socket, 1), (vec![300], 1));
        assert_eq!((tx.datagrams(), rx.datagrams()), (11, 11));
    }

    /// A receiving socket, and a sending one whose GSO messages the kernel refuses: Linux
    /// takes no UDP_SEGMENT on a socket that sends without checksums (SO_NO_CHECK), with
    /// EINVAL, the error of a device that cannot segment (and, before Linux 5.10, of a path
    /// narrower than the segments).
    fn refusing_gso() -> (Socket, SocketAddr, Socket) {
        let rx_socket = reuseport_udp("127.0.0.1:0".parse().unwrap(), true).unwrap();
        let to = rx_socket.local_addr().unwrap().as_socket().unwrap();
        let tx_socket = reuseport_udp("127.0.0.1:0".parse().unwrap(), true).unwrap();
        let on: libc::c_int = 1;
        // SAFETY: a valid socket, option and pointer to an int of the given size.
        let r = unsafe {
            libc::setsockopt(
                tx_socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_NO_CHECK,
                (&on as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "SO_NO_CHECK: {}", io::Error::last_os_error());
        (rx_socket, to, tx_socket)
    }

    #[test]
    fn a_refused_gso_message_of_ethernet_sized_segments_turns_gso_off_and_loses_nothing() {
        let (rx_socket, to, tx_socket) = refusing_gso();
        let mut tx = BatchTx::new(1350);
        let lens = [1300, 1300, 1300, 1300, 700];
        for &len in &lens {
            queue(&mut tx, len, to);
        }
        assert!(tx.flush(tx_socket.as_raw_fd()).unwrap());
        assert!(
            !tx.gso,
            "segments any path carries were refused: no GSO from now on"
        );
        // The next batch goes one datagram per message from the start.
        for &len in &lens {
            queue(&mut tx, len, to);
        }
        assert!(tx.flush(tx_socket.as_raw_fd()).unwrap());
        let got = receive(&rx_socket, 1350, 2 * lens.len());
        assert_eq!(got, [lens, lens].concat(), "every datagram whole, in order");
        assert_eq!(
            tx.datagrams(),
            10,
            "the refused message's datagrams count once, when sent"
        );
    }

    #[test]
    fn a_refused_gso_message_of_jumbo_segments_goes_one_datagram_per_message_and_gso_stays_on() {
        let (rx_socket, to, tx_socket) = refusing_gso();
        let mut tx = BatchTx::new(8952);
        let lens = [8952, 8952, 8952, 3000];
        for &len in &lens {
            queue(&mut tx, len, to);
        }
        assert!(tx.flush(tx_socket.as_raw_fd()).unwrap());
        assert!(
            tx.gso,
            "segments over an Ethernet frame say the path is narrow, not the kernel"
        );
        assert_eq!(
            tx.unsegmented_to, 0,
            "only the refused batch went unsegmented"
        );
        let got = receive(&rx_socket, 8952, lens.len());
        assert_eq!(got, lens, "every datagram whole, in order");
    }

    #[test]
    fn every_datagram_of_a_segmented_batch_arrives_whole_and_in_order() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let to = rx.local_addr().unwrap();
        let other = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx_socket = reuseport_udp("127.0.0.1:0".parse().unwrap(), true).unwrap();
        let mut tx = BatchTx::new(1350);
        let lens = [1300, 1300, 1300, 400, 1300, 1300, 1000];
        for (i, &len) in lens.iter().enumerate() {
            // One datagram to another destination in the middle splits the runs.
            let dest = if i == 4 {
                other.local_addr().unwrap()
            } else {
                to
            };
            queue(&mut tx, len, dest);
        }
        assert!(tx.flush(tx_socket.as_raw_fd()).unwrap());
        let mut buf = [0u8; 2048];
        for &len in lens
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 4)
            .map(|(_, l)| l)
        {
            let n = rx.recv(&mut buf).expect("a datagram");
            assert_eq!(n, len, "each datagram whole, as queued");
            assert!(buf[..n].iter().all(|&b| b == len as u8));
        }
        let n = other
            .recv(&mut buf)
            .expect("the datagram to the other destination");
        assert_eq!(n, 1300);
    }
}
