//! `vaultfleet-vault-bench`: the Backup Key Vault's own throughput, end to end.
//!
//! ```text
//! cargo run --release -p vaultfleet-bench --bin vaultfleet-vault-bench -- --users 256
//! ```
//!
//! Builds the fleet of `vault/examples/vault.rs` (5 replicas in 3 datacenters
//! over the in-process `ChannelNetwork` with a per-link delay, each log on sled
//! sealed by its own soft HSM, a `VaultService` beside each node), then runs
//! `--users` concurrent users, each a thread with its own `VaultClient`: real
//! OPAQUE registrations, then recoveries (right codes, and `--wrong-ratio` of
//! wrong ones), through the same `VaultClient` → `VaultService` → fleet calls
//! as the example. It prints registrations/s and recoveries/s with p50/p99
//! latency, CPU seconds (split between the users' threads outside their calls,
//! the services inside them, and the fleet's threads) and peak RSS.
//!
//! It then measures the bound set by the server's OPAQUE work alone: the same
//! operations against `ServiceCore`s whose fleet steps are applied at once to
//! one local `BackupVault` (no consensus, no network, no disk), on as many
//! threads as the machine has cores; the CPU time of the cores' server steps
//! (`ServiceCore::begin`/`resume`: OPAQUE, HSM sealing and signing of replies)
//! per operation gives the bound, `cores / server CPU per op`. The client's
//! key-stretching (Argon2id) cost is timed on its own.
//!
//! The last line is `registrations/s=<n> recoveries/s=<n>` for scripts.
//! Logs go to stderr, filtered by `RUST_LOG`.
// A benchmark measures wall-clock time on real threads.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::cell::Cell;
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};

use vaultfleet::replica::ReplicaConfig;
use vaultfleet::runtime::{Node, NodeConfig};
use vaultfleet::{
    ChannelNetwork, FleetConfig, LogStore, MemLog, MemberSpec, Replica, Sealed, SealedConfig,
    SledLog, SoftHsm, StateMachine,
};
use vaultfleet_vault::{
    BackupVault, FleetStep, KsfParams, Progress, ServiceCore, Unreachable, VaultClient,
    VaultClientConfig, VaultClientError, VaultEndpoint, VaultKeys, VaultPublicKeys, VaultServer,
    VaultService, VaultServiceConfig,
};

/// Registrations and recoveries per second of the Backup Key Vault on a fleet
/// in several datacenters, and the bound set by the server's OPAQUE work alone.
#[derive(Debug, Parser)]
#[command(name = "vaultfleet-vault-bench", version)]
struct Options {
    /// Concurrent users, each a thread with its own client.
    #[arg(long, value_name = "U", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=4096))]
    users: u64,
    /// Replicas: 1, 3, 5 or 7.
    #[arg(long, value_name = "R", default_value_t = 5, value_parser = replicas)]
    replicas: u64,
    /// Datacenters the replicas are spread over (in blocks: 5 over 3 is
    /// 1,2 | 3,4 | 5, as in the example).
    #[arg(long, value_name = "D", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=7))]
    datacenters: u64,
    /// One-way delay between datacenters, in milliseconds (0 within one).
    #[arg(long, value_name = "MS", default_value_t = 5)]
    delay_ms: u64,
    /// Each replica's log: sled sealed by its own soft HSM, plain sled, or memory.
    #[arg(long, value_enum, default_value_t = Store::SealedSled)]
    store: Store,
    /// The client's key-stretching cost.
    #[arg(long, value_enum, default_value_t = Ksf::TestsOnly)]
    ksf: Ksf,
    /// Registrations in all (default: 8 per user); one user id each.
    #[arg(long, value_name = "N")]
    registrations: Option<u64>,
    /// Recoveries in all (default: 8 per user), spread over the registered users.
    #[arg(long, value_name = "N")]
    recoveries: Option<u64>,
    /// Share of recoveries made with a wrong code (0 to 0.9; wrong ones are
    /// spaced so that no user runs out of attempts).
    #[arg(long, value_name = "R", default_value_t = 0.0, value_parser = ratio)]
    wrong_ratio: f64,
    /// Threads of the bound's run (default: this machine's cores).
    #[arg(long, value_name = "T")]
    bound_threads: Option<usize>,
    /// One line of JSON instead of the tables.
    #[arg(long)]
    json: bool,
}

/// Each replica's log store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Store {
    /// Sled, sealed by the replica's own soft HSM (the example's store).
    SealedSled,
    /// Plain sled (an fsync per Ready cycle that appends, no sealing).
    Sled,
    /// Memory (durable at once).
    Mem,
}

/// The key-stretching function's cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Ksf {
    /// Argon2id 64 KiB x 1: the test suite's cost.
    TestsOnly,
    /// Argon2id 19 MiB x 2: the deployment default.
    Recommended,
}

impl Ksf {
    fn params(self) -> KsfParams {
        match self {
            Ksf::TestsOnly => KsfParams::TESTS_ONLY,
            Ksf::Recommended => KsfParams::RECOMMENDED,
        }
    }
}

fn replicas(v: &str) -> Result<u64, String> {
    match v.parse::<u64>() {
        Ok(n @ (1 | 3 | 5 | 7)) => Ok(n),
        _ => Err("must be 1, 3, 5 or 7".into()),
    }
}

fn ratio(v: &str) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(r) if (0.0..=0.9).contains(&r) => Ok(r),
        _ => Err("must be a number from 0 to 0.9".into()),
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (warnings and errors when unset).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// CPU time of the calling thread in ns, up to the moment of the call (the
/// scheduler's figure in `/proc` lags behind for a running thread); 0 if the
/// clock is unavailable (the split is then reported as 0).
#[allow(unsafe_code)]
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec that outlives the call, and
    // CLOCK_THREAD_CPUTIME_ID is a clock every Linux has.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU seconds (user + system) of this process, from /proc.
fn process_cpu_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Peak resident memory of this process in MiB, from /proc.
fn peak_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// What one user thread spent inside its calls to the services.
#[derive(Debug, Default, Clone, Copy)]
struct Split {
    /// Calls made.
    calls: u64,
    /// Wall time inside the calls (server work, fleet steps, waiting).
    call_wall_ns: u64,
    /// This thread's CPU time inside the calls.
    call_cpu_ns: u64,
    /// Of which the server's steps (`ServiceCore::begin`/`resume`; bound run only).
    server_cpu_ns: u64,
    /// Of which applying fleet steps to the local machine (bound run only).
    apply_cpu_ns: u64,
    /// Fleet steps taken (bound run only).
    steps: u64,
}

impl Split {
    fn add(&mut self, o: &Split) {
        self.calls += o.calls;
        self.call_wall_ns += o.call_wall_ns;
        self.call_cpu_ns += o.call_cpu_ns;
        self.server_cpu_ns += o.server_cpu_ns;
        self.apply_cpu_ns += o.apply_cpu_ns;
        self.steps += o.steps;
    }
}

thread_local! {
    /// The calling thread's split since it was last taken.
    static SPLIT: Cell<Split> = Cell::new(Split::default());
}

fn record(f: impl FnOnce(&mut Split)) {
    SPLIT.with(|s| {
        let mut v = s.get();
        f(&mut v);
        s.set(v);
    });
}

fn take_split() -> Split {
    SPLIT.with(|s| s.replace(Split::default()))
}

/// An endpoint that times each call of the user's thread into it.
struct Timed {
    inner: Arc<dyn VaultEndpoint>,
}

impl VaultEndpoint for Timed {
    fn replica(&self) -> u64 {
        self.inner.replica()
    }

    fn call(&self, request: &[u8]) -> Result<Vec<u8>, Unreachable> {
        let (wall, cpu) = (Instant::now(), thread_cpu_ns());
        let r = self.inner.call(request);
        let (w, c) = (wall.elapsed().as_nanos() as u64, thread_cpu_ns());
        record(|s| {
            s.calls += 1;
            s.call_wall_ns += w;
            s.call_cpu_ns += c.saturating_sub(cpu);
        });
        r
    }
}

/// The bound's endpoint: a replica's `ServiceCore` whose fleet steps are
/// applied at once to a `BackupVault` shared by every core (no consensus, no
/// network, no disk), as `VaultService::handle` drives it over the fleet.
struct Local {
    core: ServiceCore<SoftHsm>,
    machine: Arc<Mutex<(BackupVault, u64)>>,
    started: Instant,
}

impl VaultEndpoint for Local {
    fn replica(&self) -> u64 {
        self.core.replica()
    }

    fn call(&self, request: &[u8]) -> Result<Vec<u8>, Unreachable> {
        let mut split = Split {
            calls: 1,
            ..Split::default()
        };
        let wall = Instant::now();
        let cpu = thread_cpu_ns();
        let mut progress = self.core.begin(request, self.started.elapsed());
        let mut mark = thread_cpu_ns();
        split.server_cpu_ns += mark.saturating_sub(cpu);
        let reply = loop {
            match progress {
                Progress::Reply(reply) => break reply,
                Progress::Wait { call, step } => {
                    split.steps += 1;
                    let answer = {
                        let mut m = self.machine.lock().unwrap_or_else(|e| e.into_inner());
                        let (vault, index) = &mut *m;
                        match step {
                            FleetStep::Propose(command) => {
                                *index += 1;
                                vault.apply(*index, &command)
                            }
                            FleetStep::Read(query) => vault.query(&query),
                        }
                    };
                    let applied = thread_cpu_ns();
                    split.apply_cpu_ns += applied.saturating_sub(mark);
                    progress = self.core.resume(call, Ok(answer), self.started.elapsed());
                    mark = thread_cpu_ns();
                    split.server_cpu_ns += mark.saturating_sub(applied);
                }
            }
        };
        split.call_wall_ns = wall.elapsed().as_nanos() as u64;
        split.call_cpu_ns = mark.saturating_sub(cpu);
        record(|s| s.add(&split));
        Ok(reply)
    }
}

fn code(u: &str) -> String {
    format!("recovery code of {u}")
}

fn secret(u: &str) -> String {
    format!("backup key of {u}")
}

/// Whether a thread's `k`-th recovery uses a wrong code: spaced evenly, so
/// that at `ratio` <= 0.9 at most 9 wrong codes come in a row (a user has 10
/// attempts, and the right code gives them back).
fn is_wrong(k: u64, ratio: f64) -> bool {
    ((k + 1) as f64 * ratio).floor() > (k as f64 * ratio).floor()
}

/// One phase's figures, summed over the user threads.
#[derive(Debug, Default)]
struct Phase {
    ok: u64,
    wrong: u64,
    failed: u64,
    first_failure: Option<String>,
    latencies_us: Vec<u64>,
    /// The users' threads' CPU time (outside and inside their calls).
    thread_cpu_ns: u64,
    split: Split,
    seconds: f64,
    process_cpu_s: Option<f64>,
}

impl Phase {
    fn merge(&mut self, o: Phase) {
        self.ok += o.ok;
        self.wrong += o.wrong;
        self.failed += o.failed;
        if self.first_failure.is_none() {
            self.first_failure = o.first_failure;
        }
        self.latencies_us.extend(o.latencies_us);
        self.thread_cpu_ns += o.thread_cpu_ns;
        self.split.add(&o.split);
    }

    fn fail(&mut self, what: String) {
        self.failed += 1;
        if self.first_failure.is_none() {
            self.first_failure = Some(what);
        }
    }

    /// Completed operations (a recovery refused for a wrong code is one).
    fn done(&self) -> u64 {
        self.ok + self.wrong
    }

    fn per_s(&self) -> f64 {
        self.done() as f64 / self.seconds.max(1e-9)
    }

    fn pct_ms(&mut self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        self.latencies_us.sort_unstable();
        let i = ((self.latencies_us.len() as f64 - 1.0) * p) as usize;
        self.latencies_us[i] as f64 / 1e3
    }
}

/// What the users do: how many threads, their registrations and recoveries.
#[derive(Debug, Clone, Copy)]
struct Workload {
    threads: u64,
    registrations: u64,
    recoveries: u64,
    wrong_ratio: f64,
}

impl Workload {
    /// Thread `t`'s share of `n`.
    fn share(&self, n: u64, t: u64) -> u64 {
        n / self.threads + u64::from(t < n % self.threads)
    }
}

/// One user thread: registers its users, waits, recovers them in turn.
fn user_thread(t: u64, client: VaultClient, w: Workload, barrier: &Barrier) -> (Phase, Phase) {
    let names: Vec<String> = (0..w.share(w.registrations, t))
        .map(|k| format!("user-{t}-{k}"))
        .collect();
    let recoveries = if names.is_empty() {
        0
    } else {
        w.share(w.recoveries, t)
    };
    let mut reg = Phase::default();
    let mut rec = Phase::default();
    barrier.wait();
    take_split();
    let cpu = thread_cpu_ns();
    for u in &names {
        let start = Instant::now();
        match client.register(u.as_bytes(), code(u).as_bytes(), secret(u).as_bytes()) {
            Ok(_) => {
                reg.ok += 1;
                reg.latencies_us.push(start.elapsed().as_micros() as u64);
            }
            Err(e) => reg.fail(format!("register {u}: {e}")),
        }
    }
    reg.thread_cpu_ns = thread_cpu_ns().saturating_sub(cpu);
    reg.split = take_split();
    barrier.wait();
    let cpu = thread_cpu_ns();
    for k in 0..recoveries {
        let u = &names[(k % names.len() as u64) as usize];
        let wrong = is_wrong(k, w.wrong_ratio);
        let guess = if wrong {
            format!("wrong guess {k}")
        } else {
            code(u)
        };
        let start = Instant::now();
        let r = client.recover(u.as_bytes(), guess.as_bytes());
        let us = start.elapsed().as_micros() as u64;
        match (wrong, r) {
            (false, Ok(got)) if got.as_slice() == secret(u).as_bytes() => {
                rec.ok += 1;
                rec.latencies_us.push(us);
            }
            (false, Ok(_)) => rec.fail(format!("recover {u}: another secret came back")),
            (true, Err(VaultClientError::WrongCode { .. })) => {
                rec.wrong += 1;
                rec.latencies_us.push(us);
            }
            (true, Ok(_)) => rec.fail(format!("recover {u}: a wrong code was accepted")),
            (_, Err(e)) => rec.fail(format!("recover {u}: {e}")),
        }
    }
    rec.thread_cpu_ns = thread_cpu_ns().saturating_sub(cpu);
    rec.split = take_split();
    barrier.wait();
    (reg, rec)
}

/// Runs `w` with one client per thread over `endpoints` (each thread's list
/// rotated, so that users spread over the services), the threads named
/// `{role}-{t}` (so a profile tells the fleet's run from the bound's);
/// returns the registration and recovery phases.
fn run_users(
    role: &str,
    endpoints: &[Arc<dyn VaultEndpoint>],
    pinned: &VaultPublicKeys,
    ksf: KsfParams,
    w: Workload,
) -> Result<(Phase, Phase), String> {
    let cfg = VaultClientConfig {
        ksf,
        ..VaultClientConfig::default()
    };
    let barrier = Arc::new(Barrier::new(w.threads as usize + 1));
    let mut threads = Vec::new();
    for t in 0..w.threads {
        let mut mine = endpoints.to_vec();
        mine.rotate_left((t as usize) % endpoints.len().max(1));
        let client = VaultClient::new(mine, pinned.clone(), cfg).map_err(|e| e.to_string())?;
        let barrier = Arc::clone(&barrier);
        let spawned = std::thread::Builder::new()
            .name(format!("{role}-{t}"))
            .stack_size(512 * 1024)
            .spawn(move || user_thread(t, client, w, &barrier));
        match spawned {
            Ok(h) => threads.push(h),
            Err(e) => {
                // The threads already spawned wait at the barrier for ever.
                return Err(format!("cannot spawn user thread {t}: {e}"));
            }
        }
    }
    barrier.wait();
    let (start, cpu0) = (Instant::now(), process_cpu_s());
    barrier.wait();
    let (mid, cpu1) = (Instant::now(), process_cpu_s());
    barrier.wait();
    let (end, cpu2) = (Instant::now(), process_cpu_s());
    let mut reg = Phase::default();
    let mut rec = Phase::default();
    for h in threads {
        let (a, b) = h.join().map_err(|_| "a user thread panicked")?;
        reg.merge(a);
        rec.merge(b);
    }
    reg.seconds = (mid - start).as_secs_f64();
    rec.seconds = (end - mid).as_secs_f64();
    reg.process_cpu_s = cpu1.zip(cpu0).map(|(b, a)| b - a);
    rec.process_cpu_s = cpu2.zip(cpu1).map(|(b, a)| b - a);
    Ok((reg, rec))
}

/// The datacenter of replica `id` (1-based) of `replicas` spread over `dcs`
/// datacenters in blocks.
fn datacenter(id: u64, replicas: u64, dcs: u64) -> String {
    let i = (id - 1) * dcs.min(replicas) / replicas;
    format!("dc-{}", (b'a' + i as u8) as char)
}

fn spawn_node<L: LogStore>(
    mut log: L,
    id: u64,
    fleet: &FleetConfig,
    net: &ChannelNetwork,
) -> Result<Node, String> {
    Replica::bootstrap(&mut log, &BackupVault::new(), fleet).map_err(|e| e.to_string())?;
    Node::spawn(
        NodeConfig::new(ReplicaConfig::new(id)),
        log,
        BackupVault::new(),
        net.transport(id),
    )
    .map_err(|e| e.to_string())
}

/// The fleet's run: its phases, and the peak RSS after it.
struct FleetRun {
    reg: Phase,
    rec: Phase,
    peak_mib: Option<f64>,
    layout: String,
}

/// Builds the example's fleet, runs the users against its services, stops it.
fn fleet_run(o: &Options, w: Workload) -> Result<FleetRun, String> {
    let fleet = FleetConfig::new(
        (1..=o.replicas)
            .map(|id| MemberSpec::voter(id, datacenter(id, o.replicas, o.datacenters)))
            .collect(),
    );
    for warning in fleet.validate().map_err(|e| e.to_string())? {
        tracing::warn!("fleet config: {warning}");
    }
    let layout = fleet
        .datacenters()
        .iter()
        .map(|(dc, ids)| {
            let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
            format!("{dc}: {}", ids.join(","))
        })
        .collect::<Vec<_>>()
        .join("  ");
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let net = ChannelNetwork::new();
    net.set_datacenter_delays(&fleet, Duration::ZERO, Duration::from_millis(o.delay_ms));
    // The fleet's HSM security world: every replica's vault keys.
    let world = SoftHsm::new();
    let sealed_setup = VaultKeys::provision(&world).map_err(|e| e.to_string())?;
    let mut nodes = Vec::new();
    for m in &fleet.members {
        let path = dir.path().join(format!("replica-{}", m.id));
        let node = match o.store {
            Store::SealedSled => {
                let group = ReplicaConfig::new(m.id).group;
                let log = Sealed::open_sled(&path, SoftHsm::new(), SealedConfig::new(group, m.id))
                    .map_err(|e| e.to_string())?;
                spawn_node(log, m.id, &fleet, &net)?
            }
            Store::Sled => spawn_node(
                SledLog::open(&path).map_err(|e| e.to_string())?,
                m.id,
                &fleet,
                &net,
            )?,
            Store::Mem => spawn_node(MemLog::new(), m.id, &fleet, &net)?,
        };
        net.register(m.id, Arc::new(node.handle()));
        nodes.push(node);
    }
    let handles: Vec<_> = nodes.iter().map(Node::handle).collect();
    let mut pinned = VaultPublicKeys {
        group: 1,
        replicas: BTreeMap::new(),
    };
    let mut endpoints: Vec<Arc<dyn VaultEndpoint>> = Vec::new();
    for m in &fleet.members {
        let keys =
            VaultKeys::open(world.clone(), &sealed_setup, 1, m.id).map_err(|e| e.to_string())?;
        pinned
            .replicas
            .insert(m.id, keys.response_public_key().map_err(|e| e.to_string())?);
        let service = VaultService::start(
            VaultServer::new(keys),
            handles.clone(),
            VaultServiceConfig::default(),
        )
        .map_err(|e| e.to_string())?;
        endpoints.push(Arc::new(Timed {
            inner: Arc::new(service),
        }));
    }
    let r = run_users("user", &endpoints, &pinned, o.ksf.params(), w);
    let peak_mib = peak_mib();
    drop(endpoints);
    for node in nodes {
        let _ = node.shutdown();
    }
    drop(net);
    drop(dir);
    let (reg, rec) = r?;
    Ok(FleetRun {
        reg,
        rec,
        peak_mib,
        layout,
    })
}

/// The bound's run: the same operations against local `ServiceCore`s, one per
/// replica, over one `BackupVault`, on `threads` threads.
fn bound_run(o: &Options, w: Workload) -> Result<(Phase, Phase), String> {
    let world = SoftHsm::new();
    let sealed_setup = VaultKeys::provision(&world).map_err(|e| e.to_string())?;
    let machine = Arc::new(Mutex::new((BackupVault::new(), 0u64)));
    let mut pinned = VaultPublicKeys {
        group: 1,
        replicas: BTreeMap::new(),
    };
    let mut endpoints: Vec<Arc<dyn VaultEndpoint>> = Vec::new();
    for id in 1..=o.replicas {
        let keys =
            VaultKeys::open(world.clone(), &sealed_setup, 1, id).map_err(|e| e.to_string())?;
        pinned
            .replicas
            .insert(id, keys.response_public_key().map_err(|e| e.to_string())?);
        let limits = VaultServiceConfig::default().limits();
        endpoints.push(Arc::new(Local {
            core: ServiceCore::new(VaultServer::new(keys), limits),
            machine: Arc::clone(&machine),
            started: Instant::now(),
        }));
    }
    run_users("bound", &endpoints, &pinned, o.ksf.params(), w)
}

/// CPU ms per Argon2id evaluation at `ksf`, as the client's OPAQUE step runs
/// it (64 bytes out of the OPRF's 64, a zero salt), over at least half a
/// second of this thread's CPU time (so that other processes do not count).
fn ksf_ms(ksf: KsfParams) -> Result<f64, String> {
    let params = argon2::Params::new(ksf.memory_kib, ksf.iterations, ksf.parallelism, Some(64))
        .map_err(|e| e.to_string())?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let input = [7u8; 64];
    let mut out = [0u8; 64];
    let start = thread_cpu_ns();
    let mut n = 0u32;
    while n < 3 || thread_cpu_ns().saturating_sub(start) < 500_000_000 {
        argon
            .hash_password_into(&input, &[0u8; 16], &mut out)
            .map_err(|e| e.to_string())?;
        n += 1;
    }
    Ok(thread_cpu_ns().saturating_sub(start) as f64 / 1e6 / f64::from(n))
}

fn main() -> ExitCode {
    let options = Options::parse();
    init_tracing();
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

/// One phase's figures, fleet beside bound (times in ms per operation).
struct Row {
    name: &'static str,
    ops: u64,
    wrong: u64,
    failed: u64,
    seconds: f64,
    per_s: f64,
    p50: f64,
    p99: f64,
    cpu_s: Option<f64>,
    /// The users' threads outside their calls: client OPAQUE, Argon2id,
    /// reply checks.
    client_cpu: f64,
    /// The users' threads inside their calls: the services' OPAQUE steps and
    /// signatures, and proposing through the runtime client.
    service_cpu: f64,
    /// Every other thread: the nodes (consensus, log, fsync, HSM sealing,
    /// apply on each replica) and the network's delay lines.
    fleet_cpu: Option<f64>,
    call_wall: f64,
    op_wall: f64,
    bound_server_cpu: f64,
    bound_apply_cpu: f64,
    bound_client_cpu: f64,
    steps: f64,
    network_floor: f64,
    /// cores / server CPU per op.
    bound: f64,
    /// cores / (service + fleet CPU per op): the fleet's own ceiling with the
    /// clients on other machines.
    servers_ceiling: Option<f64>,
    local_per_s: f64,
    local_cpu_s: Option<f64>,
}

impl Row {
    fn new(name: &'static str, f: &mut Phase, b: &Phase, cores: usize, delay_ms: u64) -> Self {
        let per_op = |ns: u64, p: &Phase| ns as f64 / 1e6 / p.done().max(1) as f64;
        let fleet_cpu = f
            .process_cpu_s
            .map(|c| (c - f.thread_cpu_ns as f64 / 1e9).max(0.0) * 1e3 / f.done().max(1) as f64);
        let service_cpu = per_op(f.split.call_cpu_ns, f);
        let bound_server_cpu = per_op(b.split.server_cpu_ns, b);
        let steps = b.split.steps as f64 / b.done().max(1) as f64;
        let op_wall =
            f.latencies_us.iter().sum::<u64>() as f64 / 1e3 / f.latencies_us.len().max(1) as f64;
        let per_s = f.per_s();
        let bound = cores as f64 * 1e3 / bound_server_cpu.max(1e-9);
        Self {
            name,
            ops: f.done(),
            wrong: f.wrong,
            failed: f.failed,
            seconds: f.seconds,
            per_s,
            p50: f.pct_ms(0.5),
            p99: f.pct_ms(0.99),
            cpu_s: f.process_cpu_s,
            client_cpu: per_op(f.thread_cpu_ns.saturating_sub(f.split.call_cpu_ns), f),
            service_cpu,
            fleet_cpu,
            call_wall: per_op(f.split.call_wall_ns, f),
            op_wall,
            bound_server_cpu,
            bound_apply_cpu: per_op(b.split.apply_cpu_ns, b),
            bound_client_cpu: per_op(b.thread_cpu_ns.saturating_sub(b.split.call_cpu_ns), b),
            steps,
            // Every fleet step waits for a majority, which spans datacenters:
            // one inter-datacenter round trip each.
            network_floor: steps * 2.0 * delay_ms as f64,
            bound,
            servers_ceiling: fleet_cpu.map(|c| cores as f64 * 1e3 / (service_cpu + c).max(1e-9)),
            local_per_s: b.per_s(),
            local_cpu_s: b.process_cpu_s,
        }
    }

    fn json(&self) -> String {
        let opt = |v: Option<f64>| v.map_or("null".into(), |v| format!("{v:.3}"));
        format!(
            "\"{}\":{{\"ops\":{},\"wrong\":{},\"failed\":{},\"seconds\":{:.3},\"per_s\":{:.1},\"p50_ms\":{:.2},\"p99_ms\":{:.2},\"cpu_s\":{},\"client_cpu_ms\":{:.3},\"service_cpu_ms\":{:.3},\"fleet_cpu_ms\":{},\"call_wall_ms\":{:.2},\"op_wall_ms\":{:.2},\"bound_server_cpu_ms\":{:.3},\"bound_apply_cpu_ms\":{:.3},\"bound_client_cpu_ms\":{:.3},\"fleet_steps\":{:.2},\"network_floor_ms\":{:.1},\"bound_per_s\":{:.1},\"fleet_over_bound\":{:.4},\"servers_ceiling_per_s\":{},\"local_per_s\":{:.1},\"local_cpu_s\":{}}}",
            self.name,
            self.ops,
            self.wrong,
            self.failed,
            self.seconds,
            self.per_s,
            self.p50,
            self.p99,
            opt(self.cpu_s),
            self.client_cpu,
            self.service_cpu,
            opt(self.fleet_cpu),
            self.call_wall,
            self.op_wall,
            self.bound_server_cpu,
            self.bound_apply_cpu,
            self.bound_client_cpu,
            self.steps,
            self.network_floor,
            self.bound,
            self.per_s / self.bound.max(1e-9),
            opt(self.servers_ceiling),
            self.local_per_s,
            opt(self.local_cpu_s),
        )
    }
}

fn run(o: &Options) -> Result<(), String> {
    let registrations = o.registrations.unwrap_or(8 * o.users).max(1);
    let recoveries = o.recoveries.unwrap_or(8 * o.users);
    let fleet_w = Workload {
        threads: o.users.min(registrations),
        registrations,
        recoveries,
        wrong_ratio: o.wrong_ratio,
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let bound_threads = o.bound_threads.unwrap_or(cores).max(1) as u64;
    let bound_w = Workload {
        threads: bound_threads.min(registrations),
        ..fleet_w
    };
    let ksf = o.ksf.params();
    let ksf_ms = ksf_ms(ksf)?;

    let mut fleet = fleet_run(o, fleet_w)?;
    let (b_reg, b_rec) = bound_run(o, bound_w)?;

    let store = match o.store {
        Store::SealedSled => "sealed-sled",
        Store::Sled => "sled",
        Store::Mem => "mem",
    };
    let hsm = match o.store {
        Store::SealedSled => "each log sealed by its own SoftHsm (vaultfleet's in-process software HSM); vault keys in a SoftHsm security world",
        _ => "logs not sealed; vault keys in a SoftHsm security world (vaultfleet's in-process software HSM)",
    };
    let rows = [
        Row::new("registrations", &mut fleet.reg, &b_reg, cores, o.delay_ms),
        Row::new("recoveries", &mut fleet.rec, &b_rec, cores, o.delay_ms),
    ];
    let failed = fleet.reg.failed + fleet.rec.failed + b_reg.failed + b_rec.failed;
    let peak = fleet.peak_mib.map_or("null".into(), |m| format!("{m:.1}"));
    if o.json {
        println!(
            "{{\"replicas\":{},\"datacenters\":{},\"delay_ms\":{},\"store\":\"{store}\",\"hsm\":\"SoftHsm\",\"ksf_memory_kib\":{},\"ksf_iterations\":{},\"ksf_ms\":{ksf_ms:.3},\"users\":{},\"cores\":{cores},\"bound_threads\":{},\"wrong_ratio\":{},\"peak_mib\":{peak},{},{},\"failed\":{failed}}}",
            o.replicas,
            o.datacenters,
            o.delay_ms,
            ksf.memory_kib,
            ksf.iterations,
            fleet_w.threads,
            bound_w.threads,
            o.wrong_ratio,
            rows[0].json(),
            rows[1].json(),
        );
    } else {
        println!(
            "vault fleet: {} replicas in {} datacenters ({}), {store}: {hsm}; {} ms one way between datacenters; Argon2id {} KiB x {} ({ksf_ms:.2} ms CPU per evaluation); {} concurrent users; bound on {cores} cores ({} threads); peak RSS {peak} MiB",
            o.replicas,
            o.datacenters,
            fleet.layout,
            o.delay_ms,
            ksf.memory_kib,
            ksf.iterations,
            fleet_w.threads,
            bound_w.threads,
        );
        println!("| phase | ops | wrong code | failed | s | ops/s | p50 ms | p99 ms | CPU s | bound ops/s | fleet/bound | servers' ceiling ops/s |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
        let opt = |v: Option<f64>, digits: usize| v.map_or("?".into(), |v| format!("{v:.digits$}"));
        for r in &rows {
            println!(
                "| {} | {} | {} | {} | {:.2} | {:.1} | {:.1} | {:.1} | {} | {:.0} | {:.3} | {} |",
                r.name,
                r.ops,
                r.wrong,
                r.failed,
                r.seconds,
                r.per_s,
                r.p50,
                r.p99,
                opt(r.cpu_s, 2),
                r.bound,
                r.per_s / r.bound.max(1e-9),
                opt(r.servers_ceiling, 0),
            );
        }
        println!();
        println!("where the time goes, ms per operation (fleet run: CPU of the users' threads outside and inside their service calls, of every other thread; wall; bound run: CPU):");
        println!("| phase | client CPU | service CPU | fleet threads' CPU | wall in service calls | wall of the op | network floor | bound: server CPU | apply CPU | client CPU | fleet steps |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        for r in &rows {
            println!(
                "| {} | {:.3} | {:.3} | {} | {:.2} | {:.2} | {:.1} | {:.3} | {:.3} | {:.3} | {:.2} |",
                r.name,
                r.client_cpu,
                r.service_cpu,
                opt(r.fleet_cpu, 3),
                r.call_wall,
                r.op_wall,
                r.network_floor,
                r.bound_server_cpu,
                r.bound_apply_cpu,
                r.bound_client_cpu,
                r.steps,
            );
        }
        println!(
            "without the fleet (clients and local services on {} threads): registrations/s={:.1} ({} CPU s) recoveries/s={:.1} ({} CPU s)",
            bound_w.threads,
            rows[0].local_per_s,
            opt(rows[0].local_cpu_s, 2),
            rows[1].local_per_s,
            opt(rows[1].local_cpu_s, 2),
        );
    }
    for p in [&fleet.reg, &fleet.rec, &b_reg, &b_rec] {
        if let Some(f) = &p.first_failure {
            eprintln!("{} operations failed; the first: {f}", p.failed);
        }
    }
    println!(
        "registrations/s={:.1} recoveries/s={:.1}",
        rows[0].per_s, rows[1].per_s
    );
    if failed > 0 {
        return Err(format!("{failed} operations failed"));
    }
    Ok(())
}
