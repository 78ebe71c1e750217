//! The `lb` daemon's library: pool file, Maglev builder, health probes,
//! the control loop, and the data-plane interface that writes the BPF maps.
pub mod config;
pub mod controller;
pub mod daemon;
pub mod dataplane;
pub mod health;
pub mod maglev;
pub mod neigh;
pub mod status;
pub mod top;
