//! The control loop against an in-memory data plane: what a pool change,
//! a health verdict or a restart leaves in the maps, and what it writes.
use super::*;

/// A probe result, written as the daemon writes it: recorded, then
/// flushed (waiting out the flip grace as the daemon's timer does).
fn verdict<D: DataPlane>(
    c: &mut Controller<D>,
    b: &BackendRef,
    outcome: &ProbeOutcome,
    health: Health,
) -> bool {
    let changed = c.probe_result(b, outcome, health).unwrap();
    settle(c);
    changed
}
use crate::config;
use crate::dataplane::Result as DpResult;
use lb_common::{BackendStats, VipStats, NO_BACKEND};

/// Maglev size of the test pools (the smallest the pool file accepts).
const RING: u32 = 1009;

/// Slots in use (released ones are listed too, for their generation).
fn used_slots(dp: &impl DataPlane) -> usize {
    dp.backends()
        .unwrap()
        .iter()
        .filter(|(_, b)| b.flags & BACKEND_F_USED != 0)
        .count()
}

/// One write to the data plane, in the order the controller made it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    SetConfig,
    SetBackend(u32, Backend),
    WriteRing(u32, u8),
    SetVip(VipKey, VipInfo),
    RemoveVip(VipKey),
    SetVipAddr(AddrKey, u32),
    RemoveVipAddr(AddrKey),
}

/// The maps as plain collections. Like the kernel's, BACKENDS is an
/// array (a missing id reads as zeroes) and the hash maps refuse to
/// remove a key they do not hold. It panics on the writes that would
/// hurt packets in flight: rewriting the buffer a VIP's packets read,
/// or flipping to a buffer that was never written.
#[derive(Clone, Debug)]
struct FakeDataPlane {
    max_vips: u32,
    max_backends: u32,
    config: Option<Config>,
    vips: BTreeMap<VipKey, VipInfo>,
    vip_addrs: BTreeMap<AddrKey, u32>,
    backends: BTreeMap<u32, Backend>,
    rings: BTreeMap<(u32, u8), Vec<u32>>,
    log: Vec<Op>,
    /// `clear_stats` calls: (VIP id, backend id).
    cleared: Vec<(Option<u32>, Option<u32>)>,
    limits: BTreeMap<u32, BackendLimit>,
    nat_addrs: BTreeMap<u32, Vec<IpAddr>>,
    /// `CHAINS`, by stateless index.
    chains: BTreeMap<u8, Vec<u64>>,
    /// Slots each buffer has room for (`tables.maglev_size`).
    room: u32,
}

impl FakeDataPlane {
    fn new(max_vips: u32, max_backends: u32) -> Self {
        FakeDataPlane {
            max_vips,
            max_backends,
            config: None,
            vips: BTreeMap::new(),
            vip_addrs: BTreeMap::new(),
            backends: BTreeMap::new(),
            rings: BTreeMap::new(),
            log: Vec::new(),
            cleared: Vec::new(),
            limits: BTreeMap::new(),
            nat_addrs: BTreeMap::new(),
            chains: BTreeMap::new(),
            room: RING,
        }
    }

    /// The same maps, as a restarted daemon finds them pinned.
    fn restarted(&self) -> Self {
        FakeDataPlane {
            log: Vec::new(),
            ..self.clone()
        }
    }

    fn backend(&self, id: u32) -> Backend {
        self.backends.get(&id).copied().unwrap_or_default()
    }

    /// The table packets of `key` read now.
    fn active_table(&self, key: &VipKey) -> &[u32] {
        let info = self.vips.get(key).expect("VIP in VIPS");
        &self.rings[&(info.vip_id, info.active_ring)]
    }

    /// The slot of `addr` behind `key`, found the way the daemon finds
    /// it after a restart: by VIP id and address in BACKENDS.
    fn slot_of(&self, key: &VipKey, addr: &str) -> u32 {
        let vip_id = self.vips[key].vip_id as u16;
        let ip: IpAddr = addr.parse().unwrap();
        let found: Vec<u32> = self
            .backends
            .iter()
            .filter(|(_, b)| {
                b.flags & BACKEND_F_USED != 0
                    && b.vip_id == vip_id
                    && words_addr(b.addr, b.family) == ip
            })
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one used slot for {addr} of VIP id {vip_id}"
        );
        found[0]
    }

    fn take_log(&mut self) -> Vec<Op> {
        std::mem::take(&mut self.log)
    }
}

/// What aya returns for a delete of a missing key.
fn not_found(map: &'static str) -> DataPlaneError {
    DataPlaneError::Map {
        map,
        source: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
            call: "bpf_map_delete_elem",
            io_error: std::io::Error::from_raw_os_error(libc::ENOENT),
        }),
    }
}

impl DataPlane for FakeDataPlane {
    fn read_ring(&self, vip_id: u32, ring: u8, size: u32) -> DpResult<Vec<u32>> {
        let mut t = self
            .rings
            .get(&(vip_id, ring))
            .cloned()
            .unwrap_or_else(|| vec![lb_common::NO_BACKEND; self.room as usize]);
        t.resize(size.min(self.room) as usize, lb_common::NO_BACKEND);
        Ok(t)
    }

    fn write_chains(&mut self, idx: u8, entries: &[(u32, u64)]) -> DpResult<()> {
        let t = self
            .chains
            .entry(idx)
            .or_insert_with(|| vec![0; self.room as usize]);
        for &(slot, e) in entries {
            t[slot as usize] = e;
        }
        Ok(())
    }

    fn read_chains(&self, idx: u8) -> DpResult<Vec<u64>> {
        Ok(self
            .chains
            .get(&idx)
            .cloned()
            .unwrap_or_else(|| vec![0; self.room as usize]))
    }

    fn set_config(&mut self, cfg: &Config) -> DpResult<()> {
        self.log.push(Op::SetConfig);
        self.config = Some(*cfg);
        Ok(())
    }

    fn set_backend(&mut self, id: u32, b: &Backend) -> DpResult<()> {
        assert!(id < self.max_backends, "backend id {id} past BACKENDS");
        self.log.push(Op::SetBackend(id, *b));
        self.backends.insert(id, *b);
        Ok(())
    }

    fn write_ring(&mut self, vip_id: u32, ring: u8, slots: &[u32]) -> DpResult<()> {
        assert!(vip_id < self.max_vips, "VIP id {vip_id} past RINGS");
        assert!(ring < 2, "buffer {ring} of VIP id {vip_id}");
        assert!(slots.len() <= self.room as usize, "a table past its room");
        let live = self
            .vips
            .values()
            .any(|i| i.vip_id == vip_id && i.active_ring == ring);
        assert!(
            !live,
            "rewrote buffer {ring} of VIP id {vip_id} while packets read it"
        );
        self.log.push(Op::WriteRing(vip_id, ring));
        self.rings.insert((vip_id, ring), slots.to_vec());
        Ok(())
    }

    fn set_vip(&mut self, key: &VipKey, info: &VipInfo) -> DpResult<()> {
        assert!(
            self.rings.contains_key(&(info.vip_id, info.active_ring)),
            "flipped VIP id {} to buffer {} that was never written",
            info.vip_id,
            info.active_ring
        );
        let written = self.rings[&(info.vip_id, info.active_ring)].len();
        assert_eq!(
            info.ring_size as usize, written,
            "VIP id {} flipped to a table of {written} slots, said to have {}",
            info.vip_id, info.ring_size
        );
        self.log.push(Op::SetVip(*key, *info));
        self.vips.insert(*key, *info);
        Ok(())
    }

    fn remove_vip(&mut self, key: &VipKey) -> DpResult<()> {
        self.log.push(Op::RemoveVip(*key));
        self.vips.remove(key).map(drop).ok_or(not_found("VIPS"))
    }

    fn set_vip_addr(&mut self, key: &AddrKey, flags: u32) -> DpResult<()> {
        self.log.push(Op::SetVipAddr(*key, flags));
        self.vip_addrs.insert(*key, flags);
        Ok(())
    }

    fn remove_vip_addr(&mut self, key: &AddrKey) -> DpResult<()> {
        self.log.push(Op::RemoveVipAddr(*key));
        self.vip_addrs
            .remove(key)
            .map(drop)
            .ok_or(not_found("VIP_ADDRS"))
    }

    fn vips(&self) -> DpResult<Vec<(VipKey, VipInfo)>> {
        Ok(self.vips.iter().map(|(k, i)| (*k, *i)).collect())
    }

    fn backends(&self) -> DpResult<Vec<(u32, Backend)>> {
        Ok(self
            .backends
            .iter()
            .filter(|(_, b)| b.flags & BACKEND_F_USED != 0 || b.gen != 0)
            .map(|(id, b)| (*id, *b))
            .collect())
    }

    fn vip_stats(&self, _vip_id: u32) -> DpResult<VipStats> {
        Ok(VipStats::default())
    }

    fn backend_stats(&self, _id: u32) -> DpResult<BackendStats> {
        Ok(BackendStats::default())
    }

    fn all_backend_stats(&self) -> DpResult<Vec<BackendStats>> {
        Ok(Vec::new())
    }

    fn clear_stats(&mut self, vip_id: Option<u32>, backend_id: Option<u32>) -> DpResult<()> {
        self.cleared.push((vip_id, backend_id));
        Ok(())
    }

    fn counters(&self) -> DpResult<Vec<u64>> {
        Ok(vec![0; lb_common::counter::COUNT as usize])
    }

    fn set_limit(&mut self, id: u32, limit: &BackendLimit) -> DpResult<()> {
        assert!(id < self.max_backends, "backend id {id} past LIMITS");
        self.limits.insert(id, *limit);
        Ok(())
    }

    fn load(&self, _id: u32) -> DpResult<u64> {
        Ok(0)
    }

    fn set_nat_addrs(&mut self, vip_id: u32, addrs: &[IpAddr]) -> DpResult<()> {
        self.nat_addrs.insert(vip_id, addrs.to_vec());
        Ok(())
    }
}

/// One VIP of a pool file; each backend is the inside of a YAML flow mapping.
fn vip(name: &str, address: &str, port: u16, protocol: &str, backends: &[&str]) -> String {
    let mut s = format!(
        "  - name: {name}\n    address: \"{address}\"\n    port: {port}\n    protocol: {protocol}\n    backends:\n"
    );
    for b in backends {
        s += &format!("      - {{{b}}}\n");
    }
    s
}

fn pool(vips: &[String]) -> Pool {
    pool_with_room(vips, RING)
}

/// `pool`, with `tables.maglev_size: room`.
fn pool_with_room(vips: &[String], room: u32) -> Pool {
    let text = format!(
        "instance: lbtest\ninterfaces: [eth0]\nencapsulation:\n  source_v4: 10.255.0.0/24\n  \
         source_v6: \"fd00:255::/112\"\ntables:\n  maglev_size: {room}\nhealth_defaults:\n  \
         kind: none\nvips:\n{}",
        vips.concat()
    );
    config::parse(&text, "test.yaml").unwrap_or_else(|e| panic!("test pool:\n{e}\n{text}"))
}

fn web(backends: &[&str]) -> String {
    vip("web", "10.100.0.1", 80, "tcp", backends)
}

const WEB: [&str; 3] = [
    "address: 10.0.1.1",
    "address: 10.0.1.2, weight: 200",
    "address: 10.0.1.3",
];

/// web (10.100.0.1:80/tcp) and dns (10.100.0.1:53/udp) share an address;
/// any (10.100.0.2, every port) has one of its own; v6 is IPv6.
fn four_vips() -> Vec<String> {
    vec![
        web(&WEB),
        vip(
            "dns",
            "10.100.0.1",
            53,
            "udp",
            &["address: 10.0.2.1", "address: 10.0.2.2"],
        ),
        vip("any", "10.100.0.2", 0, "tcp", &["address: 10.0.3.1"]),
        vip(
            "v6",
            "2001:db8::10",
            443,
            "tcp",
            &["address: \"2001:db8:1::1\""],
        ),
    ]
}

fn key(pool: &Pool, name: &str) -> VipKey {
    vip_key(
        pool.vips
            .iter()
            .find(|v| v.name == name)
            .expect("VIP in pool"),
    )
}

fn akey(addr: &str) -> AddrKey {
    let (addr, family) = addr_words(addr.parse().unwrap());
    AddrKey {
        addr,
        family,
        _pad: [0; 3],
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// In `log`, the VIP flips to its new table before slot `id` is written.
fn assert_flip_before_flag(log: &[Op], id: u32) {
    let flip = log.iter().position(|o| matches!(o, Op::SetVip(..)));
    let flag = log
        .iter()
        .position(|o| matches!(o, Op::SetBackend(i, _) if *i == id));
    assert!(
        matches!((flip, flag), (Some(a), Some(b)) if a < b),
        "{log:?}"
    );
}

fn controller(dp: FakeDataPlane) -> Controller<FakeDataPlane> {
    let (v, b) = (dp.max_vips, dp.max_backends);
    Controller::adopt(dp, RING, v, b).expect("adopt")
}

/// A controller that has applied `p` to empty maps, with the log cleared.
fn applied(p: &Pool) -> Controller<FakeDataPlane> {
    let mut c = controller(FakeDataPlane::new(8, 64));
    c.apply(p).expect("apply");
    c.dp.take_log();
    c
}

/// The table `maglev::build` makes of `serving` (addresses of VIP
/// `name`, weights from the pool), with slot ids as BACKENDS holds them.
fn expected_table(dp: &FakeDataPlane, p: &Pool, name: &str, serving: &[&str]) -> Vec<u32> {
    expected_table_of(dp, p, name, serving, RING)
}

/// `expected_table` of `size` slots.
fn expected_table_of(
    dp: &FakeDataPlane,
    p: &Pool,
    name: &str,
    serving: &[&str],
    size: u32,
) -> Vec<u32> {
    let k = key(p, name);
    let conf = p.vips.iter().find(|v| v.name == name).unwrap();
    let input: Vec<MaglevBackend> = serving
        .iter()
        .map(|a| MaglevBackend {
            key: maglev_key(ip(a)),
            slot: dp.slot_of(&k, a),
            weight: conf
                .backends
                .iter()
                .find(|b| b.address == ip(a))
                .unwrap()
                .weight,
        })
        .collect();
    maglev::build(&input, size)
}

fn outcome(ok: bool) -> ProbeOutcome {
    ProbeOutcome {
        ok,
        detail: if ok {
            "connected"
        } else {
            "connection refused"
        }
        .into(),
        latency: Duration::from_micros(1500),
    }
}

fn count(table: &[u32], id: u32) -> usize {
    table.iter().filter(|s| **s == id).count()
}

/// Writes every recorded verdict and due table, waiting out the flip grace
/// as the daemon's timer does.
fn settle<D: DataPlane>(c: &mut Controller<D>) {
    while let Some(wait) = c.flush().unwrap() {
        std::thread::sleep(wait);
    }
}

mod health;
mod pool;
mod restart;
mod schedulers;
mod stateless;
