//! Reloading the pool file while serving: all or nothing, and only what
//! a running daemon can change.
use super::*;

impl Daemon {
    /// Reloads the pool file if it changed (or `force`). A bad file is
    /// rejected with every problem; the running configuration stays.
    pub(super) fn reload(&mut self, force: bool) {
        let Some(text) = self.read_pool_file(force) else {
            return;
        };
        let retry_due = self.retry_at.is_some_and(|t| Instant::now() >= t);
        if !force && text == self.last_text && !retry_due {
            return;
        }
        self.retry_at = None;
        // A file that fails validation is reported once, until it changes; a
        // valid one whose application fails is retried on the next check.
        self.last_text = text.clone();
        // Read off the main loop (a pool file of 512 000 backends takes
        // 4 s to read, and health results would wait); applied on it.
        self.parses.latest += 1;
        let (n, tx) = (self.parses.latest, self.parses.tx.clone());
        let name = self.config_path.display().to_string();
        tokio::task::spawn_blocking(move || {
            let _ = tx.send((n, config::parse(&text, &name)));
        });
    }

    /// Applies pool file read number `n` (`reload`), unless a later read
    /// is on its way.
    pub(super) fn apply_parsed(&mut self, n: u64, parsed: Result<Pool, config::ConfigErrors>) {
        if n != self.parses.latest {
            return;
        }
        let _trim = TrimHeap;
        let pool = match parsed {
            Ok(p) => p,
            Err(e) => {
                log::error!("reload rejected; keeping the running configuration:\n{e}");
                self.metrics.reload(false);
                return;
            }
        };
        let restart = restart_only_changes(&self.pool, &pool);
        if !restart.is_empty() {
            log::error!(
                "reload rejected; keeping the running configuration: {} cannot change while \
                 running; run `lb stop` and `lb run` again to change {}",
                restart.join(", "),
                if restart.len() == 1 { "it" } else { "them" }
            );
            self.metrics.reload(false);
            return;
        }
        // All or nothing: an interface that is not there rejects the file
        // before anything is applied.
        let missing: Vec<String> = pool
            .interfaces
            .iter()
            .filter(|i| !self.pool.interfaces.contains(i))
            .filter_map(|i| dataplane::ifindex(i).err().map(|e| e.to_string()))
            .collect();
        let mut missing = missing;
        missing.extend(host_problems(&pool));
        if !missing.is_empty() {
            log::error!(
                "reload rejected; keeping the running configuration: {}",
                missing.join("; ")
            );
            self.metrics.reload(false);
            return;
        }
        let hash_key = match load_or_create_secret(&pool.hash_secret_file) {
            Ok(k) => k,
            Err(e) => {
                log::error!("reload rejected: {e:#}");
                self.metrics.reload(false);
                return;
            }
        };
        if let Err(e) = self.ctl.dp.set_config(&kernel_config(&pool, hash_key)) {
            log::error!("reload: writing the global config: {e}");
            self.metrics.reload(false);
            return;
        }
        let started = Instant::now();
        let applied = self.ctl.apply(&pool);
        self.metrics.table_write(started.elapsed());
        match applied {
            Ok(r) => {
                log::info!("reloaded {}: {}", self.config_path.display(), r.describe());
                self.metrics.reload(true);
            }
            Err(e) => {
                log::error!(
                    "reload failed part-way (retrying in {}s): {e}",
                    RELOAD_RETRY.as_secs()
                );
                self.retry_at = Some(Instant::now() + RELOAD_RETRY);
                self.metrics.reload(false);
                // Backends already added must be probed and resolved all
                // the same.
                self.sync_probers();
                self.sync_neighbours();
                return;
            }
        }
        for iface in &pool.interfaces {
            if !self.pool.interfaces.contains(iface) {
                if let Err(e) = self.ctl.dp.attach(iface, attach_mode(pool.xdp_mode)) {
                    log::error!("{e}");
                }
            }
        }
        for iface in &self.pool.interfaces {
            if !pool.interfaces.contains(iface) {
                if let Err(e) = self.ctl.dp.detach(iface) {
                    log::error!("{e}");
                }
            }
        }
        for v in &self.pool.vips {
            let now = pool.vips.iter().find(|n| n.name == v.name);
            for b in &v.backends {
                if !now.is_some_and(|n| n.backends.iter().any(|x| x.address == b.address)) {
                    self.metrics.forget_backend(&v.name, &b.address.to_string());
                }
            }
        }
        // `announce` removed or moved: the old include must not keep
        // announcing.
        if let Some(old) = self.pool.announce.clone() {
            let same_place = pool.announce.as_ref().is_some_and(|n| {
                n.bird_include == old.bird_include && n.bird_socket == old.bird_socket
            });
            if !same_place {
                self.withdraw(&old);
            }
        }
        self.pool = pool;
        self.sync_probers();
        self.sync_neighbours();
        self.sync_announce(true);
    }

    /// The pool file's text; `None` when it cannot be read, which is logged
    /// once per cause (every time when `force`, as on SIGHUP).
    fn read_pool_file(&mut self, force: bool) -> Option<String> {
        let why = match std::fs::read(&self.config_path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => {
                    self.read_error = None;
                    return Some(text);
                }
                Err(e) => format!(
                    "it is not UTF-8 text (invalid byte at offset {})",
                    e.utf8_error().valid_up_to()
                ),
            },
            Err(e) => e.to_string(),
        };
        if force || self.read_error.as_deref() != Some(why.as_str()) {
            log::error!(
                "reload: cannot read {}: {why}; keeping the running configuration",
                self.config_path.display()
            );
        }
        self.read_error = Some(why);
        None
    }
}

/// The settings of `new` that differ from `old` and only a restart can
/// change: the instance (names the pins), the map sizes, the hash secret
/// (a node with another secret sends flows elsewhere than its ECMP group),
/// the control socket, the metrics endpoint and the attach mode.
pub(super) fn restart_only_changes(old: &Pool, new: &Pool) -> Vec<&'static str> {
    let t = (&old.tables, &new.tables);
    [
        ("`instance`", old.instance != new.instance),
        ("`tables.maglev_size`", t.0.maglev_size != t.1.maglev_size),
        (
            "`tables.flow_table_size`",
            t.0.flow_table_size != t.1.flow_table_size,
        ),
        ("`tables.max_vips`", t.0.max_vips != t.1.max_vips),
        (
            "`tables.max_backends`",
            t.0.max_backends != t.1.max_backends,
        ),
        (
            "`hash_secret_file`",
            old.hash_secret_file != new.hash_secret_file,
        ),
        ("`control_socket`", old.control_socket != new.control_socket),
        ("`metrics`", old.metrics != new.metrics),
        ("`xdp_mode`", old.xdp_mode != new.xdp_mode),
    ]
    .into_iter()
    .filter_map(|(name, changed)| changed.then_some(name))
    .collect()
}

/// Hands the heap freed since back to the system. glibc keeps what it
/// frees in its arenas: after reading a pool file of 512 000 backends
/// (or rejecting one) the daemon held some 600 MB it no longer used.
pub(super) fn release_heap() {
    // SAFETY: malloc_trim only returns free memory to the system.
    unsafe { libc::malloc_trim(0) };
}

/// Releases the heap when a reload is done, whichever way it ends.
struct TrimHeap;

impl Drop for TrimHeap {
    fn drop(&mut self) {
        release_heap();
    }
}

/// Pool files being read off the main loop: each read is numbered, and
/// only the latest is applied.
pub(super) struct Parses {
    tx: mpsc::UnboundedSender<Parsed>,
    latest: u64,
}

/// A read's number and its outcome.
pub(super) type Parsed = (u64, Result<Pool, config::ConfigErrors>);

impl Parses {
    pub(super) fn new() -> (Self, mpsc::UnboundedReceiver<Parsed>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Parses { tx, latest: 0 }, rx)
    }
}
