//! Waiting for a condition, the one way: [`eventually`].
//!
//! A test never sleeps to let something happen; it polls for what it expects until a deadline,
//! which is a correctness bound or a guard against hanging, never a performance measurement.

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Context;

/// How long [`eventually`] waits between two checks.
pub const POLL: Duration = Duration::from_millis(50);

/// Runs `check` until it returns `Ok`, and returns that value; an `Err` means "not yet" and
/// should say what was seen instead. At `timeout` the last `Err` is returned, with the context
/// "`what` not within `timeout`". The first check runs at once; checks are [`POLL`] apart.
pub async fn eventually<T, F, Fut>(
    what: impl Display,
    timeout: Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return Ok(value),
            Err(e) if Instant::now() >= deadline => {
                return Err(e).with_context(|| format!("{what}: not within {timeout:?}"));
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn returns_the_first_success() -> anyhow::Result<()> {
        let tries = AtomicU32::new(0);
        let got = eventually("three tries", Duration::from_secs(5), || async {
            let n = tries.fetch_add(1, Ordering::SeqCst) + 1;
            anyhow::ensure!(n >= 3, "only {n} tries");
            Ok(n)
        })
        .await?;
        assert_eq!(got, 3);
        Ok(())
    }

    #[tokio::test]
    async fn fails_at_the_deadline_with_the_last_state() {
        let err = eventually("never", Duration::from_millis(120), || async {
            Err::<(), _>(anyhow::anyhow!("still nothing"))
        })
        .await
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
        assert!(err.contains("never: not within"), "{err}");
        assert!(err.contains("still nothing"), "{err}");
    }
}
