//! Proptest settings shared by the property tests (`#[path]`-included by each).

use proptest::test_runner::{Config as ProptestConfig, RngSeed};

/// The seed of every property run unless `PROPTEST_RNG_SEED` names another: the suite does
/// the same on every run, CI included. Explore with `PROPTEST_RNG_SEED=$RANDOM cargo test`.
const SEED: u64 = 0x5eed_e1b0;

/// `cases` cases from the fixed seed. No failure persistence: a failure prints its shrunk
/// input (and the seed), and each bug found becomes a named regression test next to the
/// code it fixes.
pub fn config(cases: u32) -> ProptestConfig {
    let seed = std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(SEED);
    ProptestConfig {
        cases,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(seed),
        ..ProptestConfig::default()
    }
}
