//! `lb_decap`, for backends: strips the IPIP / IP6IP6 / 4in6 header of packets
//! whose inner destination is a configured VIP and passes the inner packet to
//! the stack, so backends need no tunnel kernel module. Such a tunnel from an
//! outer source outside `DECAP_SOURCES` (the balancers' prefixes) is dropped
//! and counted. Everything else passes untouched.

use aya_ebpf::{
    bindings::xdp_action::XDP_PASS,
    helpers::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::{lpm_trie::Key, HashMap, LpmTrie, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{decap_counter, AddrKey, DecapSource, AF_INET, AF_INET6, PROTO_IPIP, PROTO_IPV6};

use crate::{
    ptr_at, rd16, rd32, wr16, ETH_LEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPV4_LEN,
    IPV6_LEN, VLAN_LEN,
};

#[map]
static DECAP_VIPS: HashMap<AddrKey, u32> = HashMap::with_max_entries(1024, 0);
/// Where tunnels may come from: without this check anyone could reach a
/// backend's services past the balancer by sending it a tunnel packet.
#[map]
static DECAP_SOURCES: LpmTrie<DecapSource, u32> = LpmTrie::with_max_entries(64, 0);
#[map]
static DECAP_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(decap_counter::COUNT, 0);

#[inline(always)]
fn pass(idx: u32) -> u32 {
    if let Some(p) = DECAP_COUNTERS.get_ptr_mut(idx) {
        unsafe { *p += 1 };
    }
    XDP_PASS
}

#[xdp]
pub fn lb_decap(ctx: XdpContext) -> u32 {
    let Some(eth) = ptr_at::<[u8; ETH_LEN]>(&ctx, 0) else {
        return pass(decap_counter::PASS_MALFORMED);
    };
    let eth = eth as usize;
    let mut l2_len = ETH_LEN;
    let mut ethertype = u16::from_be(unsafe { rd16(eth + 12) });
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let Some(tag) = ptr_at::<[u8; VLAN_LEN]>(&ctx, ETH_LEN) else {
            return pass(decap_counter::PASS_MALFORMED);
        };
        ethertype = u16::from_be(unsafe { rd16(tag as usize + 2) });
        l2_len = ETH_LEN + VLAN_LEN;
    }

    // Outer header: its length, the inner protocol, and where it came from.
    let mut src = Key::new(32, DecapSource::default());
    let (outer_len, inner_proto) = match ethertype {
        ETH_P_IP => {
            let Some(ip) = ptr_at::<[u8; IPV4_LEN]>(&ctx, l2_len) else {
                return pass(decap_counter::PASS_MALFORMED);
            };
            let ip = ip as usize;
            let vihl = unsafe { *(ip as *const u8) };
            let frag = unsafe { *((ip + 6) as *const [u8; 2]) };
            if frag[0] & 0x3f != 0 || frag[1] != 0 {
                // A fragmented tunnel packet: the kernel reassembles, we cannot.
                return pass(decap_counter::PASS_NOT_TUNNEL);
            }
            src.prefix_len = 32 + 32;
            src.data.family = AF_INET as u32;
            src.data.addr[..4].copy_from_slice(&unsafe { *((ip + 12) as *const [u8; 4]) });
            (((vihl & 0x0f) as usize) * 4, unsafe {
                *((ip + 9) as *const u8)
            })
        }
        ETH_P_IPV6 => {
            let Some(ip) = ptr_at::<[u8; IPV6_LEN]>(&ctx, l2_len) else {
                return pass(decap_counter::PASS_MALFORMED);
            };
            src.prefix_len = 32 + 128;
            src.data.family = AF_INET6 as u32;
            src.data.addr = unsafe { *((ip as usize + 8) as *const [u8; 16]) };
            (IPV6_LEN, unsafe { *((ip as usize + 6) as *const u8) })
        }
        _ => return pass(decap_counter::PASS_NOT_TUNNEL),
    };
    if outer_len < IPV4_LEN {
        return pass(decap_counter::PASS_MALFORMED);
    }

    // Inner destination must be one of our VIPs.
    let inner = l2_len + outer_len;
    let (key, inner_ethertype) = match inner_proto {
        PROTO_IPIP => {
            let Some(ip) = ptr_at::<[u8; IPV4_LEN]>(&ctx, inner) else {
                return pass(decap_counter::PASS_MALFORMED);
            };
            let k = AddrKey {
                addr: [unsafe { rd32(ip as usize + 16) }, 0, 0, 0],
                family: AF_INET,
                _pad: [0; 3],
            };
            (k, ETH_P_IP)
        }
        PROTO_IPV6 => {
            let Some(ip) = ptr_at::<[u8; IPV6_LEN]>(&ctx, inner) else {
                return pass(decap_counter::PASS_MALFORMED);
            };
            let ip = ip as usize;
            let k = AddrKey {
                addr: unsafe { [rd32(ip + 24), rd32(ip + 28), rd32(ip + 32), rd32(ip + 36)] },
                family: AF_INET6,
                _pad: [0; 3],
            };
            (k, ETH_P_IPV6)
        }
        _ => return pass(decap_counter::PASS_NOT_TUNNEL),
    };
    if unsafe { DECAP_VIPS.get(key) }.is_none() {
        return pass(decap_counter::PASS_NOT_VIP);
    }
    // A tunnel to one of our VIPs from elsewhere than a balancer: spoofed.
    if DECAP_SOURCES.get(&src).is_none() {
        if let Some(p) = DECAP_COUNTERS.get_ptr_mut(decap_counter::DROP_SOURCE) {
            unsafe { *p += 1 };
        }
        return aya_ebpf::bindings::xdp_action::XDP_DROP;
    }

    // Keep the Ethernet header (and VLAN tag), drop the outer IP header.
    let mut l2 = [0u8; ETH_LEN + VLAN_LEN];
    if l2_len == ETH_LEN + VLAN_LEN {
        let Some(h) = ptr_at::<[u8; ETH_LEN + VLAN_LEN]>(&ctx, 0) else {
            return pass(decap_counter::PASS_MALFORMED);
        };
        l2 = unsafe { *h };
    } else {
        let Some(h) = ptr_at::<[u8; ETH_LEN]>(&ctx, 0) else {
            return pass(decap_counter::PASS_MALFORMED);
        };
        let h = unsafe { *h };
        l2[..ETH_LEN].copy_from_slice(&h);
    }
    if unsafe { bpf_xdp_adjust_head(ctx.ctx as *mut _, outer_len as i32) } != 0 {
        if let Some(p) = DECAP_COUNTERS.get_ptr_mut(decap_counter::DROP_ADJUST_HEAD) {
            unsafe { *p += 1 };
        }
        return aya_ebpf::bindings::xdp_action::XDP_DROP;
    }
    if l2_len == ETH_LEN + VLAN_LEN {
        let Some(h) = ptr_at::<[u8; ETH_LEN + VLAN_LEN]>(&ctx, 0) else {
            return XDP_PASS;
        };
        unsafe {
            *h = l2;
            wr16(h as usize + 16, inner_ethertype.to_be());
        }
    } else {
        let Some(h) = ptr_at::<[u8; ETH_LEN]>(&ctx, 0) else {
            return XDP_PASS;
        };
        unsafe {
            (*h).copy_from_slice(&l2[..ETH_LEN]);
            wr16(h as usize + 12, inner_ethertype.to_be());
        }
    }
    pass(decap_counter::DECAPPED)
}
