//! `vaultfleet node …`: a replica of the vault fleet as a long-running
//! process.
//!
//! ```text
//! vaultfleet node init --config node.toml
//! vaultfleet node run --config node.toml [--stop-when-stdin-closes]
//! ```
//!
//! `init` opens the node's HSM, creates its sealed transport key if the file
//! is missing (never overwriting one), and prints `transport_key <64 hex>`
//! (for every node's `[[peer]]` table and the fleet artifact) and
//! `response_key <64 hex>` (the replica's vault response key).
//!
//! `run` starts the node; once its vault listener serves it prints exactly one
//! line on stdout, `ready replica=<id> peer=<addr> vault=<addr>
//! metrics=<addr|none>`. SIGTERM or SIGINT (or the end of stdin with
//! `--stop-when-stdin-closes`) stops it gracefully: exit 0 (1 if the replica
//! did not shut down cleanly). SIGHUP re-reads the config file: the
//! `[[peer]]` and `[[admin_key]]` tables, the evidence and the witness log (a
//! new epoch); a refused reload is printed and the node runs on unchanged. A
//! start error is printed with its causes on stderr: exit 2, nothing in the
//! data directory touched.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use vaultfleet_node::config::NodeConfig;
use vaultfleet_node::hsm::{create_transport_key, hex, open_hsm, open_transport_key};
use vaultfleet_node::logging::{self, LogFormat};
use vaultfleet_node::run::{serve_signals, signals, RunningNode};
use vaultfleet_vault::VaultKeys;

/// Run a replica of the vault fleet.
#[derive(Debug, Subcommand)]
pub(crate) enum NodeCommand {
    /// Create the node's sealed transport key (if missing; never overwritten)
    /// and print its public key and the replica's vault response key.
    Init(InitArgs),
    /// Run the node until SIGTERM/SIGINT: the replica, its sealed store, the
    /// vault service and the metrics endpoint.
    Run(RunArgs),
}

/// `node init`'s options.
#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    /// The node's config file.
    #[arg(long)]
    config: PathBuf,
}

/// `node run`'s options.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The node's config file.
    #[arg(long)]
    config: PathBuf,
    /// Stop gracefully, as on SIGTERM, when stdin reaches its end (for a
    /// parent process that supervises the node through a pipe).
    #[arg(long)]
    stop_when_stdin_closes: bool,
}

/// Exit code of a start error.
const EXIT_START: u8 = 2;
/// Exit code of a stop that was not clean.
const EXIT_STOP: u8 = 1;

/// Runs a `node` subcommand.
pub(crate) fn main(command: &NodeCommand) -> ExitCode {
    match command {
        NodeCommand::Init(a) => init(a),
        NodeCommand::Run(a) => run(a),
    }
}

fn init(a: &InitArgs) -> ExitCode {
    logging::init(LogFormat::Text);
    let config = match NodeConfig::load_for_init(&a.config) {
        Ok(c) => c,
        Err(e) => return start_error(&e),
    };
    let hsm = match open_hsm(&config.hsm) {
        Ok(h) => h,
        Err(e) => return start_error(&e),
    };
    let path = &config.transport_key;
    let public = if path.exists() {
        open_transport_key(&hsm, path, &config.fleet_id, config.replica_id)
            .map(|secret| secret.public_key())
    } else {
        create_transport_key(&hsm, path, &config.fleet_id, config.replica_id)
    };
    match public {
        Ok(key) => out(&format!("transport_key {}", hex(key.as_bytes()))),
        Err(e) => return start_error(&e),
    }
    let response = std::fs::read(&config.vault.opaque_setup)
        .map_err(InitError::Setup)
        .and_then(|setup| {
            VaultKeys::open(hsm, &setup, config.group, config.replica_id)
                .and_then(|k| k.response_public_key())
                .map_err(InitError::VaultKeys)
        });
    match response {
        Ok(key) => out(&format!("response_key {}", hex(&key))),
        Err(e) => return start_error(&e),
    }
    ExitCode::SUCCESS
}

/// Why `init` could not print the response key.
#[derive(Debug, thiserror::Error)]
enum InitError {
    #[error("cannot read the sealed OPAQUE setup ([vault] opaque_setup)")]
    Setup(#[source] std::io::Error),
    #[error("the vault's keys do not open under this node's HSM")]
    VaultKeys(#[source] vaultfleet_vault::VaultError),
}

/// Writes `line` to stdout and flushes it. A closed stdout (the reader went
/// away) is not an error of the node's: the daemon runs on without it.
fn out(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
}

/// SIGHUP: re-reads the config file and gives it to the node; a refusal is
/// logged and printed, and the node runs on as it was.
fn reload(node: &RunningNode, path: &std::path::Path) {
    let result = NodeConfig::load(path)
        .map_err(|e| Box::new(e) as Box<dyn std::error::Error>)
        .and_then(|config| node.reload(config).map_err(|e| e.into()));
    match result {
        Ok(epoch) => tracing::info!(epoch, "reload done"),
        Err(e) => {
            tracing::warn!(error = %e, "reload refused; running on as before");
            crate::print_error(e.as_ref());
        }
    }
}

fn start_error(e: &dyn std::error::Error) -> ExitCode {
    crate::print_error(e);
    ExitCode::from(EXIT_START)
}

fn run(a: &RunArgs) -> ExitCode {
    let config = match NodeConfig::load(&a.config) {
        Ok(c) => c,
        Err(e) => {
            logging::init(LogFormat::Text);
            return start_error(&e);
        }
    };
    logging::init(config.log.format);
    let events = match signals(a.stop_when_stdin_closes) {
        Ok(rx) => rx,
        Err(e) => return start_error(&e),
    };
    let node = match RunningNode::start(config) {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(error = %e, "the node did not start");
            return start_error(&e);
        }
    };
    let mut announced = false;
    // SIGHUP reloads on a thread of its own (queued ones collapse into one);
    // a stop during a reload abandons its fetch of the served witness log.
    let cause = serve_signals(
        &node,
        &events,
        |node| reload(node, &a.config),
        |node| {
            if !announced && node.is_ready() {
                announced = true;
                out(&format!(
                    "ready replica={} peer={} vault={} metrics={}",
                    node.replica(),
                    node.peer_addr(),
                    node.vault_addr(),
                    node.metrics_addr()
                        .map_or_else(|| "none".to_string(), |m| m.to_string())
                ));
            }
        },
    );
    tracing::info!(cause = ?cause, "stop requested");
    match node.stop() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            crate::print_error(&e);
            ExitCode::from(EXIT_STOP)
        }
    }
}
