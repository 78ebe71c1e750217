//! Reading a map a batch at a time (`BPF_MAP_LOOKUP_BATCH`): the flow
//! table's walk and every backend's statistics at once; writing many
//! entries with one call (`BPF_MAP_UPDATE_BATCH`).
use super::*;

/// The `BPF_MAP_*_BATCH` part of `union bpf_attr`.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// `bpf(cmd, attr)` for a `BPF_MAP_*_BATCH` command; the kernel writes
/// back how many entries it did in `attr.count`.
fn batch_call(cmd: libc::c_long, attr: &mut BatchAttr) -> std::io::Result<()> {
    // SAFETY: `attr` is a valid `union bpf_attr` prefix for the batch
    // commands, and its pointers name buffers the caller keeps alive.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            size_of::<BatchAttr>() as u32,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Hands every entry of `map` to `each`, a batch at a time
/// (`BPF_MAP_LOOKUP_BATCH`), until the map ends or `each` says stop: the
/// keys, and `per_key` values for each (a per-CPU map's CPUs, in order).
/// For a per-CPU map, `V`'s size must be a multiple of 8, as the kernel
/// lays per-CPU values.
pub(super) fn lookup_batches_of<K: Copy + Default, V: Copy + Default>(
    map: &MapData,
    per_key: usize,
    mut each: impl FnMut(&[K], &[V]) -> bool,
) -> std::io::Result<()> {
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    const CHUNK: usize = 4096;
    assert!(
        per_key == 1 || size_of::<V>().is_multiple_of(8),
        "per-CPU values are 8-byte aligned"
    );
    let mut keys = vec![K::default(); CHUNK];
    let mut values = vec![V::default(); CHUNK * per_key];
    // The batch position: a bucket number (hash maps), an index (arrays).
    let (mut from, mut next) = (0u32, 0u32);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &from as *const u32 as u64 },
            out_batch: &mut next as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: map.fd().as_fd().as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        let err = batch_call(BPF_MAP_LOOKUP_BATCH, &mut attr).err();
        let n = (attr.count as usize).min(CHUNK);
        match err {
            // ENOENT: the map ended (with the last `n` entries read).
            Some(e) if e.raw_os_error() != Some(libc::ENOENT) => return Err(e),
            Some(_) => {
                each(&keys[..n], &values[..n * per_key]);
                return Ok(());
            }
            None if !each(&keys[..n], &values[..n * per_key]) => return Ok(()),
            None => {}
        }
        from = next;
        first = false;
    }
}

/// Writes `keys[i]` → the `i`th value of `values` into `map` with one
/// `BPF_MAP_UPDATE_BATCH` (the kernel still writes them one by one, but
/// one system call for all: a pool of 512 000 backends made 1.5 million
/// of them). A per-CPU map takes `per_key` values for each key.
pub(super) fn update_batch<K: Copy, V: Copy>(
    map: &MapData,
    keys: &[K],
    values: &[V],
    per_key: usize,
) -> std::io::Result<()> {
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    assert_eq!(keys.len() * per_key, values.len(), "values for every key");
    assert!(
        per_key == 1 || size_of::<V>().is_multiple_of(8),
        "per-CPU values are 8-byte aligned"
    );
    if keys.is_empty() {
        return Ok(());
    }
    let mut attr = BatchAttr {
        in_batch: 0,
        out_batch: 0,
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        elem_flags: 0,
        flags: 0,
    };
    batch_call(BPF_MAP_UPDATE_BATCH, &mut attr)
}

impl BpfDataPlane {
    /// Map `name`'s data, for a batch call.
    pub(super) fn batch_map(&self, name: &'static str) -> Result<&MapData> {
        map_data(self.map(name))
            .ok_or_else(|| DataPlaneError::Setup(format!("map `{name}` missing")))
    }

    /// Every entry of array map `name` (keys are slot ids), `per_key`
    /// values each, handed to `each` a batch at a time.
    pub(super) fn read_batches<V: Copy + Default>(
        &self,
        name: &'static str,
        per_key: usize,
        mut each: impl FnMut(&[u32], &[V]),
    ) -> Result<()> {
        lookup_batches_of::<u32, V>(self.batch_map(name)?, per_key, |ids, values| {
            each(ids, values);
            true
        })
        .map_err(|source| DataPlaneError::Io {
            what: format!("reading `{name}` in batches"),
            source,
        })
    }
}
