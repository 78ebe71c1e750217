//! What the controller writes for a VIP: backend slots, the Maglev table
//! (into the idle buffer, then the flip) and the VIP addresses.
use super::*;
use crate::config::Scheduler;

/// What a VIP's table holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TableKind {
    /// A Maglev table of `ring_size` slots.
    Maglev,
    /// Round robin's smooth weighted sequence, `seq_len` slots.
    RoundRobin,
    /// Every backend taking new flows once, `seq_len` slots (exact least
    /// connections).
    EveryBackend,
}

impl<D: DataPlane> Controller<D> {
    pub(super) fn write_backend(&mut self, key: &VipKey, addr: IpAddr) -> Result<(), ControlError> {
        let v = &self.vips[key];
        let b = &v.backends[&addr];
        let (words, family) = addr_words(addr);
        let kb = Backend {
            addr: words,
            family,
            flags: kernel_flags(b, v.panic),
            vip_id: v.id as u16,
            gen: self.slot_gen.get(&b.id).copied().unwrap_or(0),
        };
        let id = b.id;
        self.dp.set_backend(id, &kb)?;
        if let Some(b) = self
            .vips
            .get_mut(key)
            .and_then(|v| v.backends.get_mut(&addr))
        {
            b.flags_written = kb.flags;
        }
        Ok(())
    }

    /// Frees a slot: flows still pointing at it are rescheduled (DOWN), and
    /// without USED it is free for reuse, also after a restart. Its
    /// generation stays, for the next user to bump.
    pub(super) fn release_backend(&mut self, id: u32) -> Result<(), ControlError> {
        if let Some(free) = self.free_backend_ids.as_mut() {
            free.insert(id);
        }
        self.dp.set_backend(
            id,
            &Backend {
                flags: BACKEND_F_DOWN,
                gen: self.slot_gen.get(&id).copied().unwrap_or(0),
                ..Backend::default()
            },
        )?;
        Ok(())
    }

    /// Builds the VIP's Maglev table from the backends that take new flows;
    /// if it differs from the one in place, writes the idle buffer and flips.
    /// Returns whether a table was written.
    pub fn rebuild(&mut self, key: &VipKey) -> Result<bool, ControlError> {
        self.prepare_chain(key)?;
        let chain_window_s = self.chain_window_s;
        let room = self.ring_size;
        let v = self.vips.get_mut(key).expect("known VIP");
        // The pool file keeps a VIP's own size within the room.
        let ring_size = v.conf.maglev_size.unwrap_or(room);
        let panic = v.panic;
        let now = Instant::now();
        let fastest = v
            .backends
            .values()
            .filter(|b| takes_new_flows(b, panic))
            .filter_map(|b| b.rtt_ms)
            .reduce(f64::min);
        let input: Vec<MaglevBackend> = v
            .backends
            .values()
            .filter(|b| takes_new_flows(b, panic))
            .map(|b| MaglevBackend {
                key: maglev_key(b.address),
                slot: b.id,
                weight: weights::table_weight(b, &v.conf, fastest, now),
            })
            .collect();
        // Weight and limit of every backend, for least connections, limits
        // and persistence (weight 0: takes no new flow).
        let weights: std::collections::HashMap<u32, u32> =
            input.iter().map(|m| (m.slot, m.weight)).collect();
        for b in v.backends.values_mut() {
            let limit = BackendLimit {
                weight: weights.get(&b.id).copied().unwrap_or(0),
                max_conns: b.max_connections.unwrap_or(0),
                port: b.port.unwrap_or(0).to_be(),
                _pad: 0,
            };
            if b.limit_written != Some(limit) {
                self.dp.set_limit(b.id, &limit)?;
                b.limit_written = Some(limit);
            }
        }
        let kind = match v.conf.scheduler {
            Scheduler::RoundRobin => TableKind::RoundRobin,
            Scheduler::LeastConnectionsExact => TableKind::EveryBackend,
            _ => TableKind::Maglev,
        };
        let counts = v.counts_connections();
        // NAT: the source addresses, before the VIP names them.
        let nat_addrs = v.conf.nat.as_ref().map(|n| n.addresses.clone());
        if nat_addrs.is_some() && v.nat_written != nat_addrs {
            self.dp
                .set_nat_addrs(v.id, nat_addrs.as_deref().unwrap_or(&[]))?;
            v.nat_written = nat_addrs;
        }
        let (nat_count, (nat_port_lo, nat_port_hi)) = match &v.conf.nat {
            Some(n) => {
                let v4 = n.addresses.iter().filter(|a| a.is_ipv4()).count() as u8;
                let v6 = n.addresses.iter().filter(|a| a.is_ipv6()).count() as u8;
                (v4 | (v6 << 4), n.ports)
            }
            None => (0, (0, 0)),
        };
        // Persistence and source hash share the client prefix (the pool
        // file makes them agree when both are set).
        let (prefix_v4, prefix_v6, persist_s) = match v.conf.persistence {
            Some(p) => (p.prefix_v4, p.prefix_v6, p.timeout.as_secs() as u32),
            None => (v.conf.source_prefix_v4, v.conf.source_prefix_v6, 0),
        };
        let mut flags = if counts { VIP_F_COUNT } else { 0 };
        if v.chain.is_some() {
            flags |= lb_common::VIP_F_STATELESS;
        }
        let info_now = VipInfo {
            vip_id: v.id,
            chain_idx: v.chain.as_ref().map_or(0, |c| c.idx),
            mode: v.conf.forwarding.number(),
            scheduler: v.conf.scheduler.number(),
            active_ring: v.active_ring,
            src_prefix_v4: prefix_v4,
            src_prefix_v6: prefix_v6,
            flags,
            seq_len: v.seq_len,
            persist_s,
            nat_addrs: nat_count,
            nat_port_lo,
            nat_port_hi,
            chain_until: v.chain.as_ref().map_or(0, |c| c.until(chain_window_s)),
            ring_size,
            // Set by the map writer, from the active buffer.
            members: 0,
            ring: 0,
        };
        // The scheduler and its settings apply at once when the table stays
        // (a sequence is another table, and so is one of another size:
        // switching rebuilds the table below).
        let same_shape = v.table_kind == kind
            && v.table
                .as_ref()
                .is_some_and(|t| t.len() == ring_size as usize);
        if same_shape && v.info_written != Some(info_now) {
            self.dp.set_vip(key, &info_now)?;
            v.info_written = Some(info_now);
        }
        if same_shape && v.table_input == input {
            return Ok(false);
        }
        // A sequence in the first slots, the rest empty.
        let sequence = |mut seq: Vec<u32>| {
            let len = seq.len() as u32;
            seq.resize(ring_size as usize, lb_common::NO_BACKEND);
            (seq, len)
        };
        let (table, seq_len) = match kind {
            TableKind::RoundRobin => sequence(maglev::smooth_wrr(&input, ring_size as usize)),
            TableKind::EveryBackend => sequence(input.iter().map(|m| m.slot).collect()),
            TableKind::Maglev => (self.tables_built.build(&input, ring_size), 0),
        };
        v.table_input = input;
        v.table_kind = kind;
        if v.table.as_ref() == Some(&table) && v.seq_len == seq_len {
            return Ok(false);
        }
        // Rewrite the buffer packets are not reading, then flip to it.
        if let Some(t) = v.last_flip {
            let since = t.elapsed();
            if since < FLIP_GRACE {
                std::thread::sleep(FLIP_GRACE - since);
            }
        }
        // A new VIP is not in the VIP map yet, and an adopted one's idle
        // buffer is as idle as ever: the same rule serves all three cases.
        let idle = v.active_ring ^ 1;
        // A stateless VIP's slots name their previous backends before the
        // flip (a slot still read from the old table then names its own
        // backend as the previous one, which the data path ignores).
        if let Some(chain) = v.chain.as_mut() {
            let ids: BTreeSet<u32> = v.backends.values().map(|b| b.id).collect();
            let now_s = chains::now_s();
            let (writes, resized) = chain.update(v.table.as_deref(), &table, &ids, now_s);
            if let Some(old) = resized {
                log::warn!(
                    "VIP {}: its Maglev table goes from {} to {} slots; a stateless VIP's \
                     connections whose backend the new table changes are lost (most of them)",
                    v.conf.name,
                    old,
                    table.len()
                );
            }
            self.dp.write_chains(chain.idx, &writes)?;
        }
        self.dp.write_ring(v.id, idle, &table)?;
        let info = VipInfo {
            active_ring: idle,
            seq_len,
            chain_until: v.chain.as_ref().map_or(0, |c| c.until(chain_window_s)),
            ..info_now
        };
        self.dp.set_vip(key, &info)?;
        v.info_written = Some(info);
        v.seq_len = seq_len;
        v.active_ring = idle;
        v.table = Some(table);
        v.last_flip = Some(Instant::now());
        Ok(true)
    }

    /// Keeps VIP_ADDRS in step with the VIPs (flags per address).
    pub(super) fn sync_vip_addrs(&mut self) -> Result<(), ControlError> {
        let mut want: BTreeMap<AddrKey, u32> = BTreeMap::new();
        for k in self.vips.keys() {
            let f = want.entry(addr_key(k)).or_insert(ADDR_F_VIP);
            if k.port == 0 {
                *f |= ADDR_F_ANY_PORT;
            }
        }
        for (k, f) in &want {
            if self.known_addrs.get(k) != Some(&Some(*f)) {
                self.dp.set_vip_addr(k, *f)?;
                self.known_addrs.insert(*k, Some(*f));
            }
        }
        // Addresses no VIP uses any more.
        let unused: Vec<AddrKey> = self
            .known_addrs
            .keys()
            .filter(|k| !want.contains_key(k))
            .copied()
            .collect();
        for k in unused {
            let removed = self.dp.remove_vip_addr(&k);
            if let Some(None) = self.known_addrs.remove(&k) {
                // Only assumed present (an adopted VIP's address): a run
                // that stopped part-way may never have written it.
                if let Err(e) = removed {
                    log::debug!("VIP address of an adopted VIP not removed: {e}");
                }
            } else {
                removed?;
            }
        }
        Ok(())
    }
}

/// The backend's stable identity for Maglev: from its address alone, so
/// every node that shares the pool file builds the same table.
pub fn maglev_key(addr: IpAddr) -> u64 {
    let bytes: Vec<u8> = match addr {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    // FNV-1a 64: fixed forever (tables must match across nodes and versions).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
