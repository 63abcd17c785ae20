//! The tasks behind each link: one accept loop per link listener and one task
//! per accepted connection. A connection task owns both sockets and moves
//! bytes each way in bounded chunks through a bounded queue, asking the
//! topology before every step what the current faults make of them.
//!
//! Every task ends when the proxy shuts down (it selects on the shutdown
//! signal at every await), and every buffer is bounded: a direction holds at
//! most [`ProxyConfig::buffer_bytes_max`](crate::ProxyConfig::buffer_bytes_max)
//! bytes queued, so a slow or stalled far end pushes back on the sender
//! through TCP flow control, as a real network would.

use std::collections::VecDeque;
use std::future::pending;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{sleep, sleep_until, timeout, Instant};

use crate::proxy::{Shared, TaskGuard};
use crate::stats::LinkCounters;
use crate::topology::{Admission, Direction, Flow, LinkIx, PPM_MAX};

/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(10);

/// Accepts connections on one link's listener until shutdown.
pub(crate) async fn serve_link(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    link: LinkIx,
    guard: TaskGuard,
) {
    let _guard = guard;
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::warn!(%error, link, "netem: could not register a link listener");
            return;
        }
    };
    let counters = shared.topology.lock().links[link].counters.clone();
    let mut shutdown = shared.shutdown_signal();
    let mut sequence: u64 = 0;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|down| *down) => return,
        };
        let client = match accepted {
            Ok((client, _)) => client,
            Err(error) => {
                tracing::debug!(%error, link, "netem: accept failed");
                tokio::select! {
                    _ = sleep(ACCEPT_RETRY_DELAY) => continue,
                    _ = shutdown.wait_for(|down| *down) => return,
                }
            }
        };
        sequence += 1;
        LinkCounters::add(&counters.connections_accepted, 1);
        let live = counters
            .connections_live
            .load(std::sync::atomic::Ordering::Relaxed);
        if live >= shared.config.connections_per_link_max as u64 {
            LinkCounters::add(&counters.connections_refused, 1);
            abort(client);
            continue;
        }
        let epoch = shared.topology.lock().links[link].reset_epoch;
        let ctx = ConnCtx {
            shared: shared.clone(),
            counters: counters.clone(),
            link,
            epoch,
            sequence,
        };
        let Some(guard) = TaskGuard::new(&shared) else {
            abort(client);
            return;
        };
        // Counted live here, not in the task, so a burst of accepts cannot
        // overshoot the bound before the tasks run.
        LinkCounters::add(&counters.connections_live, 1);
        let live = LiveConnection(counters.clone());
        tokio::spawn(run_connection(client, ctx, guard, live));
    }
}

/// Everything a connection task needs to ask about its link.
struct ConnCtx {
    shared: Arc<Shared>,
    counters: Arc<LinkCounters>,
    link: LinkIx,
    /// The link's reset epoch when this connection was accepted.
    epoch: u64,
    /// This connection's number on its link, from 1; seeds its generators.
    sequence: u64,
}

impl ConnCtx {
    fn flow(&self, dir: Direction) -> Flow {
        self.shared.topology.lock().flow(self.link, self.epoch, dir)
    }

    /// A generator for one direction of this connection, drawn from the
    /// proxy's seed, the link, the connection's number and the direction, so
    /// a connection's draws do not depend on other connections' timing.
    fn rng(&self, dir: Direction) -> StdRng {
        let dir_word = match dir {
            Direction::FromTo => 1,
            Direction::ToFrom => 2,
        };
        let mut state = self.shared.config.seed;
        for word in [self.link as u64, self.sequence, dir_word] {
            state = splitmix64(state ^ splitmix64(word));
        }
        StdRng::seed_from_u64(state)
    }
}

/// SplitMix64's finaliser: spreads related words (link 1, link 2, ...) apart.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Decrements the link's live-connection gauge when the connection ends.
struct LiveConnection(Arc<LinkCounters>);

impl Drop for LiveConnection {
    fn drop(&mut self) {
        self.0
            .connections_live
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn run_connection(client: TcpStream, ctx: ConnCtx, guard: TaskGuard, live: LiveConnection) {
    let _guard = guard;
    let _live = live;
    let mut shutdown = ctx.shared.shutdown_signal();
    // On shutdown the connection future is dropped with both sockets: a plain
    // close (FIN), not a reset.
    tokio::select! {
        _ = connection_life(client, &ctx) => {}
        _ = shutdown.wait_for(|down| *down) => {}
    }
}

async fn connection_life(client: TcpStream, ctx: &ConnCtx) {
    let _ = client.set_nodelay(true);
    let mut changes = ctx.shared.changes();
    let target = loop {
        changes.borrow_and_update();
        let admission = ctx.shared.topology.lock().admission(ctx.link, ctx.epoch);
        match admission {
            Admission::Connect(target) => break target,
            Admission::Refuse => {
                LinkCounters::add(&ctx.counters.connections_refused, 1);
                abort(client);
                return;
            }
            Admission::Sink => return sink(client, ctx, changes).await,
            Admission::Hold => {
                if changes.changed().await.is_err() {
                    return;
                }
            }
        }
    };
    let connect = timeout(
        ctx.shared.config.upstream_connect_timeout,
        TcpStream::connect(target),
    );
    let server = match connect.await {
        Ok(Ok(server)) => server,
        Ok(Err(_)) | Err(_) => {
            LinkCounters::add(&ctx.counters.upstream_connect_failures, 1);
            LinkCounters::add(&ctx.counters.connections_refused, 1);
            abort(client);
            return;
        }
    };
    let _ = server.set_nodelay(true);
    forward(client, server, ctx).await;
}

/// A black hole's connection: read and discard until the dialler closes, or
/// reset it when the link stops being a black hole.
async fn sink(mut client: TcpStream, ctx: &ConnCtx, mut changes: watch::Receiver<u64>) {
    let mut buf = vec![0u8; ctx.shared.config.chunk_bytes_max];
    loop {
        changes.borrow_and_update();
        let flow = ctx.shared.topology.lock().sink_flow(ctx.link, ctx.epoch);
        if flow == Flow::Reset {
            LinkCounters::add(&ctx.counters.connections_reset, 1);
            abort(client);
            return;
        }
        tokio::select! {
            biased;
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            read = client.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => LinkCounters::add(&ctx.counters.bytes_discarded, n as u64),
            },
        }
    }
}

/// How one direction of a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PumpEnd {
    /// The source closed and everything queued was delivered, then FIN sent on.
    Finished,
    /// The connection is to be aborted at both ends.
    Reset,
}

async fn forward(mut client: TcpStream, mut server: TcpStream, ctx: &ConnCtx) {
    let end = {
        // Borrowed halves: unlike owned halves, dropping them sends no FIN, so
        // a reset below is a bare RST.
        let (mut client_read, mut client_write) = client.split();
        let (mut server_read, mut server_write) = server.split();
        let to = pump(&mut client_read, &mut server_write, ctx, Direction::FromTo);
        let back = pump(&mut server_read, &mut client_write, ctx, Direction::ToFrom);
        tokio::pin!(to, back);
        let (mut to_done, mut back_done) = (false, false);
        loop {
            let end = tokio::select! {
                end = &mut to, if !to_done => { to_done = true; end }
                end = &mut back, if !back_done => { back_done = true; end }
            };
            if end == PumpEnd::Reset {
                break PumpEnd::Reset;
            }
            if to_done && back_done {
                break PumpEnd::Finished;
            }
        }
    };
    if end == PumpEnd::Reset {
        LinkCounters::add(&ctx.counters.connections_reset, 1);
        abort(client);
        abort(server);
    }
}

/// A chunk read from the source, waiting for its delivery time.
struct Chunk {
    data: Vec<u8>,
    /// Bytes of `data` already written.
    written: usize,
    deliver_at: Instant,
}

/// Moves one direction: reads chunks while the flow allows and the queue has
/// room, stamps each with its delivery time, writes them in order when due.
async fn pump(
    src: &mut ReadHalf<'_>,
    dst: &mut WriteHalf<'_>,
    ctx: &ConnCtx,
    dir: Direction,
) -> PumpEnd {
    let config = &ctx.shared.config;
    let forwarded = match dir {
        Direction::FromTo => &ctx.counters.bytes_from_to,
        Direction::ToFrom => &ctx.counters.bytes_to_from,
    };
    let mut changes = ctx.shared.changes();
    let mut rng = ctx.rng(dir);
    let mut queue: VecDeque<Chunk> = VecDeque::new();
    let mut queued_bytes: usize = 0;
    let mut buf = vec![0u8; config.chunk_bytes_max];
    let mut eof = false;
    // A stream that lost bytes to a black hole cannot be forwarded again.
    let mut discarded = false;
    // Earliest time the bandwidth cap lets the next byte go.
    let mut next_free = Instant::now();
    loop {
        debug_assert_eq!(
            queued_bytes,
            queue
                .iter()
                .map(|c| c.data.len() - c.written)
                .sum::<usize>()
        );
        debug_assert!(queued_bytes <= config.buffer_bytes_max + config.chunk_bytes_max);
        changes.borrow_and_update();
        let flow = ctx.flow(dir);
        let (reads, writes, bandwidth) = match flow {
            Flow::Reset => return PumpEnd::Reset,
            Flow::Forward(_) if discarded => return PumpEnd::Reset,
            Flow::Stall => (false, false, None),
            Flow::Discard => (true, false, None),
            Flow::Forward(params) => (true, true, params.bandwidth_bytes_per_sec),
        };
        if eof && queue.is_empty() && writes {
            // Pass the source's FIN on, once everything before it is delivered.
            let _ = dst.shutdown().await;
            return PumpEnd::Finished;
        }
        let read_room = reads && !eof && queued_bytes < config.buffer_bytes_max;
        let head = match queue.front() {
            Some(chunk) if writes => Some((
                chunk.deliver_at.max(next_free),
                &chunk.data[chunk.written..],
            )),
            _ => None,
        };
        enum Step {
            Changed,
            Read(io::Result<usize>),
            Wrote(io::Result<usize>),
        }
        let step = tokio::select! {
            biased;
            changed = changes.changed() => match changed {
                Ok(()) => Step::Changed,
                // The proxy's state is gone: nothing more to ask.
                Err(_) => return PumpEnd::Reset,
            },
            read = read_if(src, &mut buf, read_room) => Step::Read(read),
            wrote = write_when_due(dst, head) => Step::Wrote(wrote),
        };
        match step {
            Step::Changed => {}
            Step::Read(Ok(0)) => eof = true,
            Step::Read(Ok(n)) => match flow {
                Flow::Discard => {
                    discarded = true;
                    LinkCounters::add(&ctx.counters.bytes_discarded, n as u64);
                }
                Flow::Forward(params) => {
                    if params.reset_chance_ppm > 0
                        && rng.gen_range(0..PPM_MAX) < params.reset_chance_ppm
                    {
                        return PumpEnd::Reset;
                    }
                    let delay = params.latency.sample(&mut rng);
                    queue.push_back(Chunk {
                        data: buf[..n].to_vec(),
                        written: 0,
                        deliver_at: Instant::now() + delay,
                    });
                    queued_bytes += n;
                }
                // Not reachable (no read is started under these flows); keep
                // the bytes rather than lose them.
                Flow::Stall | Flow::Reset => {
                    queue.push_back(Chunk {
                        data: buf[..n].to_vec(),
                        written: 0,
                        deliver_at: Instant::now(),
                    });
                    queued_bytes += n;
                }
            },
            Step::Read(Err(_)) | Step::Wrote(Err(_)) | Step::Wrote(Ok(0)) => return PumpEnd::Reset,
            Step::Wrote(Ok(n)) => {
                LinkCounters::add(forwarded, n as u64);
                queued_bytes -= n;
                if let Some(chunk) = queue.front_mut() {
                    chunk.written += n;
                    if chunk.written == chunk.data.len() {
                        queue.pop_front();
                    }
                }
                if let Some(bytes_per_sec) = bandwidth {
                    let cost = Duration::from_secs_f64(n as f64 / bytes_per_sec.get() as f64);
                    next_free = next_free.max(Instant::now()) + cost;
                }
            }
        }
    }
}

/// Reads when allowed; otherwise never completes.
async fn read_if(src: &mut ReadHalf<'_>, buf: &mut [u8], allowed: bool) -> io::Result<usize> {
    if allowed {
        src.read(buf).await
    } else {
        pending().await
    }
}

/// Writes the head chunk once due (cancel-safe: a cancelled `write` wrote
/// nothing); with no head, never completes.
async fn write_when_due(
    dst: &mut WriteHalf<'_>,
    head: Option<(Instant, &[u8])>,
) -> io::Result<usize> {
    match head {
        Some((due, data)) => {
            sleep_until(due).await;
            dst.write(data).await
        }
        None => pending().await,
    }
}

/// Closes a socket with a TCP RST: SO_LINGER 0 makes the close abortive, so
/// the peer's next read or write fails with `ECONNRESET`.
pub(crate) fn abort(stream: TcpStream) {
    if let Err(error) = stream.set_zero_linger() {
        tracing::debug!(%error, "netem: could not set SO_LINGER 0; closing plainly");
    }
    drop(stream);
}
