//! `etcd-bench -c CLIENTS -n OPERATIONS [--payload BYTES] [--endpoints a,b,c]`:
//! CLIENTS concurrent clients put OPERATIONS keys into etcd (each put is durable
//! on a majority before etcd answers), and the figures print in the same form as
//! `vaultfleet-bench`: a table row, then `ops/s=<n> ns/op=<n> p50_us=<n> p99_us=<n>`.

use std::time::Instant;

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

fn size(v: &str) -> u64 {
    let (num, mult) = match v.chars().last() {
        Some('k' | 'K') => (&v[..v.len() - 1], 1_000),
        Some('m' | 'M') => (&v[..v.len() - 1], 1_000_000),
        _ => (v, 1),
    };
    num.parse::<u64>().expect("a size such as 256, 4k, 2m") * mult
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let clients = size(&arg(&args, "-c", "256"));
    let ops = size(&arg(&args, "-n", "100k"));
    let payload = size(&arg(&args, "--payload", "64")) as usize;
    let endpoints: Vec<String> = arg(&args, "--endpoints", "127.0.0.1:2379")
        .split(',')
        .map(str::to_string)
        .collect();
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
    println!("ops/s={ops_s:.0} ns/op={ns_op:.0} p50_us={} p99_us={}", pct(0.5), pct(0.99));
    Ok(())
}
