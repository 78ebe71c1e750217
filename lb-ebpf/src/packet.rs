//! The packet as the stages see it: bounds-checked access, the header
//! layouts with named fields, the parsed-packet summary, and the Ethernet
//! rewrite that every transmitting stage shares.
//!
//! The header structs are our own rather than `network-types`' on purpose:
//! those declare multi-byte fields as byte arrays (alignment 1), which the
//! BPF backend reads one byte at a time; ours use `u16`/`u32` fields, so a
//! field is one load, as the hand-written offsets were. Multi-byte fields
//! hold network byte order as loaded (convert with `u16::from_be`), and
//! addresses stay in the raw word order the maps use (`lb_common::addr_words`).
use aya_ebpf::programs::XdpContext;
use core::mem::size_of;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;
pub const ETH_LEN: usize = size_of::<EthHdr>();
pub const VLAN_LEN: usize = size_of::<VlanHdr>();
pub const IPV4_LEN: usize = size_of::<Ipv4Hdr>();
pub const IPV6_LEN: usize = size_of::<Ipv6Hdr>();
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;
/// TTL / hop limit of the headers the balancer writes.
pub const OUTER_TTL: u8 = 64;

/// Ethernet II header. `proto` is the ethertype, or the TPID of a VLAN tag.
#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto: u16,
}

/// An 802.1Q / 802.1ad tag, after the MAC addresses and its TPID.
#[repr(C)]
pub struct VlanHdr {
    pub tci: u16,
    pub proto: u16,
}

#[repr(C)]
pub struct Ipv4Hdr {
    /// Version (high nibble) and header length in words (low nibble).
    pub vihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    /// Flags (DF 0x4000, MF 0x2000) and fragment offset.
    pub frag_off: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub src: u32,
    pub dst: u32,
}

#[repr(C)]
pub struct Ipv6Hdr {
    /// Version, traffic class and flow label.
    pub vtc_flow: u32,
    pub payload_len: u16,
    pub next_hdr: u8,
    pub hop_limit: u8,
    pub src: [u32; 4],
    pub dst: [u32; 4],
}

/// The ports, first in both TCP and UDP headers.
#[repr(C)]
pub struct Ports {
    pub src: u16,
    pub dst: u16,
}

#[repr(C)]
pub struct TcpHdr {
    pub ports: Ports,
    pub seq: u32,
    pub ack: u32,
    pub off: u8,
    pub flags: u8,
    pub window: u16,
    pub check: u16,
    pub urg: u16,
}

#[repr(C)]
pub struct UdpHdr {
    pub ports: Ports,
    pub len: u16,
    pub check: u16,
}

/// The common start of ICMP and ICMPv6 messages.
#[repr(C)]
pub struct IcmpHdr {
    pub ty: u8,
    pub code: u8,
    pub check: u16,
    /// Identifier and sequence, next-hop MTU, unused: by type.
    pub rest: u32,
}

const _: () = assert!(ETH_LEN == 14 && VLAN_LEN == 4 && IPV4_LEN == 20 && IPV6_LEN == 40);
const _: () = assert!(size_of::<TcpHdr>() == 20 && size_of::<UdpHdr>() == 8);
const _: () = assert!(size_of::<IcmpHdr>() == 8);

/// What the balancer needs to know of a VIP-bound packet.
pub struct Packet {
    /// Length of the Ethernet header, with its VLAN tag if any (14 or 18).
    pub l2_len: usize,
    /// The VLAN tag's TPID and TCI, as in the packet, when `l2_len` is 18.
    pub vlan: [u16; 2],
    /// Destination MAC of the received frame: ours, used as source when we
    /// fall back to the configured gateway MAC.
    pub our_mac: [u8; 6],
    pub family: u8,
    pub proto: u8,
    pub l4_off: usize,
    /// Length of the IP packet according to its header.
    pub ip_len: usize,
    /// DSCP and ECN of the packet, copied to the outer header.
    pub tos: u8,
    /// IPv4 "don't fragment", copied to the outer header.
    pub df: bool,
    /// IPv4 identification, copied to the outer header when `df` is clear
    /// (so a router that fragments the tunnel packet reassembles it right).
    pub ip_id: u16,
    pub src: [u32; 4],
    pub dst: [u32; 4],
}

/// A bounds-checked pointer to a `T` at `off` bytes into the packet.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

/// Zeroes `v` in place, one 32-bit word at a time, and hands it out. The BPF
/// backend turns a plain zero-initialisation (`[0; 3]`, `..Default::default()`,
/// `mem::zeroed()`, or a copy out of a partly written value) into a call to a
/// byte-at-a-time `memset`, hundreds of instructions on the per-packet path;
/// volatile word stores cannot be merged into one, and working in place
/// leaves nothing to copy. `T` must be 4-byte aligned, its size a multiple of
/// 4, and valid when all zero.
#[inline(always)]
pub fn zeroed<T>(v: &mut core::mem::MaybeUninit<T>) -> &mut T {
    const { assert!(size_of::<T>().is_multiple_of(4) && core::mem::align_of::<T>() >= 4) };
    let p = v.as_mut_ptr() as *mut u32;
    let mut i = 0;
    while i < size_of::<T>() / 4 {
        unsafe { p.add(i).write_volatile(0) };
        i += 1;
    }
    unsafe { v.assume_init_mut() }
}

/// The ethertype of the packet's family.
#[inline(always)]
pub fn ethertype(pkt: &Packet) -> u16 {
    if pkt.family == lb_common::AF_INET6 {
        ETH_P_IPV6
    } else {
        ETH_P_IP
    }
}

/// Rewrites the Ethernet header in front of the (new) IP header: MACs, the
/// VLAN tag of `pkt` when it had one, and `ethertype`. `None` when the
/// packet is shorter than that (only after a failed head adjustment).
#[inline(always)]
pub fn write_eth(
    ctx: &XdpContext,
    pkt: &Packet,
    dst: &[u8; 6],
    src: &[u8; 6],
    ethertype: u16,
) -> Option<()> {
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    let proto = if pkt.l2_len == ETH_LEN + VLAN_LEN {
        let tag = ptr_at::<VlanHdr>(ctx, ETH_LEN)?;
        unsafe {
            (*tag).tci = pkt.vlan[1];
            (*tag).proto = ethertype.to_be();
        }
        pkt.vlan[0]
    } else {
        ethertype.to_be()
    };
    unsafe {
        (*eth).dst = *dst;
        (*eth).src = *src;
        (*eth).proto = proto;
    }
    Some(())
}
