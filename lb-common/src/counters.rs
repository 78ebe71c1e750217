//! The data path's counters: indices of the balancer's `COUNTERS` and the
//! decapsulator's `DECAP_COUNTERS`, with their names.

/// Indices of the balancer's `COUNTERS` map.
pub mod counter {
    pub const FLOW_HIT: u32 = 0;
    pub const FLOW_MISS: u32 = 1;
    pub const NEW_FLOW: u32 = 2;
    pub const TX: u32 = 3;
    pub const REDIRECT: u32 = 4;
    pub const PASS_NOT_VIP: u32 = 5;
    pub const PASS_NOT_IP: u32 = 6;
    pub const PASS_MALFORMED: u32 = 7;
    pub const DROP_NO_BACKEND: u32 = 8;
    pub const DROP_FRAGMENT: u32 = 9;
    pub const DROP_IPV6_EXT: u32 = 10;
    pub const DROP_TOO_BIG: u32 = 11;
    pub const ICMP_TOO_BIG_SENT: u32 = 12;
    pub const ICMP_ECHO_REPLY: u32 = 13;
    pub const ICMP_STEERED: u32 = 14;
    pub const PASS_ICMP_NO_FLOW: u32 = 15;
    pub const DROP_ADJUST_HEAD: u32 = 16;
    pub const DROP_NO_SOURCE: u32 = 17;
    pub const FIB_FALLBACK: u32 = 18;
    pub const UDP_FLOW_EXPIRED: u32 = 19;
    pub const RESCHEDULED_DOWN: u32 = 20;
    pub const PASS_VIP_OTHER_PROTO: u32 = 21;
    pub const DROP_NO_ROUTE: u32 = 22;
    /// `bpf_fib_lookup` calls (next-hop cache misses).
    pub const FIB_LOOKUP: u32 = 23;
    /// A SYN on a 4-tuple the flow table knows, whose backend can still
    /// take it: kept there rather than scheduled anew (a retransmission, or
    /// a spoofed or reused SYN must not move a live connection).
    pub const SYN_KEPT_FLOW: u32 = 24;
    /// A flow-table insert the kernel refused (the flow is forwarded, but
    /// its next packet is scheduled anew).
    pub const FLOW_INSERT_FAILED: u32 = 25;
    /// An ICMP answer (echo reply, "too big") not sent: over the per-CPU
    /// rate (`defaults::ICMP_RATE_PER_CPU`); the packet is dropped.
    pub const DROP_ICMP_RATE: u32 = 26;
    /// A new flow forwarded by its VIP's Maglev table but not stored: this
    /// CPU was over its flow-table insert rate (`tables.new_flows_per_cpu`),
    /// as under a SYN flood. Its next packet tries again.
    pub const NEW_FLOW_NOT_STORED: u32 = 27;
    /// The FIB has a route to the backend but its next hop's MAC is not
    /// resolved yet (the daemon makes every backend's next hop a managed
    /// neighbour entry, which the kernel resolves): dropped.
    pub const DROP_NO_NEIGH: u32 = 28;
    /// A new flow dropped: every backend it could go to is at its
    /// `max_connections` (also counted in the VIP's drops).
    pub const DROP_BACKENDS_FULL: u32 = 29;
    /// A new flow sent to the backend its client had (persistence).
    pub const PERSIST_HIT: u32 = 30;
    /// A backend of an L2 direct-return VIP that the FIB reaches through a
    /// gateway, not on a directly connected network: dropped (the frame
    /// would go to the router with the VIP as its destination).
    pub const DROP_NOT_ON_LINK: u32 = 31;
    /// A backend's reply to a NAT flow, sent back to its client.
    pub const NAT_REPLY: u32 = 32;
    /// A new NAT flow dropped: no free source port found (every address
    /// and port tried is taken by a live flow to that backend).
    pub const DROP_NAT_NO_PORT: u32 = 33;
    /// A NAT flow's port taken over from an earlier flow that had ended
    /// (closed or idle past its timeout).
    pub const NAT_PORT_REUSED: u32 = 34;
    /// An ICMP error about a NAT flow, translated and sent on (to the
    /// client, or to the backend).
    pub const NAT_ICMP: u32 = 35;
    /// A packet of a stateless VIP, forwarded with no flow-table lookup.
    pub const STATELESS: u32 = 36;
    /// ... of those, sent with the slot's previous backend named.
    pub const STATELESS_PREV: u32 = 37;
    /// A new flow took the entry of a flow still held (its set was full):
    /// a flow seen in one packet only, else the one seen longest ago. That
    /// flow is scheduled anew with its next packet.
    pub const FLOW_PUSHED_OUT: u32 = 38;
    pub const COUNT: u32 = 39;

    /// Names for `lb status` and metrics, indexed by counter.
    pub const NAMES: [&str; COUNT as usize] = [
        "flow_hit",
        "flow_miss",
        "new_flow",
        "tx",
        "redirect",
        "pass_not_vip",
        "pass_not_ip",
        "pass_malformed",
        "drop_no_backend",
        "drop_fragment",
        "drop_ipv6_ext",
        "drop_too_big",
        "icmp_too_big_sent",
        "icmp_echo_reply",
        "icmp_steered",
        "pass_icmp_no_flow",
        "drop_adjust_head",
        "drop_no_source",
        "fib_fallback",
        "udp_flow_expired",
        "rescheduled_down",
        "pass_vip_other_proto",
        "drop_no_route",
        "fib_lookup",
        "syn_kept_flow",
        "flow_insert_failed",
        "drop_icmp_rate",
        "new_flow_not_stored",
        "drop_no_neigh",
        "drop_backends_full",
        "persist_hit",
        "drop_not_on_link",
        "nat_reply",
        "drop_nat_no_port",
        "nat_port_reused",
        "nat_icmp",
        "stateless",
        "stateless_prev",
        "flow_pushed_out",
    ];
}

/// Indices of the decapsulator's `DECAP_COUNTERS` map.
pub mod decap_counter {
    pub const DECAPPED: u32 = 0;
    pub const PASS_NOT_TUNNEL: u32 = 1;
    pub const PASS_NOT_VIP: u32 = 2;
    pub const PASS_MALFORMED: u32 = 3;
    pub const DROP_ADJUST_HEAD: u32 = 4;
    /// A tunnel to a VIP from an outer source not in `DECAP_SOURCES`.
    pub const DROP_SOURCE: u32 = 5;
    /// The outer header said "congestion experienced": carried to the
    /// inner ECN-capable packet (RFC 6040).
    pub const ECN_CE_COPIED: u32 = 6;
    /// "Congestion experienced" outside, a packet that is not ECN-capable
    /// inside: dropped, as RFC 6040 asks (the congestion signal must not
    /// be lost).
    pub const DROP_ECN: u32 = 7;
    /// A tunnel to a VIP's address but to a port or protocol no VIP there
    /// has (or a fragment): it would reach another service past the
    /// balancer.
    pub const DROP_NOT_SERVICE: u32 = 8;
    /// Stateless VIPs: a TCP packet (not a SYN) of no connection of this
    /// host, passed on to the previous backend its GUE header names.
    pub const CHAIN_PASSED: u32 = 9;
    /// Stateless VIPs: delivered here because this host has the connection
    /// (with a previous backend named, so it was looked up).
    pub const CHAIN_LOCAL: u32 = 10;
    /// Stateless VIPs: passed on, but the previous backend's MAC is not
    /// known here: the rewritten packet went to the kernel to forward.
    pub const CHAIN_TO_KERNEL: u32 = 11;
    pub const COUNT: u32 = 12;
    pub const NAMES: [&str; COUNT as usize] = [
        "decapsulated",
        "pass_not_tunnel",
        "pass_not_vip",
        "pass_malformed",
        "drop_adjust_head",
        "drop_source",
        "ecn_ce_copied",
        "drop_ecn",
        "drop_not_service",
        "chain_passed",
        "chain_local",
        "chain_to_kernel",
    ];
}
