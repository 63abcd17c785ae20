//! The one error type of the proxy's control API: what a test asked for that
//! could not be done. Faults on the forwarded streams are not errors; they are
//! the point, and they show up in the link counters instead.

use std::io;

/// Why a call on a [`Proxy`](crate::Proxy) or [`Link`](crate::Link) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetemError {
    /// No endpoint of that name was added with [`Proxy::add_endpoint`](crate::Proxy::add_endpoint).
    #[error("no endpoint named {0:?}")]
    UnknownEndpoint(String),
    /// An endpoint of that name already exists.
    #[error("an endpoint named {0:?} already exists")]
    DuplicateEndpoint(String),
    /// No endpoint was placed in that datacenter.
    #[error("no endpoint is in datacenter {0:?}")]
    UnknownDatacenter(String),
    /// A link or a partition needs two distinct endpoints.
    #[error("endpoint {0:?} was named on both ends")]
    SameEndpoint(String),
    /// No link from `from` to `to` was opened with [`Proxy::link`](crate::Proxy::link).
    #[error("no link from {from:?} to {to:?} was opened")]
    NoLink {
        /// The dialling endpoint.
        from: String,
        /// The target endpoint.
        to: String,
    },
    /// A [`ProxyConfig`](crate::ProxyConfig) limit is out of range.
    #[error("invalid proxy configuration: {0}")]
    InvalidConfig(&'static str),
    /// A reset chance is a probability in parts per million.
    #[error("a reset chance of {ppm} ppm is above 1000000 ppm")]
    ResetChanceOutOfRange {
        /// The chance asked for.
        ppm: u32,
    },
    /// The seed variable was set but is not a decimal `u64`.
    #[error("{variable} is set but is not a decimal u64")]
    BadSeed {
        /// The environment variable read.
        variable: &'static str,
    },
    /// A link's listener could not be bound on 127.0.0.1.
    #[error("could not bind a proxy listener on 127.0.0.1")]
    Bind(#[source] io::Error),
    /// The proxy's own tokio runtime could not be started.
    #[error("could not start the proxy's runtime")]
    Runtime(#[source] io::Error),
    /// [`Proxy::shutdown`](crate::Proxy::shutdown) was called: nothing new starts.
    #[error("the proxy is shut down")]
    ShutDown,
    /// Some tasks were still running when the shutdown wait ran out; they are
    /// dropped with the runtime all the same.
    #[error("{live} proxy tasks were still running when the shutdown wait ran out")]
    ShutdownTimedOut {
        /// Tasks still counted when the wait ended.
        live: usize,
    },
}
