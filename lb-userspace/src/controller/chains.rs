//! Stateless VIPs: each slot's previous backends (`CHAINS`), kept as the
//! VIP's table changes. A slot that changes backend names the one it had,
//! and the one it had named before that, from the second it changed; a slot
//! that keeps its backend keeps what it named. So the two backends before
//! the current one are remembered until the slot changes again, and sent
//! along for `tables.stateless_window` after its last change: connections
//! survive two changes of their slot in quick succession; after three
//! within the window, those of the oldest backend are lost.
use super::*;
use lb_common::{
    chain_changed_s, chain_entry2, chain_prev, chain_prev2, NO_BACKEND, VIP_F_STATELESS,
};

/// The VIP's index in `CHAINS` and what this daemon knows is there.
#[derive(Clone, Debug)]
pub(super) struct Chains {
    pub idx: u8,
    entries: Vec<u64>,
    /// The second of the latest change any entry names (0: none).
    latest_s: u32,
    /// What the active table held when this daemon took the VIP over from
    /// an earlier run (its slots' current backends), until the first table
    /// this daemon writes.
    adopted_table: Option<Vec<u32>>,
}

impl<D: DataPlane> Controller<D> {
    /// Gives a stateless VIP its table of previous backends (the one an
    /// earlier run left, or a free index cleared), or takes it from a VIP
    /// no longer stateless.
    pub(super) fn prepare_chain(&mut self, key: &VipKey) -> Result<(), ControlError> {
        let v = &self.vips[key];
        if !v.conf.stateless {
            self.vips.get_mut(key).expect("known").chain = None;
            return Ok(());
        }
        if v.chain.is_some() {
            return Ok(());
        }
        let (vip_id, active_ring) = (v.id, v.active_ring);
        let kernel = self.dp.vips()?;
        let earlier = kernel
            .iter()
            .find(|(k, i)| k == key && i.vip_id == vip_id && i.flags & VIP_F_STATELESS != 0);
        let chain = match earlier {
            Some((_, info)) => {
                let entries = self.dp.read_chains(info.chain_idx)?;
                Chains {
                    idx: info.chain_idx,
                    latest_s: latest(&entries, now_s()),
                    entries,
                    adopted_table: Some(self.dp.read_ring(vip_id, active_ring, info.ring_size)?),
                }
            }
            None => {
                // Indices of the other stateless VIPs: running, or in the
                // kernel and not yet taken over.
                let mut used: BTreeSet<u8> = self
                    .vips
                    .values()
                    .filter_map(|v| v.chain.as_ref().map(|c| c.idx))
                    .collect();
                used.extend(
                    kernel
                        .iter()
                        .filter(|(k, i)| {
                            i.flags & VIP_F_STATELESS != 0 && self.adopted_vips.contains_key(k)
                        })
                        .map(|(_, i)| i.chain_idx),
                );
                let max = self.stateless_vips;
                let used: BTreeSet<u32> = used.into_iter().map(u32::from).collect();
                let idx = Self::free_id(&used, max).ok_or(ControlError::Full {
                    what: "stateless VIP",
                    field: "max_stateless_vips",
                    max,
                })? as u8;
                let entries = vec![0; self.ring_size as usize];
                let all: Vec<(u32, u64)> = (0..self.ring_size).map(|s| (s, 0)).collect();
                self.dp.write_chains(idx, &all)?;
                Chains {
                    idx,
                    entries,
                    latest_s: 0,
                    adopted_table: None,
                }
            }
        };
        self.vips.get_mut(key).expect("known").chain = Some(chain);
        Ok(())
    }
}

impl Chains {
    /// The entries to write before `new` replaces `old` (the table in
    /// place; `None` for a new VIP): each slot that changes backend names
    /// its old one from `now_s`; a slot naming a backend the VIP no longer
    /// has (`ids`) is cleared. Also the old table's size when it differs
    /// from `new`'s: then every entry is cleared.
    pub(super) fn update(
        &mut self,
        old: Option<&[u32]>,
        new: &[u32],
        ids: &BTreeSet<u32>,
        now_s: u32,
    ) -> (Vec<(u32, u64)>, Option<usize>) {
        let mut writes = Vec::new();
        let mut resized = None;
        // A table of another size (`maglev_size` changed) hashes
        // connections to other slots: what a slot named means nothing now.
        let old = match old.or(self.adopted_table.as_deref()) {
            Some(o) if o.len() != new.len() => {
                resized = Some(o.len());
                for (slot, e) in self.entries.iter_mut().enumerate() {
                    if *e != 0 {
                        *e = 0;
                        writes.push((slot as u32, 0));
                    }
                }
                None
            }
            o => o,
        };
        for (slot, &n) in new.iter().enumerate() {
            let Some(e) = self.entries.get_mut(slot) else {
                break;
            };
            let (mut a, mut b, mut at) =
                (chain_prev(*e), chain_prev2(*e), chain_changed_s(*e, now_s));
            match old.and_then(|o| o.get(slot)) {
                Some(&o) if o != n && o != NO_BACKEND => {
                    b = if a != n && a != o { a } else { NO_BACKEND };
                    (a, at) = (o, now_s);
                }
                _ => {}
            }
            // Backends the VIP no longer has are forgotten.
            let gone = |x: u32| x != NO_BACKEND && !ids.contains(&x);
            if gone(b) {
                b = NO_BACKEND;
            }
            if gone(a) || a == NO_BACKEND {
                (a, b) = (b, NO_BACKEND);
            }
            let want = if a == NO_BACKEND {
                0
            } else {
                chain_entry2(a, b, at)
            };
            if want != *e {
                *e = want;
                writes.push((slot as u32, want));
            }
        }
        self.adopted_table = None;
        self.latest_s = latest(&self.entries, now_s);
        (writes, resized)
    }

    /// `VipInfo::chain_until` for a window of `window_s`.
    pub(super) fn until(&self, window_s: u32) -> u32 {
        lb_common::chain_until(self.latest_s, window_s)
    }
}

/// The second of the latest change that entries name (0: none), as of
/// `now_s` (entries hold the second modulo 2^24).
fn latest(entries: &[u64], now_s: u32) -> u32 {
    entries
        .iter()
        .filter(|&&e| e != 0)
        .map(|&e| chain_changed_s(e, now_s))
        .max()
        .unwrap_or(0)
}

/// The data path clock's second now.
pub(super) fn now_s() -> u32 {
    (lb_common::monotonic_coarse_ns() / 1_000_000_000) as u32
}
