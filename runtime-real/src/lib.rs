//! sluice-runtime-real: drives one sluice-core node with tokio sockets and real files.
//!
//! Contract: this crate does I/O and nothing else. Every decision (what to answer, what to
//! write, when something is durable) is made by the core node; this crate splits frames,
//! executes disk operations in order, runs syncs off the core thread and reports them back as
//! inputs, and sends file ranges with sendfile.

pub mod alloc;
pub mod config;
pub mod conn_limits;
pub mod disk;
pub mod meta_properties;
pub mod metrics_http;
pub mod peer;
pub mod perf;
pub mod sendfile;
pub mod server;
