//! The log line for a probe's verdict: one for an address, however many
//! VIPs it serves.
use super::*;

/// One line for a backend address whose health changed on the VIPs
/// `vips`: behind 512 VIPs, one address going down was 512 lines.
pub(super) fn log_transition(addr: std::net::IpAddr, ev: &HealthEvent<ProbeSpec>, vips: &[String]) {
    let (level, word, probes) = match ev.health {
        Health::Up => (log::Level::Info, "up", "passed"),
        Health::Down => (log::Level::Warn, "down", "failed"),
    };
    log::log!(
        level,
        "backend {addr} is {word} after {} {probes} probe{} ({}, {:.1} ms) for {}",
        ev.in_a_row,
        if ev.in_a_row == 1 { "" } else { "s" },
        ev.outcome.detail,
        ev.outcome.latency.as_secs_f64() * 1000.0,
        vip_list(vips)
    );
}

/// "VIP `web`", "VIPs `web`, `dns`", "VIPs `v0`, ... `v7` and 504 more".
pub(super) fn vip_list(vips: &[String]) -> String {
    const SHOWN: usize = 8;
    let names: Vec<String> = vips.iter().take(SHOWN).map(|v| format!("`{v}`")).collect();
    let more = match vips.len().saturating_sub(SHOWN) {
        0 => String::new(),
        n => format!(" and {n} more"),
    };
    let s = if vips.len() == 1 { "" } else { "s" };
    format!("VIP{s} {}{more}", names.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verdict_names_its_vips_the_first_few_then_how_many_more() {
        let names = |n: usize| -> Vec<String> { (0..n).map(|i| format!("v{i}")).collect() };
        assert_eq!(vip_list(&names(1)), "VIP `v0`");
        assert_eq!(vip_list(&names(3)), "VIPs `v0`, `v1`, `v2`");
        assert_eq!(
            vip_list(&names(512)),
            "VIPs `v0`, `v1`, `v2`, `v3`, `v4`, `v5`, `v6`, `v7` and 504 more"
        );
    }
}
