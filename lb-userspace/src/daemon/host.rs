//! Warnings about the host the balancer runs on: VIP routes, IP
//! forwarding, the flow table's per-CPU share; and the host checks that
//! refuse a pool file: L2 direct-return backends off the local segment,
//! NAT source addresses that are not this host's.
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

/// What this host cannot do of `pool`, each as a message: the start or
/// reload is refused with them.
pub(super) fn host_problems(pool: &Pool) -> Vec<String> {
    let mut out = l2_backends_off_link(pool);
    out.extend(nat_addresses_not_local(pool));
    warn_nat_ports(pool);
    out
}

/// The NAT source addresses that are not addresses of this host: the
/// backends' replies to them would never come here.
fn nat_addresses_not_local(pool: &Pool) -> Vec<String> {
    let mut out = Vec::new();
    for v in &pool.vips {
        for a in v.nat.iter().flat_map(|n| &n.addresses) {
            // Binding succeeds only to an address of this host.
            if std::net::UdpSocket::bind((*a, 0)).is_err() {
                out.push(format!(
                    "snat address {a} of VIP `{}` is not an address of this host: the backends' \
                     replies to it would not come back here; add it (`ip addr add`) or list \
                     one this host has",
                    v.name
                ));
            }
        }
    }
    out
}

/// Warns when a VIP's NAT ports meet the kernel's ephemeral ports: a
/// connection of this host (a health probe) from such a port to a backend
/// could be taken for a NAT flow's reply.
fn warn_nat_ports(pool: &Pool) {
    let Ok(text) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range") else {
        return;
    };
    let mut it = text
        .split_whitespace()
        .filter_map(|w| w.parse::<u16>().ok());
    let (Some(lo), Some(hi)) = (it.next(), it.next()) else {
        return;
    };
    for v in &pool.vips {
        if let Some(n) = &v.nat {
            if n.ports.0 <= hi && lo <= n.ports.1 {
                log::warn!(
                    "VIP `{}`: snat_ports {}-{} meet this host's ephemeral ports {lo}-{hi} \
                     (net.ipv4.ip_local_port_range); keep them apart, or the host's own \
                     connections to a backend may collide with NAT flows",
                    v.name,
                    n.ports.0,
                    n.ports.1
                );
            }
        }
    }
}

/// The backends of `forwarding: dsr_l2` VIPs that the FIB does not reach
/// on a directly connected network, each as a message. Such a frame would
/// go to a router with the VIP as its destination, and come back.
fn l2_backends_off_link(pool: &Pool) -> Vec<String> {
    let l2: Vec<(&str, std::net::IpAddr)> = pool
        .vips
        .iter()
        .filter(|v| v.forwarding == crate::config::Forwarding::DsrL2)
        .flat_map(|v| v.backends.iter().map(move |b| (v.name.as_str(), b.address)))
        .collect();
    if l2.is_empty() {
        return Vec::new();
    }
    let mut rtnl = match crate::neigh::Rtnl::new() {
        Ok(r) => r,
        Err(e) => return vec![format!("checking the dsr_l2 backends' routes: {e}")],
    };
    l2.into_iter()
        .filter_map(|(vip, addr)| {
            let why = match rtnl.next_hops(addr) {
                Ok(hops) if hops.is_empty() => "the FIB has no route to it here".to_string(),
                Ok(hops) => {
                    let via: Vec<String> = hops
                        .iter()
                        .filter(|h| h.addr != addr)
                        .map(|h| h.addr.to_string())
                        .collect();
                    if via.is_empty() {
                        return None;
                    }
                    format!("it is reached through {}", via.join(", "))
                }
                Err(e) => format!("its route could not be read: {e}"),
            };
            Some(format!(
                "backend {addr} of VIP `{vip}` (forwarding: dsr_l2) is not on a network this \
                 host is directly connected to ({why}); L2 direct return sends the frame to the \
                 backend's own MAC; put it on this host's segment or use forwarding: encap or gue"
            ))
        })
        .collect()
}
