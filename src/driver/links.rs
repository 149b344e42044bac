//! Peer links on a shard's connections (PROTOCOL.md 9.2, 9.10): the driver's half of the core's
//! "Peer links" API.
//!
//! - Opening: an accepted connection whose handshake ends with ALPN `meshgate-peer` becomes a
//!   link ([`Shard::handle_link_accepted`]); a dial the shard asks for
//!   ([`Shard::poll_dial`]) becomes a client connection from the shard's socket, whose end of
//!   the handshake is reported ([`Shard::handle_link_connected`]).
//! - Input: the control stream (0) and the data stream (4) are read while the shard wants
//!   them; a link whose input it did not take is read again each turn. Any other stream, or
//!   the end of one of the two, is a protocol error that closes the connection.
//! - Output: each link the shard names gets its control output, then its data output; what
//!   the streams do not take waits for room with the sessions' output.
//! - Closing: a link the shard closes flushes its control output (its DISCONNECT), then its
//!   connection closes with the reason's code, as a session's does; the shard hears of the
//!   end of every link's connection, whoever closed it ([`Shard::handle_link_closed`], from
//!   `Driver::detach`).
//!
//! [`Shard::handle_link_accepted`]: meshgate_shard::Shard::handle_link_accepted
//! [`Shard::poll_dial`]: meshgate_shard::Shard::poll_dial
//! [`Shard::handle_link_connected`]: meshgate_shard::Shard::handle_link_connected
//! [`Shard::handle_link_closed`]: meshgate_shard::Shard::handle_link_closed

use std::net::{SocketAddr, ToSocketAddrs};

use meshgate_shard::ids::LinkKey;
use meshgate_shard::wire::{LinkStream, Reason};
use meshgate_shard::{DialRequest, LinkEnd, Time};

use super::{Driver, Now, CLOSE_GRACE};
use crate::endpoint::{ConnHandle, Read, Write};
use crate::mailbox::Body;

const STREAMS: [LinkStream; 2] = [LinkStream::Control, LinkStream::Data];

impl Driver {
    /// Opens the link of a connection whose handshake has just ended: an accepted peer
    /// connection, or a dial.
    pub(super) fn open_link(&mut self, now: Time, conn: ConnHandle) {
        if self.endpoint.needs_link(conn) {
            match nonce().and_then(|n| self.shard.handle_link_accepted(now, n)) {
                Some(key) => self.endpoint.attach_link(conn, key),
                // No mesh (the ALPN is offered only with one), or no randomness.
                None => self.close_conn(conn, Reason::ProtocolError),
            }
        } else if let Some(key) = self.endpoint.newly_connected(conn) {
            match nonce() {
                Some(n) => self.shard.handle_link_connected(now, key, n),
                None => self.close_conn(conn, Reason::ProtocolError),
            }
        }
    }

    /// Hands the link's streams' bytes to the shard while it takes input; when it does not,
    /// the bytes wait in quiche (whose flow control holds the peer back) and the link is read
    /// again next turn.
    pub(super) fn read_link(&mut self, now: Time, conn: ConnHandle, key: LinkKey) {
        let Some(c) = self.endpoint.get_mut(conn) else {
            return;
        };
        if !c.is_established() {
            return;
        }
        if c.has_foreign_link_stream() {
            log::debug!(
                "shard {}: a peer opened a stream links do not use",
                self.id.0
            );
            self.close_conn(conn, Reason::ProtocolError);
            return;
        }
        let was_paused = c.input_paused;
        c.input_paused = false;
        let mut ended = false;
        'streams: for stream in STREAMS {
            while c.link_readable(stream) {
                if !self.shard.wants_link_input(key, stream) {
                    c.input_paused = true;
                    break;
                }
                match c.read_link(stream, &mut self.scratch) {
                    Some(Read::Data { len, fin }) => {
                        self.shard
                            .handle_link_data(now, key, stream, &self.scratch[..len]);
                        if fin {
                            ended = true;
                            break 'streams;
                        }
                    }
                    None => break,
                    Some(Read::Reset) => {
                        ended = true;
                        break 'streams;
                    }
                    Some(Read::Failed(e)) => {
                        log::debug!("shard {}: link stream_recv: {e}", self.id.0);
                        break;
                    }
                }
            }
        }
        if c.input_paused && !was_paused {
            self.paused_links.push(conn);
        }
        if ended {
            // A link's streams last as long as the link: one that ends cuts the link.
            self.close_conn(conn, Reason::ProtocolError);
        }
    }

    /// Reads again the links whose input the shard did not take last time.
    pub(super) fn resume_links(&mut self, now: Time) {
        for conn in std::mem::take(&mut self.paused_links) {
            let Some(c) = self.endpoint.get_mut(conn) else {
                continue;
            };
            c.input_paused = false;
            if let Some(key) = c.link() {
                self.read_link(now, conn, key);
            }
        }
    }

    /// Drains the shard's link outputs: links with bytes to send, links to close, dials to
    /// make. Returns whether there was any.
    pub(super) fn pump_links(&mut self, now: Now) -> bool {
        let mut any = false;
        while let Some(key) = self.shard.poll_link_ready() {
            self.write_link(now.time, key);
            any = true;
        }
        while let Some((key, reason)) = self.shard.poll_link_close() {
            any = true;
            match self.endpoint.conn_of_link(key) {
                Some(conn) => {
                    // The DISCONNECT the shard queued (it names no link ready for it).
                    self.write_link(now.time, key);
                    if let Some(c) = self.endpoint.get_mut(conn) {
                        c.close_after_flush = Some((reason.into(), now.at + CLOSE_GRACE));
                    }
                    self.mark_dirty(conn);
                }
                // A dial still waiting for its address.
                None => {
                    let end = LinkEnd::Closed { code: None };
                    self.shard.handle_link_closed(now.time, key, end);
                }
            }
        }
        while let Some(dial) = self.shard.poll_dial() {
            self.dial(now.time, dial);
            any = true;
        }
        any
    }

    /// Writes the link's control output, then its data output, to its streams; what they do
    /// not take waits for room. A paused input is read again once the shard takes it.
    pub(super) fn write_link(&mut self, now: Time, key: LinkKey) {
        let Some(conn) = self.endpoint.conn_of_link(key) else {
            return;
        };
        let Some(c) = self.endpoint.get_mut(conn) else {
            return;
        };
        let mut blocked = false;
        for stream in STREAMS {
            let out = self.shard.link_output(key, stream);
            if out.is_empty() {
                continue;
            }
            let len = out.len();
            match c.write_link(stream, out) {
                Some(Write::Sent(n)) => {
                    self.shard.consume_link_output(key, stream, n);
                    blocked |= n < len;
                }
                None => blocked = true,
                Some(Write::Unsendable) => {
                    // The dialer has not opened the stream (it never wrote on it), or asked
                    // the gateway to stop sending on it: what is queued cannot be sent.
                    self.shard.consume_link_output(key, stream, len);
                }
                Some(Write::Failed(e)) => {
                    log::debug!("shard {}: link stream_send: {e}", self.id.0);
                }
            }
        }
        if blocked && !c.blocked {
            c.blocked = true;
            self.blocked.push(conn);
        }
        let paused = c.input_paused;
        self.mark_dirty(conn);
        if paused && STREAMS.iter().any(|&s| self.shard.wants_link_input(key, s)) {
            if let Some(c) = self.endpoint.get_mut(conn) {
                c.input_paused = false;
            }
            self.read_link(now, conn, key);
        }
    }

    /// Dials a peer for the shard: at once for an IP address, after a helper thread resolved a
    /// host name otherwise (so that the shard never blocks on DNS).
    fn dial(&mut self, now: Time, dial: DialRequest) {
        if self.stop_by.is_some() {
            self.shard
                .handle_link_closed(now, dial.link, LinkEnd::DialFailed);
            return;
        }
        if let Ok(to) = dial.addr.parse::<SocketAddr>() {
            self.dial_resolved(now, dial.link, Some(to));
            return;
        }
        let back = self.mailbox.return_address();
        let local = self.endpoint.local();
        let link = dial.link;
        let resolver = std::thread::Builder::new()
            .name("meshgate-resolve".into())
            .spawn(move || {
                let addr = dial
                    .addr
                    .to_socket_addrs()
                    .ok()
                    .and_then(|mut found| found.find_map(|to| reachable(local, to)));
                back.post(Body::Resolved { link, addr });
            });
        if let Err(e) = resolver {
            log::warn!("shard {}: cannot start a resolver thread: {e}", self.id.0);
            self.shard
                .handle_link_closed(now, link, LinkEnd::DialFailed);
        }
    }

    /// Makes a dial's connection once its address is known; `None`, an address the shard's
    /// socket cannot reach ([`reachable`]), or a shard that began stopping meanwhile fails the
    /// dial.
    pub(super) fn dial_resolved(&mut self, now: Time, link: LinkKey, to: Option<SocketAddr>) {
        // A link the shard closed meanwhile (its dial timed out) takes no input any more.
        if !self.shard.wants_link_input(link, LinkStream::Control) {
            return;
        }
        if self.stop_by.is_some() {
            self.shard
                .handle_link_closed(now, link, LinkEnd::DialFailed);
            return;
        }
        let conn = to
            .and_then(|to| reachable(self.endpoint.local(), to))
            .and_then(|to| self.endpoint.connect(now, to, link));
        match conn {
            Some(conn) => self.mark_dirty(conn),
            None => self
                .shard
                .handle_link_closed(now, link, LinkEnd::DialFailed),
        }
    }

    /// Closes a connection at once with the application code of `reason`; its link (if any)
    /// ends when the connection is seen closing.
    fn close_conn(&mut self, conn: ConnHandle, reason: Reason) {
        if let Some(c) = self.endpoint.get_mut(conn) {
            c.close(true, reason.close_code(), reason.as_str().as_bytes());
        }
        self.mark_dirty(conn);
    }
}

/// The address by which a socket bound to `local` reaches `to`: `to` itself in the same IP
/// version; an IPv4 address as IPv4-mapped IPv6 from a socket bound to `::` (dual-stack), and
/// an IPv4-mapped one as IPv4 from an IPv4 socket; `None` otherwise.
fn reachable(local: SocketAddr, to: SocketAddr) -> Option<SocketAddr> {
    match (local, to) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) | (SocketAddr::V6(_), SocketAddr::V6(_)) => Some(to),
        (SocketAddr::V6(l), SocketAddr::V4(t)) if l.ip().is_unspecified() => {
            Some(SocketAddr::new(t.ip().to_ipv6_mapped().into(), t.port()))
        }
        (SocketAddr::V4(_), SocketAddr::V6(t)) => t
            .ip()
            .to_ipv4_mapped()
            .map(|ip| SocketAddr::new(ip.into(), t.port())),
        (SocketAddr::V6(_), SocketAddr::V4(_)) => None,
    }
}

/// 32 random bytes for a link's handshake.
fn nonce() -> Option<[u8; 32]> {
    let mut nonce = [0u8; 32];
    getrandom::getrandom(&mut nonce).ok()?;
    Some(nonce)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("an address")
    }

    #[test]
    fn a_dial_goes_to_an_address_of_the_sockets_ip_version_or_a_mapped_one() {
        let v4 = addr("127.0.0.1:9443");
        let any6 = addr("[::]:9443");
        let lo6 = addr("[::1]:9443");
        assert_eq!(reachable(v4, addr("10.0.0.1:1")), Some(addr("10.0.0.1:1")));
        assert_eq!(reachable(lo6, addr("[::2]:1")), Some(addr("[::2]:1")));
        assert_eq!(
            reachable(any6, addr("10.0.0.1:1")),
            Some(addr("[::ffff:10.0.0.1]:1"))
        );
        assert_eq!(reachable(lo6, addr("10.0.0.1:1")), None, "not dual-stack");
        assert_eq!(
            reachable(v4, addr("[::ffff:10.0.0.1]:1")),
            Some(addr("10.0.0.1:1"))
        );
        assert_eq!(reachable(v4, addr("[::2]:1")), None);
    }
}
