//! Reading the YAML: syntax, strict scalars, aliases, budgets, and the
//! parser fuzzed.
use super::*;

#[test]
fn yaml_syntax_errors_are_located() {
    assert_only(
        "instance: lb0\ninterfaces: [eth0\nvips: []\n",
        3,
        5,
        "",
        "not valid YAML",
    );
    assert_only(
        "instance: lb0\n  interfaces: [eth0]\n",
        2,
        13,
        "",
        "mapping values are not allowed",
    );
    assert_only("", 1, 1, "", "the pool file is empty");
    assert_only("a: 1\n---\nb: 2\n", 2, 1, "", "more than one YAML document");
    assert_only(
        "- 1\n",
        1,
        1,
        "",
        "expected the pool file (a mapping of fields), found a list",
    );
}

#[test]
fn aliases_are_expanded() {
    let text = "\
instance: lb0
interfaces: [eth0]
encapsulation: {source_v4: 10.255.0.0/24}
vips:
  - name: web
    address: 10.100.0.1
    port: 80
    protocol: tcp
    backends: &pool
      - address: 10.0.1.1
      - address: 10.0.1.2
  - name: web-tls
    address: 10.100.0.1
    port: 443
    protocol: tcp
    backends: *pool
";
    let pool = ok(text);
    assert_eq!(pool.vips[1].backends.len(), 2);
    assert_eq!(
        pool.vips[1].backends[1].health.as_ref().unwrap().target,
        "10.0.1.2:443".parse().unwrap()
    );
}

#[test]
fn several_different_errors_are_reported_at_once() {
    let text = "\
instance: LB-0
interfaces: []
xdp_mode: auto
encapsulation:
  source_v4: 10.255.0.0/24
  mtu: 10000
tables:
  maglev_size: 1000
vips:
  - name: web
    address: 10.100.0.1
    port: 80
    protocol: tcp
    health_check: {kind: tcp, path: /x}
    backends:
      - address: 10.0.1.1
        weight: 0
      - address: 10.0.1.1
      - address: fd00::5
  - name: web
    address: 0.0.0.0
    port: 81
    protocol: tcp
    backends: []
verbose: 1
";
    let errs = errors(text);
    assert_eq!(
        lines(&errs),
        [
            (1, 11),  // instance name
            (2, 13),  // no interfaces
            (6, 8),   // mtu out of range
            (8, 16),  // maglev_size out of range
            (14, 37), // path on a tcp check
            (17, 17), // weight 0
            (18, 18), // duplicate backend
            (19, 18), // IPv6 backend without source_v6
            (20, 11), // duplicate VIP name
            (21, 14), // unspecified VIP address
            (24, 15), // no backends
            (25, 1),  // unknown field
        ],
        "{errs}"
    );
    let shown = errs.to_string();
    let shown: Vec<&str> = shown.lines().collect();
    assert_eq!(shown.len(), 13);
    assert_eq!(
        shown[0],
        "t.yaml:1:11: instance: `LB-0` is not a valid instance name; use 1 to 15 characters \
             from a-z, 0-9, `_` and `-` (it names /sys/fs/bpf/<instance>/)"
    );
    assert_eq!(shown[12], "12 problems in t.yaml");
}

#[test]
fn scalars_are_read_strictly() {
    let with_port = |port: &str| format!("{HEAD}{}", WEB.replace("port: 80", port));
    assert_only(
        &with_port("port: \"80\""),
        9,
        11,
        "vips[0].port",
        "found `80` (write it without quotes)",
    );
    assert_only(
        &with_port("port: 0x50"),
        9,
        11,
        "vips[0].port",
        "found `0x50`",
    );
    assert_only(
        &with_port("port: 8e1"),
        9,
        11,
        "vips[0].port",
        "found `8e1`",
    );
    // YAML 1.1 booleans and sexagesimal numbers are plain strings.
    let pool = ok(&format!("{HEAD}{}", WEB.replace("name: web", "name: yes")));
    assert_eq!(pool.vips[0].name, "yes");
    let pool = ok("instance: lb0\ninterfaces: [eth0]\nencapsulation:\n  gateway_mac: 02:00:00:00:00:01\nvips: []\n");
    assert_eq!(pool.encapsulation.gateway_mac, Some([2, 0, 0, 0, 0, 1]));
    // `~` and an empty value are "not given".
    let pool = ok(&format!("{HEAD}{WEB}        weight: ~\n        state:\n"));
    assert_eq!(
        (
            pool.vips[0].backends[0].weight,
            pool.vips[0].backends[0].state
        ),
        (100, BackendState::Active)
    );
}

#[test]
fn alias_bombs_and_merge_keys_are_refused() {
    let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..9 {
        let refs = vec![format!("*a{}", i - 1); 10].join(", ");
        text.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    let errs = errors(&text);
    assert_eq!(errs.len(), 1, "{errs}");
    assert!(
        errs.errors[0]
            .message
            .contains("too large or expands to too much"),
        "{errs}"
    );

    let text = format!("{HEAD}  - &web\n    name: web\n    address: 10.100.0.1\n    port: 80\n    protocol: tcp\n    backends: [{{address: 10.0.1.1}}]\n  - <<: *web\n    name: web2\n");
    assert_has(
        &errors(&text),
        13,
        5,
        "vips[1].<<",
        "merge keys (`<<`) are not supported",
    );
}

#[test]
fn mutated_pool_files_never_panic_and_every_problem_has_a_place() {
    // The parser fuzzed: the example file with bytes flipped, lines cut,
    // swapped or repeated, truncated. Each result is a pool or problems
    // that all carry a line and column.
    let example = include_str!("../../../../deploy/pool.example.yaml");
    let mut rng = fastrand::Rng::with_seed(20261130);
    let mut rejected = 0;
    for _ in 0..3000 {
        let mut lines: Vec<String> = example.lines().map(str::to_owned).collect();
        for _ in 0..rng.usize(1..4) {
            if lines.is_empty() {
                break;
            }
            let i = rng.usize(..lines.len());
            match rng.u8(..5) {
                0 => {
                    lines.remove(i);
                }
                1 => {
                    let l = lines[i].clone();
                    lines.insert(rng.usize(..lines.len()), l);
                }
                2 => {
                    let cut = rng.usize(..=lines[i].len());
                    lines[i] = lines[i].chars().take(cut).collect();
                }
                3 => {
                    let mut b = lines[i].clone().into_bytes();
                    if !b.is_empty() {
                        let j = rng.usize(..b.len());
                        let chars = b"x:{}[]-,'\" 9\t&*!|>#";
                        b[j] = chars[rng.usize(..chars.len())];
                    }
                    lines[i] = String::from_utf8_lossy(&b).into_owned();
                }
                _ => lines.truncate(i),
            }
        }
        let text = lines.join("\n");
        if let Err(errs) = parse(&text, "fuzz.yaml") {
            rejected += 1;
            for e in errs.iter() {
                assert!(
                    e.line > 0 && e.column > 0,
                    "{e:?} has no place, in:\n{text}"
                );
            }
        }
    }
    assert!(
        rejected > 1000,
        "only {rejected} of 3000 mutations were rejected"
    );
}
