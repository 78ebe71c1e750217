//! `lb run`: loads the pool file, loads or adopts the pinned data plane,
//! attaches, runs the health probes, reloads on file change and SIGHUP, and
//! answers `lb status` / `lb stop` on its control socket. One task owns the
//! controller, so there is one writer of the maps.
use crate::config::{self, BackendState, Pool, XdpModeSetting};
use crate::controller::{kernel_config, BackendRef, Controller, HealthView};
use crate::dataplane::{self, AttachMode, BpfDataPlane, DataPlane, Sizes};
use crate::health::{spawn_prober, Health, HealthEvent, ProbeSpec, ProberHandle};
use crate::status::{BackendStatus, Status, VipStatus};
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

/// How often the pool file is checked for changes.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);
/// When a valid pool file could not be applied, how long until the next try.
const RELOAD_RETRY: Duration = Duration::from_secs(5);

/// Reads the hash secret, or creates it (16 random bytes, hex, mode 0600).
pub fn load_or_create_secret(path: &Path) -> Result<[u64; 2]> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut buf = [0u8; 16];
            getrandom(&mut buf)?;
            let hex: String = buf.iter().map(|b| format!("{b:02x}")).collect();
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("creating the hash secret {}", path.display()))?;
            use std::io::Write;
            writeln!(f, "{hex}")?;
            log::info!(
                "created a new hash secret in {}; copy it to every node of the same ECMP group",
                path.display()
            );
            hex
        }
        Err(e) => {
            return Err(e).with_context(|| format!("reading the hash secret {}", path.display()))
        }
    };
    let hex = text.trim();
    if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!(
            "hash secret {}: expected 32 hex digits, found {:?}",
            path.display(),
            hex
        );
    }
    let a = u64::from_str_radix(&hex[..16], 16)?;
    let b = u64::from_str_radix(&hex[16..], 16)?;
    Ok([a, b])
}

fn getrandom(buf: &mut [u8]) -> Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .context("reading /dev/urandom")
}

fn sizes(pool: &Pool) -> Sizes {
    Sizes {
        max_vips: pool.tables.max_vips,
        max_backends: pool.tables.max_backends,
        ring_size: pool.tables.maglev_size,
        flows: pool.tables.flow_table_size,
    }
}

fn attach_mode(m: XdpModeSetting) -> AttachMode {
    match m {
        XdpModeSetting::Auto => AttachMode::Auto,
        XdpModeSetting::Driver => AttachMode::Driver,
        XdpModeSetting::Generic => AttachMode::Generic,
    }
}

/// The control socket's path must be free or hold a socket (a stale one
/// of an earlier run, removed at bind): anything else is not ours to delete.
fn check_socket_path(path: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => bail!(
            "{} exists and is not a socket; the daemon does not delete it: move it away, \
             or set `control_socket` to another path",
            path.display()
        ),
        _ => Ok(()),
    }
}

/// Binds the control socket, readable and writable by its owner (root)
/// only: `stop` and `status` are for root, and the daemon also checks
/// each peer's credentials.
fn bind_control_socket(path: &Path) -> Result<UnixListener> {
    check_socket_path(path)?;
    let _ = std::fs::remove_file(path);
    // The socket is made with the mode the umask leaves: no window in which
    // others could connect.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    unsafe { libc::umask(old) };
    let listener = bound.with_context(|| format!("binding {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok(listener)
}

/// Whether a control-socket peer may talk to the daemon: root, or the
/// daemon's own user.
fn peer_allowed(stream: &UnixStream) -> bool {
    let me = unsafe { libc::geteuid() };
    stream
        .peer_cred()
        .is_ok_and(|c| c.uid() == 0 || c.uid() == me)
}

/// Is a daemon answering on this control socket? (One that refuses us
/// is there: `request` then says permission denied.)
pub async fn socket_alive(path: &Path) -> bool {
    match UnixStream::connect(path).await {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::PermissionDenied,
    }
}

/// The control socket refused us: only root talks to the daemon.
#[derive(Debug, thiserror::Error)]
#[error(
    "permission denied on the control socket {}: only root talks to the daemon; run this with sudo",
    .0.display()
)]
pub struct Denied(pub PathBuf);

/// Sends one request line to the daemon and returns its answer.
pub async fn request(path: &Path, what: &str) -> Result<String> {
    let mut s = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(Denied(path.to_path_buf()).into())
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "the daemon is not running (nothing answers on {})",
                    path.display()
                )
            })
        }
    };
    s.write_all(format!("{what}\n").as_bytes()).await?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).await?;
    Ok(line)
}

enum Control {
    Status(tokio::sync::oneshot::Sender<String>),
    Stop(tokio::sync::oneshot::Sender<String>),
}

/// New flows per second of a set of counters (VIPs, or backends), by id.
#[derive(Default)]
struct Rate {
    last: HashMap<u32, u64>,
    per_s: HashMap<u32, f64>,
}

impl Rate {
    /// Records counter `id` at `value`, `dt` seconds after the last sample.
    fn sample(&mut self, id: u32, value: u64, dt: f64) {
        let prev = self.last.insert(id, value).unwrap_or(value);
        self.per_s
            .insert(id, value.saturating_sub(prev) as f64 / dt);
    }

    fn get(&self, id: u32) -> f64 {
        *self.per_s.get(&id).unwrap_or(&0.0)
    }
}

struct Rates {
    at: Instant,
    vip: Rate,
    backend: Rate,
}

pub struct Daemon {
    config_path: PathBuf,
    pool: Pool,
    ctl: Controller<BpfDataPlane>,
    /// One prober per distinct check, serving every (VIP, backend) that
    /// checks a backend the same way.
    probers: HashMap<ProbeSpec, (Vec<BackendRef>, ProberHandle)>,
    health_tx: mpsc::Sender<HealthEvent<ProbeSpec>>,
    started: Instant,
    last_text: String,
    /// Why the pool file could not be read last time (logged once per cause).
    read_error: Option<String>,
    /// Set when applying a valid file failed: try again at this time.
    retry_at: Option<Instant>,
    rates: Rates,
    /// Active flows per backend id, counted by a background task, and when.
    flows: FlowCounts,
}

type FlowCounts = std::sync::Arc<std::sync::Mutex<(Option<Instant>, HashMap<u32, u64>)>>;

/// How often, at most, the flow table is walked for `lb status`.
const FLOW_COUNT_INTERVAL: Duration = Duration::from_secs(1);

/// Counts active flows on a blocking thread, with its own handle on the
/// pinned map: walking a million entries takes seconds and must not hold up
/// the writer. Waits FLOW_COUNT_INTERVAL, or twice as long as a walk took.
fn spawn_flow_counter(instance: String, max_idle_ns: u64, out: FlowCounts) {
    tokio::spawn(async move {
        loop {
            let i = instance.clone();
            let started = Instant::now();
            let counted = tokio::task::spawn_blocking(move || {
                dataplane::count_flows(&i, max_idle_ns, 1 << 22)
            })
            .await;
            let took = started.elapsed();
            match counted {
                Ok(Ok(c)) => *out.lock().expect("flow counts") = (Some(Instant::now()), c),
                Ok(Err(e)) => log::debug!("counting flows: {e}"),
                Err(_) => {}
            }
            tokio::time::sleep(FLOW_COUNT_INTERVAL.max(took * 2)).await;
        }
    });
}

/// The ids the data path's decision log names: VIPs and backend slots.
fn log_ids(ctl: &Controller<BpfDataPlane>) {
    for v in ctl.vips.values() {
        let backends: Vec<String> = v
            .backends
            .values()
            .map(|b| format!("{} = {}", b.id, b.address))
            .collect();
        log::info!(
            "data path ids: vip {} = `{}`; backends {}",
            v.id,
            v.conf.name,
            backends.join(", ")
        );
    }
}

/// The settings of `new` that differ from `old` and only a restart can
/// change: the instance (names the pins), the map sizes, the hash secret
/// (a node with another secret sends flows elsewhere than its ECMP group),
/// the control socket and the attach mode.
fn restart_only_changes(old: &Pool, new: &Pool) -> Vec<&'static str> {
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
        ("`xdp_mode`", old.xdp_mode != new.xdp_mode),
    ]
    .into_iter()
    .filter_map(|(name, changed)| changed.then_some(name))
    .collect()
}

/// Hands the data path's log records to the daemon's log as they come.
fn spawn_decision_log(log: dataplane::DecisionLog) -> Result<()> {
    // SAFETY: the logger owns its ring buffer's descriptor, which stays
    // open and the same for as long as the logger lives (inside `fd`).
    let mut fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(log, tokio::io::Interest::READABLE)
    }
    .map_err(|e| anyhow::anyhow!("watching the data path's log: {e}"))?;
    tokio::spawn(async move {
        while let Ok(mut guard) = fd.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
    Ok(())
}

/// Loads the program and maps (adopting pinned ones), applies the pool and
/// attaches to its interfaces.
fn start_data_path(
    pool: &Pool,
    object: &[u8],
    hash_key: [u64; 2],
    debug_datapath: bool,
) -> Result<Controller<BpfDataPlane>> {
    let s = sizes(pool);
    let mut dp = BpfDataPlane::load(object, &pool.instance, s, debug_datapath)?;
    if let Some(log) = dp.take_decision_log() {
        spawn_decision_log(log)?;
        log::info!("logging the data path's decisions (--debug-datapath); this costs per new flow");
    }
    dp.set_config(&kernel_config(pool, hash_key))?;
    let mut ctl = Controller::adopt(dp, s.ring_size, s.max_vips, s.max_backends)?;
    // After a restart the previous program is still attached: it reads the
    // pinned maps, but its own VIP filter and index (derived, not pinned),
    // which nothing keeps any more. Put this program, whose filter and index
    // match the pinned VIPs, in its place before anything changes.
    let (adopting, fresh): (Vec<&String>, Vec<&String>) = pool
        .interfaces
        .iter()
        .partition(|iface| ctl.dp.link_pinned(iface));
    for iface in adopting {
        ctl.dp.attach(iface, attach_mode(pool.xdp_mode))?;
        warn_forwarding(iface);
    }
    // Elsewhere tables first, then attach: the first packet already finds them.
    let report = ctl.apply(pool)?;
    log::info!(
        "pool `{}`: {} VIPs; tables written for {:?}",
        pool.instance,
        pool.vips.len(),
        report.tables_written
    );
    if debug_datapath {
        log_ids(&ctl);
    }
    for iface in fresh {
        ctl.dp.attach(iface, attach_mode(pool.xdp_mode))?;
        warn_forwarding(iface);
    }
    ctl.dp.detach_others(&pool.interfaces)?;
    Ok(ctl)
}

/// `lb run`.
/// `debug_datapath`: log the data path's decisions (`--debug-datapath`).
pub async fn run(config_path: PathBuf, object: Vec<u8>, debug_datapath: bool) -> Result<()> {
    let text = std::fs::read_to_string(&config_path)
        .with_context(|| format!("reading {}", config_path.display()))?;
    let pool = config::parse(&text, &config_path.display().to_string())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if unsafe { libc::geteuid() } != 0 {
        bail!("`lb run` needs root (CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN to load and attach XDP); run it with sudo");
    }
    if socket_alive(&pool.control_socket).await {
        bail!(
            "instance `{}` is already running (its control socket {} answers); stop it with `lb stop --config {}`",
            pool.instance,
            pool.control_socket.display(),
            config_path.display()
        );
    }
    check_socket_path(&pool.control_socket)?;
    for iface in &pool.interfaces {
        dataplane::ifindex(iface)?;
    }
    let hash_key = load_or_create_secret(&pool.hash_secret_file)?;
    // A start that fails leaves nothing behind of an instance it created.
    let fresh = !dataplane::has_pins(&pool.instance);
    let ctl = match start_data_path(&pool, &object, hash_key, debug_datapath) {
        Ok(ctl) => ctl,
        Err(e) => {
            if fresh {
                let removed = dataplane::remove_pins(&pool.instance).unwrap_or_default();
                log::info!(
                    "start failed: removed the {} pins this start made",
                    removed.len()
                );
            }
            return Err(e);
        }
    };
    warn_vip_routes(&pool);
    warn_flow_capacity(pool.tables.flow_table_size);

    if let Some(dir) = pool.control_socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let listener = bind_control_socket(&pool.control_socket)?;
    let (ctl_tx, mut ctl_rx) = mpsc::channel::<Control>(16);
    tokio::spawn(serve_control(listener, ctl_tx));

    let (health_tx, mut health_rx) = mpsc::channel(1024);
    let mut d = Daemon {
        config_path: config_path.clone(),
        pool,
        ctl,
        probers: HashMap::new(),
        health_tx,
        started: Instant::now(),
        last_text: text,
        read_error: None,
        retry_at: None,
        flows: Default::default(),
        rates: Rates {
            at: Instant::now(),
            vip: Rate::default(),
            backend: Rate::default(),
        },
    };
    d.sync_probers();
    let idle = d.pool.tables.udp_idle_timeout.as_nanos() as u64;
    spawn_flow_counter(
        d.pool.instance.clone(),
        idle.max(60_000_000_000),
        d.flows.clone(),
    );
    log::info!(
        "serving; control socket {}; pins under {}",
        d.pool.control_socket.display(),
        dataplane::pin_dir(&d.pool.instance).display()
    );

    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut watch = tokio::time::interval(WATCH_INTERVAL);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // When verdicts wait out a VIP's flip grace: flush them then.
    let mut flush_at: Option<tokio::time::Instant> = None;
    loop {
        let flush_due = async {
            match flush_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(ev) = health_rx.recv() => {
                // Every verdict already waiting, then one write per VIP.
                d.on_health(ev);
                while let Ok(ev) = health_rx.try_recv() {
                    d.on_health(ev);
                }
                flush_at = d.flush_health();
            }
            _ = flush_due => flush_at = d.flush_health(),
            _ = hup.recv() => { log::info!("SIGHUP: reloading {}", d.config_path.display()); d.reload(true) }
            _ = watch.tick() => d.reload(false),
            _ = tick.tick() => d.sample_rates(),
            Some(c) = ctl_rx.recv() => match c {
                Control::Status(reply) => { let _ = reply.send(serde_json::to_string(&d.status())?); }
                Control::Stop(reply) => {
                    let removed = dataplane::remove_pins(&d.pool.instance)?;
                    log::info!("stopped: XDP detached, {} pins removed", removed.len());
                    let _ = reply.send("{\"stopped\":true}".into());
                    let _ = std::fs::remove_file(&d.pool.control_socket);
                    return Ok(());
                }
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    let _ = std::fs::remove_file(&d.pool.control_socket);
    log::info!(
        "exiting; the XDP program stays attached and keeps forwarding with the pinned maps under {} (`lb stop` detaches)",
        dataplane::pin_dir(&d.pool.instance).display()
    );
    Ok(())
}

/// Packets to a VIP address on a port no VIP serves go to the kernel. If the
/// kernel forwards them (towards the router that sent them), they loop until
/// their TTL runs out. Warn unless each VIP address is local, blackholed or
/// unreachable here.
fn warn_vip_routes(pool: &Pool) {
    let mut seen = std::collections::BTreeSet::new();
    for v in &pool.vips {
        if !seen.insert(v.address) {
            continue;
        }
        let out = match std::process::Command::new("ip")
            .args(["-o", "route", "get"])
            .arg(v.address.to_string())
            .output()
        {
            Ok(o) => o,
            Err(_) => return,
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let first = text.split_whitespace().next().unwrap_or("");
        let contained = !out.status.success()
            || matches!(first, "local" | "blackhole" | "unreachable" | "prohibit");
        if !contained {
            log::warn!(
                "VIP address {} is routed by the kernel here ({}): traffic to its ports that no VIP serves is forwarded and may loop back from your router; add `ip route add blackhole {}/{}` (or put the address on lo)",
                v.address,
                text.trim(),
                v.address,
                if v.address.is_ipv4() { 32 } else { 128 }
            );
        }
    }
}

/// CPUs in a kernel CPU list such as "0-3,8".
fn cpu_count(list: &str) -> usize {
    list.trim()
        .split(',')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('-') {
            Some((a, b)) => b.parse::<usize>().unwrap_or(0) + 1 - a.parse::<usize>().unwrap_or(0),
            None => 1,
        })
        .sum()
}

/// The flow table's LRU keeps up to 128 free entries per CPU in a local list
/// (and as many recently added ones pending): on a small table with many
/// CPUs, live flows can be evicted while the table is far from full (the
/// kernel eases this from 6.16 on).
fn warn_flow_capacity(flows: u32) {
    let Ok(possible) = std::fs::read_to_string("/sys/devices/system/cpu/possible") else {
        return;
    };
    let held = cpu_count(&possible) * 256;
    if (flows as usize) < 4 * held {
        log::warn!(
            "tables.flow_table_size is {flows}; the LRU's per-CPU lists may hold up to {held} entries on this host's CPUs, so flows can be evicted early; raise it to {} or more",
            4 * held
        );
    }
}

fn warn_forwarding(iface: &str) {
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

async fn serve_control(listener: UnixListener, tx: mpsc::Sender<Control>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let allowed = peer_allowed(&stream);
            let (r, mut w) = stream.into_split();
            if !allowed {
                let _ = w
                    .write_all(
                        b"{\"error\":\"permission denied: only root talks to the daemon\"}\n",
                    )
                    .await;
                return;
            }
            let mut line = String::new();
            if BufReader::new(r).read_line(&mut line).await.is_err() {
                return;
            }
            let (otx, orx) = tokio::sync::oneshot::channel();
            let msg = match line.trim() {
                "status" => Control::Status(otx),
                "stop" => Control::Stop(otx),
                other => {
                    let _ = w
                        .write_all(
                            format!("{{\"error\":\"unknown request {other:?}\"}}\n").as_bytes(),
                        )
                        .await;
                    return;
                }
            };
            if tx.send(msg).await.is_err() {
                return;
            }
            if let Ok(answer) = orx.await {
                let _ = w.write_all(answer.as_bytes()).await;
                let _ = w.write_all(b"\n").await;
            }
        });
    }
}

impl Daemon {
    /// A probe's result, for every (VIP, backend) its prober serves.
    fn on_health(&mut self, ev: HealthEvent<ProbeSpec>) {
        let refs = match self.probers.get(&ev.backend) {
            Some((refs, _)) => refs.clone(),
            None => return,
        };
        for r in refs {
            self.on_backend_health(r, &ev);
        }
    }

    fn on_backend_health(&mut self, backend: BackendRef, ev: &HealthEvent<ProbeSpec>) {
        match self.ctl.probe_result(&backend, &ev.outcome, ev.health) {
            Ok(true) => {
                let name = self
                    .ctl
                    .vips
                    .get(&backend.0)
                    .map(|v| v.conf.name.clone())
                    .unwrap_or_default();
                let (level, word, probes) = match ev.health {
                    Health::Up => (log::Level::Info, "up", "passed"),
                    Health::Down => (log::Level::Warn, "down", "failed"),
                };
                log::log!(
                    level,
                    "backend {} of VIP `{}` is {} after {} {} probe{} ({}, {:.1} ms)",
                    backend.1,
                    name,
                    word,
                    ev.in_a_row,
                    probes,
                    if ev.in_a_row == 1 { "" } else { "s" },
                    ev.outcome.detail,
                    ev.outcome.latency.as_secs_f64() * 1000.0
                );
                if let Some(v) = self.ctl.vips.get(&backend.0) {
                    if v.serving() == 0 {
                        log::error!("VIP `{}` has no backend left: its packets are dropped (drop_no_backend)", v.conf.name);
                    }
                }
            }
            Ok(false) => {}
            Err(e) => log::error!("applying a health change: {e}"),
        }
    }

    /// Writes the recorded health verdicts; returns when to try again for
    /// VIPs that must first wait out their flip grace.
    fn flush_health(&mut self) -> Option<tokio::time::Instant> {
        match self.ctl.flush() {
            Ok(wait) => wait.map(|w| tokio::time::Instant::now() + w),
            Err(e) => {
                log::error!("applying health changes (retrying in 1s): {e}");
                Some(tokio::time::Instant::now() + Duration::from_secs(1))
            }
        }
    }

    /// Reloads the pool file if it changed (or `force`). A bad file is
    /// rejected with every problem; the running configuration stays.
    fn reload(&mut self, force: bool) {
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
        let pool = match config::parse(&text, &self.config_path.display().to_string()) {
            Ok(p) => p,
            Err(e) => {
                log::error!("reload rejected; keeping the running configuration:\n{e}");
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
        if !missing.is_empty() {
            log::error!(
                "reload rejected; keeping the running configuration: {}",
                missing.join("; ")
            );
            return;
        }
        let hash_key = match load_or_create_secret(&pool.hash_secret_file) {
            Ok(k) => k,
            Err(e) => {
                log::error!("reload rejected: {e:#}");
                return;
            }
        };
        if let Err(e) = self.ctl.dp.set_config(&kernel_config(&pool, hash_key)) {
            log::error!("reload: writing the global config: {e}");
            return;
        }
        match self.ctl.apply(&pool) {
            Ok(r) => log::info!("reloaded {}: {}", self.config_path.display(), r.describe()),
            Err(e) => {
                log::error!(
                    "reload failed part-way (retrying in {}s): {e}",
                    RELOAD_RETRY.as_secs()
                );
                self.retry_at = Some(Instant::now() + RELOAD_RETRY);
                // Backends already added must be probed all the same.
                self.sync_probers();
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
        self.pool = pool;
        self.sync_probers();
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

    /// Starts probes for new or changed checks, stops those no longer
    /// wanted; a backend that several VIPs check the same way is probed once.
    fn sync_probers(&mut self) {
        let mut wanted: HashMap<ProbeSpec, Vec<BackendRef>> = HashMap::new();
        for (k, spec) in self.ctl.probes() {
            wanted.entry(spec).or_default().push(k);
        }
        self.probers.retain(|spec, _| wanted.contains_key(spec));
        for (spec, refs) in wanted {
            if let Some((served, _)) = self.probers.get_mut(&spec) {
                *served = refs;
                continue;
            }
            let down = refs.iter().any(|(vip, addr)| {
                self.ctl
                    .vips
                    .get(vip)
                    .and_then(|v| v.backends.get(addr))
                    .is_some_and(|b| b.health == HealthView::Down)
            });
            let initial = if down { Health::Down } else { Health::Up };
            let h = spawn_prober(spec.clone(), spec.clone(), initial, self.health_tx.clone());
            self.probers.insert(spec, (refs, h));
        }
    }

    fn sample_rates(&mut self) {
        let dt = self.rates.at.elapsed().as_secs_f64().max(0.001);
        self.rates.at = Instant::now();
        for v in self.ctl.vips.values() {
            if let Ok(s) = self.ctl.dp.vip_stats(v.id) {
                self.rates.vip.sample(v.id, s.new_flows, dt);
            }
            for b in v.backends.values() {
                if let Ok(s) = self.ctl.dp.backend_stats(b.id) {
                    self.rates.backend.sample(b.id, s.new_flows, dt);
                }
            }
        }
    }

    fn status(&self) -> Status {
        let (flows_at, flows) = self.flows.lock().expect("flow counts").clone();
        let counters = self
            .ctl
            .dp
            .counters()
            .map(|c| {
                c.iter()
                    .enumerate()
                    .filter(|(_, v)| **v > 0)
                    .map(|(i, v)| (lb_common::counter::NAMES[i].to_string(), *v))
                    .collect()
            })
            .unwrap_or_default();
        let vips = self
            .ctl
            .vips
            .values()
            .map(|v| {
                let s = self.ctl.dp.vip_stats(v.id).unwrap_or_default();
                VipStatus {
                    name: v.conf.name.clone(),
                    address: v.conf.address.to_string(),
                    port: v.conf.port,
                    protocol: v.conf.protocol.as_str().to_string(),
                    state: match (v.panic, v.serving() > 0) {
                        (true, _) => "panic",
                        (false, true) => "up",
                        (false, false) => "down",
                    }
                    .into(),
                    packets: s.packets,
                    bytes: s.bytes,
                    new_flows: s.new_flows,
                    new_flows_per_s: self.rates.vip.get(v.id),
                    drops: s.drops,
                    backends: v
                        .backends
                        .values()
                        .map(|b| {
                            let bs = self.ctl.dp.backend_stats(b.id).unwrap_or_default();
                            BackendStatus {
                                address: b.address.to_string(),
                                weight: b.weight,
                                state: match b.state {
                                    BackendState::Active => "active",
                                    BackendState::Drain => "drain",
                                    BackendState::Disabled => "disabled",
                                }
                                .into(),
                                health: match b.health {
                                    HealthView::Up => "up",
                                    HealthView::Down => "down",
                                    HealthView::Unchecked => "unchecked",
                                }
                                .into(),
                                last_probe: b.last_probe.as_ref().map(|p| p.detail.clone()),
                                latency_ms: b.last_probe.as_ref().map(|p| p.latency_ms),
                                active_flows: *flows.get(&b.id).unwrap_or(&0),
                                packets: bs.packets,
                                bytes: bs.bytes,
                                new_flows: bs.new_flows,
                                new_flows_per_s: self.rates.backend.get(b.id),
                            }
                        })
                        .chain(
                            self.ctl
                                .removed_backends(v.id)
                                .into_iter()
                                .map(|(addr, id)| {
                                    let bs = self.ctl.dp.backend_stats(id).unwrap_or_default();
                                    BackendStatus {
                                        address: addr.to_string(),
                                        weight: 0,
                                        state: "removed".into(),
                                        health: "-".into(),
                                        last_probe: None,
                                        latency_ms: None,
                                        active_flows: *flows.get(&id).unwrap_or(&0),
                                        packets: bs.packets,
                                        bytes: bs.bytes,
                                        new_flows: bs.new_flows,
                                        new_flows_per_s: 0.0,
                                    }
                                }),
                        )
                        .collect(),
                }
            })
            .collect();
        Status {
            instance: self.pool.instance.clone(),
            config: self.config_path.display().to_string(),
            uptime_s: self.started.elapsed().as_secs(),
            flows_age_s: flows_at.map(|t| t.elapsed().as_secs()),
            vips,
            counters,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_are_counted() {
        assert_eq!(cpu_count("0-3\n"), 4);
        assert_eq!(cpu_count("0-1,4,6-7"), 5);
        assert_eq!(cpu_count("0"), 1);
    }

    #[test]
    fn the_hash_secret_is_created_once_then_read_back() {
        let dir = std::env::temp_dir().join(format!("lb-secret-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub/secret");
        let a = load_or_create_secret(&path).unwrap();
        let b = load_or_create_secret(&path).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, [0, 0]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&path, "not hex\n").unwrap();
        let e = load_or_create_secret(&path).unwrap_err().to_string();
        assert!(e.contains("expected 32 hex digits"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
