//! Warnings about the host the balancer runs on: VIP routes, IP
//! forwarding, the flow table's per-CPU share.
use super::*;

/// Packets to a VIP address on a port no VIP serves go to the kernel. If the
/// kernel forwards them (towards the router that sent them), they loop until
/// their TTL runs out. Warn unless each VIP address is local, blackholed or
/// unreachable here.
pub(super) fn warn_vip_routes(pool: &Pool) {
    let mut seen = std::collections::BTreeSet::new();
    for v in &pool.vips {
        if !seen.insert(v.address) {
            continue;
        }
        let out = match std::process::Command::new("ip")
            .args(["-o", "route", "get"])
            .arg(v.address.to_string())
            .output()
        {
            Ok(o) => o,
            Err(_) => return,
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let first = text.split_whitespace().next().unwrap_or("");
        let contained = !out.status.success()
            || matches!(first, "local" | "blackhole" | "unreachable" | "prohibit");
        if !contained {
            log::warn!(
                "VIP address {} is routed by the kernel here ({}): traffic to its ports that no VIP serves is forwarded and may loop back from your router; add `ip route add blackhole {}/{}` (or put the address on lo)",
                v.address,
                text.trim(),
                v.address,
                if v.address.is_ipv4() { 32 } else { 128 }
            );
        }
    }
}

/// CPUs in a kernel CPU list such as "0-3,8".
pub(super) fn cpu_count(list: &str) -> usize {
    list.trim()
        .split(',')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('-') {
            Some((a, b)) => b.parse::<usize>().unwrap_or(0) + 1 - a.parse::<usize>().unwrap_or(0),
            None => 1,
        })
        .sum()
}

/// The flow table's LRU keeps up to 128 free entries per CPU in a local list
/// (and as many recently added ones pending): on a small table with many
/// CPUs, live flows can be evicted while the table is far from full (the
/// kernel eases this from 6.16 on).
pub(super) fn warn_flow_capacity(flows: u32) {
    let Ok(possible) = std::fs::read_to_string("/sys/devices/system/cpu/possible") else {
        return;
    };
    let held = cpu_count(&possible) * 256;
    if (flows as usize) < 4 * held {
        log::warn!(
            "tables.flow_table_size is {flows}; the LRU's per-CPU lists may hold up to {held} entries on this host's CPUs, so flows can be evicted early; raise it to {} or more",
            4 * held
        );
    }
}

pub(super) fn warn_forwarding(iface: &str) {
    let p = format!("/proc/sys/net/ipv4/conf/{iface}/forwarding");
    if std::fs::read_to_string(&p)
        .map(|s| s.trim() == "0")
        .unwrap_or(false)
    {
        log::warn!(
            "IP forwarding is off on `{iface}`: the kernel will not resolve next hops for the balancer, which then uses `encapsulation.gateway_mac` (or drops, counted as drop_no_route); enable it with `sysctl -w net.ipv4.conf.{iface}.forwarding=1` (and net.ipv6.conf.{iface}.forwarding=1)"
        );
    }
}
