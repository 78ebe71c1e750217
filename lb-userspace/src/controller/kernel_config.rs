//! The data path's global settings (`CONFIG`) from the pool file.
use super::*;

/// The kernel's global settings from the pool file and the hash secret.
pub fn kernel_config(pool: &Pool, hash_key: [u64; 2]) -> Config {
    let e = &pool.encapsulation;
    let mut cfg = Config {
        hash_key,
        ring_size: pool.tables.maglev_size,
        udp_idle_timeout_ns: pool.tables.udp_idle_timeout.as_nanos() as u64,
        mtu: e.mtu,
        gue_port: e.gue_port.to_be(),
        ..Config::default()
    };
    if let Some((addr, prefix)) = e.source_v4 {
        cfg.flags |= CONFIG_F_SRC_V4;
        cfg.src_v4 = u32::from_ne_bytes(addr.octets());
        let host: u32 = if prefix >= 32 { 0 } else { u32::MAX >> prefix };
        cfg.src_v4_mask = u32::from_ne_bytes(host.to_be_bytes());
    }
    if let Some((addr, prefix)) = e.source_v6 {
        cfg.flags |= CONFIG_F_SRC_V6;
        cfg.src_v6 = addr_words(IpAddr::V6(addr)).0;
        let bits = 128u32.saturating_sub(prefix as u32).min(32);
        let host: u32 = if bits == 0 {
            0
        } else {
            u32::MAX >> (32 - bits)
        };
        cfg.src_v6_mask = u32::from_ne_bytes(host.to_be_bytes());
    }
    if let Some(mac) = e.gateway_mac {
        cfg.flags |= CONFIG_F_GATEWAY_MAC;
        cfg.gateway_mac = mac;
    }
    if pool.vips.iter().any(|v| v.port == 0) {
        cfg.flags |= CONFIG_F_ANY_PORT;
    }
    if pool.vips.iter().any(|v| v.nat.is_some()) {
        cfg.flags |= lb_common::CONFIG_F_NAT;
    }
    if pool.vips.iter().any(|v| v.stateless) {
        cfg.flags |= lb_common::CONFIG_F_STATELESS;
    }
    if !pool.tables.flow_table_grows {
        cfg.flags |= lb_common::CONFIG_F_FLOWS_WHOLE;
    }
    cfg.chain_window_s = pool.tables.stateless_window.as_secs() as u32;
    cfg.nat_tcp_timeout_ns = pool.tables.nat_tcp_timeout.as_nanos() as u64;
    cfg.nat_closed_timeout_ns = pool.tables.nat_closed_timeout.as_nanos() as u64;
    if let Some(interval) = 1_000_000_000u64.checked_div(u64::from(pool.tables.new_flows_per_cpu)) {
        cfg.new_flow_interval_ns = interval;
        cfg.new_flow_tolerance_ns = crate::config::NEW_FLOW_BURST.as_nanos() as u64;
    }
    cfg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(encap: &str) -> Pool {
        let text = format!(
            "instance: t\ninterfaces: [eth0]\n{encap}vips:\n  - name: w\n    address: 10.100.0.1\n    port: 0\n    protocol: tcp\n    health_check: {{kind: none}}\n    backends:\n      - address: 10.0.1.1\n"
        );
        crate::config::parse(&text, "t.yaml").unwrap()
    }

    #[test]
    fn outer_sources_keep_the_prefix_and_vary_the_host_bits() {
        let p = pool("encapsulation:\n  source_v4: 10.255.0.0/24\n  source_v6: \"fd00:255::/112\"\n  gateway_mac: \"02:00:00:00:00:fe\"\n");
        let c = kernel_config(&p, [1, 2]);
        assert_eq!(
            c.flags,
            CONFIG_F_SRC_V4 | CONFIG_F_SRC_V6 | CONFIG_F_GATEWAY_MAC | CONFIG_F_ANY_PORT
        );
        // The mask selects exactly the last octet, in the packet's byte order.
        assert_eq!(c.src_v4.to_ne_bytes(), [10, 255, 0, 0]);
        assert_eq!(c.src_v4_mask.to_ne_bytes(), [0, 0, 0, 0xff]);
        assert_eq!(c.src_v6_mask.to_ne_bytes(), [0, 0, 0xff, 0xff]);
        assert_eq!(c.gateway_mac, [2, 0, 0, 0, 0, 0xfe]);
        assert_eq!(c.hash_key, [1, 2]);
        assert_eq!(c.ring_size, 65537);
        // A data-path source for any hash stays inside 10.255.0.0/24.
        for h in [0u32, 0xdead_beef, u32::MAX] {
            let src = (c.src_v4 & !c.src_v4_mask) | (h & c.src_v4_mask);
            assert_eq!(&src.to_ne_bytes()[..3], &[10, 255, 0]);
        }
    }

    #[test]
    fn a_host_route_source_does_not_vary() {
        let p = pool("encapsulation:\n  source_v4: 10.255.0.7/32\n");
        let c = kernel_config(&p, [0, 0]);
        assert_eq!(c.src_v4_mask, 0);
        assert_eq!(c.flags & CONFIG_F_SRC_V6, 0);
    }

    #[test]
    fn a_flow_table_that_does_not_grow_is_flagged_for_the_map_writer() {
        let src = "encapsulation:\n  source_v4: 10.255.0.7/32\n";
        let c = kernel_config(&pool(src), [0, 0]);
        assert_eq!(c.flags & lb_common::CONFIG_F_FLOWS_WHOLE, 0);
        let c = kernel_config(
            &pool(&format!("{src}tables:\n  flow_table_grows: false\n")),
            [0, 0],
        );
        assert_ne!(c.flags & lb_common::CONFIG_F_FLOWS_WHOLE, 0);
    }

    #[test]
    fn the_new_flow_rate_becomes_an_interval_and_a_burst() {
        let src = "encapsulation:\n  source_v4: 10.255.0.7/32\n";
        let c = kernel_config(&pool(src), [0, 0]);
        // 125 000 a second: one per 8 µs, a tenth of a second at once.
        assert_eq!(c.new_flow_interval_ns, 8_000);
        assert_eq!(c.new_flow_tolerance_ns, 100_000_000);
        let c = kernel_config(
            &pool(&format!("{src}tables:\n  new_flows_per_cpu: 0\n")),
            [0, 0],
        );
        assert_eq!((c.new_flow_interval_ns, c.new_flow_tolerance_ns), (0, 0));
        let c = kernel_config(
            &pool(&format!("{src}tables:\n  new_flows_per_cpu: 1000\n")),
            [0, 0],
        );
        assert_eq!(c.new_flow_interval_ns, 1_000_000);
    }
}
