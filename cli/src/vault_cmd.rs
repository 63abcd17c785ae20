//! `vaultfleet vault register|recover`: a user's device against a running
//! fleet, over the network, trusting only the pins of a client file (the
//! witness's and the operator's keys; `vaultfleet testbed up` writes one).
//!
//! The recovery code is read from standard input (one line), never from the
//! command line, where other users of the machine could read it. `register`
//! draws a fresh 32-byte backup key from the OS and prints it once; `recover`
//! prints the recovered key.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use vaultfleet_net::open::OpenClientConfig;
use vaultfleet_node::testbed::ClientFile;
use vaultfleet_vault::{
    BundleTrust, RemoteVaultEndpoint, ServerTrust, VaultClient, VaultClientConfig,
    VaultClientError, VaultEndpoint,
};
use zeroize::Zeroizing;

/// A user's calls to the vault.
#[derive(Debug, Subcommand)]
pub enum VaultCommand {
    /// Register a user: reads the recovery code from stdin, prints the new
    /// backup key.
    Register(Register),
    /// Recover a user's backup key: reads the recovery code from stdin.
    Recover(Recover),
}

/// Where the fleet is and whom to trust.
#[derive(Debug, Args)]
pub struct Common {
    /// The client file (pins and vault addresses), e.g. TESTBED/client.toml.
    #[arg(long)]
    client: PathBuf,
    /// The user's id.
    #[arg(long)]
    user: String,
}

/// `vault register`.
#[derive(Debug, Args)]
pub struct Register {
    #[command(flatten)]
    common: Common,
    /// Wrong codes allowed before the key is erased.
    #[arg(long, default_value_t = 10)]
    max_attempts: u32,
}

/// `vault recover`.
#[derive(Debug, Args)]
pub struct Recover {
    #[command(flatten)]
    common: Common,
}

/// Why a vault call failed before the fleet answered it.
#[derive(Debug, thiserror::Error)]
enum VaultCmdError {
    #[error("the client file")]
    ClientFile(#[from] vaultfleet_node::testbed::ClientFileError),
    #[error("replica {id}'s endpoint")]
    Endpoint {
        id: u64,
        #[source]
        source: vaultfleet_vault::RemoteVaultError,
    },
    #[error("reading the recovery code from standard input")]
    Stdin(#[source] std::io::Error),
    #[error("no recovery code on standard input (one line)")]
    NoCode,
    #[error("drawing the backup key from the OS")]
    Random(#[source] std::io::Error),
    #[error("the vault")]
    Vault(#[from] VaultClientError),
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn client(path: &Path) -> Result<VaultClient, VaultCmdError> {
    let file = ClientFile::load(path)?;
    let verifier = file.verifier(path)?;
    let clock: Arc<dyn Fn() -> u64 + Send + Sync> = Arc::new(now);
    let trust = BundleTrust::new(verifier.clone(), Arc::clone(&clock));
    let endpoints = file
        .endpoint
        .iter()
        .map(|e| {
            RemoteVaultEndpoint::new(
                e.id,
                e.address,
                &file.fleet_id,
                ServerTrust::Bundles(Arc::clone(&trust)),
                OpenClientConfig::default(),
            )
            .map(|endpoint| Arc::new(endpoint) as Arc<dyn VaultEndpoint>)
            .map_err(|source| VaultCmdError::Endpoint { id: e.id, source })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(VaultClient::with_verifier(
        endpoints,
        file.group,
        verifier,
        clock,
        VaultClientConfig {
            backoff: Duration::from_millis(200),
            rounds: 10,
            ..VaultClientConfig::default()
        },
    )?)
}

/// The longest recovery code read (bytes, the newline included).
const CODE_BYTES_MAX: usize = 1024;

fn read_code() -> Result<Zeroizing<String>, VaultCmdError> {
    use std::io::Read as _;
    // Room for the whole line up front: a buffer that grew would leave the
    // code's first bytes in freed, unwiped memory.
    let mut line = Zeroizing::new(String::with_capacity(CODE_BYTES_MAX + 1));
    std::io::stdin()
        .lock()
        .take(CODE_BYTES_MAX as u64)
        .read_line(&mut line)
        .map_err(VaultCmdError::Stdin)?;
    let code = Zeroizing::new(line.trim_end_matches(['\n', '\r']).to_string());
    if code.is_empty() {
        return Err(VaultCmdError::NoCode);
    }
    Ok(code)
}

fn hex(bytes: &[u8]) -> Zeroizing<String> {
    use std::fmt::Write as _;
    Zeroizing::new(bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    }))
}

fn register(a: &Register) -> Result<(), VaultCmdError> {
    let client = client(&a.common.client)?;
    let code = read_code()?;
    let mut key = Zeroizing::new([0u8; 32]);
    {
        use std::io::Read as _;
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(key.as_mut_slice()))
            .map_err(VaultCmdError::Random)?;
    }
    let generation = client.register_with_limit(
        a.common.user.as_bytes(),
        code.as_bytes(),
        key.as_slice(),
        a.max_attempts,
    )?;
    println!(
        "registered {} (generation {generation}, {} wrong codes allowed)",
        a.common.user, a.max_attempts
    );
    println!("backup key {}", hex(key.as_slice()).as_str());
    Ok(())
}

fn recover(a: &Recover) -> Result<(), VaultCmdError> {
    let client = client(&a.common.client)?;
    let code = read_code()?;
    let key = client.recover(a.common.user.as_bytes(), code.as_bytes())?;
    println!("backup key {}", hex(&key).as_str());
    Ok(())
}

/// Runs a `vaultfleet vault` command: exit 0 done, 1 the fleet refused (a
/// wrong code, a locked or unknown user), 2 any other error.
pub fn main(command: &VaultCommand) -> ExitCode {
    crate::init_tracing();
    let result = match command {
        VaultCommand::Register(a) => register(a),
        VaultCommand::Recover(a) => recover(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(VaultCmdError::Vault(e @ VaultClientError::WrongCode { .. })) => {
            eprintln!("refused: {e}");
            ExitCode::from(1)
        }
        Err(VaultCmdError::Vault(
            e @ (VaultClientError::Locked
            | VaultClientError::NotRegistered
            | VaultClientError::AlreadyRegistered),
        )) => {
            eprintln!("refused: {e}");
            ExitCode::from(1)
        }
        Err(e) => {
            crate::print_error(&e);
            ExitCode::from(2)
        }
    }
}
