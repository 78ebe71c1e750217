//! Embeds the eBPF object built by `cargo xtask build-ebpf` into `lb`, when it
//! exists. Without it, `lb` still builds (plain `cargo build` and `cargo test`
//! need no eBPF toolchain) and asks for `--ebpf-object` at run time.
use std::path::PathBuf;

fn main() {
    println!("cargo::rerun-if-env-changed=LB_EBPF_OBJECT");
    println!("cargo::rustc-check-cfg=cfg(embedded_ebpf)");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let object = std::env::var_os("LB_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../target/bpfel-unknown-none/release/lb-ebpf"));
    println!("cargo::rerun-if-changed={}", object.display());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("lb-ebpf.o");
    if object.exists() {
        std::fs::copy(&object, &out).expect("copying the eBPF object");
        println!("cargo::rustc-cfg=embedded_ebpf");
    } else {
        std::fs::write(&out, b"").unwrap();
        println!(
            "cargo::warning=no eBPF object at {}; `lb` will need --ebpf-object (run `cargo xtask build-ebpf` first to embed it)",
            object.display()
        );
    }
}
