//! `vaultfleet-bench`: replication throughput of an in-process fleet, with the
//! knobs of openraft's benchmark so the two can be run side by side.
//!
//! ```text
//! cargo run --release -p vaultfleet-bench -- -c 256 -n 200k -m 3 --store mem
//! ```
//!
//! Every operation is a `KvStore` put committed by a majority and applied (through
//! the threaded runtime: `Node`, `Client`, the in-process `ChannelNetwork`). The last
//! line is `ops/s=<n> ns/op=<n> p50_us=<n> p99_us=<n>` for scripts.
// A benchmark measures wall-clock time on real threads.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vaultfleet::replica::ReplicaConfig;
use vaultfleet::runtime::{Client, ClientConfig, Node, NodeConfig};
use vaultfleet::{
    ChannelNetwork, FleetConfig, KvStore, LogStore, MemLog, MemberSpec, Replica, Sealed,
    SealedConfig, SledLog, SoftHsm,
};

const USAGE: &str =
    "usage: vaultfleet-bench [-c CLIENTS] [-n OPERATIONS] [-m MEMBERS] [-b IN_FLIGHT]
                        [--payload BYTES] [--store mem|sled|sealed-sled|sealed-pkcs11] [--json]
  -c  concurrent clients, each with its own session (default 256)
  -n  total operations (default 100k)
  -m  members: 1, 3, 5 or 7 (default 3)
  -b  commands each client keeps in flight (default 1)
  --payload  bytes per put (default 64)
  --store    mem (durable at once, as openraft's benchmark store), sled (fsync per
             Ready cycle), sealed-sled (sled sealed by a soft HSM), sealed-pkcs11
             (sled sealed by SoftHSM2 over PKCS#11)
sizes take suffixes: 2m, 4k";

struct Options {
    clients: u64,
    ops: u64,
    members: u64,
    in_flight: u64,
    payload: usize,
    store: String,
    json: bool,
}

fn size(v: &str) -> Result<u64, String> {
    let (num, mult) = match v.chars().last() {
        Some('k' | 'K') => (&v[..v.len() - 1], 1_000),
        Some('m' | 'M') => (&v[..v.len() - 1], 1_000_000),
        _ => (v, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{v:?} is not a size (examples: 256, 4k, 2m)"))
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        clients: 256,
        ops: 100_000,
        members: 3,
        in_flight: 1,
        payload: 64,
        store: "mem".into(),
        json: false,
    };
    let mut i = 0;
    while i < args.len() {
        let value = || {
            args.get(i + 1)
                .ok_or_else(|| format!("{} needs a value\n{USAGE}", args[i]))
        };
        match args[i].as_str() {
            "-c" => o.clients = size(value()?)?,
            "-n" => o.ops = size(value()?)?,
            "-m" => o.members = size(value()?)?,
            "-b" => o.in_flight = size(value()?)?,
            "--payload" => o.payload = size(value()?)? as usize,
            "--store" => o.store = value()?.clone(),
            "--json" => {
                o.json = true;
                i += 1;
                continue;
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown option {other:?}\n{USAGE}")),
        }
        i += 2;
    }
    if !matches!(o.members, 1 | 3 | 5 | 7) {
        return Err("-m must be 1, 3, 5 or 7".into());
    }
    if o.clients == 0 || o.ops == 0 || o.in_flight == 0 {
        return Err("-c, -n and -b must be at least 1".into());
    }
    if !matches!(
        o.store.as_str(),
        "mem" | "sled" | "sealed-sled" | "sealed-pkcs11"
    ) {
        return Err(format!(
            "--store {:?}: expected mem, sled, sealed-sled or sealed-pkcs11",
            o.store
        ));
    }
    Ok(o)
}

fn spawn<L: LogStore>(
    mut log: L,
    id: u64,
    fleet: &FleetConfig,
    net: &ChannelNetwork,
) -> Result<Node, String> {
    Replica::bootstrap(&mut log, &KvStore::new(), fleet).map_err(|e| e.to_string())?;
    Node::spawn(
        NodeConfig::new(ReplicaConfig::new(id)),
        log,
        KvStore::new(),
        net.transport(id),
    )
    .map_err(|e| e.to_string())
}

/// CPU seconds of this process (user + system), from /proc.
fn cpu_seconds() -> Option<f64> {
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

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match parse(&args).and_then(|o| run(&o)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

fn run(o: &Options) -> Result<(), String> {
    let dcs = ["dc-a", "dc-b", "dc-c"];
    let fleet = FleetConfig::new(
        (1..=o.members)
            .map(|id| MemberSpec::voter(id, dcs[(id as usize - 1) % 3]))
            .collect(),
    );
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let net = ChannelNetwork::new();
    #[cfg(feature = "pkcs11")]
    let mut token = None;
    let mut nodes = Vec::new();
    for id in 1..=o.members {
        let path = dir.path().join(format!("replica-{id}"));
        let node = match o.store.as_str() {
            "mem" => spawn(MemLog::new(), id, &fleet, &net)?,
            "sled" => spawn(
                SledLog::open(&path).map_err(|e| e.to_string())?,
                id,
                &fleet,
                &net,
            )?,
            "sealed-sled" => {
                let log = Sealed::open_sled(&path, SoftHsm::new(), SealedConfig::new(1, id))
                    .map_err(|e| e.to_string())?;
                spawn(log, id, &fleet, &net)?
            }
            _ => {
                #[cfg(feature = "pkcs11")]
                {
                    if token.is_none() {
                        token = Some(vaultfleet_bench::softhsm2::throwaway()?);
                    }
                    let hsm = token.as_ref().map(|(h, _)| h.clone()).ok_or("no token")?;
                    let log = Sealed::open_sled(&path, hsm, SealedConfig::new(1, id))
                        .map_err(|e| e.to_string())?;
                    spawn(log, id, &fleet, &net)?
                }
                #[cfg(not(feature = "pkcs11"))]
                return Err("--store sealed-pkcs11 needs the pkcs11 feature".into());
            }
        };
        net.register(id, Arc::new(node.handle()));
        nodes.push(node);
    }
    let handles: Vec<_> = nodes.iter().map(Node::handle).collect();
    let cfg = ClientConfig {
        timeout: Duration::from_secs(60),
        ..ClientConfig::default()
    };
    let clients: Vec<Client> = (0..o.clients)
        .map(|_| Client::connect(handles.clone(), cfg).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    // Warm up: a leader, sessions registered.
    clients[0]
        .propose(KvStore::put("warm-up", "x"))
        .map_err(|e| format!("the fleet did not come up: {e}"))?;

    let done = Arc::new(AtomicU64::new(0));
    let per_client = o.ops.div_ceil(o.clients);
    let total = per_client * o.clients;
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    let progress = std::io::stderr().is_terminal() && !o.json;
    let reporter = progress.then(|| {
        let done = Arc::clone(&done);
        std::thread::spawn(move || loop {
            let n = done.load(Ordering::Relaxed);
            let filled = (n * 30 / total) as usize;
            eprint!(
                "\r[{}{}] {n}/{total}",
                "#".repeat(filled),
                " ".repeat(30 - filled.min(30))
            );
            let _ = std::io::stderr().flush();
            if n >= total {
                eprintln!();
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        })
    });
    let payload = vec![b'v'; o.payload];
    let workers: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(c, client)| {
            let done = Arc::clone(&done);
            let payload = payload.clone();
            let in_flight = o.in_flight;
            std::thread::spawn(move || -> Result<Vec<u32>, String> {
                let mut latencies = Vec::with_capacity(per_client as usize);
                let mut i = 0;
                while i < per_client {
                    let batch = in_flight.min(per_client - i);
                    let t = Instant::now();
                    let pending: Vec<_> = (0..batch)
                        .map(|k| {
                            client.propose_async(KvStore::put(
                                format!("{c}/{}", i + k),
                                payload.clone(),
                            ))
                        })
                        .collect();
                    for p in pending {
                        p.wait().map_err(|e| e.to_string())?;
                    }
                    let us = t.elapsed().as_micros().min(u32::MAX as u128) as u32;
                    latencies.extend(std::iter::repeat_n(us, batch as usize));
                    done.fetch_add(batch, Ordering::Relaxed);
                    i += batch;
                }
                Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(total as usize);
    for w in workers {
        latencies.extend(w.join().map_err(|_| "a client thread panicked")??);
    }
    let wall = start.elapsed().as_secs_f64();
    if let Some(r) = reporter {
        done.store(total, Ordering::Relaxed);
        let _ = r.join();
    }
    let cpu = cpu_seconds().zip(cpu0).map(|(a, b)| a - b);
    let peak = peak_mib();
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize];
    let ops_s = total as f64 / wall;
    let ns_op = wall * 1e9 / total as f64;
    let (p50, p99, p999) = (pct(0.50), pct(0.99), pct(0.999));
    if o.json {
        println!(
            "{{\"store\":\"{}\",\"members\":{},\"clients\":{},\"in_flight\":{},\"payload\":{},\"operations\":{total},\"seconds\":{wall:.3},\"ops_per_s\":{ops_s:.0},\"ns_per_op\":{ns_op:.0},\"p50_us\":{p50},\"p99_us\":{p99},\"p999_us\":{p999},\"cpu_s\":{},\"peak_mib\":{}}}",
            o.store, o.members, o.clients, o.in_flight, o.payload,
            cpu.map_or("null".into(), |c| format!("{c:.2}")),
            peak.map_or("null".into(), |m| format!("{m:.1}")),
        );
    } else {
        println!("| store | members | clients | in flight | payload | ops | ops/s | ns/op | p50 µs | p99 µs | p999 µs | CPU s | peak MiB |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        println!(
            "| {} | {} | {} | {} | {} | {total} | {ops_s:.0} | {ns_op:.0} | {p50} | {p99} | {p999} | {} | {} |",
            o.store, o.members, o.clients, o.in_flight, o.payload,
            cpu.map_or("?".into(), |c| format!("{c:.2}")),
            peak.map_or("?".into(), |m| format!("{m:.1}")),
        );
    }
    for node in nodes {
        let _ = node.shutdown();
    }
    println!("ops/s={ops_s:.0} ns/op={ns_op:.0} p50_us={p50} p99_us={p99}");
    Ok(())
}
