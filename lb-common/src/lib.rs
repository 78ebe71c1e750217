//! Types, map names and the flow hash shared by the XDP program and the daemon.
//!
//! Everything that crosses the kernel/user line is `#[repr(C)]` with explicit
//! padding and a size assertion, so both sides agree byte for byte. Addresses
//! are kept as the raw octets of the packet loaded into native `u32` words
//! (`[u32; 4]`, IPv4 in word 0, the rest zero) and ports in network byte order,
//! exactly as the data path reads them, so no byte swapping happens per packet.
//!
//! - [`layout`]: map names, constants, the shared types.
//! - [`sizes`]: the map sizes chosen at load time.
//! - [`counters`]: the data path's counters and their names.
//! - [`load`]: connection counts, limits and persistence.
//! - [`nat`]: full NAT's reply table and flow encoding.
//! - [`ring`]: how Maglev tables are packed into `RINGS`.
//! - [`chain`]: stateless VIPs' previous backends and their GUE header.
//! - [`flow`]: the flow table's entries and sets, and the flags of a flow.
//! - [`hash`]: the keyed flow hash and the flow table's hash.
//! - [`filter`]: the VIP filter and index.
//! - [`clock`]: the data path's clock and its calibration.
//!
//! Everything is re-exported at the crate root.
#![no_std]

#[cfg(any(feature = "user", test))]
extern crate std;

pub mod chain;
pub mod clock;
pub mod counters;
pub mod filter;
pub mod flow;
pub mod gen;
pub mod hash;
pub mod layout;
pub mod load;
pub mod nat;
pub mod ring;
pub mod sizes;

pub use chain::*;
pub use clock::*;
pub use counters::*;
pub use filter::*;
pub use flow::*;
pub use gen::*;
pub use hash::*;
pub use layout::*;
pub use load::*;
pub use nat::*;
pub use ring::*;
pub use sizes::*;
