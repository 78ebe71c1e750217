//! Announcing the VIPs through BIRD (`announce` in the pool file). The
//! daemon does not speak BGP: it writes the VIP addresses this node should
//! announce as static routes into a file that BIRD's configuration
//! includes, and has BIRD read its configuration again (`birdc configure`).
//! An address is announced while some VIP on it takes new flows (up, or in
//! panic mode), and withdrawn when none does, while the node drains
//! (`announce.drain`, `lb drain-node`), and on `lb stop`.
use super::*;
use std::collections::BTreeSet;
use std::net::IpAddr;

/// How long `birdc configure` may take.
const BIRDC_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait between two tries after a failure (doubling from 1 s).
const RETRY_MAX: Duration = Duration::from_secs(30);

/// The include file for `addrs`: one static protocol per family (both
/// always there, so BIRD's configuration parses whatever is announced).
pub fn bird_include(name: &str, addrs: &BTreeSet<IpAddr>) -> String {
    let mut out = format!(
        "# Written by `lb run` ({name}): the VIP addresses this node announces.\n\
         # Do not edit: the daemon rewrites it and runs `birdc configure`.\n"
    );
    for (proto, v6) in [("lb_vips4", false), ("lb_vips6", true)] {
        out += &format!(
            "protocol static {proto} {{\n  {};\n",
            if v6 { "ipv6" } else { "ipv4" }
        );
        for a in addrs.iter().filter(|a| a.is_ipv6() == v6) {
            let bits = if v6 { 128 } else { 32 };
            out += &format!("  route {a}/{bits} blackhole;\n");
        }
        out += "}\n";
    }
    out
}

/// What the announcing thread is told.
enum Job {
    /// Announce these addresses (the latest wins) through `Announce`.
    Set(config::Announce, BTreeSet<IpAddr>),
    /// Withdraw everything through `Announce` now, then say so.
    Withdraw(config::Announce, std::sync::mpsc::Sender<()>),
}

/// What the daemon last asked BIRD to announce, the thread that tells BIRD
/// (`birdc` can take seconds and must not hold up the event loop), and
/// whether `lb drain-node` is in force.
pub(super) struct Announcer {
    asked: Option<(config::Announce, BTreeSet<IpAddr>)>,
    tx: std::sync::mpsc::Sender<Job>,
    pub(super) drained: bool,
}

impl Default for Announcer {
    fn default() -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let _ = std::thread::Builder::new()
            .name("announce".into())
            .spawn(move || announcer_thread(rx));
        Announcer {
            asked: None,
            tx,
            drained: false,
        }
    }
}

/// Applies the latest wanted set, retrying failures with backoff.
fn announcer_thread(rx: std::sync::mpsc::Receiver<Job>) {
    let mut pending: Option<(config::Announce, BTreeSet<IpAddr>)> = None;
    let mut retry = Duration::from_secs(1);
    loop {
        let job = if pending.is_some() {
            match rx.recv_timeout(retry) {
                Ok(j) => Some(j),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
                Err(_) => return,
            }
        } else {
            match rx.recv() {
                Ok(j) => Some(j),
                Err(_) => return,
            }
        };
        match job {
            Some(Job::Withdraw(a, done)) => {
                match write_and_configure(&a, &BTreeSet::new()) {
                    Ok(()) => log::info!("BIRD announces nothing (withdrawn)"),
                    Err(e) => log::error!("withdrawing the VIPs from BIRD: {e:#}"),
                }
                pending = None;
                let _ = done.send(());
                continue;
            }
            Some(Job::Set(a, want)) => {
                pending = Some((a, want));
                retry = Duration::from_secs(1);
            }
            None => {}
        }
        // Only the latest set matters.
        while let Ok(j) = rx.try_recv() {
            match j {
                Job::Set(a, want) => pending = Some((a, want)),
                Job::Withdraw(a, done) => {
                    let _ = write_and_configure(&a, &BTreeSet::new());
                    pending = None;
                    let _ = done.send(());
                }
            }
        }
        let Some((a, want)) = &pending else {
            continue;
        };
        match write_and_configure(a, want) {
            Ok(()) => {
                let list: Vec<String> = want.iter().map(|a| a.to_string()).collect();
                log::info!(
                    "BIRD announces {}",
                    if list.is_empty() {
                        "nothing (every VIP withdrawn)".to_string()
                    } else {
                        list.join(", ")
                    }
                );
                pending = None;
            }
            Err(e) => {
                log::error!(
                    "announcing through BIRD (trying again in {}s): {e:#}",
                    retry.as_secs()
                );
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}

impl Daemon {
    /// Whether the node withdraws everything: `lb drain-node`, or
    /// `announce.drain` in the pool file.
    pub(super) fn draining(&self) -> bool {
        self.announcer.drained || self.pool.announce.as_ref().is_some_and(|a| a.drain)
    }

    /// The VIP addresses to announce now: those of a VIP in panic mode, or
    /// with a backend taking new flows whose health is known (it has no
    /// check, or a probe answered since the daemon started: a node that
    /// cannot reach its backends must not attract traffic before its first
    /// probes say so).
    fn to_announce(&self) -> BTreeSet<IpAddr> {
        if self.draining() {
            return BTreeSet::new();
        }
        self.ctl
            .vips
            .values()
            .filter(|v| {
                v.panic
                    || v.backends.values().any(|b| {
                        b.state == BackendState::Active
                            && b.health != HealthView::Down
                            && (b.probe.is_none() || b.last_probe.is_some())
                    })
            })
            .map(|v| v.conf.address)
            .collect()
    }

    /// Asks the announcing thread for the VIPs' current state when it
    /// changed (or `force`); it retries failures on its own.
    pub(super) fn sync_announce(&mut self, force: bool) {
        let Some(a) = self.pool.announce.clone() else {
            return;
        };
        let want = self.to_announce();
        let asked = Some((a.clone(), want.clone()));
        if !force && self.announcer.asked == asked {
            return;
        }
        self.announcer.asked = asked;
        let _ = self.announcer.tx.send(Job::Set(a, want));
    }

    /// Withdraws everything through `a` and waits (up to BIRDC_TIMEOUT and
    /// a second) until BIRD was told: `lb stop`, and a reload that removes
    /// or moves `announce`.
    pub(super) fn withdraw(&mut self, a: &config::Announce) {
        let (done, wait) = std::sync::mpsc::channel();
        if self
            .announcer
            .tx
            .send(Job::Withdraw(a.clone(), done))
            .is_ok()
        {
            let _ = wait.recv_timeout(BIRDC_TIMEOUT + Duration::from_secs(1));
        }
        self.announcer.asked = None;
    }
}

/// Withdraws every VIP of an instance whose daemon is not running (`lb
/// stop` then): writes an empty include and has BIRD read it.
pub fn withdraw_stopped(a: &config::Announce) -> Result<()> {
    write_and_configure(a, &BTreeSet::new())
}

/// Writes the include file (atomically) and runs `birdc configure`.
fn write_and_configure(a: &config::Announce, addrs: &BTreeSet<IpAddr>) -> Result<()> {
    let name = a
        .bird_include
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let text = bird_include(&name, addrs);
    if let Some(dir) = a.bird_include.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = a.bird_include.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &a.bird_include)
        .with_context(|| format!("writing {}", a.bird_include.display()))?;
    let mut child = std::process::Command::new("birdc")
        .arg("-s")
        .arg(&a.bird_socket)
        .arg("configure")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running birdc (Debian's bird2 package)")?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            let out = child.wait_with_output()?;
            let said = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            // What BIRD answers when it takes the new configuration.
            let taken = said.lines().any(|l| {
                let l = l.trim();
                l.ends_with("Reconfigured")
                    || l.contains("Reconfiguration in progress")
                    || l.contains("queueing new config")
            });
            if status.success() && taken {
                return Ok(());
            }
            bail!(
                "`birdc -s {} configure` said: {}",
                a.bird_socket.display(),
                said.trim()
            );
        }
        if started.elapsed() > BIRDC_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "`birdc -s {} configure` did not answer within {}s",
                a.bird_socket.display(),
                BIRDC_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_include_file_has_both_families_and_every_address_once() {
        let addrs: BTreeSet<IpAddr> = ["10.100.0.1", "fd00:100::1", "10.100.0.2"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let text = bird_include("lb0", &addrs);
        assert!(text.contains("protocol static lb_vips4 {\n  ipv4;\n  route 10.100.0.1/32 blackhole;\n  route 10.100.0.2/32 blackhole;\n}"), "{text}");
        assert!(
            text.contains(
                "protocol static lb_vips6 {\n  ipv6;\n  route fd00:100::1/128 blackhole;\n}"
            ),
            "{text}"
        );
        let empty = bird_include("lb0", &BTreeSet::new());
        assert!(
            empty.contains("protocol static lb_vips4 {\n  ipv4;\n}"),
            "{empty}"
        );
        assert!(!empty.contains("route"));
    }

    #[test]
    fn bird_parses_the_example_configuration_with_a_written_include() {
        // `bird -p`: the configuration in deploy/bird/ as an operator
        // installs it, including a file the daemon wrote.
        let dir = std::env::temp_dir().join(format!("lb-bird-parse-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let include = dir.join("lb-lb0.conf");
        let addrs = [
            "10.100.0.1".parse().unwrap(),
            "fd00:100::1".parse().unwrap(),
        ]
        .into();
        std::fs::write(&include, bird_include("lb0", &addrs)).unwrap();
        for name in ["bird.conf", "router.conf"] {
            let conf = std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../deploy/bird")
                    .join(name),
            )
            .unwrap()
            .replace("/run/bird/lb-lb0.con[f]", include.to_str().unwrap());
            let path = dir.join(name);
            std::fs::write(&path, conf).unwrap();
            let out = match std::process::Command::new("bird")
                .arg("-p")
                .arg("-c")
                .arg(&path)
                .output()
            {
                Ok(o) => o,
                Err(_) => {
                    assert!(
                        std::env::var_os("LB_REQUIRE_ROOT_TESTS").is_none(),
                        "bird is missing (apt-get install bird2; cargo xtask setup does)"
                    );
                    eprintln!("bird not installed: parse check skipped");
                    return;
                }
            };
            assert!(
                out.status.success(),
                "bird -p {name}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
