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

/// What was last handed to BIRD, and whether `lb drain-node` is in force.
#[derive(Default)]
pub(super) struct Announcer {
    written: Option<BTreeSet<IpAddr>>,
    pub(super) drained: bool,
}

/// The include file for `addrs`: one static protocol per family (both
/// always there, so BIRD's configuration parses whatever is announced).
pub fn bird_include(instance: &str, addrs: &BTreeSet<IpAddr>) -> String {
    let mut out = format!(
        "# Written by `lb run` (instance {instance}): the VIP addresses this node\n\
         # announces. Do not edit: the daemon rewrites it and runs `birdc configure`.\n"
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

impl Daemon {
    /// The VIP addresses to announce now.
    fn to_announce(&self) -> BTreeSet<IpAddr> {
        let drain = self.announcer.drained || self.pool.announce.as_ref().is_some_and(|a| a.drain);
        if drain {
            return BTreeSet::new();
        }
        self.ctl
            .vips
            .values()
            .filter(|v| v.panic || v.serving() > 0)
            .map(|v| v.conf.address)
            .collect()
    }

    /// Brings BIRD's announcements in line with the VIPs' state, when that
    /// changed (or `force`); a failure is logged and retried on the next call.
    pub(super) fn sync_announce(&mut self, force: bool) {
        let Some(a) = self.pool.announce.clone() else {
            return;
        };
        let want = self.to_announce();
        if !force && self.announcer.written.as_ref() == Some(&want) {
            return;
        }
        match write_and_configure(&a, &self.pool.instance, &want) {
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
                self.announcer.written = Some(want);
            }
            Err(e) => {
                log::error!("announcing through BIRD (retrying in a second): {e:#}");
                self.announcer.written = None;
            }
        }
    }

    /// Withdraws everything (`lb stop`).
    pub(super) fn withdraw_all(&mut self) {
        if let Some(a) = self.pool.announce.clone() {
            match write_and_configure(&a, &self.pool.instance, &BTreeSet::new()) {
                Ok(()) => log::info!("BIRD announces nothing (stopped)"),
                Err(e) => log::error!("withdrawing the VIPs from BIRD: {e:#}"),
            }
        }
    }
}

/// Writes the include file (atomically) and runs `birdc configure`.
fn write_and_configure(
    a: &config::Announce,
    instance: &str,
    addrs: &BTreeSet<IpAddr>,
) -> Result<()> {
    let text = bird_include(instance, addrs);
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
            // birdc answers "Reconfigured" (or "Reconfiguration in progress").
            if status.success() && said.contains("Reconfigur") {
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
            bail!(
                "`birdc -s {} configure` did not answer",
                a.bird_socket.display()
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
        let include = dir.join("lb0-bird.conf");
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
            .replace("/run/lb/lb0-bird.conf", include.to_str().unwrap());
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
