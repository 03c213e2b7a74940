//! Reconnection back-off: a pure sub-machine with a seeded generator.

use core::time::Duration;

use crate::time::duration_micros;

/// SplitMix64: a tiny, well-studied generator, fully determined by its seed.
///
/// Written out here rather than taken from a crate so the core's output for a given seed can never change
/// under a dependency upgrade.
#[derive(Clone, Debug)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..=max` (multiply-shift; bias below 2^-64 per draw).
    pub(crate) fn up_to(&mut self, max: u64) -> u64 {
        let span = u128::from(max) + 1;
        ((u128::from(self.next_u64()) * span) >> 64) as u64
    }
}

/// Exponential back-off with optional full jitter.
///
/// Attempt `n` (counting from 0 after the last reset) waits `min(max, initial * multiplier^n)`; with jitter,
/// a uniform draw from `0..=` that value ("full jitter").
#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    multiplier: u32,
    jitter: bool,
    rng: SplitMix64,
    /// The un-jittered ceiling of the next delay.
    current: Duration,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration, multiplier: u32, jitter: bool, seed: u64) -> Self {
        let current = initial.min(max);
        Backoff { initial, max, multiplier, jitter, rng: SplitMix64::new(seed), current, attempt: 0 }
    }

    /// The un-jittered ceiling for the next attempt.
    #[cfg(test)]
    pub(crate) fn ceiling(&self) -> Duration {
        self.current
    }

    /// The delay before the next attempt; advances the attempt counter.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let ceiling = self.current;
        self.current = self.current.saturating_mul(self.multiplier).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        if self.jitter { Duration::from_micros(self.rng.up_to(duration_micros(ceiling))) } else { ceiling }
    }

    /// Jump straight to the cap (used after an authentication failure: retrying fast cannot help).
    pub(crate) fn saturate(&mut self) {
        self.current = self.max;
    }

    /// Back to the initial delay (after a connection stayed healthy for the stability window).
    pub(crate) fn reset(&mut self) {
        self.current = self.initial.min(self.max);
        self.attempt = 0;
    }

    /// Attempts made since the last reset.
    pub(crate) fn attempt(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(d: Duration) -> f64 {
        d.as_secs_f64()
    }

    #[test]
    fn without_jitter_reproduces_the_original_sequence() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60), 2, false, 7);
        let got: Vec<f64> = (0..9).map(|_| secs(b.next_delay())).collect();
        assert_eq!(got, [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_secs(1));
    }

    #[test]
    fn full_jitter_stays_within_the_ceiling_and_spreads() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60), 2, true, 42);
        let mut seen = Vec::new();
        for n in 0..200 {
            let ceiling = b.ceiling();
            let d = b.next_delay();
            assert!(d <= ceiling, "attempt {n}: {d:?} > {ceiling:?}");
            seen.push(d);
        }
        // The tail sits at the cap: draws must actually vary over most of 0..=60 s.
        let tail = &seen[10..];
        let min = tail.iter().min().copied().unwrap_or_default();
        let max = tail.iter().max().copied().unwrap_or_default();
        assert!(min < Duration::from_secs(10) && max > Duration::from_secs(50), "{min:?}..{max:?}");
    }

    #[test]
    fn same_seed_same_delays_other_seed_other_delays() {
        let run = |seed| {
            let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60), 2, true, seed);
            (0..20).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn saturate_jumps_to_the_cap_and_multiplier_one_is_constant() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60), 2, false, 0);
        b.saturate();
        assert_eq!(b.next_delay(), Duration::from_secs(60));
        let mut flat = Backoff::new(Duration::from_secs(3), Duration::from_secs(60), 1, false, 0);
        assert_eq!((0..5).map(|_| flat.next_delay()).collect::<Vec<_>>(), [Duration::from_secs(3); 5]);
        assert_eq!(flat.attempt(), 5);
    }

    #[test]
    fn the_generator_is_splitmix64_exactly() {
        // The reference implementation's first outputs for seed 0: pinned so a seed means the same delays in
        // every version.
        let mut r = SplitMix64::new(0);
        assert_eq!(
            [r.next_u64(), r.next_u64(), r.next_u64()],
            [0xe220a8397b1dcdaf, 0x6e789e6aa1b965f4, 0x06c45d188009454f]
        );
        let mut r = SplitMix64::new(42);
        assert_eq!(
            [r.up_to(1_000_000), r.up_to(1_000_000), r.up_to(1_000_000), r.up_to(1_000_000)],
            [741565, 159910, 278601, 344191]
        );
    }

    #[test]
    fn up_to_covers_its_bounds() {
        let mut r = SplitMix64::new(0);
        assert!((0..1000).all(|_| r.up_to(0) == 0));
        let draws: Vec<u64> = (0..1000).map(|_| r.up_to(1)).collect();
        assert!(draws.contains(&0) && draws.contains(&1));
        // The widest span reaches both halves of the range.
        let wide: Vec<u64> = (0..1000).map(|_| r.up_to(u64::MAX)).collect();
        assert!(wide.iter().any(|&x| x > u64::MAX / 2) && wide.iter().any(|&x| x < u64::MAX / 2));
    }
}
