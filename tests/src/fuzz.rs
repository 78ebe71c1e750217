//! Random and mutated packets through the loaded balancer (`cargo xtask
//! fuzz`, and a short run among the packet tests). Each packet is checked:
//! never XDP_ABORTED; traffic for no VIP address passes untouched; whatever
//! is transmitted is well formed (outer IPv4 checksum right) and goes to a
//! configured backend, or is an ICMP answer from a VIP address.
use crate::packets::{host_mask, Flow, GATEWAY_MAC};
use crate::{
    addr_words, backend, vip_key, Balancer, Sizes, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX,
};
use anyhow::{bail, Result};
use etherparse::{Ipv4Header, PacketBuilder};
use lb_common::{
    Config, VipInfo, CONFIG_F_GATEWAY_MAC, CONFIG_F_SRC_V4, CONFIG_F_SRC_V6, PROTO_TCP, PROTO_UDP,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const SIZES: Sizes = Sizes {
    max_vips: 4,
    max_backends: 16,
    ring_size: 1009,
    flows: 65536,
    persist: 1024,
    stateless_vips: 2,
    max_vip_backends: 16,
};
const VIP4: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 1);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 1);
const BACKENDS4: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 0, 1, 1), Ipv4Addr::new(10, 0, 1, 2)];
const BACKENDS6: [Ipv6Addr; 2] = [
    Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 1),
    Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 2),
];

/// What a run saw, by XDP action.
#[derive(Debug, Default)]
pub struct Report {
    pub packets: u64,
    pub passed: u64,
    pub dropped: u64,
    pub sent: u64,
}

/// Fills the maps: a TCP (:80) and a UDP (:53) VIP on `VIP4`, a TCP VIP
/// (:80) on `VIP6`, two backends each, a gateway MAC.
pub fn configure(lb: &mut Balancer) -> Result<()> {
    lb.set_config(Config {
        hash_key: [7, 11],
        ring_size: SIZES.ring_size,
        flags: CONFIG_F_GATEWAY_MAC | CONFIG_F_SRC_V4 | CONFIG_F_SRC_V6,
        udp_idle_timeout_ns: 30_000_000_000,
        src_v4: u32::from_ne_bytes([10, 255, 0, 0]),
        src_v4_mask: host_mask(8),
        src_v6: addr_words("fd00:255::".parse()?).0,
        src_v6_mask: host_mask(16),
        mtu: 1500,
        gateway_mac: GATEWAY_MAC,
        ..Config::default()
    })?;
    let vips = [
        (
            vip_key(VIP4.into(), 80, PROTO_TCP),
            BACKENDS4.map(IpAddr::V4),
        ),
        (
            vip_key(VIP4.into(), 53, PROTO_UDP),
            BACKENDS4.map(IpAddr::V4),
        ),
        (
            vip_key(VIP6.into(), 80, PROTO_TCP),
            BACKENDS6.map(IpAddr::V6),
        ),
    ];
    for (id, (key, addrs)) in vips.into_iter().enumerate() {
        let id = id as u32;
        let slots = [2 * id, 2 * id + 1];
        for (slot, addr) in slots.iter().zip(addrs) {
            lb.set_backend(*slot, backend(addr, 0, id))?;
        }
        let ring: Vec<u32> = (0..SIZES.ring_size)
            .map(|i| slots[i as usize % 2])
            .collect();
        lb.write_ring(id, 0, &ring)?;
        lb.add_vip(
            key,
            VipInfo {
                vip_id: id,
                ..VipInfo::default()
            },
        )?;
    }
    Ok(())
}

/// Runs `n` packets made from `seed` through `lb` (configured by
/// [`configure`]); the first packet that breaks a rule ends the run with
/// the packet in the error.
pub fn run(lb: &Balancer, n: u64, seed: u64) -> Result<Report> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut report = Report::default();
    for i in 0..n {
        let base = base_packet(&mut rng);
        let frame = mutate(&mut rng, base);
        let out = lb.run(&frame)?;
        let fail = |why: String| -> Result<Report> {
            bail!(
                "packet {i} (seed {seed}): {why}\ninput  {:02x?}\noutput {:02x?}",
                frame,
                out.data
            )
        };
        report.packets += 1;
        match out.action {
            XDP_PASS => {
                report.passed += 1;
                if out.data != frame {
                    return fail("passed, but changed".into());
                }
            }
            XDP_DROP => {
                report.dropped += 1;
                if !for_a_vip_address(&frame) {
                    return fail("dropped, but not for a VIP address".into());
                }
            }
            XDP_TX | XDP_REDIRECT => {
                report.sent += 1;
                if !for_a_vip_address(&frame) {
                    return fail("sent, but not for a VIP address".into());
                }
                if let Err(why) = check_sent(&out.data) {
                    return fail(why);
                }
            }
            other => return fail(format!("action {other}")),
        }
    }
    Ok(report)
}

/// A well-formed packet of one of the kinds the balancer meets.
fn base_packet(rng: &mut fastrand::Rng) -> Vec<u8> {
    let client4 = Ipv4Addr::new(192, 0, 2, rng.u8(1..255));
    let client6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, rng.u16(1..));
    let other4 = Ipv4Addr::new(10, rng.u8(..), rng.u8(..), rng.u8(..));
    let sport = rng.u16(1024..);
    let flags = ["S", "A", "R", "SA", "RA", "", "FA"][rng.usize(..7)];
    let payload: Vec<u8> = (0..rng.usize(..64)).map(|_| rng.u8(..)).collect();
    match rng.u8(..10) {
        0..=2 => Flow::tcp(
            &client4.to_string(),
            sport,
            &VIP4.to_string(),
            [80, 443, 0][rng.usize(..3)],
        )
        .packet(flags, &payload),
        3 => Flow::udp(&client4.to_string(), sport, &VIP4.to_string(), 53).packet("", &payload),
        4 => Flow::tcp(&client6.to_string(), sport, &VIP6.to_string(), 80).packet(flags, &payload),
        5 => {
            Flow::tcp(&client4.to_string(), sport, &other4.to_string(), 80).packet(flags, &payload)
        }
        6 => icmp_echo(client4, VIP4, &payload),
        7 => frag_needed(client4, sport),
        8 => Flow::tcp(&client4.to_string(), sport, &VIP4.to_string(), 80).packet_vlan(
            flags,
            &payload,
            Some(rng.u16(1..4095)),
        ),
        _ => {
            let p =
                Flow::udp(&client4.to_string(), sport, &VIP4.to_string(), 53).packet("", &payload);
            crate::packets::with_ipv4_options(&p, &[1, 1, 1, 0])
        }
    }
}

fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(crate::packets::CLIENT_MAC, crate::packets::LB_MAC)
        .ipv4(src.octets(), dst.octets(), 50)
        .icmpv4_echo_request(1, 2)
        .write(&mut out, payload)
        .expect("echo request");
    out
}

/// ICMP "fragmentation needed" from a router, quoting a VIP -> client packet.
fn frag_needed(client: Ipv4Addr, port: u16) -> Vec<u8> {
    let quoted = Flow::tcp(&VIP4.to_string(), 80, &client.to_string(), port).packet("A", b"");
    let mut out = Vec::new();
    PacketBuilder::ethernet2(crate::packets::CLIENT_MAC, crate::packets::LB_MAC)
        .ipv4([192, 0, 2, 254], VIP4.octets(), 50)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
        ))
        .write(&mut out, &quoted[14..])
        .expect("frag needed");
    out
}

/// Truncations, byte flips, another ethertype or IP version, fragments,
/// IPv6 extension headers: or nothing (a third of the packets stay valid).
fn mutate(rng: &mut fastrand::Rng, mut p: Vec<u8>) -> Vec<u8> {
    match rng.u8(..9) {
        // BPF_PROG_TEST_RUN takes no frame shorter than an Ethernet header.
        0 => p.truncate(rng.usize(14..=p.len())),
        1 | 2 => {
            for _ in 0..rng.usize(1..4) {
                let i = rng.usize(..p.len());
                p[i] ^= 1 << rng.u8(..8);
            }
        }
        3 => {
            let i = rng.usize(14..p.len().max(15)).min(p.len() - 1);
            p[i] = rng.u8(..);
        }
        4 if p.len() > 20 && p[12..14] == [8, 0] => {
            // A fragment (more-fragments, or an offset).
            p[20] |= if rng.bool() { 0x20 } else { 0x00 };
            p[21] = p[21].wrapping_add(rng.u8(1..));
        }
        5 if p.len() > 20 && p[12..14] == [0x86, 0xdd] => {
            p[20] = [0, 43, 44, 60][rng.usize(..4)];
        }
        6 => p[12..14].copy_from_slice(
            &[[0x08, 0x06], [0x88, 0xa8], [0x81, 0x00], [0x86, 0xdd]][rng.usize(..4)],
        ),
        _ => {}
    }
    p
}

/// Whether the frame's IP destination is a VIP address (or it is too
/// broken to tell, when the balancer may still act on its headers).
fn for_a_vip_address(frame: &[u8]) -> bool {
    let l3 = match frame.get(12..14) {
        Some([0x81, 0x00]) | Some([0x88, 0xa8]) => 18,
        _ => 14,
    };
    let Some(ip) = frame.get(l3..) else {
        return true;
    };
    match ip.first().map(|b| b >> 4) {
        Some(4) => ip.get(16..20).is_none_or(|d| d == VIP4.octets()),
        Some(6) => ip.get(24..40).is_none_or(|d| d == VIP6.octets()),
        _ => true,
    }
}

/// A transmitted frame: the outer header is well formed and goes to a
/// backend, or it is an ICMP answer from a VIP address.
fn check_sent(out: &[u8]) -> std::result::Result<(), String> {
    let l3 = match out.get(12..14) {
        Some([0x81, 0x00]) | Some([0x88, 0xa8]) => 18,
        _ => 14,
    };
    let ip = out.get(l3..).ok_or("no IP header")?;
    match ip.first().map(|b| b >> 4) {
        Some(4) => {
            let (h, _) = Ipv4Header::from_slice(ip).map_err(|e| format!("outer IPv4: {e}"))?;
            if h.header_checksum != h.calc_header_checksum() {
                return Err("outer IPv4 checksum wrong".into());
            }
            let to_backend = BACKENDS4.iter().any(|b| b.octets() == h.destination);
            let answer = h.protocol.0 == 1 && h.source == VIP4.octets();
            if !to_backend && !answer {
                return Err(format!("sent to {:?}, no backend", h.destination));
            }
        }
        Some(6) => {
            let dst = ip.get(24..40).ok_or("IPv6 header cut short")?;
            let to_backend = BACKENDS6.iter().any(|b| b.octets() == dst);
            let answer = ip.get(8..24) == Some(&VIP6.octets()[..]);
            if !to_backend && !answer {
                return Err(format!("sent to {dst:02x?}, no backend"));
            }
        }
        v => return Err(format!("sent with IP version {v:?}")),
    }
    Ok(())
}
