//! The modelled network: endpoints in datacenters, one link per directed
//! (from, to) pair, and every fault currently in force. Pure data and
//! decisions, no I/O: the connection tasks ask it, at each step, what to do
//! with the next bytes ([`Topology::flow`]) or with a new connection
//! ([`Topology::admission`]).
//!
//! Faults of the network are kept per directed *path* between endpoints
//! (bytes travelling from A to B), not per link: a connection on link (A, B)
//! carries A→B bytes one way and B→A bytes back, so latency or loss from A to
//! B applies whichever side dialled. Link modes ([`LinkMode`]) are about the
//! listener's far end and apply to one link only.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::sync::Arc;

use crate::error::NetemError;
use crate::faults::{CutMode, Latency, LinkMode};
use crate::stats::LinkCounters;

/// Index of an endpoint in [`Topology::endpoints`].
pub(crate) type EndpointIx = usize;
/// Index of a link in [`Topology::links`].
pub(crate) type LinkIx = usize;

/// Which way bytes travel on a link's connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    /// From the dialling endpoint to the target.
    FromTo,
    /// From the target back to the dialler.
    ToFrom,
}

pub(crate) struct Endpoint {
    pub(crate) name: String,
    pub(crate) datacenter: String,
    pub(crate) target: Option<SocketAddr>,
}

pub(crate) struct LinkState {
    pub(crate) from: EndpointIx,
    pub(crate) to: EndpointIx,
    pub(crate) addr: SocketAddr,
    pub(crate) mode: LinkMode,
    /// Bumped by an on-demand reset: connections opened under an older epoch
    /// are reset.
    pub(crate) reset_epoch: u64,
    pub(crate) counters: Arc<LinkCounters>,
}

/// Faults on the bytes travelling from one endpoint to another.
#[derive(Clone, Copy, Debug, Default)]
struct PathFaults {
    /// Overrides any datacenter latency when set.
    latency: Option<Latency>,
    bandwidth_bytes_per_sec: Option<NonZeroU64>,
    /// One-way loss: the direction stalls (see [`CutMode::BlackHole`]).
    loss: bool,
    reset_chance_ppm: u32,
}

/// How the next bytes of one direction are to be treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flow {
    Forward(ForwardParams),
    /// Read nothing, write nothing, until something changes.
    Stall,
    /// Read and throw away; write nothing.
    Discard,
    /// Abort the connection with RST at both ends.
    Reset,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ForwardParams {
    pub(crate) latency: Latency,
    pub(crate) bandwidth_bytes_per_sec: Option<NonZeroU64>,
    pub(crate) reset_chance_ppm: u32,
}

/// What to do with a connection just accepted (or still held).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    Connect(SocketAddr),
    /// Hold it unread until something changes.
    Hold,
    /// Read and discard for its whole life (a black hole).
    Sink,
    /// Reset it at once.
    Refuse,
}

/// Parts per million: the unit of [`Proxy::set_reset_chance`](crate::Proxy::set_reset_chance).
pub(crate) const PPM_MAX: u32 = 1_000_000;

#[derive(Default)]
pub(crate) struct Topology {
    pub(crate) endpoints: Vec<Endpoint>,
    by_name: BTreeMap<String, EndpointIx>,
    pub(crate) links: Vec<LinkState>,
    link_by_pair: BTreeMap<(EndpointIx, EndpointIx), LinkIx>,
    paths: BTreeMap<(EndpointIx, EndpointIx), PathFaults>,
    latency_intra_dc: Option<Latency>,
    latency_inter_dc: Option<Latency>,
    /// Keyed by the ordered pair of datacenter names (a→b).
    latency_dc_pair: BTreeMap<(String, String), Latency>,
    /// Keyed by the endpoint pair with the smaller index first.
    partitions: BTreeMap<(EndpointIx, EndpointIx), CutMode>,
    isolated: BTreeMap<EndpointIx, CutMode>,
    dc_cuts: BTreeMap<String, CutMode>,
}

fn unordered(a: EndpointIx, b: EndpointIx) -> (EndpointIx, EndpointIx) {
    (a.min(b), a.max(b))
}

impl Topology {
    pub(crate) fn add_endpoint(
        &mut self,
        name: &str,
        datacenter: &str,
        target: Option<SocketAddr>,
    ) -> Result<EndpointIx, NetemError> {
        if self.by_name.contains_key(name) {
            return Err(NetemError::DuplicateEndpoint(name.to_owned()));
        }
        let ix = self.endpoints.len();
        self.endpoints.push(Endpoint {
            name: name.to_owned(),
            datacenter: datacenter.to_owned(),
            target,
        });
        self.by_name.insert(name.to_owned(), ix);
        Ok(ix)
    }

    pub(crate) fn endpoint(&self, name: &str) -> Result<EndpointIx, NetemError> {
        self.by_name
            .get(name)
            .copied()
            .ok_or_else(|| NetemError::UnknownEndpoint(name.to_owned()))
    }

    /// Two distinct endpoints by name.
    pub(crate) fn pair(&self, a: &str, b: &str) -> Result<(EndpointIx, EndpointIx), NetemError> {
        let (a_ix, b_ix) = (self.endpoint(a)?, self.endpoint(b)?);
        if a_ix == b_ix {
            return Err(NetemError::SameEndpoint(a.to_owned()));
        }
        Ok((a_ix, b_ix))
    }

    pub(crate) fn check_datacenter(&self, dc: &str) -> Result<(), NetemError> {
        if self.endpoints.iter().any(|e| e.datacenter == dc) {
            Ok(())
        } else {
            Err(NetemError::UnknownDatacenter(dc.to_owned()))
        }
    }

    pub(crate) fn link_of(&self, from: EndpointIx, to: EndpointIx) -> Option<LinkIx> {
        self.link_by_pair.get(&(from, to)).copied()
    }

    pub(crate) fn add_link(
        &mut self,
        from: EndpointIx,
        to: EndpointIx,
        addr: SocketAddr,
    ) -> LinkIx {
        debug_assert!(from != to && self.link_of(from, to).is_none());
        let ix = self.links.len();
        self.links.push(LinkState {
            from,
            to,
            addr,
            mode: LinkMode::Forward,
            reset_epoch: 0,
            counters: Arc::new(LinkCounters::default()),
        });
        self.link_by_pair.insert((from, to), ix);
        ix
    }

    fn path_mut(&mut self, src: EndpointIx, dst: EndpointIx) -> &mut PathFaults {
        self.paths.entry((src, dst)).or_default()
    }

    pub(crate) fn set_latency(&mut self, src: EndpointIx, dst: EndpointIx, latency: Latency) {
        self.path_mut(src, dst).latency = Some(latency);
    }

    pub(crate) fn set_bandwidth(
        &mut self,
        src: EndpointIx,
        dst: EndpointIx,
        bytes_per_sec: Option<NonZeroU64>,
    ) {
        self.path_mut(src, dst).bandwidth_bytes_per_sec = bytes_per_sec;
    }

    pub(crate) fn set_loss(&mut self, src: EndpointIx, dst: EndpointIx, loss: bool) {
        self.path_mut(src, dst).loss = loss;
    }

    pub(crate) fn set_reset_chance(&mut self, src: EndpointIx, dst: EndpointIx, ppm: u32) {
        debug_assert!(ppm <= PPM_MAX);
        self.path_mut(src, dst).reset_chance_ppm = ppm;
    }

    pub(crate) fn set_dc_latency(&mut self, intra: Option<Latency>, inter: Option<Latency>) {
        if intra.is_some() {
            self.latency_intra_dc = intra;
        }
        if inter.is_some() {
            self.latency_inter_dc = inter;
        }
    }

    pub(crate) fn set_dc_pair_latency(&mut self, src_dc: &str, dst_dc: &str, latency: Latency) {
        self.latency_dc_pair
            .insert((src_dc.to_owned(), dst_dc.to_owned()), latency);
    }

    pub(crate) fn partition(&mut self, a: EndpointIx, b: EndpointIx, mode: Option<CutMode>) {
        match mode {
            Some(mode) => self.partitions.insert(unordered(a, b), mode),
            None => self.partitions.remove(&unordered(a, b)),
        };
    }

    pub(crate) fn isolate(&mut self, endpoint: EndpointIx, mode: Option<CutMode>) {
        match mode {
            Some(mode) => self.isolated.insert(endpoint, mode),
            None => self.isolated.remove(&endpoint),
        };
    }

    pub(crate) fn cut_dc(&mut self, dc: &str, mode: Option<CutMode>) {
        match mode {
            Some(mode) => self.dc_cuts.insert(dc.to_owned(), mode),
            None => self.dc_cuts.remove(dc),
        };
    }

    /// Every fault off: a perfect network, every link forwarding.
    pub(crate) fn heal(&mut self) {
        self.paths.clear();
        self.latency_intra_dc = None;
        self.latency_inter_dc = None;
        self.latency_dc_pair.clear();
        self.partitions.clear();
        self.isolated.clear();
        self.dc_cuts.clear();
        for link in &mut self.links {
            link.mode = LinkMode::Forward;
        }
    }

    /// The cut between two endpoints, if any: a partition of the pair, either
    /// endpoint isolated, or either's datacenter cut off from the other's.
    /// `Reset` wins over `BlackHole` when several apply.
    pub(crate) fn cut(&self, a: EndpointIx, b: EndpointIx) -> Option<CutMode> {
        let (dc_a, dc_b) = (&self.endpoints[a].datacenter, &self.endpoints[b].datacenter);
        let dc_cut = |dc: &String| {
            if dc_a == dc_b {
                None
            } else {
                self.dc_cuts.get(dc).copied()
            }
        };
        [
            self.partitions.get(&unordered(a, b)).copied(),
            self.isolated.get(&a).copied(),
            self.isolated.get(&b).copied(),
            dc_cut(dc_a),
            dc_cut(dc_b),
        ]
        .into_iter()
        .flatten()
        .max()
    }

    fn latency(&self, src: EndpointIx, dst: EndpointIx) -> Latency {
        if let Some(latency) = self.paths.get(&(src, dst)).and_then(|p| p.latency) {
            return latency;
        }
        let (dc_src, dc_dst) = (
            &self.endpoints[src].datacenter,
            &self.endpoints[dst].datacenter,
        );
        if let Some(latency) = self.latency_dc_pair.get(&(dc_src.clone(), dc_dst.clone())) {
            return *latency;
        }
        let default = if dc_src == dc_dst {
            self.latency_intra_dc
        } else {
            self.latency_inter_dc
        };
        default.unwrap_or(Latency::ZERO)
    }

    /// What the next bytes of `dir` on a connection of `link`, opened under
    /// `epoch`, are to get.
    pub(crate) fn flow(&self, link: LinkIx, epoch: u64, dir: Direction) -> Flow {
        let state = &self.links[link];
        if state.reset_epoch != epoch {
            return Flow::Reset;
        }
        match self.cut(state.from, state.to) {
            Some(CutMode::Reset) => return Flow::Reset,
            Some(CutMode::BlackHole) => return Flow::Stall,
            None => {}
        }
        match (state.mode, dir) {
            (LinkMode::BlackHole, Direction::FromTo) => return Flow::Discard,
            (LinkMode::BlackHole, Direction::ToFrom) | (LinkMode::NeverRead, _) => {
                return Flow::Stall
            }
            (LinkMode::Forward, _) => {}
        }
        let (src, dst) = match dir {
            Direction::FromTo => (state.from, state.to),
            Direction::ToFrom => (state.to, state.from),
        };
        let path = self.paths.get(&(src, dst)).copied().unwrap_or_default();
        if path.loss {
            return Flow::Stall;
        }
        Flow::Forward(ForwardParams {
            latency: self.latency(src, dst),
            bandwidth_bytes_per_sec: path.bandwidth_bytes_per_sec,
            reset_chance_ppm: path.reset_chance_ppm,
        })
    }

    /// What to do with a connection accepted on `link` under `epoch` (asked
    /// again while it is held).
    pub(crate) fn admission(&self, link: LinkIx, epoch: u64) -> Admission {
        let state = &self.links[link];
        let cut = self.cut(state.from, state.to);
        if cut == Some(CutMode::Reset) || state.reset_epoch != epoch {
            return Admission::Refuse;
        }
        match state.mode {
            LinkMode::BlackHole => return Admission::Sink,
            LinkMode::NeverRead => return Admission::Hold,
            LinkMode::Forward => {}
        }
        if cut == Some(CutMode::BlackHole) {
            return Admission::Hold;
        }
        match self.endpoints[state.to].target {
            Some(addr) => Admission::Connect(addr),
            None => Admission::Refuse,
        }
    }

    /// Whether a sink (a connection accepted by a black hole) keeps sinking:
    /// `Discard` while the link stays a black hole, `Reset` otherwise.
    pub(crate) fn sink_flow(&self, link: LinkIx, epoch: u64) -> Flow {
        let state = &self.links[link];
        let reset = state.reset_epoch != epoch
            || self.cut(state.from, state.to) == Some(CutMode::Reset)
            || state.mode != LinkMode::BlackHole;
        if reset {
            Flow::Reset
        } else {
            Flow::Discard
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9))
    }

    /// a and b in dc1, c in dc2; links a→b and a→c.
    fn three() -> (Topology, LinkIx, LinkIx) {
        let mut t = Topology::default();
        let a = t.add_endpoint("a", "dc1", Some(addr())).unwrap();
        let b = t.add_endpoint("b", "dc1", Some(addr())).unwrap();
        let c = t.add_endpoint("c", "dc2", Some(addr())).unwrap();
        let ab = t.add_link(a, b, addr());
        let ac = t.add_link(a, c, addr());
        (t, ab, ac)
    }

    fn latency_of(flow: Flow) -> Latency {
        match flow {
            Flow::Forward(p) => p.latency,
            other => panic!("expected Forward, got {other:?}"),
        }
    }

    #[test]
    fn dc_cut_applies_across_datacenters_only() {
        let (mut t, ab, ac) = three();
        t.cut_dc("dc2", Some(CutMode::Reset));
        assert_eq!(
            t.flow(ab, 0, Direction::FromTo),
            Flow::Forward(ForwardParams {
                latency: Latency::ZERO,
                bandwidth_bytes_per_sec: None,
                reset_chance_ppm: 0
            })
        );
        assert_eq!(t.flow(ac, 0, Direction::ToFrom), Flow::Reset);
        assert_eq!(t.admission(ac, 0), Admission::Refuse);
        t.cut_dc("dc2", None);
        assert_eq!(t.admission(ac, 0), Admission::Connect(addr()));
    }

    #[test]
    fn latency_precedence_path_then_pair_then_intra_inter() {
        let (mut t, ab, ac) = three();
        let ms = |n| Latency::fixed(Duration::from_millis(n));
        t.set_dc_latency(Some(ms(1)), Some(ms(50)));
        assert_eq!(latency_of(t.flow(ab, 0, Direction::FromTo)), ms(1));
        assert_eq!(latency_of(t.flow(ac, 0, Direction::FromTo)), ms(50));
        t.set_dc_pair_latency("dc1", "dc2", ms(70));
        assert_eq!(latency_of(t.flow(ac, 0, Direction::FromTo)), ms(70));
        // The way back (dc2 → dc1) keeps the inter-DC default.
        assert_eq!(latency_of(t.flow(ac, 0, Direction::ToFrom)), ms(50));
        t.set_latency(0, 2, ms(5));
        assert_eq!(latency_of(t.flow(ac, 0, Direction::FromTo)), ms(5));
        t.heal();
        assert_eq!(latency_of(t.flow(ac, 0, Direction::FromTo)), Latency::ZERO);
    }

    #[test]
    fn one_way_loss_stalls_one_direction_whoever_dialled() {
        let (mut t, ab, _) = three();
        // Bytes b → a are lost: on link a→b that is the way back.
        t.set_loss(1, 0, true);
        assert_eq!(t.flow(ab, 0, Direction::ToFrom), Flow::Stall);
        assert!(matches!(t.flow(ab, 0, Direction::FromTo), Flow::Forward(_)));
    }

    #[test]
    fn reset_wins_over_black_hole_and_epochs_reset() {
        let (mut t, ab, _) = three();
        t.partition(0, 1, Some(CutMode::BlackHole));
        assert_eq!(t.flow(ab, 0, Direction::FromTo), Flow::Stall);
        assert_eq!(t.admission(ab, 0), Admission::Hold);
        t.isolate(1, Some(CutMode::Reset));
        assert_eq!(t.flow(ab, 0, Direction::FromTo), Flow::Reset);
        t.heal();
        t.links[ab].reset_epoch += 1;
        assert_eq!(t.flow(ab, 0, Direction::FromTo), Flow::Reset);
        assert!(matches!(t.flow(ab, 1, Direction::FromTo), Flow::Forward(_)));
    }

    #[test]
    fn link_modes() {
        let (mut t, ab, _) = three();
        t.links[ab].mode = LinkMode::BlackHole;
        assert_eq!(t.admission(ab, 0), Admission::Sink);
        assert_eq!(t.flow(ab, 0, Direction::FromTo), Flow::Discard);
        assert_eq!(t.flow(ab, 0, Direction::ToFrom), Flow::Stall);
        assert_eq!(t.sink_flow(ab, 0), Flow::Discard);
        t.links[ab].mode = LinkMode::NeverRead;
        assert_eq!(t.admission(ab, 0), Admission::Hold);
        assert_eq!(t.sink_flow(ab, 0), Flow::Reset);
        t.endpoints[1].target = None;
        t.links[ab].mode = LinkMode::Forward;
        assert_eq!(t.admission(ab, 0), Admission::Refuse);
    }

    #[test]
    fn jitter_stays_within_bounds() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let l = Latency::fixed(Duration::from_millis(10)).with_jitter(Duration::from_millis(5));
        for _ in 0..1000 {
            let d = l.sample(&mut rng);
            assert!(d >= Duration::from_millis(10) && d <= Duration::from_millis(15));
        }
    }
}
