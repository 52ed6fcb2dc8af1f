//! Backoff, and waiting that gives way to shutdown.
//!
//! Why not `backon` (already in the lock file through lapin): every wait here must end early
//! on shutdown, an outage must never count toward giving up, and the retry-queue delay is
//! computed by a pure function from an injected jitter; a small exponential step and a
//! `select!` against the stop token say that more plainly than adapting a retry policy type.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Exponential backoff with "equal jitter": half the step is fixed, half random, so a retry
/// never fires at once and replicas that failed together spread out.
pub fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    backoff_with(attempt, base, cap, rand::random::<f64>())
}

/// [`backoff`] with the random part given (`jitter` in `0..=1`), for pure callers and tests.
pub fn backoff_with(attempt: u32, base: Duration, cap: Duration, jitter: f64) -> Duration {
    let step = base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(cap);
    let half = step / 2;
    half + half.mul_f64(jitter.clamp(0.0, 1.0))
}

/// Shutdown came while waiting (for PostgreSQL, typically): leave the deliveries unacked.
#[derive(Debug, thiserror::Error)]
#[error("stopped before the batch could be stored")]
pub struct Stopped;

/// Waits `delay` unless shutdown comes first.
pub async fn sleep_or_stop(delay: Duration, stop: &CancellationToken) -> Result<(), Stopped> {
    tokio::select! {
        _ = tokio::time::sleep(delay) => Ok(()),
        _ = stop.cancelled() => Err(Stopped),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempt in 1..30 {
            let d = backoff(attempt, Duration::from_millis(100), Duration::from_secs(5));
            let step = (Duration::from_millis(100) * 2u32.pow(attempt.min(20) - 1))
                .min(Duration::from_secs(5));
            assert!(d >= step / 2 && d <= step, "attempt {attempt}: {d:?}");
        }
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(60);
        assert_eq!(backoff_with(1, base, cap, 0.0), Duration::from_millis(500));
        assert_eq!(backoff_with(1, base, cap, 7.0), base, "jitter is clamped");
    }
}
