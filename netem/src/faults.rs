//! The fault vocabulary a test speaks: latency, how a cut behaves, and what a
//! link's far end pretends to be. Plain values; the topology stores them and
//! the connection tasks read them at every step.

use std::time::Duration;

use rand::Rng;

/// A one-way delay: every chunk of bytes is held at least `fixed`, plus a
/// uniformly drawn extra in `[0, jitter]` from the link's seeded generator.
///
/// Chunks of one direction of one connection stay in order (a TCP stream does
/// not reorder), so a chunk that drew a short delay behind one that drew a long
/// one waits for it: jitter only ever adds delay, and `fixed` is a lower bound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Latency {
    /// Delay every byte gets.
    pub fixed: Duration,
    /// Upper bound of the uniformly drawn extra delay.
    pub jitter: Duration,
}

impl Latency {
    /// No delay at all.
    pub const ZERO: Latency = Latency {
        fixed: Duration::ZERO,
        jitter: Duration::ZERO,
    };

    /// A fixed delay, no jitter.
    pub const fn fixed(fixed: Duration) -> Latency {
        Latency {
            fixed,
            jitter: Duration::ZERO,
        }
    }

    /// The same fixed delay with up to `jitter` more.
    pub const fn with_jitter(self, jitter: Duration) -> Latency {
        Latency {
            fixed: self.fixed,
            jitter,
        }
    }

    /// Draws one delay: `fixed` plus a uniform extra in `[0, jitter]`.
    pub(crate) fn sample<R: Rng>(&self, rng: &mut R) -> Duration {
        if self.jitter.is_zero() {
            return self.fixed;
        }
        let jitter_ns_max = u64::try_from(self.jitter.as_nanos()).unwrap_or(u64::MAX);
        let extra = Duration::from_nanos(rng.gen_range(0..=jitter_ns_max));
        let delay = self.fixed.saturating_add(extra);
        debug_assert!(delay >= self.fixed);
        delay
    }
}

/// How a cut (a partition between endpoints, an isolated endpoint or a
/// datacenter cut off) treats connections that cross it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum CutMode {
    /// Packets vanish. Existing connections stall in both directions: the
    /// proxy stops reading, so each sender's socket buffers fill and its
    /// writes block, as when a real link drops every packet. New connections
    /// are accepted (the kernel completes the TCP handshake before any proxy
    /// can refuse) but held: nothing is read and nothing is connected upstream
    /// until the cut heals. A TCP stream never loses bytes in its middle: what
    /// was held is delivered, in order, when the cut heals, just as TCP
    /// retransmission would, unless an end gave up and closed first.
    BlackHole,
    /// Every connection crossing the cut is aborted with a TCP RST (SO_LINGER
    /// 0) at both ends, and new ones are accepted and reset at once: the
    /// dialler's connect succeeds (the kernel completed it) and its first read
    /// or write fails with `ECONNRESET`; a non-blocking connect polled only
    /// after the RST arrived reports `ECONNRESET` itself. That is the closest
    /// a user-space proxy can come to a refusal while keeping its port.
    Reset,
}

/// What the far end of one link pretends to be, for every connection on it,
/// whatever the network between the endpoints does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkMode {
    /// Forward to the target, subject to the network faults.
    #[default]
    Forward,
    /// A black hole: accept, read and discard everything, never answer, never
    /// connect upstream. Existing connections start discarding what the
    /// dialler sends and stop delivering what the target sends. A connection
    /// that discarded bytes has lost part of its stream, so when the mode
    /// leaves `BlackHole` it is reset rather than forwarded again.
    BlackHole,
    /// A peer that accepts and never reads: nothing is read from the dialler,
    /// so its socket buffers fill and its writes block; nothing comes back.
    /// Held bytes are forwarded, in order, when the mode returns to `Forward`.
    NeverRead,
}
