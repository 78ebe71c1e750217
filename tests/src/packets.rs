//! Packet construction for tests (etherparse), and the expected encapsulated form.
use etherparse::{
    IpFragOffset, IpNumber, Ipv4Dscp, Ipv4Ecn, Ipv4Header, Ipv6FlowLabel, Ipv6Header, PacketBuilder,
};
use lb_common::{FlowKey, AF_INET, AF_INET6};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

/// A TCP or UDP packet from a client, as a frame arriving at the balancer.
#[derive(Clone, Debug)]
pub struct Flow {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

impl Flow {
    pub fn tcp(src: &str, sport: u16, dst: &str, dport: u16) -> Self {
        Flow {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            sport,
            dport,
            proto: lb_common::PROTO_TCP,
        }
    }

    pub fn udp(src: &str, sport: u16, dst: &str, dport: u16) -> Self {
        Flow {
            proto: lb_common::PROTO_UDP,
            ..Flow::tcp(src, sport, dst, dport)
        }
    }

    pub fn with_sport(&self, sport: u16) -> Self {
        Flow {
            sport,
            ..self.clone()
        }
    }

    /// The flow-table key the balancer uses for this flow.
    pub fn key(&self) -> FlowKey {
        let (src, family) = crate::addr_words(self.src);
        let (dst, _) = crate::addr_words(self.dst);
        FlowKey {
            src,
            dst,
            sport: self.sport.to_be(),
            dport: self.dport.to_be(),
            proto: self.proto,
            family,
            _pad: [0; 2],
        }
    }

    fn builder(&self, vlan: Option<u16>) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
        let eth = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC);
        match (self.src, self.dst, vlan) {
            (IpAddr::V4(s), IpAddr::V4(d), None) => eth.ipv4(s.octets(), d.octets(), 60),
            (IpAddr::V4(s), IpAddr::V4(d), Some(v)) => eth
                .single_vlan(etherparse::VlanId::try_new(v).unwrap())
                .ipv4(s.octets(), d.octets(), 60),
            (IpAddr::V6(s), IpAddr::V6(d), None) => eth.ipv6(s.octets(), d.octets(), 60),
            (IpAddr::V6(s), IpAddr::V6(d), Some(v)) => eth
                .single_vlan(etherparse::VlanId::try_new(v).unwrap())
                .ipv6(s.octets(), d.octets(), 60),
            _ => panic!("mixed families"),
        }
    }

    /// A TCP segment with the given flags (`"S"`, `"A"`, `"R"`, `"SA"`...) or a UDP datagram.
    pub fn packet(&self, tcp_flags: &str, payload: &[u8]) -> Vec<u8> {
        self.packet_vlan(tcp_flags, payload, None)
    }

    pub fn packet_vlan(&self, tcp_flags: &str, payload: &[u8], vlan: Option<u16>) -> Vec<u8> {
        let b = self.builder(vlan);
        let mut out = Vec::new();
        if self.proto == lb_common::PROTO_UDP {
            b.udp(self.sport, self.dport)
                .write(&mut out, payload)
                .unwrap();
        } else {
            let mut t = b.tcp(self.sport, self.dport, 1000, 64000);
            if tcp_flags.contains('S') {
                t = t.syn();
            }
            if tcp_flags.contains('A') {
                t = t.ack(1);
            }
            if tcp_flags.contains('R') {
                t = t.rst();
            }
            if tcp_flags.contains('F') {
                t = t.fin();
            }
            t.write(&mut out, payload).unwrap();
        }
        out
    }
}

/// Sets the DSCP/ECN byte of an IPv4 frame (offset 14) and fixes its checksum.
pub fn set_tos_v4(frame: &mut [u8], tos: u8) {
    frame[15] = tos;
    let (h, _) = Ipv4Header::from_slice(&frame[14..]).unwrap();
    let c = h.calc_header_checksum();
    frame[24..26].copy_from_slice(&c.to_be_bytes());
}

/// An untagged IPv4 frame rebuilt with IPv4 `options` (a multiple of 4
/// bytes): IHL, total length and header checksum follow.
pub fn with_ipv4_options(frame: &[u8], options: &[u8]) -> Vec<u8> {
    let (mut h, rest) = Ipv4Header::from_slice(&frame[14..]).unwrap();
    h.options = options.try_into().unwrap();
    h.total_len += options.len() as u16;
    h.header_checksum = h.calc_header_checksum();
    let mut out = frame[..14].to_vec();
    out.extend_from_slice(&h.to_bytes());
    out.extend_from_slice(rest);
    out
}

/// The IP packet inside a frame (after the Ethernet header and optional VLAN tag).
pub fn ip_part(frame: &[u8]) -> &[u8] {
    &frame[ip_offset(frame)..]
}

/// Where a frame's IP header starts: after the Ethernet header and the
/// VLAN tag, if any.
pub fn ip_offset(frame: &[u8]) -> usize {
    if frame[12..14] == [0x81, 0x00] {
        18
    } else {
        14
    }
}

/// What the balancer should send for `frame`: Ethernet (with the VLAN tag
/// kept) + outer IP header + the original IP packet.
pub struct Encap {
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Flow hash (`lb_common::flow_hash` truncated to 32 bits).
    pub hash: u32,
}

pub fn expected_encap(frame: &[u8], e: &Encap) -> Vec<u8> {
    let vlan = frame[12..14] == [0x81, 0x00];
    let inner = ip_part(frame);
    let inner_v6 = inner[0] >> 4 == 6;
    let (tos, df) = if inner_v6 {
        ((inner[0] << 4) | (inner[1] >> 4), false)
    } else {
        (inner[1], inner[6] & 0x40 != 0)
    };
    let inner_len = if inner_v6 {
        40 + u16::from_be_bytes([inner[4], inner[5]]) as usize
    } else {
        u16::from_be_bytes([inner[2], inner[3]]) as usize
    };
    let inner = &inner[..inner_len];
    let proto = if inner_v6 { IpNumber(41) } else { IpNumber(4) };
    let mut out = Vec::new();
    out.extend_from_slice(&e.dmac);
    out.extend_from_slice(&e.smac);
    let ethertype: u16 = if e.dst.is_ipv6() { 0x86dd } else { 0x0800 };
    if vlan {
        out.extend_from_slice(&frame[12..16]);
    }
    out.extend_from_slice(&ethertype.to_be_bytes());
    match (e.src, e.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut h = Ipv4Header {
                dscp: Ipv4Dscp::try_new(tos >> 2).unwrap(),
                ecn: Ipv4Ecn::try_new(tos & 3).unwrap(),
                total_len: (inner_len + 20) as u16,
                identification: if df {
                    0
                } else if inner_v6 {
                    e.hash as u16
                } else {
                    u16::from_be_bytes([inner[4], inner[5]])
                },
                dont_fragment: df,
                more_fragments: false,
                fragment_offset: IpFragOffset::ZERO,
                time_to_live: 64,
                protocol: proto,
                header_checksum: 0,
                source: s.octets(),
                destination: d.octets(),
                options: Default::default(),
            };
            h.header_checksum = h.calc_header_checksum();
            out.extend_from_slice(&h.to_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let h = Ipv6Header {
                traffic_class: tos,
                flow_label: Ipv6FlowLabel::try_new(e.hash & 0xfffff).unwrap(),
                payload_length: inner_len as u16,
                next_header: proto,
                hop_limit: 64,
                source: s.octets(),
                destination: d.octets(),
            };
            out.extend_from_slice(&h.to_bytes());
        }
        _ => panic!("outer source and destination of different families"),
    }
    out.extend_from_slice(inner);
    out
}

/// The outer source the balancer picks: the configured base with host bits from the hash.
pub fn outer_src_v4(base: Ipv4Addr, host_bits: u32, hash: u32) -> Ipv4Addr {
    let mask = if host_bits == 0 {
        0
    } else {
        u32::MAX >> (32 - host_bits)
    };
    // Host bits are taken from the hash in the same raw byte order the data path uses.
    let raw = u32::from_ne_bytes(base.octets());
    let m = u32::from_ne_bytes(mask.to_be_bytes());
    Ipv4Addr::from(((raw & !m) | (hash & m)).to_ne_bytes())
}

pub fn outer_src_v6(base: Ipv6Addr, host_bits: u32, hash: u32) -> Ipv6Addr {
    let mut o = base.octets();
    let mask = if host_bits == 0 {
        0
    } else {
        u32::MAX >> (32 - host_bits)
    };
    let last = u32::from_ne_bytes(o[12..16].try_into().unwrap());
    let m = u32::from_ne_bytes(mask.to_be_bytes());
    o[12..16].copy_from_slice(&((last & !m) | (hash & m)).to_ne_bytes());
    Ipv6Addr::from(o)
}

/// Mask (in the data path's raw byte order) selecting the `host_bits` low bits of an address word.
pub fn host_mask(host_bits: u32) -> u32 {
    let mask = if host_bits == 0 {
        0
    } else {
        u32::MAX >> (32 - host_bits)
    };
    u32::from_ne_bytes(mask.to_be_bytes())
}

pub fn family(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        AF_INET
    } else {
        AF_INET6
    }
}

/// The frame the balancer sends for `frame` by GUE (variant 1) to UDP port
/// `port`: as `expected_encap`, with a UDP header between the outer IP
/// header (protocol 17, lengths grown by 8) and the tunnelled packet. The
/// UDP source port comes from the flow hash (49152..=65535), the checksum
/// is 0.
pub fn expected_gue(frame: &[u8], e: &Encap, port: u16) -> Vec<u8> {
    let mut out = expected_encap(frame, e);
    let ip = ip_offset(&out);
    let v6 = out[ip] >> 4 == 6;
    let ip_len = if v6 { 40 } else { 20 };
    let inner_len = out.len() - ip - ip_len;
    let sport = 0xc000 | ((e.hash ^ (e.hash >> 16)) as u16 & 0x3fff);
    let mut udp = Vec::new();
    udp.extend_from_slice(&sport.to_be_bytes());
    udp.extend_from_slice(&port.to_be_bytes());
    udp.extend_from_slice(&((inner_len + 8) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    out.splice(ip + ip_len..ip + ip_len, udp);
    if v6 {
        out[ip + 6] = 17;
        let len = (inner_len + 8) as u16;
        out[ip + 4..ip + 6].copy_from_slice(&len.to_be_bytes());
    } else {
        let mut h = Ipv4Header::from_slice(&out[ip..ip + 20]).unwrap().0;
        h.protocol = IpNumber(17);
        h.total_len += 8;
        h.header_checksum = h.calc_header_checksum();
        out[ip..ip + 20].copy_from_slice(&h.to_bytes());
    }
    out
}

/// The frame the balancer sends for a stateless VIP's `frame`: as
/// `expected_gue`, with the GUE header (variant 0, `lb_common::GueChain`)
/// between UDP and the tunnelled packet, naming the previous backends
/// `prevs` (none, one or two; `age_s` seconds after the slot's last change).
pub fn expected_stateless(
    frame: &[u8],
    e: &Encap,
    port: u16,
    prevs: &[IpAddr],
    age_s: u16,
) -> Vec<u8> {
    let mut out = expected_gue(frame, e, port);
    let ip = ip_offset(&out);
    let v6 = out[ip] >> 4 == 6;
    let ip_len = if v6 { 40 } else { 20 };
    let inner_v6 = out[ip + ip_len + 8] >> 4 == 6;
    let mut g = vec![
        lb_common::chain_hlen(v6),
        if inner_v6 { 41 } else { 4 },
        0,
        0,
        lb_common::CHAIN_KIND,
        [
            0,
            lb_common::CHAIN_F_PREV,
            lb_common::CHAIN_F_PREV | lb_common::CHAIN_F_PREV2,
        ][prevs.len()],
    ];
    g.extend_from_slice(&age_s.to_be_bytes());
    for i in 0..2 {
        match (prevs.get(i), v6) {
            (Some(IpAddr::V4(a)), false) => g.extend_from_slice(&a.octets()),
            (Some(IpAddr::V6(a)), true) => g.extend_from_slice(&a.octets()),
            (None, false) => g.extend_from_slice(&[0; 4]),
            (None, true) => g.extend_from_slice(&[0; 16]),
            _ => panic!("previous backend of another family than the outer header"),
        }
    }
    let n = g.len();
    assert_eq!(n, lb_common::chain_len(v6));
    out.splice(ip + ip_len + 8..ip + ip_len + 8, g);
    let grow = |b: &mut [u8]| {
        let v = u16::from_be_bytes([b[0], b[1]]) + n as u16;
        b.copy_from_slice(&v.to_be_bytes());
    };
    grow(&mut out[ip + ip_len + 4..ip + ip_len + 6]);
    if v6 {
        grow(&mut out[ip + 4..ip + 6]);
    } else {
        let mut h = Ipv4Header::from_slice(&out[ip..ip + 20]).unwrap().0;
        h.total_len += n as u16;
        h.header_checksum = h.calc_header_checksum();
        out[ip..ip + 20].copy_from_slice(&h.to_bytes());
    }
    out
}
