//! The VIP filter: one bit per (address, port, protocol) hash, so the data
//! path passes traffic for no VIP with no map lookup, and `VIP_INDEX`, the
//! VIP of each bit that only one VIP sets. `VipFilter` is the bookkeeping
//! the daemon (and the test harness) keep to write both safely.
#[cfg(feature = "user")]
use crate::layout::{maps, VipEntry, VipInfo, VipKey, VIP_FILTER_BITS, VIP_FILTER_WORDS};
#[cfg(feature = "user")]
use std::{format, string::String};

/// The `VIP_FILTER` bit of a service (address, port in network order,
/// protocol, family). A clear bit means "no VIP": TCP and UDP packets are
/// then passed with no hash-map lookup, and a set bit lets a packet of a
/// known flow skip the VIP lookup (the flow entry names its VIP). A set bit
/// may be another VIP's: those packets take the VIP lookup and pass.
#[inline(always)]
pub fn vip_filter_bit(addr: [u32; 4], port: u16, proto: u8, family: u8) -> u32 {
    let x = addr[0]
        ^ addr[1].rotate_left(8)
        ^ addr[2].rotate_left(16)
        ^ addr[3].rotate_left(24)
        ^ ((port as u32) << 16 | (proto as u32) << 8 | family as u32);
    // Multiplicative hashing: the top 16 bits depend on every input bit.
    x.wrapping_mul(0x9e37_79b1) >> 16
}

/// What `VIP_FILTER` and `VIP_INDEX` should hold for a set of VIPs: the
/// daemon (and the test harness) keep one and write what each change returns.
#[cfg(feature = "user")]
#[derive(Default)]
pub struct VipFilter {
    vips: std::collections::BTreeMap<VipKey, VipInfo>,
    /// The VIPs on each set bit.
    by_bit: std::collections::BTreeMap<u32, std::collections::BTreeSet<VipKey>>,
    words: std::vec::Vec<u64>,
}

/// What a change to `VipFilter` asks to be written, in order.
#[cfg(feature = "user")]
#[derive(Debug, Default, PartialEq)]
pub struct FilterWrites {
    /// `VIP_INDEX` entries, written one after the other.
    pub entries: std::vec::Vec<(u32, VipEntry)>,
    /// A `VIP_FILTER` word, written last.
    pub word: Option<(u32, u64)>,
}

/// `e` with a key no packet matches (family 0), the rest as is.
#[cfg(feature = "user")]
fn invalidated(e: VipEntry) -> VipEntry {
    VipEntry {
        key: VipKey { family: 0, ..e.key },
        ..e
    }
}

#[cfg(feature = "user")]
impl VipFilter {
    pub fn new() -> Self {
        VipFilter {
            words: std::vec![0; VIP_FILTER_WORDS as usize],
            ..Default::default()
        }
    }

    pub fn bit(key: &VipKey) -> u32 {
        vip_filter_bit(key.addr, key.port, key.proto, key.family)
    }

    /// The index entry at `bit`: its VIP when it is the only one there.
    fn entry(&self, bit: u32) -> VipEntry {
        match self.by_bit.get(&bit) {
            Some(keys) if keys.len() == 1 => {
                let key = *keys.first().expect("one key");
                VipEntry {
                    key,
                    info: self.vips[&key],
                }
            }
            _ => VipEntry::default(),
        }
    }

    /// The index writes that take `bit` from `old` to `new` such that a
    /// packet reading the entry meanwhile (the kernel copies it without a
    /// lock) matches the old VIP, the new one, or nothing: a key changes only
    /// while its family byte is 0, and the family byte alone turns a key on
    /// or off.
    fn moves(bit: u32, old: VipEntry, new: VipEntry) -> std::vec::Vec<(u32, VipEntry)> {
        let mut w = std::vec::Vec::new();
        if old == new {
            return w;
        }
        if old.key == new.key {
            // The same VIP, other info (a table flip changes one byte).
            w.push((bit, new));
            return w;
        }
        if old.key.family != 0 {
            w.push((bit, invalidated(old)));
        }
        if new.key.family != 0 {
            w.push((bit, invalidated(new)));
        }
        w.push((bit, new));
        w
    }

    /// Adds `key` or changes its info.
    pub fn set(&mut self, key: VipKey, info: VipInfo) -> FilterWrites {
        let bit = Self::bit(&key);
        let old = self.entry(bit);
        let new_vip = self.vips.insert(key, info).is_none();
        let keys = self.by_bit.entry(bit).or_default();
        keys.insert(key);
        let first = new_vip && keys.len() == 1;
        FilterWrites {
            entries: Self::moves(bit, old, self.entry(bit)),
            word: first.then(|| self.flip(bit, true)),
        }
    }

    /// Removes `key`.
    pub fn remove(&mut self, key: &VipKey) -> FilterWrites {
        if !self.vips.contains_key(key) {
            return FilterWrites::default();
        }
        let bit = Self::bit(key);
        let old = self.entry(bit);
        self.vips.remove(key);
        let keys = self.by_bit.get_mut(&bit).expect("added with its bit");
        keys.remove(key);
        let last = keys.is_empty();
        if last {
            self.by_bit.remove(&bit);
        }
        FilterWrites {
            entries: Self::moves(bit, old, self.entry(bit)),
            word: last.then(|| self.flip(bit, false)),
        }
    }

    /// Everything, as `write_all` puts it in place: every filter word, and
    /// every index entry (empty ones too).
    pub fn all(&self) -> (std::vec::Vec<u64>, std::vec::Vec<VipEntry>) {
        let entries = (0..VIP_FILTER_BITS).map(|b| self.entry(b)).collect();
        (self.words.clone(), entries)
    }

    /// Word `w` of `STATELESS_FILTER`: the bits of the stateless VIPs.
    pub fn stateless_word(&self, w: u32) -> u64 {
        self.vips
            .iter()
            .filter(|(_, i)| i.flags & crate::VIP_F_STATELESS != 0)
            .map(|(k, _)| Self::bit(k))
            .filter(|b| b / 64 == w)
            .fold(0, |acc, b| acc | 1 << (b % 64))
    }

    /// The filter as it should be, word by word.
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    fn flip(&mut self, bit: u32, on: bool) -> (u32, u64) {
        let (w, m) = ((bit / 64) as usize, 1u64 << (bit % 64));
        if on {
            self.words[w] |= m;
        } else {
            self.words[w] &= !m;
        }
        (w as u32, self.words[w])
    }
}

/// Writes what a `VipFilter` change returned: the index entries in order,
/// then the filter word (a set bit with no entry only sends packets to the
/// hash map).
#[cfg(feature = "user")]
pub fn write_vip_filter(ebpf: &mut aya::Ebpf, w: FilterWrites) -> Result<(), String> {
    for (bit, e) in w.entries {
        index_array(ebpf)?
            .set(bit, e, 0)
            .map_err(|e| format!("writing {}: {e}", maps::VIP_INDEX))?;
    }
    if let Some((i, word)) = w.word {
        filter_array(ebpf)?
            .set(i, word, 0)
            .map_err(|e| format!("writing {}: {e}", maps::VIP_FILTER))?;
    }
    Ok(())
}

/// Puts the whole of `f` in place (at load, and after a failed write):
/// every index entry (invalidated first where it changes, as in `set`),
/// then every filter word.
#[cfg(feature = "user")]
pub fn write_vip_filter_all(ebpf: &mut aya::Ebpf, f: &VipFilter) -> Result<(), String> {
    let (words, entries) = f.all();
    let mut index = index_array(ebpf)?;
    for (bit, new) in entries.into_iter().enumerate() {
        let bit = bit as u32;
        let old = index
            .get(&bit, 0)
            .map_err(|e| format!("reading {}: {e}", maps::VIP_INDEX))?;
        for (b, e) in VipFilter::moves(bit, old, new) {
            index
                .set(b, e, 0)
                .map_err(|e| format!("writing {}: {e}", maps::VIP_INDEX))?;
        }
    }
    let mut filter = filter_array(ebpf)?;
    for (i, w) in words.into_iter().enumerate() {
        filter
            .set(i as u32, w, 0)
            .map_err(|e| format!("writing {}: {e}", maps::VIP_FILTER))?;
    }
    Ok(())
}

#[cfg(feature = "user")]
fn index_array(
    ebpf: &mut aya::Ebpf,
) -> Result<aya::maps::Array<&mut aya::maps::MapData, VipEntry>, String> {
    let map = ebpf.map_mut(maps::VIP_INDEX).ok_or("no VIP_INDEX map")?;
    aya::maps::Array::try_from(map).map_err(|e| format!("{}: {e}", maps::VIP_INDEX))
}

#[cfg(feature = "user")]
fn filter_array(
    ebpf: &mut aya::Ebpf,
) -> Result<aya::maps::Array<&mut aya::maps::MapData, u64>, String> {
    let map = ebpf.map_mut(maps::VIP_FILTER).ok_or("no VIP_FILTER map")?;
    aya::maps::Array::try_from(map).map_err(|e| format!("{}: {e}", maps::VIP_FILTER))
}

#[cfg(test)]
#[cfg(feature = "user")]
mod vip_filter {
    use super::*;
    use crate::layout::*;

    fn key(host: u8, port: u16) -> VipKey {
        VipKey {
            addr: [u32::from_ne_bytes([10, 0, 0, host]), 0, 0, 0],
            port: port.to_be(),
            proto: PROTO_TCP,
            family: AF_INET,
        }
    }

    fn has(f: &VipFilter, k: &VipKey) -> bool {
        let bit = VipFilter::bit(k);
        f.words()[(bit / 64) as usize] & 1 << (bit % 64) != 0
    }

    fn info(id: u32) -> VipInfo {
        VipInfo {
            vip_id: id,
            ..VipInfo::default()
        }
    }

    /// Whether a reader that copies the entry while it goes from `s` to
    /// `t` (byte by byte, in any order) can only match `s`'s VIP,
    /// `t`'s, or nothing: a live key never changes except through a
    /// family byte of 0, and the family byte flips with all else equal.
    fn safe(s: VipEntry, t: VipEntry) -> bool {
        match (s.key.family != 0, t.key.family != 0) {
            (true, true) => s.key == t.key,
            (false, false) => true,
            _ => invalidated(s) == invalidated(t),
        }
    }

    /// Applies `w` to `index` (the entries the kernel holds), checking
    /// every step with `safe`.
    fn apply(index: &mut std::collections::BTreeMap<u32, VipEntry>, w: &FilterWrites) {
        for (bit, e) in &w.entries {
            let old = index.get(bit).copied().unwrap_or_default();
            assert!(safe(old, *e), "unsafe step {old:?} -> {e:?}");
            index.insert(*bit, *e);
        }
    }

    #[test]
    fn a_filter_bit_shared_by_two_vips_stays_until_both_are_gone() {
        // Two services whose bits collide (there are 65536 bits; the ports
        // of one address never do).
        let mut seen = std::collections::HashMap::new();
        let (a, b) = (1..=255u8)
            .flat_map(|h| (1..=64u16).map(move |p| key(h, p)))
            .find_map(|k| seen.insert(VipFilter::bit(&k), k).map(|old| (old, k)))
            .expect("a collision among 16320 services");
        let bit = VipFilter::bit(&a);
        let entry = |k: VipKey, i: VipInfo| VipEntry { key: k, info: i };
        let flipped = VipInfo {
            active_ring: 1,
            ..info(1)
        };
        let mut index = std::collections::BTreeMap::new();
        let mut f = VipFilter::new();

        let w = f.set(a, info(1));
        apply(&mut index, &w);
        assert_eq!(index[&bit], entry(a, info(1)), "a alone: indexed");
        assert!(w.word.is_some(), "the first VIP sets the bit");
        // A table flip changes the info: one write.
        let w = f.set(a, flipped);
        assert_eq!(w.entries, [(bit, entry(a, flipped))]);
        assert_eq!(w.word, None);
        apply(&mut index, &w);

        let w = f.set(b, info(2));
        apply(&mut index, &w);
        assert_eq!(index[&bit], VipEntry::default(), "shared: no entry");
        assert_eq!(w.word, None, "the bit is already set");
        assert_eq!(f.set(b, info(2)), FilterWrites::default());
        assert!(has(&f, &a) && has(&f, &b));

        let w = f.remove(&a);
        apply(&mut index, &w);
        assert_eq!(index[&bit], entry(b, info(2)), "b alone again");
        assert_eq!(w.word, None, "b still needs the bit");
        let w = f.remove(&b);
        apply(&mut index, &w);
        assert_eq!(index[&bit], VipEntry::default());
        let (i, word) = w.word.expect("the last VIP clears the bit");
        assert_eq!(word, f.words()[i as usize]);
        assert!(!has(&f, &b));
        assert_eq!(f.remove(&b), FilterWrites::default());
        assert!(f.words().iter().all(|w| *w == 0));
    }

    #[test]
    fn an_entry_that_changes_vip_goes_through_no_match() {
        // a leaves and b arrives on the same bit in one step each way.
        let (a, b) = (key(1, 80), key(1, 80));
        let (ea, eb) = (
            VipEntry {
                key: a,
                info: info(1),
            },
            VipEntry {
                key: VipKey {
                    port: 81u16.to_be(),
                    ..b
                },
                info: info(2),
            },
        );
        let w = VipFilter::moves(7, ea, eb);
        let mut state = ea;
        for (_, e) in &w {
            assert!(safe(state, *e), "unsafe step {state:?} -> {e:?}");
            state = *e;
        }
        assert_eq!(state, eb);
        assert_eq!(w.len(), 3, "invalidate a, write b invalid, then b");
        assert!(!safe(ea, eb), "the direct write would not be safe");
    }
}
