//! Weighted Maglev lookup-table builder (pure Rust, no BPF).
