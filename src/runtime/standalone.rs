//! One replica alone in its process, on the runtime of the operator's choice:
//! what the node daemon and the net crate's replica process start. A thin
//! choice between [`Node`] (a thread of its own) and a [`Pool`] of one worker
//! (the default), with one way to reach and stop it.

use std::sync::Arc;

use super::{Node, NodeConfig, NodeHandle, Pool, PoolConfig, PoolError, PooledNode};
use crate::replica::ReplicaError;
use crate::state_machine::StateMachine;
use crate::storage::LogStore;
use crate::transport::Transport;

/// Which runtime drives a [`Standalone`] replica.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum RuntimeKind {
    /// A pool of one worker thread and a timer (the default): a turn that
    /// stalls in its store starts a spare worker.
    #[default]
    Pool,
    /// A thread of its own ([`Node`]).
    Threads,
}

/// A [`Standalone`] replica could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StandaloneError {
    /// The replica did not open on its store, or its thread did not start.
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    /// The pool's threads did not start.
    #[error(transparent)]
    Pool(#[from] PoolError),
}

/// One replica on the runtime a [`RuntimeKind`] picks.
#[derive(Debug)]
pub struct Standalone {
    running: Running,
}

#[derive(Debug)]
enum Running {
    Threads(Node),
    /// The replica is declared first, so a drop stops it (and closes its
    /// store) before its pool's threads end.
    Pool {
        node: PooledNode,
        pool: Pool,
    },
}

impl Standalone {
    /// Starts a replica on `store` with `machine` (bootstrap the store first
    /// for an initial member, as for [`Node::spawn`]). On the pool, its one
    /// worker's timer wakes at the replica's own tick interval.
    pub fn spawn<L: LogStore, S: StateMachine>(
        kind: RuntimeKind,
        cfg: NodeConfig,
        store: L,
        machine: S,
        transport: Arc<dyn Transport>,
    ) -> Result<Standalone, StandaloneError> {
        let running = match kind {
            RuntimeKind::Threads => Running::Threads(Node::spawn(cfg, store, machine, transport)?),
            RuntimeKind::Pool => {
                let pool = Pool::new(PoolConfig {
                    workers: 1,
                    tick_interval: cfg.tick_interval,
                    ..PoolConfig::new()
                })?;
                let node = pool.spawn(cfg, store, machine, transport)?;
                Running::Pool { node, pool }
            }
        };
        Ok(Standalone { running })
    }

    /// A handle to the replica.
    pub fn handle(&self) -> NodeHandle {
        match &self.running {
            Running::Threads(node) => node.handle(),
            Running::Pool { node, .. } => node.handle(),
        }
    }

    /// Which runtime drives it.
    pub fn kind(&self) -> RuntimeKind {
        match &self.running {
            Running::Threads(_) => RuntimeKind::Threads,
            Running::Pool { .. } => RuntimeKind::Pool,
        }
    }

    /// Stops the replica: its pending requests fail with `Stopped`, its store
    /// is closed when this returns, then a pool's threads end.
    pub fn shutdown(self) -> Result<(), ReplicaError> {
        match self.running {
            Running::Threads(node) => node.shutdown(),
            Running::Pool { node, pool } => {
                let stopped = node.shutdown();
                drop(pool);
                stopped
            }
        }
    }
}
