//! The end-to-end topology: a client, a balancer and backends, each in its
//! own network namespace, joined by a bridge in a "switch" namespace.
//! Backends run the decapsulator, hold the VIPs on loopback and run real
//! servers (`backend-server`). Everything is removed on drop, also when a
//! test fails.
//!
//! ```text
//!  client 10.10.0.10 ─┐
//!  lb     10.10.0.2  ─┼─ br0 (switch ns)      VIPs 10.100.0.1, 10.100.0.2, fd00:100::1
//!  b1..bN 10.10.0.1N ─┘                       routed by the client via the lb
//! ```
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const VIP4: &str = "10.100.0.1";
pub const VIP4_MIXED: &str = "10.100.0.2";
pub const VIP6: &str = "fd00:100::1";
pub const LB4: &str = "10.10.0.2";
pub const LB6: &str = "fd10::2";
pub const LB4_2: &str = "10.10.0.3";
pub const LB6_2: &str = "fd10::3";
/// The balancer's addresses on the backends' network of `two_armed`.
pub const LB4_BACK: &str = "10.20.0.2";
pub const LB6_BACK: &str = "fd20::2";

#[derive(Clone, Debug)]
pub struct Host {
    pub name: String,
    pub ns: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

pub struct Topology {
    pub tag: String,
    pub sw: String,
    pub client: String,
    pub lb: String,
    pub backends: Vec<Host>,
    pub dir: PathBuf,
    pub lb_bin: PathBuf,
    server_bin: PathBuf,
    servers: Vec<(String, Child)>,
    daemon: Option<Child>,
    /// `lb_pass` on the switch side of the balancer's veth: a frame the
    /// balancer sends with XDP_TX in driver mode is delivered promptly only
    /// when the peer veth runs XDP too (with GRO alone, the peer's NAPI is
    /// woken late and frames wait up to ~200 ms).
    _peer_xdp: Option<aya::Ebpf>,
    /// `lb_pass` on more switch ports: the balancer's second interface
    /// (`two_armed`), the backends' (`forwarding_backends`).
    _peer_xdp_more: Vec<aya::Ebpf>,
    /// The second balancer, when a test adds one.
    pub lb2: Option<String>,
    daemon2: Option<Child>,
    _peer_xdp2: Option<aya::Ebpf>,
    /// The test's time budget, disarmed when the topology is gone.
    pub budget: Option<crate::Budget>,
    /// BIRD daemons, by namespace.
    birds: Vec<(String, Child)>,
}

pub fn sh(cmd: &str) -> Result<()> {
    let out = Command::new("sh").args(["-c", cmd]).output()?;
    if !out.status.success() {
        bail!(
            "`{cmd}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A command whose process is killed when the thread that started it ends,
/// so a test that dies leaves no daemon or server behind to answer the next
/// run's requests.
fn child(program: &str) -> Command {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(program);
    unsafe {
        c.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c
}

/// `lb`, as built by `cargo xtask test` (`$LB_BIN`), or target/debug/lb.
pub fn lb_bin() -> PathBuf {
    std::env::var_os("LB_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/lb"))
}

impl Topology {
    /// Builds the namespaces, links, addresses, decapsulators and servers.
    pub fn new(tag: &str, n_backends: usize, server_bin: &Path) -> Result<Self> {
        let lb_bin = lb_bin();
        if !lb_bin.exists() {
            bail!(
                "no `lb` binary at {}; build it (cargo xtask test does)",
                lb_bin.display()
            );
        }
        let dir = std::env::temp_dir().join(format!("lb-e2e-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut t = Topology {
            tag: tag.to_string(),
            sw: format!("{tag}-sw"),
            client: format!("{tag}-c"),
            lb: format!("{tag}-lb"),
            backends: (1..=n_backends)
                .map(|i| Host {
                    name: format!("b{i}"),
                    ns: format!("{tag}-b{i}"),
                    v4: Ipv4Addr::new(10, 10, 0, 10 + i as u8),
                    v6: format!("fd10::{}", 10 + i).parse().unwrap(),
                })
                .collect(),
            dir,
            lb_bin,
            server_bin: server_bin.to_path_buf(),
            servers: Vec::new(),
            daemon: None,
            _peer_xdp: None,
            _peer_xdp_more: Vec::new(),
            lb2: None,
            daemon2: None,
            _peer_xdp2: None,
            budget: None,
            birds: Vec::new(),
        };
        t.cleanup_namespaces();
        // Pins of an earlier run of the same tag that was killed before it
        // could clean up.
        let _ = std::fs::remove_dir_all(Path::new("/sys/fs/bpf").join(tag));
        let _ = std::fs::remove_dir_all(Path::new("/sys/fs/bpf").join(format!("{tag}2")));
        t.build()?;
        Ok(t)
    }

    fn hosts(&self) -> Vec<(String, String, String)> {
        let mut h = vec![
            (
                self.client.clone(),
                "10.10.0.10".to_string(),
                "fd10::10".to_string(),
            ),
            (self.lb.clone(), LB4.to_string(), LB6.to_string()),
        ];
        for b in &self.backends {
            h.push((b.ns.clone(), b.v4.to_string(), b.v6.to_string()));
        }
        h
    }

    /// Makes namespace `ns`, joined to the switch as host `i` of the tag.
    fn add_host(&self, i: usize, ns: &str, v4: &str, v6: &str) -> Result<()> {
        // No duplicate address detection: a fresh link-local address is
        // tentative for a second or two, and a backend answering from a
        // VIP on lo solicits its client's MAC from that link-local, so
        // the first replies would wait. Real hosts are long up.
        sh(&format!(
            "ip netns add {ns} \
             && ip netns exec {ns} sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0 \
             && ip -n {ns} link set lo up"
        ))
        .with_context(|| format!("setting up namespace {ns}"))?;
        self.plug(&format!("{}{}", self.tag, i), ns, "eth0", "br0", v4, v6)
    }

    /// Joins namespace `ns` to bridge `br` of the switch: interface
    /// `iface` (a veth whose switch side is `{veth}b`) with `v4`/24 and `v6`/64.
    fn plug(&self, veth: &str, ns: &str, iface: &str, br: &str, v4: &str, v6: &str) -> Result<()> {
        let (a, b, sw) = (format!("{veth}a"), format!("{veth}b"), &self.sw);
        sh(&format!(
            "ip link add {a} type veth peer name {b} \
             && ip link set {a} netns {ns} && ip -n {ns} link set {a} name {iface} \
             && ip netns exec {ns} sysctl -qw net.ipv6.conf.{iface}.accept_dad=0 \
             && ip link set {b} netns {sw} && ip -n {sw} link set {b} master {br} && ip -n {sw} link set {b} up \
             && ip -n {ns} link set {iface} up \
             && ip -n {ns} addr add {v4}/24 dev {iface} && ip -n {ns} addr add {v6}/64 dev {iface} nodad \
             && ip netns exec {ns} ethtool -K {iface} rx off tx off >/dev/null \
             && ip netns exec {sw} ethtool -K {b} gro on >/dev/null"
        ))
        .with_context(|| format!("joining {ns} to {br}"))
    }

    /// Readies the backends for a stateless VIP: forwarding on (the FIB
    /// answers `lb_decap` only then, and the kernel forwards what it cannot
    /// pass on itself), and `lb_pass` on their switch ports, so a frame
    /// their decapsulator passes on with XDP_TX is delivered at once.
    pub fn forwarding_backends(&mut self) -> Result<()> {
        let (sw, tag) = (self.sw.clone(), self.tag.clone());
        for i in 0..self.backends.len() {
            let ns = self.backends[i].ns.clone();
            sh(&format!(
                "ip netns exec {ns} sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 \
                 net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.eth0.send_redirects=0"
            ))?;
            // Hosts are numbered client, balancer, then the backends.
            let peer = format!("{tag}{}b", i + 2);
            self._peer_xdp_more.push(
                in_ns(&sw, move || attach_pass(&peer))
                    .context("attaching lb_pass to a backend's veth peer")?,
            );
        }
        Ok(())
    }

    /// Makes the topology two-armed: the backends move to a network of
    /// their own, 10.20.0.0/24 and fd20::/64 on bridge br1, that the
    /// balancer reaches through a second interface, eth1 (`LB4_BACK`,
    /// `LB6_BACK`). The backends lose eth0, and with it every way to the
    /// client: each reply must pass the balancer. Call before starting
    /// the daemon, after `strip_backends` (this is NAT's topology).
    pub fn two_armed(&mut self) -> Result<()> {
        let (sw, lb, tag) = (self.sw.clone(), self.lb.clone(), self.tag.clone());
        sh(&format!(
            "ip -n {sw} link add br1 type bridge && ip -n {sw} link set br1 up"
        ))?;
        self.plug(&format!("{tag}L"), &lb, "eth1", "br1", LB4_BACK, LB6_BACK)?;
        let port = self.balancer_port(&format!("{tag}Lb"))?;
        self._peer_xdp_more.push(port);
        for i in 0..self.backends.len() {
            let (v4, v6) = (
                Ipv4Addr::new(10, 20, 0, 11 + i as u8),
                format!("fd20::{}", 11 + i).parse::<Ipv6Addr>()?,
            );
            let ns = self.backends[i].ns.clone();
            sh(&format!("ip -n {ns} link del eth0"))?;
            self.plug(
                &format!("{tag}B{i}"),
                &ns,
                "eth1",
                "br1",
                &v4.to_string(),
                &v6.to_string(),
            )?;
            (self.backends[i].v4, self.backends[i].v6) = (v4, v6);
        }
        Ok(())
    }

    /// Makes a balancer host `ns` (forwarding on, XDP on its switch port)
    /// as host number `i`.
    fn add_balancer_host(&self, i: usize, ns: &str, v4: &str, v6: &str) -> Result<aya::Ebpf> {
        if i != 1 {
            self.add_host(i, ns, v4, v6)?;
        }
        let pass = self.balancer_port(&format!("{}{}b", self.tag, i))?;
        sh(&format!(
            "ip netns exec {ns} sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1"
        ))?;
        Ok(pass)
    }

    /// Readies `peer`, the switch side of a balancer's veth, for XDP on the
    /// balancer's side:
    /// - `lb_pass` on it: a frame the balancer sends with XDP_TX in driver
    ///   mode is delivered promptly only when the peer runs XDP too;
    /// - its checksum offload off. The switch merges a backend's TCP
    ///   segments (GRO) and would hand the veth a merged packet whose
    ///   checksum covers only the pseudo-header, to be finished on the
    ///   way out; XDP sees the packet before that, and a NAT reply it
    ///   rewrites leaves with a checksum the client rejects (a stream
    ///   through NAT crawled at a few KB/s). With it off, the kernel
    ///   finishes the checksums before the veth, as a NIC's frames come.
    fn balancer_port(&self, peer: &str) -> Result<aya::Ebpf> {
        sh(&format!(
            "ip netns exec {} ethtool -K {peer} tx off >/dev/null",
            self.sw
        ))?;
        let peer = peer.to_string();
        in_ns(&self.sw.clone(), move || attach_pass(&peer))
            .context("attaching lb_pass to the balancer's veth peer")
    }

    /// A second balancer, 10.10.0.3 / fd10::3, for scale-out tests: start
    /// its daemon with `start_second_daemon`, steer the client with `route_via`.
    pub fn add_second_balancer(&mut self) -> Result<()> {
        let ns = format!("{}-lb2", self.tag);
        let n = self.hosts().len();
        self._peer_xdp2 = Some(self.add_balancer_host(n, &ns, LB4_2, LB6_2)?);
        self.lb2 = Some(ns);
        Ok(())
    }

    /// Sends the client's VIP traffic through the balancer at `v4` / `v6`.
    pub fn route_via(&self, v4: &str, v6: &str) -> Result<()> {
        let c = &self.client;
        sh(&format!(
            "ip -n {c} route replace 10.100.0.0/24 via {v4} && ip -n {c} route replace fd00:100::/64 via {v6}"
        ))
    }

    fn build(&mut self) -> Result<()> {
        let sw = &self.sw;
        sh(&format!("ip netns add {sw} && ip -n {sw} link add br0 type bridge && ip -n {sw} link set br0 up && ip -n {sw} link set lo up"))?;
        for (i, (ns, v4, v6)) in self.hosts().into_iter().enumerate() {
            self.add_host(i, &ns, &v4, &v6)?;
        }
        let lb = self.lb.clone();
        self._peer_xdp = Some(self.add_balancer_host(1, &lb, LB4, LB6)?);
        let c = &self.client;
        sh(&format!(
            "ip -n {c} route add 10.100.0.0/24 via {LB4} && ip -n {c} route add fd00:100::/64 via {LB6}"
        ))?;
        let names: Vec<(String, String)> = self
            .backends
            .iter()
            .map(|b| (b.name.clone(), b.ns.clone()))
            .collect();
        for (name, ns) in names {
            let ns = &ns;
            sh(&format!(
                "ip -n {ns} addr add {VIP4}/32 dev lo && ip -n {ns} addr add {VIP4_MIXED}/32 dev lo \
                 && ip -n {ns} addr add {VIP6}/128 dev lo nodad \
                 && ip netns exec {ns} sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2 \
                    net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.eth0.rp_filter=0 net.ipv4.conf.lo.rp_filter=0"
            ))?;
            let out = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{ns}"))
                .arg(&self.lb_bin)
                .args([
                    "decap",
                    "--interface",
                    "eth0",
                    // The VIPs of `pool_text`.
                    "--vip",
                    &format!("{VIP4}:80/tcp"),
                    "--vip",
                    &format!("{VIP4}:9000/tcp"),
                    // The backend server's stream (the e2e bench's).
                    "--vip",
                    &format!("{VIP4}:9100/tcp"),
                    "--vip",
                    &format!("{VIP4}:53/udp"),
                    "--vip",
                    &format!("[{VIP6}]:80/tcp"),
                    "--vip",
                    &format!("{VIP4_MIXED}:80/tcp"),
                    // The balancers' encapsulation sources (see `pool_text`).
                    "--from",
                    "10.255.0.0/24",
                    "--from",
                    "fd00:255::/112",
                ])
                .output()?;
            if !out.status.success() {
                bail!("lb decap in {ns}: {}", String::from_utf8_lossy(&out.stderr));
            }
            self.start_server(&name)?;
        }
        Ok(())
    }

    /// Removes the backends' decapsulators (`lb decap --remove`), as a
    /// backend that takes no tunnel.
    pub fn remove_decap(&self) -> Result<()> {
        for b in &self.backends {
            let st = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", b.ns))
                .arg(&self.lb_bin)
                .args(["decap", "--interface", "eth0", "--remove"])
                .stdout(Stdio::null())
                .status()?;
            if !st.success() {
                bail!("lb decap --remove in {}", b.ns);
            }
        }
        Ok(())
    }

    /// Leaves the backends with nothing of the balancer's: no decapsulator,
    /// no VIP addresses on loopback (what NAT's backends have).
    pub fn strip_backends(&self) -> Result<()> {
        self.remove_decap()?;
        for b in &self.backends {
            let ns = &b.ns;
            sh(&format!(
                "ip -n {ns} addr del {VIP4}/32 dev lo && ip -n {ns} addr del {VIP4_MIXED}/32 dev lo \
                 && ip -n {ns} addr del {VIP6}/128 dev lo"
            ))?;
        }
        Ok(())
    }

    fn backend(&self, name: &str) -> &Host {
        self.backends
            .iter()
            .find(|b| b.name == name)
            .expect("backend")
    }

    /// Starts (or restarts) a backend's servers.
    pub fn start_server(&mut self, name: &str) -> Result<()> {
        let ns = self.backend(name).ns.clone();
        let child = child("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .arg(&self.server_bin)
            .arg(name)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.servers.push((name.to_string(), child));
        // Wait until it listens.
        let v4 = self.backend(name).v4;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if in_ns(&ns, move || {
                TcpStream::connect_timeout(
                    &SocketAddr::new(v4.into(), 80),
                    Duration::from_millis(200),
                )
                .is_ok()
            }) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("backend server {name} did not start")
    }

    /// Kills a backend's servers (the backend host stays).
    pub fn kill_server(&mut self, name: &str) {
        for (n, c) in self.servers.iter_mut() {
            if n == name {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        self.servers.retain(|(n, _)| n != name);
    }

    pub fn pool_path(&self) -> PathBuf {
        self.dir.join("pool.yaml")
    }

    pub fn socket(&self) -> PathBuf {
        PathBuf::from(format!("/run/lb/{}.sock", self.tag))
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("lb.log")
    }

    /// Writes the pool file.
    pub fn write_pool(&self, yaml: &str) -> Result<()> {
        let tmp = self.dir.join("pool.yaml.tmp");
        std::fs::write(&tmp, yaml)?;
        std::fs::rename(&tmp, self.pool_path())?;
        Ok(())
    }

    /// Replaces the second balancer's pool file, as `write_pool` does the first's.
    pub fn write_second_pool(&self, yaml: &str) -> Result<()> {
        let tmp = self.dir.join("pool2.yaml.tmp");
        std::fs::write(&tmp, yaml)?;
        std::fs::rename(&tmp, self.dir.join("pool2.yaml"))?;
        Ok(())
    }

    /// Starts `lb run` in the balancer's namespace and waits until it answers.
    pub fn start_daemon(&mut self) -> Result<()> {
        self.start_daemon_with(&[])
    }

    /// Starts the daemon with more `lb run` options.
    pub fn start_daemon_with(&mut self, options: &[&str]) -> Result<()> {
        let child = self.spawn_daemon(
            &self.lb.clone(),
            &self.pool_path(),
            &self.log_path(),
            options,
        )?;
        self.daemon = Some(child);
        let (sock, log) = (self.socket(), self.log_path());
        wait_for_daemon(&sock, &log, self.daemon.as_mut().unwrap(), &self.lb_bin)
    }

    /// Starts a second daemon, with pool file `yaml` (its own instance and
    /// socket), on the second balancer.
    pub fn start_second_daemon(&mut self, yaml: &str, socket: &Path) -> Result<()> {
        let ns = self.lb2.clone().context("add_second_balancer first")?;
        self.write_second_pool(yaml)?;
        let pool = self.dir.join("pool2.yaml");
        let log = self.dir.join("lb2.log");
        let child = self.spawn_daemon(&ns, &pool, &log, &[])?;
        self.daemon2 = Some(child);
        wait_for_daemon(socket, &log, self.daemon2.as_mut().unwrap(), &self.lb_bin)
    }

    fn spawn_daemon(&self, ns: &str, pool: &Path, log: &Path, options: &[&str]) -> Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        Ok(child("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .arg(&self.lb_bin)
            .args(["run", "--config"])
            .arg(pool)
            .args(options)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?)
    }

    /// The control socket of BIRD in namespace `ns`.
    pub fn bird_socket(&self, ns: &str) -> PathBuf {
        self.dir.join(format!("bird-{ns}.ctl"))
    }

    /// Starts BIRD in namespace `ns` with configuration `conf`, and waits
    /// until it answers on its control socket.
    pub fn start_bird(&mut self, ns: &str, conf: &str) -> Result<()> {
        let path = self.dir.join(format!("bird-{ns}.conf"));
        std::fs::write(&path, conf)?;
        let sock = self.bird_socket(ns);
        let log = std::fs::File::create(self.dir.join(format!("bird-{ns}.log")))?;
        let c = child("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .args(["bird", "-f", "-c"])
            .arg(&path)
            .arg("-s")
            .arg(&sock)
            .arg("-P")
            .arg(self.dir.join(format!("bird-{ns}.pid")))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting bird (apt-get install bird2)")?;
        self.birds.push((ns.to_string(), c));
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.birdc(ns, "show status").contains("Daemon is up") {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "bird in {ns} did not start: {}",
            std::fs::read_to_string(self.dir.join(format!("bird-{ns}.log"))).unwrap_or_default()
        )
    }

    /// SIGKILLs BIRD in namespace `ns`.
    pub fn kill_bird(&mut self, ns: &str) {
        for (_, c) in self.birds.iter_mut().filter(|(n, _)| n == ns) {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.birds.retain(|(n, _)| n != ns);
    }

    /// What `birdc CMD` says in namespace `ns` (its output, or the error).
    pub fn birdc(&self, _ns: &str, cmd: &str) -> String {
        let out = Command::new("birdc")
            .arg("-s")
            .arg(self.bird_socket(_ns))
            .args(cmd.split_whitespace())
            .output();
        match out {
            Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
            Err(e) => e.to_string(),
        }
    }

    /// SIGKILLs the second balancer's daemon.
    pub fn kill_second_daemon(&mut self) {
        if let Some(mut c) = self.daemon2.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The running daemon's process id.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(|c| c.id())
    }

    /// SIGKILLs the daemon.
    pub fn kill_daemon(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `lb status --json`, parsed.
    pub fn status_json(&self) -> Result<serde_json::Value> {
        self.status_json_at(&self.socket())
    }

    /// `lb status --json` of the daemon answering on `socket`.
    pub fn status_json_at(&self, socket: &Path) -> Result<serde_json::Value> {
        let out = Command::new(&self.lb_bin)
            .args(["status", "--json", "--socket"])
            .arg(socket)
            .output()?;
        if !out.status.success() {
            bail!("lb status: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// `lb status` as a person sees it.
    pub fn status_text(&self) -> String {
        let out = Command::new(&self.lb_bin)
            .args(["status", "--socket"])
            .arg(self.socket())
            .output()
            .expect("lb status");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn cleanup_namespaces(&self) {
        let mut all = vec![
            self.sw.clone(),
            self.client.clone(),
            self.lb.clone(),
            format!("{}-lb2", self.tag),
        ];
        all.extend(self.backends.iter().map(|b| b.ns.clone()));
        for ns in all {
            let _ = Command::new("ip")
                .args(["netns", "del", &ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // By instance, not by pool file: a test may have left an invalid one.
        let (lb, tag) = (self.lb_bin.clone(), self.tag.clone());
        let stop = move || {
            let _ = Command::new(&lb)
                .args(["stop", "--instance", &tag])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        if self.daemon.is_some() {
            stop();
        }
        self.kill_daemon();
        // A daemon killed earlier leaves pins: remove them (detaches XDP).
        stop();
        if let Some(mut d) = self.daemon2.take() {
            let _ = Command::new(&self.lb_bin)
                .args(["stop", "--instance", &format!("{}2", self.tag)])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = d.kill();
            let _ = d.wait();
        }
        for (_, c) in self.servers.iter_mut().chain(self.birds.iter_mut()) {
            let _ = c.kill();
            let _ = c.wait();
        }
        for b in &self.backends {
            let _ = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", b.ns))
                .arg(&self.lb_bin)
                .args(["decap", "--interface", "eth0", "--remove"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        self.cleanup_namespaces();
    }
}

/// Loads `lb_pass` and attaches it (driver mode) to `iface` in this thread's namespace.
fn attach_pass(iface: &str) -> Result<aya::Ebpf> {
    let mut ebpf = aya::EbpfLoader::new()
        .map_max_entries(lb_common::maps::RINGS, 1)
        .map_max_entries(lb_common::maps::FLOWS, 1)
        .load_file(crate::ebpf_object())?;
    let p: &mut aya::programs::Xdp = ebpf
        .program_mut(lb_common::progs::PASS)
        .context("no lb_pass")?
        .try_into()?;
    p.load()?;
    p.attach(iface, aya::programs::XdpMode::Driver)?;
    Ok(ebpf)
}

/// Waits until the daemon answers on `socket`.
fn wait_for_daemon(socket: &Path, log: &Path, daemon: &mut Child, lb: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let read_log = || std::fs::read_to_string(log).unwrap_or_default();
    while Instant::now() < deadline {
        let answered = Command::new(lb)
            .args(["status", "--json", "--socket"])
            .arg(socket)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if answered {
            return Ok(());
        }
        if let Ok(Some(st)) = daemon.try_wait() {
            bail!("lb run exited ({st}):\n{}", read_log());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("lb run did not answer within 15 s:\n{}", read_log())
}

/// Runs `f` on a thread inside network namespace `ns`.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    spawn_in_ns(ns, f).join().expect("thread in netns")
}

/// Starts `f` on a thread inside network namespace `ns`.
pub fn spawn_in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).expect("netns file");
        if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            panic!("setns {path}: {}", std::io::Error::last_os_error());
        }
        f()
    })
}

/// One HTTP/1.0 GET on a new connection; returns the body (the backend's name).
pub fn http_get(addr: SocketAddr, timeout: Duration) -> Result<String> {
    http_get_path(addr, "/", timeout)
}

/// `GET path` over HTTP/1.0; the body of a 200 answer.
pub fn http_get_path(addr: SocketAddr, path: &str, timeout: Duration) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: lb\r\n\r\n").as_bytes())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let body = resp
        .split("\r\n\r\n")
        .nth(1)
        .context("no HTTP body")?
        .trim()
        .to_string();
    if !resp.starts_with("HTTP/1.") || !resp.contains(" 200 ") {
        bail!("unexpected response {resp:?}");
    }
    Ok(body)
}

/// One UDP query from a given local port; returns the answer.
pub fn udp_query(addr: SocketAddr, sport: u16, timeout: Duration) -> Result<String> {
    let local: SocketAddr = match addr.ip() {
        IpAddr::V4(_) => SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), sport),
        IpAddr::V6(_) => SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), sport),
    };
    let s = UdpSocket::bind(local)?;
    s.set_read_timeout(Some(timeout))?;
    s.send_to(b"who", addr)?;
    let mut buf = [0u8; 256];
    let (n, _) = s.recv_from(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
}

/// The pool file used by the demo and the tests, for `n` backends with
/// weights `weights` (`b1`, `b2`, ...).
pub fn pool_yaml(tag: &str, dir: &Path, backends: &[(&Host, u32, &str)]) -> String {
    let mut v4 = String::new();
    let mut v6 = String::new();
    for (h, w, state) in backends {
        v4.push_str(&format!(
            "      - {{ address: {}, weight: {w}, state: {state} }}\n",
            h.v4
        ));
        v6.push_str(&format!(
            "      - {{ address: \"{}\", weight: {w}, state: {state} }}\n",
            h.v6
        ));
    }
    format!(
        r#"instance: {tag}
interfaces: [eth0]
xdp_mode: auto
encapsulation:
  source_v4: 10.255.0.0/24
  source_v6: "fd00:255::/112"
tables:
  maglev_size: 65537
  flow_table_size: 65536
  udp_idle_timeout: 30s
  max_vips: 16
  max_backends: 256
hash_secret_file: {dir}/secret
control_socket: /run/lb/{tag}.sock
vips:
  - name: web
    address: {VIP4}
    port: 80
    protocol: tcp
    health_check: {{ kind: http, path: / }}
    backends:
{v4}  - name: hold
    address: {VIP4}
    port: 9000
    protocol: tcp
    health_check: {{ kind: tcp, port: 80 }}
    backends:
{v4}  - name: dns
    address: {VIP4}
    port: 53
    protocol: udp
    health_check: {{ kind: udp, send: ping }}
    backends:
{v4}  - name: web6
    address: "{VIP6}"
    port: 80
    protocol: tcp
    backends:
{v6}  - name: mixed
    address: {VIP4_MIXED}
    port: 80
    protocol: tcp
    backends:
{v6}"#,
        dir = dir.display()
    )
}

/// A connection to the `hold` VIP (port 9000): the backend server answers
/// each line with its name, so the connection shows where it is served.
pub struct Held {
    w: TcpStream,
    r: std::io::BufReader<TcpStream>,
    /// The backend that answered first.
    pub backend: String,
}

impl Held {
    /// Connects and asks once.
    pub fn open(addr: SocketAddr, timeout: Duration) -> Result<Held> {
        let s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        let mut h = Held {
            r: std::io::BufReader::new(s.try_clone()?),
            w: s,
            backend: String::new(),
        };
        h.backend = h.ask("hi")?;
        Ok(h)
    }

    fn ask(&mut self, line: &str) -> Result<String> {
        use std::io::BufRead;
        writeln!(self.w, "{line}")?;
        let mut name = String::new();
        self.r.read_line(&mut name)?;
        Ok(name.trim().to_string())
    }

    /// Whether the connection still answers, from the same backend.
    pub fn still_served(&mut self) -> bool {
        self.ask("again").is_ok_and(|n| n == self.backend)
    }
}
