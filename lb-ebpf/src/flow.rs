//! TCP and UDP: the flow table first, the scheduler for what it does not
//! know, then forwarding and the statistics.
use aya_ebpf::programs::XdpContext;
use aya_log_ebpf::info;
use core::intrinsics::unlikely;
use lb_common::{
    counter, Backend, Config, FlowEntry, FlowKey, FlowValue, BACKEND_F_DOWN, BACKEND_F_NAT,
    BACKEND_F_UNHEALTHY, BACKEND_F_USED, CONFIG_F_NAT, CONFIG_F_STATELESS, FLOW_COUNTS, FLOW_FLAGS,
    FLOW_OPEN, FLOW_PENDING, FLOW_UDP, LAST_SEEN_GRANULARITY_NS, NO_BACKEND, PROTO_TCP, PROTO_UDP,
    SYN_RETRANSMIT_MIN_NS,
};

use crate::action::{count, malformed, verdict, Sent, XDP_DROP, XDP_PASS, XDP_TX};
use crate::encap::forward;
use crate::flowtab::{self, Place, Taken};
use crate::load::{open, release};
use crate::maps::{
    account, clock_ns, flow_insert_allowed, scratch_key, vip_drop, BACKENDS, BACKEND_STATS, CONFIG,
    KEY_PACKET,
};
use crate::packet::{ptr_at, Packet, Ports, TcpHdr, UdpHdr, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
use crate::schedule::{drop_no_backend, pick, vip_bits, Pick, DEFERRED, FULL};

/// The backend a packet goes to: its slot id and entry, the flow hash, the VIP.
struct Chosen<'a> {
    backend_id: u32,
    backend: &'a Backend,
    hash: u32,
    vip_id: u32,
}

#[inline(always)]
pub fn balance_l4(ctx: &XdpContext, pkt: &Packet) -> u32 {
    let Ok((ports, tcp_flags)) = read_ports(ctx, pkt) else {
        return malformed();
    };
    let Some(cfg) = CONFIG.get(0) else {
        return verdict(counter::PASS_NOT_VIP, XDP_PASS);
    };
    // No VIP on this (address, port, protocol): pass, with no map lookup
    // (unless NAT is on: it may be a backend's reply).
    let Some(bits) = vip_bits(pkt, ports.dst, cfg) else {
        return not_vip(ctx, pkt, &ports, tcp_flags, cfg);
    };
    let Some(key) = packet_key(pkt, &ports) else {
        return verdict(counter::PASS_NOT_VIP, XDP_PASS);
    };
    let is_syn = tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    let now = clock_ns(cfg);
    // A stateless VIP's packets never touch the flow table: they go to
    // `lb_stateless`.
    if unlikely(cfg.flags & CONFIG_F_STATELESS != 0) {
        if let Some(action) = crate::stateless::hand_over(ctx, bits) {
            return action;
        }
    }

    // Flow table first: an established connection keeps its backend
    // whatever happened to the Maglev table since, and needs no VIP lookup:
    // the entry names its VIP, and the backend checks catch a VIP that is
    // gone (its backends are released with it).
    // UDP has no SYN to tell a new flow: its Maglev pick is made before the
    // flow-table probe, so that the two cold reads (table slot, hash bucket)
    // overlap instead of following each other. A packet of a known UDP flow
    // pays the VIP lookup and the hash for nothing (about 25 ns).
    let early = if pkt.proto == PROTO_UDP {
        match pick(key, cfg, bits, false, now) {
            Some(p) => Some(p),
            None => return not_vip(ctx, pkt, &ports, tcp_flags, cfg),
        }
    } else {
        None
    };
    // The flow's place in the table, found once: looked up, then stored
    // into when the flow is new.
    let place = flowtab::place(key, cfg);
    let known = if is_syn {
        None
    } else {
        lookup(place, pkt.proto, cfg, now, tcp_flags)
    };
    let (c, is_new) = match known {
        Some(c) => (c, false),
        None => {
            let p = match early {
                Some(p) if p.backend != DEFERRED => Some(p),
                _ => pick(key, cfg, bits, true, now),
            };
            match new_flow(ctx, pkt, &ports, key, place, p, cfg, now, tcp_flags) {
                Ok(c) => c,
                Err(action) => return action,
            }
        }
    };
    let action = match forward(
        ctx,
        pkt,
        cfg,
        c.backend_id,
        c.backend,
        c.vip_id,
        c.hash,
        now,
        tcp_flags,
    ) {
        Sent::Forwarded(action) => action,
        Sent::Answered => return XDP_TX,
        Sent::Dropped => {
            vip_drop(c.vip_id);
            return XDP_DROP;
        }
    };
    account(c.vip_id, c.backend_id, pkt.ip_len as u64, is_new);
    if is_new {
        count(counter::NEW_FLOW);
    }
    action
}

/// The packet's flow key (in per-CPU scratch: the stack has no room).
#[inline(always)]
pub fn packet_key(pkt: &Packet, ports: &Ports) -> Option<&'static FlowKey> {
    let key = scratch_key(KEY_PACKET)?;
    key.src = pkt.src;
    key.dst = pkt.dst;
    key.sport = ports.src;
    key.dport = ports.dst;
    key.proto = pkt.proto;
    key.family = pkt.family;
    Some(key)
}

/// A TCP or UDP packet to no VIP: passed, counted; with NAT on, first
/// looked up as a backend's reply. Also where the VIP filter's bit was set
/// by another (address, port, protocol): a reply's port may share a VIP's
/// bit, and must still be found.
#[inline(always)]
fn not_vip(ctx: &XdpContext, pkt: &Packet, ports: &Ports, tcp_flags: u8, cfg: &Config) -> u32 {
    if cfg.flags & CONFIG_F_NAT != 0 {
        if let Some(action) = crate::nat::reply(ctx, pkt, ports, tcp_flags, clock_ns(cfg)) {
            return action;
        }
    }
    verdict(counter::PASS_NOT_VIP, XDP_PASS)
}

/// A new flow goes where the scheduler's pick (`None`: no VIP) says,
/// remembered in the flow table unless the packet is a RST or this CPU is
/// over its insert rate; a SYN on a 4-tuple the table knows keeps its
/// backend while that can take it.
/// `Ok`: where the packet goes, and whether it starts a new connection.
/// `Err`: the packet's action (passed, or dropped for want of a backend).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn new_flow(
    ctx: &XdpContext,
    pkt: &Packet,
    ports: &Ports,
    key: &FlowKey,
    place: Place,
    pick: Option<Pick>,
    cfg: &Config,
    now: u64,
    tcp_flags: u8,
) -> Result<(Chosen<'static>, bool), u32> {
    let Some(p) = pick else {
        return Err(not_vip(ctx, pkt, ports, tcp_flags, cfg));
    };
    count(counter::FLOW_MISS);
    let Some(c) = schedule(&p) else {
        info!(ctx, "new flow dropped: vip {} has no backend", p.vip_id);
        return Err(drop_no_backend(p.vip_id, p.backend == FULL));
    };
    if c.backend.flags & BACKEND_F_NAT != 0 {
        return nat_flow(ctx, pkt, key, place, &p, c, cfg, now, tcp_flags);
    }
    if tcp_flags & TCP_RST == 0 {
        let is_syn = tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
        if !flow_insert_allowed(cfg, now) {
            // Over this CPU's insert rate (a SYN flood, most often): routed
            // by the Maglev table alone and not stored, so the flood cannot
            // push live connections out of the table. A SYN on a 4-tuple the
            // table knows still keeps its backend.
            count(counter::NEW_FLOW_NOT_STORED);
            if is_syn {
                if let Some(kept) = keep_for_syn(place, cfg, now) {
                    return Ok(kept);
                }
            }
            return Ok((c, is_syn || pkt.proto == PROTO_UDP));
        }
        if let Some(kept) = remember(place, pkt.proto, &c, now, is_syn, p.counts, cfg) {
            return Ok(kept);
        }
    }
    // The opt-in decision log (`lb run --debug-datapath`): with it off,
    // the loader sets the log level to 0 in read-only data and the
    // verifier removes this code.
    info!(
        ctx,
        "new flow: proto {} port {} -> {}, vip {} to backend {}",
        pkt.proto,
        u16::from_be(ports.src),
        u16::from_be(ports.dst),
        c.vip_id,
        c.backend_id
    );
    Ok((c, true))
}

/// A new NAT flow: a SYN on a 4-tuple the table knows keeps its entry (and
/// port); otherwise a source port is reserved and the flow stored, always
/// (a NAT flow not stored would get another port with its next packet):
/// over this CPU's insert rate, or when no port is free, it is dropped.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn nat_flow(
    ctx: &XdpContext,
    pkt: &Packet,
    key: &FlowKey,
    place: Place,
    p: &Pick,
    mut c: Chosen<'static>,
    cfg: &Config,
    now: u64,
    tcp_flags: u8,
) -> Result<(Chosen<'static>, bool), u32> {
    let is_syn = tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    if is_syn {
        if let Some(kept) = keep_for_syn(place, cfg, now) {
            if kept.1 {
                // A new connection on the 4-tuple of one that ended: its
                // port's record starts again (not ended, timed anew).
                let k = &kept.0;
                crate::nat::reopen(ctx, pkt, k.backend_id, k.backend, k.vip_id, k.hash, now);
            }
            return Ok(kept);
        }
    }
    if tcp_flags & TCP_RST != 0 {
        // A RST of a flow nobody knows: nothing to reset behind it.
        return Err(verdict(counter::PASS_NOT_VIP, XDP_DROP));
    }
    if !flow_insert_allowed(cfg, now) {
        count(counter::NEW_FLOW_NOT_STORED);
        return Err(XDP_DROP);
    }
    match crate::nat::allocate(
        ctx,
        pkt,
        key,
        p.vip_id,
        p.nat,
        c.backend_id,
        c.backend,
        cfg,
        now,
        is_syn,
    ) {
        Ok(info) => c.hash = info,
        Err(reason) => {
            vip_drop(p.vip_id);
            return Err(verdict(reason, XDP_DROP));
        }
    }
    if let Some(kept) = remember(place, pkt.proto, &c, now, is_syn, p.counts, cfg) {
        return Ok(kept);
    }
    Ok((c, true))
}

/// The scheduler's backend for a new flow, if it can take one: the same
/// checks as a flow-table hit, and not failing its health checks (the
/// daemon takes such backends out of the tables first; this covers the
/// moments in between, and a VIP id reused before its old table is gone).
#[inline(always)]
fn schedule(p: &Pick) -> Option<Chosen<'static>> {
    if p.backend == NO_BACKEND {
        return None;
    }
    let be = BACKENDS.get(p.backend)?;
    if be.flags & (BACKEND_F_DOWN | BACKEND_F_USED | BACKEND_F_UNHEALTHY) != BACKEND_F_USED
        || be.vip_id as u32 != p.vip_id
    {
        return None;
    }
    Some(Chosen {
        backend_id: p.backend,
        backend: be,
        hash: p.hash,
        vip_id: p.vip_id,
    })
}

/// Stores a new flow (`counts`: counted on its backend, `LOADS`). A SYN
/// only adds an entry where none is: when the table already knows the
/// 4-tuple and its backend can still take the connection, that entry
/// stands and is returned (a SYN retransmitted after a table change, or a
/// spoofed or reused SYN, must not move a running connection); otherwise
/// it is replaced. A refused insert is counted.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn remember(
    place: Place,
    proto: u8,
    c: &Chosen,
    now: u64,
    is_syn: bool,
    counts: bool,
    cfg: &Config,
) -> Option<(Chosen<'static>, bool)> {
    let e = match flowtab::insert_at(place, is_syn) {
        Some(Taken::New(e)) => e,
        Some(Taken::Known(known)) => {
            if let Some(kept) = keep_entry(known, cfg, now) {
                return Some(kept);
            }
            // Released by `keep_entry` (it can no longer take the flow).
            flowtab::retake(known)
        }
        None => {
            count(counter::FLOW_INSERT_FAILED);
            return None;
        }
    };
    let fv = &mut e.value;
    fv.backend = c.backend_id;
    fv.vip_id = c.vip_id;
    let mut stamp = now & !FLOW_FLAGS;
    // Seen in one packet: a SYN's handshake is pending; a first datagram
    // is marked the same way, which its next packet clears (a full set
    // gives up such flows first).
    if is_syn || proto == PROTO_UDP {
        stamp |= FLOW_PENDING;
    }
    if proto == PROTO_UDP {
        stamp |= FLOW_UDP;
    }
    if counts {
        stamp |= FLOW_COUNTS | FLOW_OPEN;
    }
    fv.last_seen_ns = stamp;
    fv.hash = c.hash;
    fv.gen = c.backend.gen;
    let sum = flowtab::digest(c.backend_id, c.vip_id, c.hash, c.backend.gen);
    if flowtab::lb_flow_seal(e, flowtab::ident(place), sum) == 0 {
        // Another CPU wrote the same entry at the same time: neither flow
        // is stored, and both are scheduled anew with their next packet.
        count(counter::FLOW_INSERT_FAILED);
        return None;
    }
    if counts {
        open(c.backend_id);
    }
    None
}

/// A SYN on a 4-tuple the table knows: the entry's backend while it can
/// still take the connection (counted `syn_kept_flow`), and whether the SYN
/// starts a new connection (the 4-tuple reused after its connection
/// completed) or repeats one whose handshake is pending (not a new flow;
/// about a second or more after the last, the client's retransmission: no
/// SYN-ACK came back, counted for the backend, passive health).
#[inline(always)]
fn keep_for_syn(place: Place, cfg: &Config, now: u64) -> Option<(Chosen<'static>, bool)> {
    keep_entry(flowtab::get_at(place)?, cfg, now)
}

/// `keep_for_syn` for the flow's entry `e`, found already.
#[inline(always)]
fn keep_entry(e: &mut FlowEntry, cfg: &Config, now: u64) -> Option<(Chosen<'static>, bool)> {
    let stamp = e.value.last_seen_ns;
    let idle = now.saturating_sub(stamp);
    let kept = usable_entry(&mut e.value, PROTO_TCP, cfg, now, TCP_SYN)?;
    let fv = &mut e.value;
    count(counter::SYN_KEPT_FLOW);
    // Only a connection whose handshake never completed: a 4-tuple reused
    // after its connection ended (NAT, busy clients) is no retransmission,
    // but its new handshake is now the pending one.
    let pending = stamp & FLOW_PENDING != 0;
    if pending {
        if idle >= SYN_RETRANSMIT_MIN_NS {
            if let Some(s) = BACKEND_STATS.get_ptr_mut(kept.backend_id) {
                unsafe { (*s).syn_retransmits += 1 };
            }
        }
    } else {
        fv.last_seen_ns |= FLOW_PENDING;
        // A new connection on the 4-tuple: counted again.
        if fv.last_seen_ns & (FLOW_COUNTS | FLOW_OPEN) == FLOW_COUNTS {
            fv.last_seen_ns |= FLOW_OPEN;
            open(kept.backend_id);
        }
    }
    Some((kept, !pending))
}

/// The ports and, for TCP, the flags. `Err`: the header is cut short.
#[inline(always)]
pub fn read_ports(ctx: &XdpContext, pkt: &Packet) -> Result<(Ports, u8), ()> {
    if pkt.proto == PROTO_TCP {
        let tcp = ptr_at::<TcpHdr>(ctx, pkt.l4_off).ok_or(())?;
        let tcp = unsafe { &*tcp };
        let ports = Ports {
            src: tcp.ports.src,
            dst: tcp.ports.dst,
        };
        Ok((ports, tcp.flags))
    } else {
        let udp = ptr_at::<UdpHdr>(ctx, pkt.l4_off).ok_or(())?;
        let udp = unsafe { &*udp };
        let ports = Ports {
            src: udp.ports.src,
            dst: udp.ports.dst,
        };
        Ok((ports, 0))
    }
}

/// The flow table's backend for `key`, when it may still take the packet
/// (`tcp_flags`: a SYN starts the connection again; a FIN or RST ends its
/// count). A UDP flow idle past the timeout, a backend that is down
/// (disabled, released), a slot given to another backend since (a new
/// generation) or to another VIP, and an unhealthy backend's UDP flow or
/// unfinished handshake: scheduled anew, off its backend's count. The
/// first packet after a SYN that is not one ends the handshake.
#[inline(always)]
fn lookup(at: Place, proto: u8, cfg: &Config, now: u64, tcp_flags: u8) -> Option<Chosen<'static>> {
    usable_entry(&mut flowtab::find_at(at)?.value, proto, cfg, now, tcp_flags)
}

/// `lookup` for an entry already found.
#[inline(always)]
fn usable_entry(
    fv: &mut FlowValue,
    proto: u8,
    cfg: &Config,
    now: u64,
    tcp_flags: u8,
) -> Option<Chosen<'static>> {
    let syn = tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    // Another CPU may have stored a slightly newer time.
    let idle = now.saturating_sub(fv.last_seen_ns);
    let pending = fv.last_seen_ns & FLOW_PENDING;
    if proto == PROTO_UDP && idle > cfg.udp_idle_timeout_ns {
        count(counter::UDP_FLOW_EXPIRED);
        release(fv);
        return None;
    }
    let be = BACKENDS.get(fv.backend)?;
    if be.flags & (BACKEND_F_DOWN | BACKEND_F_USED) != BACKEND_F_USED
        || be.gen != fv.gen
        || be.vip_id as u32 != fv.vip_id
        || ((proto == PROTO_UDP || (syn && pending != 0)) && be.flags & BACKEND_F_UNHEALTHY != 0)
    {
        count(counter::RESCHEDULED_DOWN);
        release(fv);
        return None;
    }
    let kept = fv.last_seen_ns & (FLOW_COUNTS | FLOW_OPEN | FLOW_UDP);
    if !syn && pending != 0 {
        fv.last_seen_ns = (now & !FLOW_FLAGS) | kept;
    } else if idle > LAST_SEEN_GRANULARITY_NS {
        fv.last_seen_ns = (now & !FLOW_FLAGS) | pending | kept;
    }
    if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        release(fv);
    }
    count(counter::FLOW_HIT);
    Some(Chosen {
        backend_id: fv.backend,
        backend: be,
        hash: fv.hash,
        vip_id: fv.vip_id,
    })
}
