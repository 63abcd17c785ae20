//! `vaultfleet-snapshot-bench`: what a `BackupVault` snapshot costs at vault
//! scale, today's inline path beside the streamed one (steps 1-2 of
//! docs/proposals/streamed-snapshots.md).
//!
//! ```text
//! cargo run --release -p vaultfleet-bench --bin vaultfleet-snapshot-bench -- --users 1m
//! ```
//!
//! Users are inserted directly (`BackupVault::insert_user_for_bench`: a record
//! of real sizes, no OPAQUE work), in random key order. Each phase runs in a
//! child process of its own (this binary with `--phase`), so its peak RSS is
//! its own: the child builds the vault, resets its high-water mark
//! (`/proc/self/clear_refs`), runs the phase and reports `VmHWM`. Phases:
//!
//! * `snapshot`: today's `snapshot()` (one protobuf, whole, in memory);
//! * `stream`: `snapshot_to` into a byte-counting sink;
//! * `view`: `snapshot_view()`, the replica thread's share of a streamed
//!   capture; then the view is written on another thread while the main
//!   thread applies `--consumes` consume commands (copy-on-write), timed
//!   against the same commands with no view alive;
//! * `restore` / `restore-from`: the snapshot is written to a temporary file
//!   and the vault dropped first; `restore` reads the file into memory and
//!   decodes it whole (today), `restore-from` parses the file as a stream.
//!
//! Runs alternate the phases (run 1 does every phase, then run 2, ...), and
//! the table gives medians. The load average is printed before and after.
//! Not run in CI.
// A benchmark measures wall-clock time and spawns processes.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::process::{Command, ExitCode};
use std::time::Instant;

use clap::Parser;

use vaultfleet_bench::sizing::{count, load, mix, status_mib, user_id};

use vaultfleet::StateMachine;
use vaultfleet_vault::wire::{vault_command, VaultCommand, VaultConsume, VaultRequestId};
use vaultfleet_vault::BackupVault;

/// The phases, in the order each run takes them.
const PHASES: [&str; 5] = ["snapshot", "stream", "view", "restore", "restore-from"];

/// What a `BackupVault` snapshot costs at 1M users and more: inline against
/// streamed. Sizes take suffixes: 1m, 10k.
#[derive(Debug, Parser)]
#[command(name = "vaultfleet-snapshot-bench", version)]
struct Options {
    /// Users in the vault.
    #[arg(long, value_name = "N", default_value = "1m", value_parser = count)]
    users: u64,
    /// Runs of every phase; the table gives medians.
    #[arg(long, value_name = "R", default_value_t = 3)]
    runs: u32,
    /// Consume commands applied while a view is alive (phase `view`).
    #[arg(long, value_name = "C", default_value = "10k", value_parser = count)]
    consumes: u64,
    /// Run one phase in this process (what the parent runs its children with).
    #[arg(long, value_parser = PHASES)]
    phase: Option<String>,
}

fn build(users: u64) -> BackupVault {
    let mut v = BackupVault::new();
    for i in 0..users {
        assert!(v.insert_user_for_bench(user_id(i).as_bytes(), i));
    }
    v
}

/// A `Write` that counts and drops.
#[derive(Default)]
struct Counting(u64);

impl Write for Counting {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Resets `VmHWM` to the current RSS (Linux >= 4.0); false if it could not.
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn consume_command(user: u64, sequence: u64) -> Vec<u8> {
    let mut request = VaultRequestId::new();
    request.client = 1;
    request.sequence = sequence;
    let mut consume = VaultConsume::new();
    consume.request_digest = mix(sequence).to_be_bytes().repeat(4);
    let mut c = VaultCommand::new();
    c.user = user_id(user).into_bytes();
    c.request = Some(request).into();
    c.op = Some(vault_command::Op::Consume(consume));
    vaultfleet_vault::wire::encode_bounded(&c)
}

/// Applies `n` consumes to random users from log index `first`: seconds in
/// all, and the slowest single `apply`.
fn apply_consumes(v: &mut BackupVault, users: u64, n: u64, first: u64, salt: u64) -> (f64, f64) {
    // Encoded before the clock starts: only `apply` is timed.
    let commands: Vec<Vec<u8>> = (0..n)
        .map(|k| consume_command(mix(k ^ salt) % users, first + k))
        .collect();
    let start = Instant::now();
    let mut slowest = 0f64;
    for (k, c) in commands.iter().enumerate() {
        let one = Instant::now();
        v.apply(first + k as u64, c);
        slowest = slowest.max(one.elapsed().as_secs_f64());
    }
    (start.elapsed().as_secs_f64(), slowest)
}

/// One phase in this process; prints `key=value` pairs on one line.
fn run_phase(phase: &str, o: &Options) -> Result<(), String> {
    let start = Instant::now();
    let mut v = build(o.users);
    let build_s = start.elapsed().as_secs_f64();
    let mut out = format!("phase={phase} build_s={build_s:.3}");
    let mut line = |k: &str, val: String| {
        out.push(' ');
        out.push_str(k);
        out.push('=');
        out.push_str(&val);
    };
    let prepare_rss = status_mib("VmRSS:");
    match phase {
        "snapshot" | "stream" | "view" => {
            line("state_rss_mib", format!("{prepare_rss:.0}"));
            if phase == "view" {
                // Consumes to warm up (untimed), then as many timed with no
                // view alive (below, as many while one is written out).
                apply_consumes(&mut v, o.users, o.consumes, o.users + 1, 3);
                let first = o.users + 1 + o.consumes;
                let (plain, slowest) = apply_consumes(&mut v, o.users, o.consumes, first, 1);
                line("consumes_plain_s", format!("{plain:.4}"));
                line("consume_max_plain_ms", format!("{:.3}", slowest * 1e3));
            }
            let reset = reset_peak();
            let start = Instant::now();
            match phase {
                "snapshot" => {
                    let bytes = v.snapshot().map_err(|e| e.to_string())?;
                    line("secs", format!("{:.4}", start.elapsed().as_secs_f64()));
                    line("bytes", bytes.len().to_string());
                }
                "stream" => {
                    let mut sink = Counting::default();
                    v.snapshot_to(&mut sink).map_err(|e| e.to_string())?;
                    line("secs", format!("{:.4}", start.elapsed().as_secs_f64()));
                    line("bytes", sink.0.to_string());
                }
                _ => {
                    let view = v.snapshot_view().map_err(|e| e.to_string())?;
                    line("secs", format!("{:.6}", start.elapsed().as_secs_f64()));
                    // As many consumes as before the view, now while another
                    // thread writes the view out: copy-on-write.
                    let writer = std::thread::spawn(move || {
                        let start = Instant::now();
                        let mut sink = Counting::default();
                        view.snapshot_to(&mut sink)
                            .map(|()| (sink.0, start.elapsed()))
                    });
                    let first = o.users + 1 + 2 * o.consumes;
                    let (cow, slowest) = apply_consumes(&mut v, o.users, o.consumes, first, 2);
                    let (bytes, write) = writer
                        .join()
                        .map_err(|_| "the view's writer panicked".to_string())?
                        .map_err(|e| e.to_string())?;
                    line("consumes_with_view_s", format!("{cow:.4}"));
                    line("consume_max_with_view_ms", format!("{:.3}", slowest * 1e3));
                    line("view_write_s", format!("{:.4}", write.as_secs_f64()));
                    line("bytes", bytes.to_string());
                }
            }
            line("peak_mib", format!("{:.0}", status_mib("VmHWM:")));
            line("peak_reset", reset.to_string());
        }
        _ => {
            let file = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
            {
                let mut w = BufWriter::new(file.reopen().map_err(|e| e.to_string())?);
                v.snapshot_to(&mut w).map_err(|e| e.to_string())?;
                w.flush().map_err(|e| e.to_string())?;
            }
            let expected = v.len();
            drop(v);
            line("empty_rss_mib", format!("{:.0}", status_mib("VmRSS:")));
            let reset = reset_peak();
            let mut back = BackupVault::new();
            let mut input = File::open(file.path()).map_err(|e| e.to_string())?;
            let file_bytes = input.metadata().map_err(|e| e.to_string())?.len();
            if phase == "restore" {
                let start = Instant::now();
                let mut bytes = Vec::new();
                input.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
                let read = start.elapsed().as_secs_f64();
                back.restore(&bytes).map_err(|e| e.to_string())?;
                line("secs", format!("{:.4}", start.elapsed().as_secs_f64()));
                line("read_s", format!("{read:.4}"));
                line("bytes", bytes.len().to_string());
            } else {
                let start = Instant::now();
                back.restore_from(&mut BufReader::new(input))
                    .map_err(|e| e.to_string())?;
                line("secs", format!("{:.4}", start.elapsed().as_secs_f64()));
                line("bytes", file_bytes.to_string());
            }
            if back.len() != expected {
                return Err(format!("restored {} users of {expected}", back.len()));
            }
            line("peak_mib", format!("{:.0}", status_mib("VmHWM:")));
            line("peak_reset", reset.to_string());
        }
    }
    println!("{out}");
    Ok(())
}

fn field(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.retain(|x| !x.is_nan());
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() -> ExitCode {
    let o = Options::parse();
    if let Some(phase) = &o.phase {
        return match run_phase(phase, &o) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("phase {phase} failed: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let Ok(exe) = std::env::current_exe() else {
        eprintln!("cannot find this program to run its phases");
        return ExitCode::FAILURE;
    };
    println!(
        "users={} runs={} consumes={} load_before={}",
        o.users,
        o.runs,
        o.consumes,
        load()
    );
    let mut lines: Vec<(&str, String)> = Vec::new();
    for run in 1..=o.runs {
        for phase in PHASES {
            let output = Command::new(&exe)
                .args(["--users", &o.users.to_string()])
                .args(["--consumes", &o.consumes.to_string()])
                .args(["--phase", phase])
                .output();
            match output {
                Ok(out) if out.status.success() => {
                    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
                    println!("run={run} {text}");
                    lines.push((phase, text));
                }
                Ok(out) => {
                    eprintln!(
                        "phase {phase} failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    return ExitCode::FAILURE;
                }
                Err(e) => {
                    eprintln!("cannot run phase {phase}: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    let med = |phase: &str, key: &str| {
        median(
            lines
                .iter()
                .filter(|(p, _)| *p == phase)
                .filter_map(|(_, l)| field(l, key))
                .collect(),
        )
    };
    println!("medians of {} runs, load_after={}", o.runs, load());
    println!(
        "build (insert {} users): {:.2} s, state RSS {:.0} MiB",
        o.users,
        med("snapshot", "build_s"),
        med("snapshot", "state_rss_mib")
    );
    for (phase, what) in [
        ("snapshot", "snapshot() whole"),
        ("stream", "snapshot_to(counting sink)"),
        ("view", "snapshot_view() take"),
        ("restore", "read file + restore()"),
        ("restore-from", "restore_from(file)"),
    ] {
        println!(
            "{what:<28} {:>10.4} s  bytes {:>12.0}  peak RSS {:>6.0} MiB",
            med(phase, "secs"),
            med(phase, "bytes"),
            med(phase, "peak_mib"),
        );
    }
    println!(
        "{} consumes: {:.4} s (slowest {:.3} ms) with no view, {:.4} s (slowest {:.3} ms) while a view is written ({:.4} s) on another thread",
        o.consumes,
        med("view", "consumes_plain_s"),
        med("view", "consume_max_plain_ms"),
        med("view", "consumes_with_view_s"),
        med("view", "consume_max_with_view_ms"),
        med("view", "view_write_s"),
    );
    println!(
        "snapshot_s={:.4} stream_s={:.4} view_s={:.6} restore_s={:.4} restore_from_s={:.4}",
        med("snapshot", "secs"),
        med("stream", "secs"),
        med("view", "secs"),
        med("restore", "secs"),
        med("restore-from", "secs"),
    );
    ExitCode::SUCCESS
}
