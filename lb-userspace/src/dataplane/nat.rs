//! NAT's maps: each VIP's source addresses, and their filter bits.
use super::*;

impl BpfDataPlane {
    /// Writes VIP `vip_id`'s NAT source addresses into `NAT_ADDRS` (IPv4
    /// ones, then IPv6, at most `NAT_ADDRS_PER_FAMILY` of each) and sets
    /// their bits in `NAT_FILTER`, for TCP and UDP. Bits are never
    /// cleared: a stale one only costs the host's traffic to that address
    /// a lookup.
    pub(super) fn write_nat_addrs(
        &mut self,
        vip_id: u32,
        addrs: &[std::net::IpAddr],
    ) -> Result<()> {
        let per = lb_common::NAT_ADDRS_PER_FAMILY;
        let mut a: Array<&mut MapData, [u32; 4]> =
            Array::try_from(self.map_mut(maps::NAT_ADDRS)).map_err(map_err(maps::NAT_ADDRS))?;
        for (fam, v6) in [(0, false), (per, true)] {
            let of_family = addrs.iter().filter(|a| a.is_ipv6() == v6);
            for (i, addr) in of_family.take(per as usize).enumerate() {
                let idx = vip_id * 2 * per + fam + i as u32;
                a.set(idx, lb_common::addr_words(*addr).0, 0)
                    .map_err(map_err(maps::NAT_ADDRS))?;
            }
        }
        let mut f: Array<&mut MapData, u64> =
            Array::try_from(self.map_mut(maps::NAT_FILTER)).map_err(map_err(maps::NAT_FILTER))?;
        for addr in addrs {
            let (words, family) = lb_common::addr_words(*addr);
            for proto in [lb_common::PROTO_TCP, lb_common::PROTO_UDP] {
                let bit = lb_common::vip_filter_bit(words, 0, proto, family);
                let w = f.get(&(bit / 64), 0).map_err(map_err(maps::NAT_FILTER))?;
                f.set(bit / 64, w | (1u64 << (bit % 64)), 0)
                    .map_err(map_err(maps::NAT_FILTER))?;
            }
        }
        Ok(())
    }
}
