//! `lb run`: loads the pool file, loads or adopts the pinned data plane,
//! attaches, runs the health probes, reloads on file change and SIGHUP, and
//! answers `lb status` / `lb stop` on its control socket. One task owns the
//! controller, so there is one writer of the maps.
use crate::config::{self, BackendState, Pool, XdpModeSetting};
use crate::controller::{kernel_config, BackendRef, Controller, HealthView};
use crate::dataplane::{self, AttachMode, BpfDataPlane, DataPlane};
use crate::health::{spawn_prober, Health, HealthEvent, ProbeSpec, ProberHandle};
use crate::status::{BackendCounts, BackendStatus, Scope, Status, VipStatus};
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

mod announce;
mod control;
mod metrics;
mod passive;
pub use announce::{bird_include, withdraw_stopped};
pub use metrics::NAMES as METRIC_NAMES;
mod flow_count;
mod host;
mod reload;
mod secret;
mod transition;
mod view;
use control::*;
pub use control::{request, socket_alive, Denied};
pub use flow_count::flow_count_pause;
use flow_count::{spawn_flow_counter, FlowCounts};
use host::*;
use reload::release_heap;
pub use secret::load_or_create_secret;
use transition::log_transition;
use view::Rates;

/// How often the pool file is checked for changes.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);
/// A turn of the main loop this long or longer is logged: `lb status`
/// and metrics scrapes waited for it.
const SLOW_TURN: Duration = Duration::from_millis(200);
/// How long one turn of the main loop takes in probe results, and then
/// how long it writes their tables, before it lets other work in (the rest
/// follows at once): a turn of probe results lasts up to about twice this.
const FLUSH_BUDGET: Duration = Duration::from_millis(50);
/// When a valid pool file could not be applied, how long until the next try.
const RELOAD_RETRY: Duration = Duration::from_secs(5);

fn attach_mode(m: XdpModeSetting) -> AttachMode {
    match m {
        XdpModeSetting::Auto => AttachMode::Auto,
        XdpModeSetting::Driver => AttachMode::Driver,
        XdpModeSetting::Generic => AttachMode::Generic,
    }
}

pub struct Daemon {
    config_path: PathBuf,
    pool: Pool,
    ctl: Controller<BpfDataPlane>,
    /// One prober per distinct check, serving every (VIP, backend) that
    /// checks a backend the same way.
    probers: HashMap<ProbeSpec, Prober>,
    health_tx: mpsc::Sender<HealthEvent<ProbeSpec>>,
    started: Instant,
    last_text: String,
    /// Why the pool file could not be read last time (logged once per cause).
    read_error: Option<String>,
    /// Set when applying a valid file failed: try again at this time.
    retry_at: Option<Instant>,
    parses: reload::Parses,
    rates: std::sync::Mutex<Rates>,
    /// Active flows per backend id, counted by a background task, and when.
    flows: FlowCounts,
    /// Keeps the backends' next hops resolved in the kernel's neighbour
    /// table (`None`: no netlink socket, warned at start).
    neighbours: Option<crate::neigh::NeighbourKeeper>,
    metrics: metrics::Metrics,
    passive: passive::Passive,
    /// NAT backends' handshake counters (count, summed ns) at the last
    /// sample (`sample_handshakes`).
    handshakes: HashMap<BackendRef, (u64, u64)>,
    announcer: announce::Announcer,
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
    let s = pool.map_sizes();
    let mut dp = BpfDataPlane::load(object, &pool.instance, s, debug_datapath)?;
    if let Some(log) = dp.take_decision_log() {
        spawn_decision_log(log)?;
        log::info!("logging the data path's decisions (--debug-datapath); this costs per new flow");
    }
    dp.set_config(&kernel_config(pool, hash_key))?;
    let mut ctl = Controller::adopt(dp, s.ring_size, s.max_vips, s.max_backends)?
        .with_stateless_vips(s.stateless_vips);
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
    let read = Instant::now();
    let text = std::fs::read_to_string(&config_path)
        .with_context(|| format!("reading {}", config_path.display()))?;
    let pool = config::parse(&text, &config_path.display().to_string())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    log::debug!(
        "{} read and checked in {:?}",
        config_path.display(),
        read.elapsed()
    );
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
    let off_link = host_problems(&pool);
    if !off_link.is_empty() {
        bail!("{}", off_link.join("\n"));
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

    if let Some(dir) = pool.control_socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let listener = bind_control_socket(&pool.control_socket)?;
    let (ctl_tx, mut ctl_rx) = mpsc::channel::<Control>(16);
    if let Some(addr) = pool.metrics {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics endpoint {addr} (`metrics.listen`)"))?;
        log::info!("metrics on http://{addr}/metrics");
        tokio::spawn(metrics::serve_metrics(l, ctl_tx.clone()));
    }
    tokio::spawn(serve_control(listener, ctl_tx));

    let (health_tx, mut health_rx) = mpsc::channel(1024);
    let (parses, mut parsed_rx) = reload::Parses::new();
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
        parses,
        flows: Default::default(),
        rates: Rates::new(),
        neighbours: crate::neigh::NeighbourKeeper::spawn(),
        metrics: metrics::Metrics::new(),
        passive: Default::default(),
        handshakes: Default::default(),
        announcer: Default::default(),
    };
    d.sync_probers();
    d.sync_neighbours();
    d.sync_announce(true);
    let idle = d.pool.tables.udp_idle_timeout.as_nanos() as u64;
    spawn_flow_counter(
        d.pool.instance.clone(),
        idle.max(60_000_000_000),
        idle,
        lb_common::flow_sets(d.pool.tables.flow_table_size),
        d.flows.clone(),
    );
    log::info!(
        "serving; control socket {}; pins under {}",
        d.pool.control_socket.display(),
        dataplane::pin_dir(&d.pool.instance).display()
    );
    release_heap();

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
        // Control requests first (`lb status`, scrapes): one waits at most
        // for the turn in progress, however busy the loop is.
        while let Ok(c) = ctl_rx.try_recv() {
            let since = Instant::now();
            if d.on_control(c).await? {
                return Ok(());
            }
            slow_turn("a control request", since, None);
        }
        // What this turn works on, and since when (not the wait before it);
        // for probe results, how many and how long their tables took.
        let mut busy: Option<(&str, Instant)> = None;
        let mut intake: Option<(usize, Duration)> = None;
        tokio::select! {
            Some(ev) = health_rx.recv() => {
                let started = Instant::now();
                busy = Some(("health results", started));
                // The verdicts already waiting (for at most FLUSH_BUDGET:
                // a change fans out to every VIP of the address, and the
                // rest can wait for the next turn), then one write per VIP.
                d.on_health(ev);
                let mut n = 1;
                while started.elapsed() < FLUSH_BUDGET {
                    let Ok(ev) = health_rx.try_recv() else { break };
                    d.on_health(ev);
                    n += 1;
                }
                let writing = Instant::now();
                flush_at = d.flush_health();
                d.sync_announce(false);
                intake = Some((n, writing.elapsed()));
            }
            _ = flush_due => {
                busy = Some(("health results", Instant::now()));
                flush_at = d.flush_health();
                d.sync_announce(false);
            }
            _ = hup.recv() => { log::info!("SIGHUP: reloading {}", d.config_path.display()); d.reload(true) }
            _ = watch.tick() => d.reload(false),
            Some((n, parsed)) = parsed_rx.recv() => {
                busy = Some(("a reload", Instant::now()));
                d.apply_parsed(n, parsed)
            }
            _ = tick.tick() => {
                busy = Some(("the second's tick", Instant::now()));
                d.sample_handshakes();
                // Passive-health verdicts, and tables of backends ramping
                // up under slow_start.
                let ramping = d.ctl.ramp(Instant::now());
                if d.check_passive_tripped() || ramping {
                    flush_at = d.flush_health();
                }
                d.sync_announce(false);
            }
            Some(c) = ctl_rx.recv() => {
                busy = Some(("a control request", Instant::now()));
                if d.on_control(c).await? {
                    return Ok(());
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
        if let Some((what, since)) = busy {
            slow_turn(what, since, intake);
        }
    }
    let _ = std::fs::remove_file(&d.pool.control_socket);
    log::info!(
        "exiting; the XDP program stays attached and keeps forwarding with the pinned maps under {} (`lb stop` detaches)",
        dataplane::pin_dir(&d.pool.instance).display()
    );
    Ok(())
}

/// Logs a turn of the main loop of `SLOW_TURN` or more (what it did, since
/// when; for probe results, how many and how long writing their tables
/// took): control requests (`lb status`, scrapes) waited for it.
fn slow_turn(what: &str, since: Instant, intake: Option<(usize, Duration)>) {
    let took = since.elapsed();
    if took > SLOW_TURN {
        let detail = intake.map_or(String::new(), |(n, w)| {
            format!(
                " ({n} probe results, then {} ms writing tables)",
                w.as_millis()
            )
        });
        log::warn!(
            "main loop: {what} took {} ms{detail}; control requests (lb status, metrics) waited",
            took.as_millis()
        );
    }
}

/// A running prober and what it last told the (VIP, backend) pairs it
/// serves.
struct Prober {
    refs: Vec<BackendRef>,
    _handle: ProberHandle,
    /// Every pair took this health from the last result handed to all of
    /// them, and nothing changed since (no reload touched the pairs, no
    /// passive hold): a result of the same health need not go to each
    /// pair. One address behind 512 VIPs is 512 controller lookups a probe.
    settled: Option<Health>,
    /// The latest result, which `lb status` shows while results are not
    /// handed to each pair.
    last: Option<crate::controller::ProbeView>,
    /// Some pair's VIP weighs probe times (`least_response_time`): every
    /// result goes to every pair.
    each: bool,
}

impl Daemon {
    /// Answers one control request (`lb status`, a metrics scrape, `lb
    /// drain-node`, `lb stop`). `Ok(true)`: stopped (XDP detached, pins
    /// removed); the daemon exits.
    async fn on_control(&mut self, c: Control) -> Result<bool> {
        match c {
            Control::Status(scope, reply) => self.answer_status(scope, reply),
            Control::Metrics(reply) => {
                let text = self.metrics.render(
                    &self.status(&Scope::Default),
                    self.pool.tables.flow_table_size,
                );
                let _ = reply.send(text);
            }
            Control::Drain(undo, reply) => {
                let answer = if self.pool.announce.is_none() {
                    "{\"error\":\"this instance announces nothing: its pool file has no `announce` section\"}".to_string()
                } else {
                    self.announcer.drained = !undo;
                    self.sync_announce(false);
                    format!("{{\"draining\":{}}}", self.draining())
                };
                let _ = reply.send(answer);
            }
            Control::Stop(reply) => {
                if let Some(a) = self.pool.announce.clone() {
                    // Withdrawn first; then a moment for the routers
                    // to move the traffic before XDP goes.
                    self.withdraw(&a);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                if let Some(n) = &self.neighbours {
                    n.stop();
                }
                let removed = dataplane::remove_pins(&self.pool.instance)?;
                log::info!("stopped: XDP detached, {} pins removed", removed.len());
                let _ = reply.send("{\"stopped\":true}".into());
                let _ = std::fs::remove_file(&self.pool.control_socket);
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// A probe's result, for every (VIP, backend) its prober serves: to
    /// each of them when the health changed (or may differ for one of
    /// them), else only kept for `lb status`.
    fn on_health(&mut self, ev: HealthEvent<ProbeSpec>) {
        let holds = !self.passive.holds.is_empty();
        let Some(p) = self.probers.get_mut(&ev.backend) else {
            return;
        };
        self.metrics.probe(&ev.backend, &ev.outcome);
        p.last = Some(crate::controller::ProbeView {
            ok: ev.outcome.ok,
            detail: ev.outcome.detail.clone(),
            latency_ms: ev.outcome.latency.as_secs_f64() * 1000.0,
        });
        if !p.each && !holds && p.settled == Some(ev.health) {
            return;
        }
        let refs = std::mem::take(&mut p.refs);
        let changed: Vec<String> = refs
            .iter()
            .filter_map(|r| self.on_backend_health(*r, &ev))
            .collect();
        if let Some(first) = refs.first().filter(|_| !changed.is_empty()) {
            log_transition(first.1, &ev, &changed);
        }
        let settled = self.passive.holds.is_empty().then_some(ev.health);
        if let Some(p) = self.probers.get_mut(&ev.backend) {
            p.refs = refs;
            p.settled = settled;
        }
    }

    /// What `lb status` shows of backend `b`'s last probe: its prober's
    /// latest result (which may not have been handed to each pair).
    fn last_probe<'a>(
        &'a self,
        b: &'a crate::controller::RunningBackend,
    ) -> Option<&'a crate::controller::ProbeView> {
        b.probe
            .as_ref()
            .and_then(|spec| self.probers.get(spec))
            .and_then(|p| p.last.as_ref())
            .or(b.last_probe.as_ref())
    }

    /// A probe's result for one (VIP, backend): the VIP's name when the
    /// pair's health changed (logged with the others, `log_transition`).
    fn on_backend_health(
        &mut self,
        backend: BackendRef,
        ev: &HealthEvent<ProbeSpec>,
    ) -> Option<String> {
        // A backend passive health took out stays out until its hold ends.
        let health = self.held_verdict(&backend, ev).unwrap_or(ev.health);
        match self.ctl.probe_result(&backend, &ev.outcome, health) {
            Ok(true) => {
                let v = self.ctl.vips.get(&backend.0)?;
                let name = v.conf.name.clone();
                // Only a backend going down can leave none.
                if health == Health::Down && v.serving() == 0 {
                    log::error!("VIP `{name}` has no backend left: its packets are dropped (drop_no_backend)");
                }
                self.metrics
                    .transition(&name, &backend.1.to_string(), health == Health::Up);
                Some(name)
            }
            Ok(false) => None,
            Err(e) => {
                log::error!("applying a health change: {e}");
                None
            }
        }
    }

    /// Writes the recorded health verdicts; returns when to try again for
    /// VIPs that must first wait out their flip grace.
    fn flush_health(&mut self) -> Option<tokio::time::Instant> {
        let started = Instant::now();
        let flushed = self.ctl.flush_within(FLUSH_BUDGET);
        self.metrics.table_write(started.elapsed());
        match flushed {
            Ok(wait) => wait.map(|w| tokio::time::Instant::now() + w),
            Err(e) => {
                log::error!("applying health changes (retrying in 1s): {e}");
                Some(tokio::time::Instant::now() + Duration::from_secs(1))
            }
        }
    }

    /// Starts probes for new or changed checks, stops those no longer
    /// wanted; a backend that several VIPs check the same way is probed once.
    /// Tells the neighbour keeper the backends of the running pool.
    fn sync_neighbours(&self) {
        if let Some(n) = &self.neighbours {
            let addrs = self
                .pool
                .vips
                .iter()
                .flat_map(|v| v.backends.iter().map(|b| b.address))
                .collect();
            n.backends(addrs);
        }
    }

    fn sync_probers(&mut self) {
        let mut wanted: HashMap<ProbeSpec, Vec<BackendRef>> = HashMap::new();
        for (k, spec) in self.ctl.probes() {
            wanted.entry(spec).or_default().push(k);
        }
        let gone: Vec<ProbeSpec> = self
            .probers
            .keys()
            .filter(|spec| !wanted.contains_key(*spec))
            .cloned()
            .collect();
        for spec in gone {
            self.probers.remove(&spec);
            self.metrics.forget_probe(&spec);
        }
        for (spec, refs) in wanted {
            let each = refs.iter().any(|(vip, _)| {
                self.ctl.vips.get(vip).is_some_and(|v| {
                    v.conf.scheduler == crate::config::Scheduler::LeastResponseTime
                })
            });
            if let Some(p) = self.probers.get_mut(&spec) {
                // After a reload, the next result goes to every pair again
                // (new pairs, or pairs made anew, have not had one).
                p.settled = None;
                p.refs = refs;
                p.each = each;
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
            self.probers.insert(
                spec,
                Prober {
                    refs,
                    _handle: h,
                    settled: None,
                    last: None,
                    each,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
