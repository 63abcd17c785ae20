//! `etcd-bench -c CLIENTS -n OPERATIONS [--payload BYTES] [--endpoints a,b,c]`:
//! CLIENTS concurrent clients put OPERATIONS keys into etcd (each put is durable
//! on a majority before etcd answers), and the figures print in the same form as
//! `vaultfleet-bench`: a table row, then `ops/s=<n> ns/op=<n> p50_us=<n> p99_us=<n>`.

// A benchmark measures wall-clock time; the workspace's clippy.toml forbids it
// elsewhere (the core must stay deterministic).
#![allow(clippy::disallowed_methods)]

use std::time::Instant;

use clap::Parser;

/// Durable puts against an etcd cluster, printed like `vaultfleet-bench`.
#[derive(Parser, Debug)]
#[command(name = "etcd-bench", version)]
struct Args {
    /// Concurrent clients (a size: 256, 4k).
    #[arg(short = 'c', default_value = "256", value_parser = size)]
    clients: u64,
    /// Operations in all (a size: 100k, 2m).
    #[arg(short = 'n', default_value = "100k", value_parser = size)]
    ops: u64,
    /// Bytes per value.
    #[arg(long, default_value = "64", value_parser = size)]
    payload: u64,
    /// The cluster's client endpoints, comma-separated (loopback only in this repository).
    #[arg(long, default_value = "127.0.0.1:2379", value_delimiter = ',')]
    endpoints: Vec<String>,
}

/// A count with an optional `k` (thousand) or `m` (million) suffix.
fn size(v: &str) -> Result<u64, String> {
    let (num, mult) = match v.chars().last() {
        Some('k' | 'K') => (&v[..v.len() - 1], 1_000),
        Some('m' | 'M') => (&v[..v.len() - 1], 1_000_000),
        _ => (v, 1),
    };
    let n = num
        .parse::<u64>()
        .map_err(|_| format!("{v:?} is not a size such as 256, 4k or 2m"))?;
    n.checked_mul(mult)
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{v:?} must be between 1 and 2^64-1"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let Args {
        clients,
        ops,
        payload,
        endpoints,
    } = Args::parse();
    let payload = usize::try_from(payload)?;
    let per_client = ops.div_ceil(clients);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let endpoints = endpoints.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = etcd_client::Client::connect(&endpoints, None).await?;
            let value = vec![b'v'; payload];
            let mut latencies = Vec::with_capacity(per_client as usize);
            for i in 0..per_client {
                let t = Instant::now();
                client.put(format!("{c}/{i}"), value.clone(), None).await?;
                latencies.push(t.elapsed().as_micros() as u64);
            }
            Ok::<_, etcd_client::Error>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let wall = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize];
    let total = latencies.len() as f64;
    let (ops_s, ns_op) = (total / wall, wall * 1e9 / total);
    println!(
        "| etcd | 3 | {clients} | {payload} | {} | {ops_s:.0} | {ns_op:.0} | {} | {} | {} |",
        latencies.len(),
        pct(0.5),
        pct(0.99),
        pct(0.999)
    );
    println!(
        "ops/s={ops_s:.0} ns/op={ns_op:.0} p50_us={} p99_us={}",
        pct(0.5),
        pct(0.99)
    );
    Ok(())
}
