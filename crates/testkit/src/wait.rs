//! Waiting for a condition, the one way: [`eventually`] (and [`eventually_blocking`] for the
//! synchronous process API).
//!
//! A test never sleeps to let something happen; it polls for what it expects until a deadline,
//! which is a correctness bound or a guard against hanging, never a performance measurement.
//! Every error of a check means "not yet", except one made with [`give_up`]: a state the wait
//! can never leave (the process being waited for exited), which ends the wait at once.

use std::fmt::Display;
use std::time::{Duration, Instant};

use anyhow::Context;

/// How long [`eventually`] waits between two checks.
pub const POLL: Duration = Duration::from_millis(50);

/// Runs `check` until it returns `Ok`, and returns that value; an `Err` means "not yet" and
/// should say what was seen instead. At `timeout` the last `Err` is returned, with the context
/// "`what`: not within `timeout`"; an error made with [`give_up`] is returned at once. The
/// first check runs at once; checks are [`POLL`] apart.
///
/// `check` is an async closure, so it may borrow what it polls mutably (a client, a driver)
/// from one check to the next.
pub async fn eventually<T>(
    what: impl Display,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return Ok(value),
            Err(e) => stop_or_retry(e, &what, timeout, deadline)?,
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`eventually`] for synchronous code (the process API, which blocks on purpose: see the crate
/// docs): the same contract, the thread sleeping [`POLL`] between checks.
pub fn eventually_blocking<T>(
    what: impl Display,
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return Ok(value),
            Err(e) => stop_or_retry(e, &what, timeout, deadline)?,
        }
        std::thread::sleep(POLL);
    }
}

/// Marks `e` as final: a check returning it ends the wait at once with `e`.
pub fn give_up(e: anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(GiveUp(e))
}

/// The wrapper [`give_up`] puts around a final error.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
struct GiveUp(anyhow::Error);

/// `Ok` to check again, or the error that ends the wait.
fn stop_or_retry(
    e: anyhow::Error,
    what: &impl Display,
    timeout: Duration,
    deadline: Instant,
) -> anyhow::Result<()> {
    let e = match e.downcast::<GiveUp>() {
        Ok(GiveUp(e)) => return Err(e).with_context(|| format!("{what}: gave up")),
        Err(e) => e,
    };
    if Instant::now() >= deadline {
        return Err(e).with_context(|| format!("{what}: not within {timeout:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn returns_the_first_success() -> anyhow::Result<()> {
        let tries = AtomicU32::new(0);
        let got = eventually("three tries", Duration::from_secs(5), async || {
            let n = tries.fetch_add(1, Ordering::SeqCst) + 1;
            anyhow::ensure!(n >= 3, "only {n} tries");
            Ok(n)
        })
        .await?;
        assert_eq!(got, 3);
        Ok(())
    }

    #[tokio::test]
    async fn a_check_may_borrow_its_state_mutably() -> anyhow::Result<()> {
        let mut seen = Vec::new();
        eventually("three values", Duration::from_secs(5), async || {
            seen.push(seen.len());
            anyhow::ensure!(seen.len() >= 3, "{seen:?}");
            Ok(())
        })
        .await?;
        assert_eq!(seen, [0, 1, 2]);
        Ok(())
    }

    #[tokio::test]
    async fn fails_at_the_deadline_with_the_last_state() {
        let err = eventually("never", Duration::from_millis(120), async || {
            Err::<(), _>(anyhow::anyhow!("still nothing"))
        })
        .await
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
        assert!(err.contains("never: not within"), "{err}");
        assert!(err.contains("still nothing"), "{err}");
    }

    #[test]
    fn giving_up_ends_the_wait_at_once() {
        let started = Instant::now();
        let tries = AtomicU32::new(0);
        let err = eventually_blocking("a dead process", Duration::from_secs(30), || {
            tries.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(give_up(anyhow::anyhow!("it exited")))
        })
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
        assert_eq!(tries.load(Ordering::SeqCst), 1);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(err.contains("a dead process: gave up"), "{err}");
        assert!(err.contains("it exited"), "{err}");
    }
}
