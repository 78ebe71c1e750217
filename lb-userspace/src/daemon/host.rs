//! Warnings about the host the balancer runs on: VIP routes, IP
//! forwarding, the flow table's per-CPU share; and the host checks that
//! refuse a pool file: L2 direct-return backends off the local segment,
//! NAT source addresses that are not this host's.
use super::*;

/// Packets to a VIP address on a port no VIP serves go to the kernel. If the
/// kernel forwards them (towards the router that sent them), they loop until
/// their TTL runs out. Warn unless each VIP address is local, blackholed or
/// unreachable here. One `ip -batch` asks for every address (a process
/// each took a second at 512 VIPs), and one line names those routed.
pub(super) fn warn_vip_routes(pool: &Pool) {
    use std::io::Write;
    let addrs: Vec<std::net::IpAddr> = pool
        .vips
        .iter()
        .map(|v| v.address)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let Ok(mut child) = std::process::Command::new("ip")
        .args(["-force", "-o", "-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
    else {
        return;
    };
    if let Some(mut stdin) = child.stdin.take() {
        let asked: String = addrs.iter().map(|a| format!("route get {a}\n")).collect();
        let _ = stdin.write_all(asked.as_bytes());
    }
    let Ok(out) = child.wait_with_output() else {
        return;
    };
    let routed = routed_addresses(&String::from_utf8_lossy(&out.stdout));
    if routed.is_empty() {
        return;
    }
    const SHOWN: usize = 8;
    let named: Vec<String> = routed
        .iter()
        .take(SHOWN)
        .map(|(a, route)| format!("{a} ({route})"))
        .collect();
    let more = match routed.len().saturating_sub(SHOWN) {
        0 => String::new(),
        n => format!(" and {n} more"),
    };
    let (a, _) = routed[0];
    log::warn!(
        "{} routed by the kernel here: {}{more}: traffic to ports that no VIP serves is forwarded and may loop back from your router; add a blackhole route for each (`ip route add blackhole {a}/{}`), or put the addresses on lo",
        if routed.len() == 1 { "a VIP address is" } else { "VIP addresses are" },
        named.join(", "),
        if a.is_ipv4() { 32 } else { 128 }
    );
}

/// The addresses `ip -o route get` says the kernel forwards, with their
/// route: every line but those of local, blackholed, unreachable or
/// prohibited ones (an address the kernel has no route for prints no line).
fn routed_addresses(output: &str) -> Vec<(std::net::IpAddr, String)> {
    output
        .lines()
        .filter_map(|line| {
            let line = line.split(" \\").next().unwrap_or(line).trim();
            let (first, route) = line.split_once(' ').unwrap_or((line, ""));
            let addr = first.parse().ok()?;
            Some((addr, route.to_string()))
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_addresses_the_kernel_forwards_are_routed() {
        let out = "10.100.0.1 via 192.0.2.1 dev eth0 src 192.0.2.2 uid 0 \\    cache \n\
                   local 10.100.0.2 dev lo src 10.100.0.2 uid 0 \\    cache <local> \n\
                   blackhole 10.100.0.3 uid 0 \\    cache \n\
                   fd00:100::1 from :: via fe80::1 dev eth0 src fd00::2 metric 1024 pref medium\n";
        let got = routed_addresses(out);
        let addrs: Vec<String> = got.iter().map(|(a, _)| a.to_string()).collect();
        assert_eq!(addrs, ["10.100.0.1", "fd00:100::1"]);
        assert_eq!(got[0].1, "via 192.0.2.1 dev eth0 src 192.0.2.2 uid 0");
    }
}
