//! The backends' next hops in the kernel's neighbour table. The data path
//! takes a backend's MAC address from `bpf_fib_lookup`, which only reads the
//! neighbour table: it never resolves an address, and forwarding from XDP
//! never refreshes an entry, so the kernel would let an unused entry go
//! stale and collect it. For every backend the daemon asks the FIB for the
//! next hop (the backend itself when on-link, else the gateway) and makes
//! that neighbour entry "managed" (Linux 5.16): the kernel resolves it at
//! once and keeps it resolved while it exists. Entries an operator made
//! permanent (or that need no ARP) are left as they are; those the daemon
//! made managed are removed on `lb stop` (not when their backend is
//! removed: its connections keep flowing to it).
use std::collections::BTreeSet;
use std::io;
use std::net::IpAddr;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use netlink_packet_route::{
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourMessage, NeighbourState,
    },
    route::{RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteType},
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// A neighbour: an address on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NextHop {
    pub ifindex: u32,
    pub addr: IpAddr,
}

/// A route netlink socket.
pub struct Rtnl {
    sock: Socket,
    seq: u32,
}

impl Rtnl {
    pub fn new() -> io::Result<Self> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(Rtnl { sock, seq: 0 })
    }

    /// Sends `msg` and collects the replies up to the kernel's
    /// acknowledgement; a negative acknowledgement is the error.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = self.seq;
        let mut req = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        req.finalize();
        let mut buf = vec![0; req.header.length as usize];
        req.serialize(&mut buf);
        self.sock.send(&buf, 0)?;
        let mut replies = Vec::new();
        let mut rx = vec![0u8; 16384];
        loop {
            let n = self.sock.recv(&mut &mut rx[..], 0)?;
            let mut off = 0;
            while off < n {
                let msg: NetlinkMessage<RouteNetlinkMessage> =
                    NetlinkMessage::deserialize(&rx[off..n])
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = msg.header.length as usize;
                if msg.header.sequence_number == self.seq {
                    match msg.payload {
                        NetlinkPayload::Error(e) => {
                            return match e.code {
                                None => Ok(replies),
                                Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                            };
                        }
                        NetlinkPayload::Done(_) => return Ok(replies),
                        NetlinkPayload::InnerMessage(m) => replies.push(m),
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                off += len;
            }
        }
    }

    /// The next hops the FIB gives for `dst` (several on a multipath route;
    /// none when it is local, or not routed to a next hop).
    pub fn next_hops(&mut self, dst: IpAddr) -> io::Result<Vec<NextHop>> {
        let mut msg = RouteMessage::default();
        // FIB_MATCH: the whole route that matches, every path of a
        // multipath route, not only the path this one lookup would take.
        msg.header = RouteHeader {
            address_family: family(dst),
            destination_prefix_length: if dst.is_ipv4() { 32 } else { 128 },
            flags: RouteFlags::FibMatch,
            ..RouteHeader::default()
        };
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(dst)));
        let mut hops = Vec::new();
        for reply in self.request(RouteNetlinkMessage::GetRoute(msg), 0)? {
            let RouteNetlinkMessage::NewRoute(route) = reply else {
                continue;
            };
            // Only a unicast route has a next hop to resolve (a backend on
            // this host is local; a blackhole or unreachable route has none).
            if route.header.kind != RouteType::Unicast {
                return Ok(Vec::new());
            }
            let mut oif = None;
            let mut gateway = None;
            for a in &route.attributes {
                match a {
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Gateway(g) => gateway = ip_of(g),
                    RouteAttribute::MultiPath(paths) => {
                        for p in paths {
                            let gw = p.attributes.iter().find_map(|a| match a {
                                RouteAttribute::Gateway(g) => ip_of(g),
                                _ => None,
                            });
                            hops.push(NextHop {
                                ifindex: p.interface_index,
                                addr: gw.unwrap_or(dst),
                            });
                        }
                    }
                    _ => {}
                }
            }
            if let Some(ifindex) = oif {
                hops.push(NextHop {
                    ifindex,
                    addr: gateway.unwrap_or(dst),
                });
            }
        }
        Ok(hops)
    }

    /// The state of the neighbour entry for `nh`, if there is one.
    pub fn neighbour(&mut self, nh: &NextHop) -> io::Result<Option<(NeighbourState, bool)>> {
        match self.request(RouteNetlinkMessage::GetNeighbour(neigh_msg(nh)), 0) {
            Ok(replies) => Ok(replies.into_iter().find_map(|r| match r {
                RouteNetlinkMessage::NewNeighbour(n) => {
                    let managed = n.attributes.iter().any(|a| {
                        matches!(a, NeighbourAttribute::ExtFlags(f)
                            if f.contains(NeighbourExtFlags::Managed))
                    });
                    Some((n.header.state, managed))
                }
                _ => None,
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Makes the neighbour entry of `nh` managed: the kernel resolves it
    /// and keeps it resolved (as `ip neigh replace ADDR dev DEV managed`).
    pub fn manage(&mut self, nh: &NextHop) -> io::Result<()> {
        let mut msg = neigh_msg(nh);
        msg.attributes
            .push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
        self.request(
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_REPLACE | NLM_F_CREATE,
        )
        .map(drop)
    }

    /// Removes the neighbour entry of `nh` (gone already: fine).
    pub fn forget(&mut self, nh: &NextHop) -> io::Result<()> {
        match self.request(RouteNetlinkMessage::DelNeighbour(neigh_msg(nh)), 0) {
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(e),
            _ => Ok(()),
        }
    }
}

fn family(a: IpAddr) -> AddressFamily {
    if a.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

fn neigh_msg(nh: &NextHop) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family(nh.addr);
    msg.header.ifindex = nh.ifindex;
    msg.header.state = NeighbourState::None;
    msg.attributes
        .push(NeighbourAttribute::Destination(match nh.addr {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        }));
    msg
}

/// What one pass over the backends did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NeighbourReport {
    /// Next hops made managed in this pass.
    pub managed: Vec<NextHop>,
    /// Backends whose next hop could not be found or managed, with why.
    pub failed: Vec<(IpAddr, String)>,
}

/// The next hops the daemon made managed, kept across passes so that it
/// removes only its own entries.
#[derive(Default)]
pub struct Neighbours {
    ours: BTreeSet<NextHop>,
}

impl Neighbours {
    /// Makes the next hop of every backend in `backends` managed, again
    /// where an entry went missing. Permanent and no-ARP entries (an
    /// operator's) are left alone; an entry already managed (by an earlier
    /// daemon after a restart) is taken as this daemon's. Entries made for
    /// backends since removed stay until `forget_all`: their connections
    /// may still flow.
    pub fn sync(&mut self, rtnl: &mut Rtnl, backends: &[IpAddr]) -> NeighbourReport {
        let mut report = NeighbourReport::default();
        let mut wanted = BTreeSet::new();
        let unique: BTreeSet<IpAddr> = backends.iter().copied().collect();
        for b in unique {
            match rtnl.next_hops(b) {
                // Local, or no unicast route: nothing to resolve (a backend
                // with no route at all shows up as `drop_no_route`).
                Ok(hops) => wanted.extend(hops),
                Err(e) => report.failed.push((b, format!("route lookup: {e}"))),
            }
        }
        for nh in &wanted {
            // Every pass looks again: an entry may have been flushed (the
            // link went down and up, `ip neigh flush`) since it was made.
            match rtnl.neighbour(nh) {
                Ok(Some((NeighbourState::Permanent | NeighbourState::Noarp, _))) => continue,
                Ok(Some((_, true))) => {
                    // Managed already: by this daemon, or by an earlier one
                    // of this instance (after a restart); `lb stop` removes it.
                    self.ours.insert(*nh);
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    report
                        .failed
                        .push((nh.addr, format!("neighbour lookup: {e}")));
                    continue;
                }
            }
            match rtnl.manage(nh) {
                Ok(()) => {
                    self.ours.insert(*nh);
                    report.managed.push(*nh);
                }
                Err(e) => report.failed.push((nh.addr, format!("managing it: {e}"))),
            }
        }
        // Entries of next hops no backend uses now stay: a removed
        // backend's connections keep flowing to it from the flow table.
        report
    }

    /// Removes every entry this daemon made managed (on `lb stop`).
    pub fn forget_all(&mut self, rtnl: &mut Rtnl) {
        for nh in std::mem::take(&mut self.ours) {
            let _ = rtnl.forget(&nh);
        }
    }
}

/// What the keeper thread is told.
enum Keep {
    /// The backends now (after a start or a reload).
    Backends(Vec<IpAddr>),
    /// `lb stop`: remove the entries this daemon made, then say so.
    Stop(std::sync::mpsc::Sender<()>),
}

/// A thread that keeps the backends' next hops managed: on every change of
/// the backends, and every `RESYNC` to follow route changes. Netlink calls
/// block, and with tens of thousands of backends a pass takes a while, so
/// they stay off the daemon's event loop.
pub struct NeighbourKeeper {
    tx: std::sync::mpsc::Sender<Keep>,
}

/// How often the keeper looks the routes up again with no change of
/// backends (a route to a backend may change under the daemon).
pub const RESYNC: std::time::Duration = std::time::Duration::from_secs(60);

impl NeighbourKeeper {
    /// Starts the thread; `None` (with a warning) when no route netlink
    /// socket can be opened.
    pub fn spawn() -> Option<Self> {
        let mut rtnl = match Rtnl::new() {
            Ok(r) => r,
            Err(e) => {
                log::warn!("cannot open a route netlink socket ({e}): backends' next hops will not be resolved by the daemon");
                return None;
            }
        };
        let (tx, rx) = std::sync::mpsc::channel::<Keep>();
        std::thread::Builder::new()
            .name("neighbours".into())
            .spawn(move || {
                let mut ours = Neighbours::default();
                let mut backends = Vec::new();
                let mut failed_before: BTreeSet<IpAddr> = BTreeSet::new();
                loop {
                    match rx.recv_timeout(RESYNC) {
                        Ok(Keep::Backends(b)) => backends = b,
                        Ok(Keep::Stop(done)) => {
                            ours.forget_all(&mut rtnl);
                            let _ = done.send(());
                            return;
                        }
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                    let r = ours.sync(&mut rtnl, &backends);
                    if !r.managed.is_empty() {
                        log::info!(
                            "next hops made managed neighbour entries (the kernel resolves them): {}",
                            list(&r.managed)
                        );
                    }
                    // Each failure once, until it clears.
                    let failed: BTreeSet<IpAddr> = r.failed.iter().map(|(a, _)| *a).collect();
                    for (addr, why) in &r.failed {
                        if !failed_before.contains(addr) {
                            log::warn!("backend {addr}: next hop not managed ({why}); its packets are dropped (drop_no_neigh) until the kernel knows its MAC");
                        }
                    }
                    failed_before = failed;
                }
            })
            .ok()?;
        Some(NeighbourKeeper { tx })
    }

    /// The backends changed (or were first read).
    pub fn backends(&self, backends: Vec<IpAddr>) {
        let _ = self.tx.send(Keep::Backends(backends));
    }

    /// Removes the entries this daemon made (waits up to five seconds,
    /// for a pass under way to end; the daemon is stopping).
    pub fn stop(&self) {
        let (done, wait) = std::sync::mpsc::channel();
        if self.tx.send(Keep::Stop(done)).is_ok() {
            let _ = wait.recv_timeout(std::time::Duration::from_secs(5));
        }
    }
}

/// The first few next hops, and how many more: one log line, not a
/// thousand addresses.
fn list(hops: &[NextHop]) -> String {
    const SHOWN: usize = 8;
    let v: Vec<String> = hops
        .iter()
        .take(SHOWN)
        .map(|h| format!("{} (ifindex {})", h.addr, h.ifindex))
        .collect();
    match hops.len().saturating_sub(SHOWN) {
        0 => v.join(", "),
        more => format!("{} and {more} more", v.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_list_of_next_hops_is_cut_short_in_the_log() {
        let hops: Vec<NextHop> = (1..=1000u32)
            .map(|i| NextHop {
                ifindex: 3,
                addr: IpAddr::from(std::net::Ipv4Addr::from(0x0a01_0000 + i)),
            })
            .collect();
        assert_eq!(list(&hops[..1]), "10.1.0.1 (ifindex 3)");
        let long = list(&hops);
        assert!(
            long.ends_with("10.1.0.8 (ifindex 3) and 992 more"),
            "{long}"
        );
        assert!(!long.contains("10.1.0.9 "), "{long}");
    }
}
