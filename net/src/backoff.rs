//! Reconnect delays: exponential from `backoff_min` to `backoff_max`, with "equal
//! jitter" (a delay drawn uniformly from the upper half of the current step), so
//! processes that lost a peer together do not redial it in lock step.

use std::time::Duration;

use rand::Rng;

/// Doublings after which the step stays at its maximum (bounds the shift).
const DOUBLINGS_MAX: u32 = 30;

/// The reconnect delay of one peer link.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        debug_assert!(min <= max);
        Self {
            min,
            max,
            attempt: 0,
        }
    }

    /// The step before jitter: `min * 2^attempt`, at most `max`.
    pub fn step(&self) -> Duration {
        self.min
            .saturating_mul(1u32 << self.attempt.min(DOUBLINGS_MAX))
            .min(self.max)
    }

    /// The next delay, drawn with `rng` from `[step / 2, step]`; moves to the
    /// next step.
    pub fn next_with(&mut self, rng: &mut impl Rng) -> Duration {
        let step = self.step();
        self.attempt = self.attempt.saturating_add(1).min(DOUBLINGS_MAX);
        let nanos = u64::try_from(step.as_nanos()).unwrap_or(u64::MAX);
        let delay = Duration::from_nanos(rng.gen_range(nanos / 2..=nanos));
        debug_assert!(delay <= self.max);
        delay
    }

    /// The next delay, jittered from the operating system's random source (the
    /// only randomness this crate draws outside Noise; it never reaches a
    /// simulated run).
    #[allow(clippy::disallowed_types)]
    pub fn next(&mut self) -> Duration {
        self.next_with(&mut rand::rngs::OsRng)
    }

    /// Back to the first step (after a connection that lived a while).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn delays_grow_to_the_bound_with_jitter_and_reset() {
        let min = Duration::from_millis(50);
        let max = Duration::from_secs(2);
        let mut b = Backoff::new(min, max);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut steps = Vec::new();
        for _ in 0..40 {
            let step = b.step();
            let d = b.next_with(&mut rng);
            assert!(
                d >= step / 2 && d <= step,
                "{d:?} outside [{step:?}/2, {step:?}]"
            );
            steps.push(step);
        }
        assert_eq!(steps[0], min);
        assert_eq!(steps[1], min * 2);
        assert_eq!(*steps.last().unwrap(), max);
        assert!(steps.windows(2).all(|w| w[0] <= w[1]));
        let draws: std::collections::BTreeSet<Duration> =
            (0..20).map(|_| b.next_with(&mut rng)).collect();
        assert!(draws.len() > 10, "jitter spreads the delays: {draws:?}");
        b.reset();
        assert_eq!(b.step(), min);
    }
}
