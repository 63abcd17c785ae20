//! A fault-injecting TCP proxy for vaultfleet's network tests, on loopback.
//!
//! # The model
//!
//! A test names its *endpoints* (replicas, or replica processes) and puts
//! each in a *datacenter*. For every directed pair (from, to) it opens a
//! [`Link`]: a listener on `127.0.0.1:0` dedicated to `from`'s connections to
//! `to`, forwarding each to `to`'s *target* (its real listener). The test
//! configures `from` to find `to` at [`Link::addr`], so every connection
//! between two endpoints crosses the proxy on a link that knows both ends,
//! and faults can be set per path, per datacenter or per link:
//!
//! - **Paths** (bytes travelling from A to B, whichever side dialled):
//!   latency (fixed + seeded jitter, [`Latency`]), a bandwidth cap, one-way
//!   loss, a seeded chance of resetting a connection.
//! - **Cuts** between endpoints: a partition of two endpoints, an isolated
//!   endpoint, a datacenter cut off from the others. A cut black-holes
//!   ([`CutMode::BlackHole`]: traffic stalls, new connections are held) or
//!   resets ([`CutMode::Reset`]: RST now, new connections reset on accept).
//! - **Link modes** ([`LinkMode`]): the far end is a black hole (accepts,
//!   reads and discards, never answers) or a peer that accepts and never
//!   reads (the dialler's buffers fill and its writes block).
//! - **Datacenter latency**: intra- and inter-datacenter defaults and
//!   per-datacenter-pair values, overridden by a path's own latency.
//!
//! [`Proxy::heal`] turns every fault off. Each link counts bytes each way,
//! connections accepted, refused and reset ([`LinkStats`]).
//!
//! ## What TCP allows
//!
//! A proxy sits between two TCP streams, not on the wire: it cannot drop one
//! packet, and a stream never loses bytes in its middle. "Loss" is therefore
//! a one-way black hole: the proxy stops reading that direction, the
//! sender's socket buffers fill as they would with every packet dropped, and
//! the held bytes arrive, in order, when the loss ends (as TCP retransmission
//! would deliver them), unless an end gave up first. Likewise a refused
//! connection is accepted and reset at once (the kernel completes the TCP
//! handshake before the proxy sees it): the dialler's connect succeeds and
//! its first read or write fails with `ECONNRESET` (or, for a non-blocking
//! connect polled after the RST arrived, the connect does). Resets are real RSTs,
//! sent by closing with `SO_LINGER` 0.
//!
//! ## Limits and lifetime
//!
//! The proxy runs on a small tokio runtime of its own, so sync tests
//! (threads, child processes) and async tests use it alike, and every control
//! method is a plain thread-safe call that takes effect at once: tasks wake
//! on each change. Each direction of each connection queues at most
//! [`ProxyConfig::buffer_bytes_max`] bytes, each link holds at most
//! [`ProxyConfig::connections_per_link_max`] connections, upstream connects
//! are bounded by [`ProxyConfig::upstream_connect_timeout`]. Dropping the
//! [`Proxy`] or calling [`Proxy::shutdown`] ends every task and closes every
//! socket; [`Proxy::live_tasks`] counts what still runs.
//!
//! Randomness (jitter, reset chance) is drawn from generators seeded by
//! [`ProxyConfig::seed`], one per connection direction (derived from the
//! seed, the link and the connection's number), so one connection's draws do
//! not depend on the others' timing. Print the seed in tests;
//! [`ProxyConfig::seed_from_env`] reads an override from
//! `VAULTFLEET_NETEM_SEED`.
//!
//! # Example
//!
//! Two replicas in two datacenters; `a` reaches `b` through the proxy.
//!
//! ```
//! use std::io::{Read, Write};
//! use std::net::{TcpListener, TcpStream};
//! use std::time::Duration;
//!
//! use vaultfleet_netem::{CutMode, Latency, Proxy, ProxyConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let seed = ProxyConfig::seed_from_env(42)?;
//! println!("netem seed {seed}");
//! let proxy = Proxy::start(ProxyConfig::new(seed))?;
//! proxy.add_endpoint("a", "dc-east")?;
//! proxy.add_endpoint("b", "dc-west")?;
//!
//! // b's real listener; a is told that b lives at `link.addr()`.
//! let b_listener = TcpListener::bind("127.0.0.1:0")?;
//! proxy.set_target("b", b_listener.local_addr()?)?;
//! let link = proxy.link("a", "b")?;
//! proxy.set_dc_latency(
//!     Latency::fixed(Duration::from_millis(1)),
//!     Latency::fixed(Duration::from_millis(20)),
//! );
//!
//! let mut a = TcpStream::connect(link.addr())?;
//! let (mut b, _) = b_listener.accept()?;
//! a.write_all(b"hello")?;
//! let mut got = [0u8; 5];
//! b.read_exact(&mut got)?; // at least 20 ms later
//! assert_eq!(&got, b"hello");
//!
//! // Cut dc-west off: the connection is reset.
//! proxy.cut_dc("dc-west", CutMode::Reset)?;
//! a.set_read_timeout(Some(Duration::from_secs(5)))?;
//! let read = a.read(&mut got).map_err(|e| e.kind());
//! assert_eq!(read, Err(std::io::ErrorKind::ConnectionReset));
//! proxy.heal();
//! assert_eq!(link.stats().bytes_from_to, 5);
//! proxy.shutdown(Duration::from_secs(5))?;
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod connection;
mod error;
mod faults;
mod proxy;
mod stats;
mod topology;

pub use error::NetemError;
pub use faults::{CutMode, Latency, LinkMode};
pub use proxy::{Link, Proxy, ProxyConfig, SEED_ENV};
pub use stats::LinkStats;
