//! Full NAT (`forwarding: nat`): the records of the reply table
//! (`NAT_REPLIES`), and how a NAT flow's source address and port are kept in
//! its flow-table entry.
use crate::FlowKey;

/// A NAT flow as its backend's replies carry it: from the backend (address
/// and port) to the balancer's source address and the port it allocated.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatKey {
    pub backend: [u32; 4],
    pub snat: [u32; 4],
    /// Network byte order, as in the reply.
    pub bport: u16,
    pub port: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<NatKey>() == 40);

/// What a reply is rewritten to, and where it is sent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatValue {
    /// The flow as the client sent it: the reply goes from `dst:dport`
    /// (the VIP) to `src:sport` (the client).
    pub client: FlowKey,
    /// Source MAC of the client's first packet (the router's, one-armed),
    /// and ours: the reply's destination and source MACs.
    pub client_mac: [u8; 6],
    pub our_mac: [u8; 6],
    /// The interface the client's packets came in on: the reply leaves there.
    pub ifindex: u32,
    /// `NAT_F_*`.
    pub flags: u32,
    /// The data path's clock at the flow's last packet (either way), at
    /// most a second stale.
    pub last_seen_ns: u64,
    /// The backend slot the flow goes to.
    pub backend_id: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_ns` at the client's SYN, until the backend answers
    /// it (SYN-ACK or RST); 0 otherwise.
    pub syn_ns: u64,
}
const _: () = assert!(core::mem::size_of::<NatValue>() == 88);

/// `NatValue::flags`: the client sent a FIN.
pub const NAT_F_FIN_CLIENT: u32 = 1;
/// `NatValue::flags`: the backend sent a FIN.
pub const NAT_F_FIN_BACKEND: u32 = 2;
/// `NatValue::flags`: either side sent a RST.
pub const NAT_F_RST: u32 = 4;

/// Whether a NAT flow with `flags` is over (a RST, or a FIN each way): its
/// port may be taken again after `Config::nat_closed_timeout_ns`.
pub fn nat_closed(flags: u32) -> bool {
    flags & NAT_F_RST != 0
        || flags & (NAT_F_FIN_CLIENT | NAT_F_FIN_BACKEND) == (NAT_F_FIN_CLIENT | NAT_F_FIN_BACKEND)
}

/// Source addresses per VIP and family in `NAT_ADDRS` (index `vip_id *
/// 2 * NAT_ADDRS_PER_FAMILY`, IPv6 after IPv4).
pub const NAT_ADDRS_PER_FAMILY: u32 = 4;

/// The `FlowValue::hash` of a NAT flow: which of its VIP's source addresses
/// it uses (`idx`) and the port allocated there (host byte order).
pub fn nat_info(idx: u32, port: u16) -> u32 {
    (idx << 16) | port as u32
}

/// `nat_info`'s parts: (address index, port in host byte order).
pub fn nat_parts(info: u32) -> (u32, u16) {
    ((info >> 16) & 0xff, info as u16)
}

/// Default source ports of NAT flows: below Linux's default ephemeral range
/// (`net.ipv4.ip_local_port_range`, 32768..60999), so the balancer's own
/// connections (health probes) never meet an allocated port.
pub const DEFAULT_NAT_PORTS: (u16, u16) = (10000, 32767);
