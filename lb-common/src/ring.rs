//! Maglev tables as `RINGS` holds them: two buffers per VIP, four 16-bit
//! slots per 64-bit element, each an index into the buffer's members
//! (`MEMBERS`), the backend ids the table names.
/// A Maglev slot that holds no backend (every backend of the VIP is down).
pub const NO_BACKEND: u32 = u32::MAX;

/// Maglev slots per `RINGS` element: four 16-bit slots in each 64-bit
/// element (slot 4k in the low bits), each holding an index into the
/// buffer's members plus one, 0 for none (so a buffer never written, all
/// zero, sends nothing anywhere).
/// The kernel lays array elements out at 8-byte stride, and a new flow's
/// slot is a random one, so the table's cache footprint (128 KB for 65537
/// slots) is what a new flow pays.
pub const RING_SLOTS_PER_ELEM: u32 = 4;
/// The largest index a ring slot holds (`tables.max_backends_per_vip` is
/// at most one more).
pub const MAX_RING_BACKEND: u32 = 0xfffe;
/// The largest backend id (`tables.max_backends` is at most one more):
/// `CHAINS` entries name previous backends in 20 bits (`chain_entry2`).
pub const MAX_BACKEND_ID: u32 = 0xf_fffe;

/// Index in `MEMBERS` of the first member of a VIP's buffer `ring`, with
/// `per_vip` (`Config::max_vip_backends`) members per buffer.
#[inline(always)]
pub fn members_base(vip_id: u32, ring: u8, per_vip: u32) -> u32 {
    (vip_id * 2 + (ring as u32 & 1)) * per_vip
}

/// Size of `MEMBERS` for `max_vips` VIPs.
pub fn members_entries(max_vips: u32, per_vip: u32) -> u32 {
    max_vips * 2 * per_vip
}

/// A table as `RINGS` and `MEMBERS` hold it: each slot an index into the
/// members, the distinct backend ids in the order the slots first name
/// them (`NO_BACKEND` stays empty). `None`: more than `per_vip` backends,
/// or an id past `MAX_BACKEND_ID`.
#[cfg(any(feature = "user", test))]
#[allow(clippy::type_complexity)]
pub fn index_table(
    slots: &[u32],
    per_vip: u32,
) -> Option<(std::vec::Vec<u32>, std::vec::Vec<u32>)> {
    use std::vec::Vec;
    let mut members: Vec<u32> = Vec::new();
    // Index plus one, by backend id: zeroed pages come free from the
    // allocator and only those of the table's ids are touched (a hash map
    // took 0.6 ms for 65 537 slots).
    let top = slots
        .iter()
        .filter(|&&id| id != NO_BACKEND)
        .max()
        .map_or(0, |&m| m as usize + 1);
    if top > MAX_BACKEND_ID as usize + 1 {
        return None;
    }
    let mut index = std::vec![0u32; top];
    let mut out = Vec::with_capacity(slots.len());
    for &id in slots {
        if id == NO_BACKEND {
            out.push(NO_BACKEND);
            continue;
        }
        let at = &mut index[id as usize];
        if *at == 0 {
            members.push(id);
            *at = members.len() as u32;
        }
        out.push(*at - 1);
    }
    (members.len() as u32 <= per_vip.min(MAX_RING_BACKEND + 1)).then_some((out, members))
}

/// `RINGS` elements per Maglev buffer.
#[inline(always)]
pub fn ring_elems(ring_size: u32) -> u32 {
    ring_size.div_ceil(RING_SLOTS_PER_ELEM)
}

/// Index of the first element of a VIP's Maglev buffer `ring` (0 or 1) in `RINGS`.
#[inline(always)]
pub fn ring_base(vip_id: u32, ring: u8, ring_size: u32) -> u32 {
    (vip_id * 2 + (ring as u32 & 1)) * ring_elems(ring_size)
}

/// Index, from the start of its buffer, of the element holding `slot`.
#[inline(always)]
pub fn ring_elem(slot: u32) -> u32 {
    slot / RING_SLOTS_PER_ELEM
}

/// Size of `RINGS` for `max_vips` VIPs.
pub fn rings_entries(max_vips: u32, ring_size: u32) -> u32 {
    max_vips * 2 * ring_elems(ring_size)
}

/// The backend id in slot `slot` given the element that holds it
/// (`NO_BACKEND` for an empty slot).
#[inline(always)]
pub fn ring_slot(elem: u64, slot: u32) -> u32 {
    let v = (elem >> ((slot % RING_SLOTS_PER_ELEM) * 16)) & 0xffff;
    if v == 0 {
        NO_BACKEND
    } else {
        v as u32 - 1
    }
}

/// Packs slots four to an element, as `RINGS` holds them. `NO_BACKEND`, and
/// any id above `MAX_RING_BACKEND` (which the pool file cannot produce),
/// becomes an empty slot.
pub fn pack_ring(slots: &[u32]) -> impl Iterator<Item = u64> + '_ {
    slots.chunks(RING_SLOTS_PER_ELEM as usize).map(|c| {
        let mut e = 0u64;
        for i in 0..RING_SLOTS_PER_ELEM as usize {
            let v = match c.get(i) {
                Some(&id) if id <= MAX_RING_BACKEND => id as u64 + 1,
                _ => 0,
            };
            e |= v << (16 * i);
        }
        e
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_is_indexed_by_its_members() {
        let (slots, members) = index_table(&[70_000, 5, NO_BACKEND, 70_000, 0xf_fffe], 3).unwrap();
        assert_eq!(members, [70_000, 5, 0xf_fffe]);
        assert_eq!(slots, [0, 1, NO_BACKEND, 0, 2]);
        assert!(
            index_table(&[1, 2, 3, 4], 3).is_none(),
            "4 backends, room for 3"
        );
        assert_eq!(members_base(3, 1, 10), 70);
        assert_eq!(members_entries(4, 10), 80);
    }

    #[test]
    fn ring_base_separates_buffers() {
        assert_eq!(ring_base(0, 0, 7), 0);
        assert_eq!(ring_base(0, 1, 7), 2);
        assert_eq!(ring_base(3, 1, 7), 14);
        assert_eq!(rings_entries(4, 7), 16);
    }

    #[test]
    fn packed_slots_read_back() {
        let slots = [10u32, NO_BACKEND, MAX_RING_BACKEND, 0, 14];
        let mut elems = [0u64; 2];
        let mut n = 0;
        for (i, e) in pack_ring(&slots).enumerate() {
            elems[i] = e;
            n += 1;
        }
        assert_eq!(n, ring_elems(5));
        assert_eq!(ring_slot(elems[1], 5), NO_BACKEND, "padding is empty");
        assert_eq!(
            ring_slot(0, 2),
            NO_BACKEND,
            "a buffer never written is empty"
        );
        for (i, s) in slots.iter().enumerate() {
            assert_eq!(ring_slot(elems[ring_elem(i as u32) as usize], i as u32), *s);
        }
    }
}
