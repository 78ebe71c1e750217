//! The map layout: map and program names, default sizes, protocol and flag
//! constants, every `#[repr(C)]` type that crosses the kernel/user line (each
//! with a size assertion). The map sizing the daemon applies at load time
//! is in `sizes`.

/// Map names, as the XDP object declares them and the daemon opens and pins them.
pub mod maps {
    /// `HashMap<VipKey, VipInfo>`: the services.
    pub const VIPS: &str = "VIPS";
    /// `HashMap<AddrKey, u32>`: every address that carries a VIP (flags `ADDR_F_*`).
    pub const VIP_ADDRS: &str = "VIP_ADDRS";
    /// `Array<Backend>`: backend slots, indexed by backend id.
    pub const BACKENDS: &str = "BACKENDS";
    /// `Array<u64>` (mmapable): the Maglev tables, two buffers per VIP
    /// (`pack_ring`); a slot holds an index into the buffer's `MEMBERS`.
    pub const RINGS: &str = "RINGS";
    /// `Array<u64>` (mmapable; the kernel lays array values out at 8
    /// bytes anyway): per VIP and table buffer,
    /// `Config::max_vip_backends` entries: the backend ids (plus one; 0:
    /// none) the buffer's slots name by index (`members_base`). So a
    /// table's 16-bit slots reach any of `MAX_BACKEND_ID + 1` backend slots.
    pub const MEMBERS: &str = "MEMBERS";
    /// An array of maps, each slot an `Array<FlowChunk>` of one element:
    /// the connection table (`flowtab`), read by the daemon a chunk at a time.
    pub const FLOWS: &str = "FLOWS";
    /// `Array<Config>`, one entry: global settings.
    pub const CONFIG: &str = "CONFIG";
    /// `PerCpuArray<VipStats>` indexed by VIP id.
    pub const VIP_STATS: &str = "VIP_STATS";
    /// `PerCpuArray<BackendStats>` indexed by backend id.
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    /// `PerCpuArray<u64>` indexed by `counter::*`.
    pub const COUNTERS: &str = "COUNTERS";
    /// `PerCpuArray<u32>` indexed by VIP id: each CPU's position in its
    /// round-robin VIPs' sequences (not pinned: a restart starts them over).
    pub const RR_POS: &str = "RR_POS";
    /// `Array<u32>`, one entry: the `LAYOUT_VERSION` the pinned maps were
    /// made for (the data path does not read it).
    pub const LAYOUT: &str = "LAYOUT";
    /// Per-CPU next-hop cache of the data path, indexed by backend id (kernel side only).
    pub const NEXTHOPS: &str = "NEXTHOPS";
    /// `Array<u64>` of `VIP_FILTER_WORDS`: one bit per `vip_filter_bit` of
    /// every VIP. Derived from `VIPS` by the daemon at load and on every
    /// change, so it is not pinned.
    pub const VIP_FILTER: &str = "VIP_FILTER";
    /// `Array<VipEntry>` of `VIP_FILTER_BITS`: at a filter bit that exactly
    /// one VIP sets, that VIP (key and info), so a new flow finds its VIP
    /// with no hash-map lookup; elsewhere empty. Derived like `VIP_FILTER`.
    pub const VIP_INDEX: &str = "VIP_INDEX";
    /// `HashMap<AddrKey, u32>`: on backends, the VIP addresses (a tunnel
    /// to another address is not the decapsulator's).
    pub const DECAP_ADDRS: &str = "DECAP_ADDRS";
    /// `HashMap<VipKey, u32>`: on backends, the VIPs (address, port,
    /// protocol) the decapsulation program accepts tunnels to.
    pub const DECAP_VIPS: &str = "DECAP_VIPS";
    /// `PerCpuArray<u64>` indexed by `decap_counter::*`.
    pub const DECAP_COUNTERS: &str = "DECAP_COUNTERS";
    /// `Array<u32>`, one entry: on backends, the UDP port GUE tunnels come
    /// to (network byte order; 0: GUE not accepted).
    pub const DECAP_GUE: &str = "DECAP_GUE";
    /// `LpmTrie<DecapSource, u32>`: on backends, the outer sources (the
    /// balancers' encapsulation prefixes) tunnels are accepted from.
    pub const DECAP_SOURCES: &str = "DECAP_SOURCES";
    /// `Array<u64>` (mmapable), indexed by backend id: the backend's active
    /// connections, of VIPs that count them (`VIP_F_COUNT`). The data path
    /// adds and subtracts atomically; the daemon takes off what it finds
    /// lost (flows the LRU evicted, flows it ended).
    pub const LOADS: &str = "LOADS";
    /// `Array<BackendLimit>` indexed by backend id: weight and connection
    /// limit, for the VIPs that count connections.
    pub const LIMITS: &str = "LIMITS";
    /// `LruHashMap<PersistKey, PersistValue>`: each client's backend, on
    /// VIPs with persistence.
    pub const PERSIST: &str = "PERSIST";
    /// `LruHashMap<NatKey, NatValue>`: NAT flows as their replies carry
    /// them; an entry holds its allocated source port.
    pub const NAT_REPLIES: &str = "NAT_REPLIES";
    /// `Array<[u32; 4]>`: each VIP's NAT source addresses
    /// (`NAT_ADDRS_PER_FAMILY` per family).
    pub const NAT_ADDRS: &str = "NAT_ADDRS";
    /// `Array<u64>` of `VIP_FILTER_WORDS`: the bit `vip_filter_bit(addr,
    /// 0, proto, family)` of every NAT source address, for TCP and UDP: a
    /// packet to no VIP is looked up in `NAT_REPLIES` only if its bit is set.
    pub const NAT_FILTER: &str = "NAT_FILTER";
    /// `Array<u64>` (mmapable) of `ring_size` entries per stateless VIP
    /// (`VipInfo::chain_idx`): each slot's previous backend and the
    /// second it changed (`chain_entry`).
    pub const CHAINS: &str = "CHAINS";
    /// `Array<u64>` of `VIP_FILTER_WORDS`: the `vip_filter_bit` of every
    /// stateless VIP, so `lb_xdp` hands their packets to `lb_stateless`.
    /// Derived from `VIPS` like `VIP_FILTER`, not pinned.
    pub const STATELESS_FILTER: &str = "STATELESS_FILTER";
    /// `ProgramArray`: `lb_stateless` at `PROG_STATELESS`, `lb_xdp` at
    /// `PROG_BALANCER` (filled at each load; pinned, so that it keeps them
    /// while no daemon runs).
    pub const PROGS: &str = "PROGS";
}

/// `PROGS` index of `lb_stateless`.
pub const PROG_STATELESS: u32 = 0;
/// `PROGS` index of `lb_xdp` (for a packet `lb_stateless` finds is not
/// for a stateless VIP: another VIP shares its filter bit).
pub const PROG_BALANCER: u32 = 1;

/// The layout of the pinned maps' keys and values. Bump it with any change
/// to them, also one that keeps their sizes: a daemon adopting pins of
/// another layout would misread them, so it refuses ("run `lb stop`").
pub const LAYOUT_VERSION: u32 = 13;

/// Program names in the object file.
pub mod progs {
    pub const BALANCER: &str = "lb_xdp";
    pub const DECAP: &str = "lb_decap";
    pub const PASS: &str = "lb_pass";
    /// Stateless VIPs' packets, tail-called from `lb_xdp` (its own
    /// verifier budget).
    pub const STATELESS: &str = "lb_stateless";
    /// Writes `bpf_jiffies64()` and `bpf_ktime_get_ns()` (little-endian
    /// `u64`s) into the first 16 bytes of its input: run by `calibrate_clock`.
    pub const CLOCK: &str = "lb_clock";
    /// The live-frames generator of `cargo xtask bench --live` (`gen`).
    pub const GEN: &str = "lb_gen";
    /// XDP_DROP: the receiving end of the live-frames bench.
    pub const DROP: &str = "lb_drop";
    /// Swaps a flow's stamp if unchanged (`FlowSwap`): run by the census
    /// with BPF_PROG_TEST_RUN, since the daemon cannot map the flow table.
    pub const FLOW_SWAP: &str = "lb_flow_swap";
    /// Moves the flows of one set to their sets in a grown table
    /// (`FlowMove`): run by the daemon with BPF_PROG_TEST_RUN, set by set.
    pub const FLOW_MOVE: &str = "lb_flow_move";
}

/// Default sizes; the daemon overrides them at load time from the pool file.
pub mod defaults {
    pub const MAX_VIPS: u32 = 64;
    pub const MAX_BACKENDS: u32 = 4096;
    pub const RING_SIZE: u32 = 65537;
    pub const FLOW_TABLE_SIZE: u32 = 1 << 20;
    pub const UDP_IDLE_TIMEOUT_NS: u64 = 30_000_000_000;
    /// How long the data path reuses a next hop before asking the FIB again.
    pub const NEXTHOP_TTL_NS: u64 = 1_000_000_000;
    pub const MTU: u32 = 1500;
    /// ICMP messages the balancer itself sends (echo replies, "too big"),
    /// per CPU and second, and the burst allowed above that rate: a flood
    /// of pings or oversized packets cannot turn the balancer into a
    /// reflector.
    pub const ICMP_RATE_PER_CPU: u64 = 1000;
    pub const ICMP_BURST: u64 = 100;
}

pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_IPIP: u8 = 4;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_IPV6: u8 = 41;
pub const PROTO_ICMPV6: u8 = 58;

/// Forwarding modes (`VipInfo::mode`; the data path reads them from the
/// backend slot's `BACKEND_F_DSR_L2` / `BACKEND_F_GUE`).
pub mod mode {
    /// IPIP / IP6IP6 / 4in6 encapsulation, direct server return.
    pub const ENCAP: u8 = 0;
    /// The frame to the backend's MAC, unchanged otherwise (IPVS "DR").
    pub const DSR_L2: u8 = 1;
    /// The IPIP / IP6IP6 / 4in6 packet inside UDP (GUE variant 1).
    pub const GUE: u8 = 2;
    /// Full NAT: to the backend from one of the VIP's source addresses
    /// and an allocated port; its replies back to the client.
    pub const NAT: u8 = 3;
}

/// The UDP port GUE packets go to when the pool file names none (IANA's).
pub const DEFAULT_GUE_PORT: u16 = 6080;

/// Schedulers (`VipInfo::scheduler`).
pub mod scheduler {
    /// The VIP's Maglev table at the flow hash (weighted consistent hashing).
    pub const MAGLEV: u8 = 0;
    /// The VIP's Maglev table at a random slot (weighted random).
    pub const RANDOM: u8 = 1;
    /// The VIP's Maglev table at the hash of the client's address prefix
    /// (`VipInfo::src_prefix_v4` / `_v6` bits): every connection of a client
    /// reaches the same backend, on every node, while the pool is stable.
    pub const SOURCE_HASH: u8 = 2;
    /// The daemon's smooth weighted round-robin sequence, written into the
    /// VIP's table (`VipInfo::seq_len` slots), walked by a per-CPU position.
    pub const ROUND_ROBIN: u8 = 3;
    /// Two backends drawn from the VIP's Maglev table (so in proportion to
    /// their weights); the one with fewer active connections per weight
    /// (`LOADS`, `LIMITS`) takes the flow.
    pub const LEAST_CONN: u8 = 4;
    /// Every backend of the VIP (the daemon writes each once into the
    /// table, `VipInfo::seq_len` slots, at most `MAX_EXACT_BACKENDS`); the
    /// one with the fewest active connections per weight.
    pub const LEAST_CONN_EXACT: u8 = 5;
}

/// The most backends a `scheduler::LEAST_CONN_EXACT` VIP may have: the
/// data path looks at each of them for every new flow.
pub const MAX_EXACT_BACKENDS: u32 = 8;

/// `AddrKey` value flags (`VIP_ADDRS`).
pub const ADDR_F_VIP: u32 = 1;
/// At least one VIP on this address listens on every port (port 0).
pub const ADDR_F_ANY_PORT: u32 = 2;

/// `Backend::flags`: the backend must not receive traffic, even of existing
/// flows (disabled, or its slot released); flows that hit it are rescheduled.
pub const BACKEND_F_DOWN: u8 = 1;
/// `Backend::flags`: slot in use.
pub const BACKEND_F_USED: u8 = 2;
/// `Backend::flags`: failing its health checks. Out of the table; packets of
/// its UDP flows are rescheduled (a stateless service answers anywhere), its
/// established TCP connections stay (moving them to another backend can only
/// reset them; if the backend is really gone they are lost either way, and a
/// false alarm costs nothing).
pub const BACKEND_F_UNHEALTHY: u8 = 4;
/// `Backend::flags`: its VIP forwards by L2 direct return (`mode::DSR_L2`).
pub const BACKEND_F_DSR_L2: u8 = 8;
/// `Backend::flags`: its VIP forwards by GUE (`mode::GUE`).
pub const BACKEND_F_GUE: u8 = 16;
/// `Backend::flags`: its VIP forwards by full NAT (`mode::NAT`).
pub const BACKEND_F_NAT: u8 = 32;

/// A service address: (address, port, protocol). Port 0 means every port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipKey {
    pub addr: [u32; 4],
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}
const _: () = assert!(core::mem::size_of::<VipKey>() == 20);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipInfo {
    /// Index of this VIP's tables and counters.
    pub vip_id: u32,
    /// Forwarding mode, `mode::*`.
    pub mode: u8,
    /// Scheduler, `scheduler::*`.
    pub scheduler: u8,
    /// Which of the VIP's two Maglev buffers packets read (0 or 1).
    pub active_ring: u8,
    /// `scheduler::SOURCE_HASH`: the bits of an IPv4 / IPv6 client address
    /// that choose the backend.
    pub src_prefix_v4: u8,
    pub src_prefix_v6: u8,
    /// `VIP_F_*`.
    pub flags: u8,
    /// NAT: how many source addresses the VIP has in `NAT_ADDRS`, IPv4 in
    /// the low nibble, IPv6 in the high one.
    pub nat_addrs: u8,
    /// Stateless VIPs (`VIP_F_STATELESS`): which `ring_size` entries of
    /// `CHAINS` are the VIP's (index).
    pub chain_idx: u8,
    /// `scheduler::ROUND_ROBIN` and `LEAST_CONN_EXACT`: how many slots of
    /// the active table the sequence fills (0: no backend).
    pub seq_len: u32,
    /// Persistence: a client (the `src_prefix_*` bits of its address) keeps
    /// its backend for this many seconds after its last new connection
    /// (`PERSIST`); 0: none.
    pub persist_s: u32,
    /// NAT: the source ports allocated, first and last (host byte order).
    pub nat_port_lo: u16,
    pub nat_port_hi: u16,
    /// Stateless VIPs: until when some slot may name a previous backend
    /// (`chain_until`, in units of 2^30 ns of the data path clock); after
    /// it, packets do not read `CHAINS` (0: no slot changed).
    pub chain_until: u32,
    /// Where the active table's members start in `MEMBERS`
    /// (`members_base` of the VIP and `active_ring`); the map writer sets
    /// it with every write of the VIP, whatever the caller set.
    pub members: u32,
    /// Slots of the VIP's table (`maglev_size`), at most `Config::ring_size`
    /// (each buffer's room in `RINGS`, and a stateless VIP's in `CHAINS`).
    /// A small table keeps a stateless VIP's whole cost in cache. The map
    /// writer writes 0 as `Config::ring_size`.
    pub ring_size: u32,
    /// Where the active buffer starts in `RINGS` (`ring_base` of the VIP
    /// and `active_ring`); set by the map writer, as `members` is.
    pub ring: u32,
}
const _: () = assert!(core::mem::size_of::<VipInfo>() == 40);

/// `VipInfo::flags`: the VIP's flows are counted per backend (`LOADS`),
/// for least connections or a connection limit.
pub const VIP_F_COUNT: u8 = 1;
/// `VipInfo::flags`: no flow table; every packet is hashed to its slot and
/// sent with the slot's previous backend (`CHAINS`) in a GUE header.
pub const VIP_F_STATELESS: u8 = 2;

/// An address alone (for ICMP and fragment policy, and the decapsulator).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddrKey {
    pub addr: [u32; 4],
    pub family: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<AddrKey>() == 20);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub addr: [u32; 4],
    pub family: u8,
    /// `BACKEND_F_*`.
    pub flags: u8,
    /// The VIP this slot serves. A backend address behind two VIPs has two
    /// slots, because health and state are per VIP. Lets a restarted daemon
    /// rebuild its slot assignment from the pinned maps alone.
    pub vip_id: u16,
    /// Bumped each time the slot is given to another backend (of this or
    /// another VIP), and kept when it is released: a flow entry remembers the
    /// generation it was made under, so a reused slot (even one a removed
    /// VIP's successor took with the same VIP id) never inherits old flows.
    pub gen: u32,
}
const _: () = assert!(core::mem::size_of::<Backend>() == 24);

/// Global settings, entry 0 of `CONFIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// SipHash key of the flow hash. Shared by every node behind one ECMP group.
    pub hash_key: [u64; 2],
    /// Room for each Maglev buffer in `RINGS` (a prime, `tables.maglev_size`):
    /// the largest table a VIP may have (`VipInfo::ring_size`).
    pub ring_size: u32,
    /// `CONFIG_F_*`.
    pub flags: u32,
    pub udp_idle_timeout_ns: u64,
    /// Outer IPv4 source; host bits under `src_v4_mask` are taken from the flow hash.
    pub src_v4: u32,
    pub src_v4_mask: u32,
    /// Outer IPv6 source; host bits of the last word under `src_v6_mask` vary per flow.
    pub src_v6: [u32; 4],
    pub src_v6_mask: u32,
    /// Largest packet (IP header and payload) the egress link carries.
    pub mtu: u32,
    /// Next-hop MAC used when `bpf_fib_lookup` cannot resolve the backend.
    pub gateway_mac: [u8; 6],
    /// UDP destination port of GUE packets, network byte order.
    pub gue_port: u16,
    /// The data path's clock is `jiffies * jiffy_ns - clock_offset_ns`
    /// (jiffies are one load; a clock helper call costs about 30 ns a
    /// packet), which tracks CLOCK_MONOTONIC to within a tick. Set by
    /// `calibrate_clock`; 0 means "use `bpf_ktime_get_coarse_ns`".
    pub jiffy_ns: u64,
    pub clock_offset_ns: u64,
    /// Flow-table inserts per CPU: at most one per `new_flow_interval_ns` on
    /// average and `new_flow_tolerance_ns` worth at once; beyond, new flows
    /// are routed by their VIP's Maglev table alone and counted
    /// (`counter::NEW_FLOW_NOT_STORED`). 0: no limit.
    pub new_flow_interval_ns: u64,
    pub new_flow_tolerance_ns: u64,
    /// NAT: a TCP flow's allocated port may be taken again after this long
    /// idle, or `nat_closed_timeout_ns` after it closed (`nat_closed`).
    pub nat_tcp_timeout_ns: u64,
    pub nat_closed_timeout_ns: u64,
    /// Stateless VIPs: a slot's previous backend is sent along for this
    /// many seconds after the slot changed.
    pub chain_window_s: u32,
    /// `MEMBERS` entries per VIP and table buffer (`tables.
    /// max_backends_per_vip`); written by the map writer from the map
    /// sizes, whatever the caller set.
    pub max_vip_backends: u32,
    /// Sets of the flow table in use (a power of two, in chunks of
    /// `FLOW_CHUNK_SETS`): from `flow_sets_start` up to all the table has
    /// (`flow_sets`), grown by the daemon as flows are held (so a cold
    /// flow's set lies in as little memory as the flows need). Written by
    /// the map writer, never by the caller.
    pub flow_sets: u32,
    /// While the daemon moves entries to a grown table's sets
    /// (`lb_flow_move`), the set count before: a lookup that misses in its
    /// set tries its set at that size too. Otherwise equal to `flow_sets`.
    pub flow_sets_old: u32,
    /// SipHash key of the flow table's index. The table's own, kept with it
    /// across restarts (a new `hash_key` must not lose the flows stored);
    /// written by the map writer.
    pub flow_seed: [u64; 2],
}
const _: () = assert!(core::mem::size_of::<Config>() == 152);

/// `Config::flags`: `gateway_mac` is set.
pub const CONFIG_F_GATEWAY_MAC: u32 = 1;
/// `Config::flags`: an IPv4 encapsulation source is set.
pub const CONFIG_F_SRC_V4: u32 = 2;
/// `Config::flags`: an IPv6 encapsulation source is set.
pub const CONFIG_F_SRC_V6: u32 = 4;
/// `Config::flags`: some VIP listens on every port (port 0), so a VIP miss
/// on the exact port must try port 0 too.
pub const CONFIG_F_ANY_PORT: u32 = 8;
/// `Config::flags`: some VIP forwards by NAT, so TCP and UDP to no VIP may
/// be a backend's reply (`NAT_REPLIES`).
pub const CONFIG_F_NAT: u32 = 16;
/// `Config::flags`: some VIP is stateless (`VIP_F_STATELESS`), so a TCP
/// packet's VIP is looked up before the flow table.
pub const CONFIG_F_STATELESS: u32 = 32;
/// `Config::flags`: all of the flow table is in use from the start
/// (`tables.flow_table_grows: false`); read by the daemon only.
pub const CONFIG_F_FLOWS_WHOLE: u32 = 64;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipStats {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub drops: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendStats {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// A client's SYN seen again, about a second or more after the first,
    /// for a flow the table sends to this backend: the client got no
    /// SYN-ACK (passive health).
    pub syn_retransmits: u64,
    /// NAT: handshakes seen (the backend's SYN-ACK to a SYN), and their
    /// time from SYN to SYN-ACK, summed.
    pub handshakes: u64,
    pub handshake_ns: u64,
    /// NAT: new connections the backend refused (a RST to the SYN).
    pub refused: u64,
}

/// Per-CPU copies of a statistics record add up to the total.
impl<'a> core::iter::Sum<&'a VipStats> for VipStats {
    fn sum<I: Iterator<Item = &'a VipStats>>(it: I) -> Self {
        it.fold(VipStats::default(), |a, s| VipStats {
            packets: a.packets + s.packets,
            bytes: a.bytes + s.bytes,
            new_flows: a.new_flows + s.new_flows,
            drops: a.drops + s.drops,
        })
    }
}

impl<'a> core::iter::Sum<&'a BackendStats> for BackendStats {
    fn sum<I: Iterator<Item = &'a BackendStats>>(it: I) -> Self {
        it.fold(BackendStats::default(), |a, s| BackendStats {
            packets: a.packets + s.packets,
            bytes: a.bytes + s.bytes,
            new_flows: a.new_flows + s.new_flows,
            syn_retransmits: a.syn_retransmits + s.syn_retransmits,
            handshakes: a.handshakes + s.handshakes,
            handshake_ns: a.handshake_ns + s.handshake_ns,
            refused: a.refused + s.refused,
        })
    }
}

/// The data of a `DECAP_SOURCES` key: the family, then the address octets
/// (IPv4 in the first four). A prefix of `n` bits has `prefix_len` 32 + n.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecapSource {
    pub family: u32,
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<DecapSource>() == 20);

impl DecapSource {
    /// The `DECAP_SOURCES` key (prefix length, data) of `addr/prefix`.
    pub fn key(addr: core::net::IpAddr, prefix: u8) -> (u32, DecapSource) {
        let mut d = DecapSource::default();
        let bits = match addr {
            core::net::IpAddr::V4(a) => {
                d.family = AF_INET as u32;
                d.addr[..4].copy_from_slice(&a.octets());
                prefix.min(32)
            }
            core::net::IpAddr::V6(a) => {
                d.family = AF_INET6 as u32;
                d.addr = a.octets();
                prefix.min(128)
            }
        };
        (32 + bits as u32, d)
    }
}

/// An address as the maps hold it: its octets loaded into native `u32`
/// words (IPv4 in word 0), and its family.
pub fn addr_words(ip: core::net::IpAddr) -> ([u32; 4], u8) {
    match ip {
        core::net::IpAddr::V4(a) => ([u32::from_ne_bytes(a.octets()), 0, 0, 0], AF_INET),
        core::net::IpAddr::V6(a) => {
            let o = a.octets();
            let mut w = [0u32; 4];
            let mut i = 0;
            while i < 4 {
                w[i] = u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]);
                i += 1;
            }
            (w, AF_INET6)
        }
    }
}

/// The address `addr_words` made.
pub fn words_addr(words: [u32; 4], family: u8) -> core::net::IpAddr {
    if family == AF_INET {
        core::net::IpAddr::from(words[0].to_ne_bytes())
    } else {
        let mut o = [0u8; 16];
        let mut i = 0;
        while i < 4 {
            let b = words[i].to_ne_bytes();
            o[4 * i..4 * i + 4].copy_from_slice(&b);
            i += 1;
        }
        core::net::IpAddr::from(o)
    }
}

/// Bits of `VIP_FILTER` (and entries of `VIP_INDEX`).
pub const VIP_FILTER_BITS: u32 = 65536;
/// Words of `VIP_FILTER`: 65536 bits in 8 KB.
pub const VIP_FILTER_WORDS: u32 = VIP_FILTER_BITS / 64;

/// A `VIP_INDEX` entry; all zero (family 0) when empty.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipEntry {
    pub key: VipKey,
    pub info: VipInfo,
}
const _: () = assert!(core::mem::size_of::<VipEntry>() == 60);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are repr(C), plain old data, with explicit padding.
    unsafe impl aya::Pod for VipKey {}
    unsafe impl aya::Pod for VipInfo {}
    unsafe impl aya::Pod for VipEntry {}
    unsafe impl aya::Pod for DecapSource {}
    unsafe impl aya::Pod for AddrKey {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for crate::FlowKey {}
    unsafe impl aya::Pod for crate::FlowValue {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for VipStats {}
    unsafe impl aya::Pod for BackendStats {}
    unsafe impl aya::Pod for crate::BackendLimit {}
    unsafe impl aya::Pod for crate::PersistKey {}
    unsafe impl aya::Pod for crate::PersistValue {}
    unsafe impl aya::Pod for crate::NatKey {}
    unsafe impl aya::Pod for crate::NatValue {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_words_round_trip() {
        for a in ["10.1.2.3", "fd00::1:2", "2001:db8::ffff:1"] {
            let ip: core::net::IpAddr = a.parse().unwrap();
            let (w, f) = addr_words(ip);
            assert_eq!(words_addr(w, f), ip);
        }
        let (w, f) = addr_words("10.1.2.3".parse().unwrap());
        assert_eq!((w[0].to_ne_bytes(), w[1], f), ([10, 1, 2, 3], 0, AF_INET));
    }
}
