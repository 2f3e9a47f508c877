//! File-descriptor headroom: how many descriptors this process holds against its
//! `RLIMIT_NOFILE`, so the gateway can call itself full *before* `accept` starts failing.
//!
//! Every socket costs one descriptor, and so does every connection still being set up (a
//! pending HTTP request, a polling request). A gateway whose `accept` fails with `EMFILE`
//! reports no more connections than before, so by connection count alone placement would keep
//! assigning it clients it cannot take. The reporter samples [`Headroom`] before each report:
//! when fewer than the reserve (`--fd-reserve`) descriptors are left, the report says `full`
//! (placement assigns it nothing, as at `--max-connections`) and `/readyz` answers 503; the
//! next report with room again clears both.
//!
//! Linux only (`/proc/self/fd`, `/proc/self/limits`); elsewhere, or when `/proc` cannot be
//! read, the headroom is unknown and the gateway never calls itself full on this ground
//! (except when reading fails for want of a descriptor: that is full).
//! Since Linux 6.2 the size `stat` gives `/proc/self/fd` is the number of descriptors held, so
//! sampling costs two small reads whatever the connection count. Older kernels give 0 there,
//! and the entries are counted instead: one directory read of as many entries as descriptors
//! held, once per report interval (with 1,000 sockets that was a fifth of a gateway's
//! instructions while it delivered 1,000 events a second, measured with callgrind).

use crate::metrics;

/// Descriptors held and the soft limit, as read now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headroom {
    pub held: u64,
    /// The soft `RLIMIT_NOFILE`; `None` when unlimited.
    pub limit: Option<u64>,
}

impl Headroom {
    /// Reads this process's figures and sets the two gauges.
    pub fn sample() -> std::io::Result<Headroom> {
        let held = match std::fs::metadata("/proc/self/fd")?.len() {
            0 => std::fs::read_dir("/proc/self/fd")?.count() as u64,
            counted => counted,
        };
        let limits = std::fs::read_to_string("/proc/self/limits")?;
        let headroom = Headroom {
            held,
            limit: soft_nofile(&limits).ok_or_else(|| {
                std::io::Error::other("no `Max open files` row in /proc/self/limits")
            })?,
        };
        ::metrics::gauge!(metrics::FILE_DESCRIPTORS).set(held as f64);
        if let Some(limit) = headroom.limit {
            ::metrics::gauge!(metrics::FILE_DESCRIPTOR_LIMIT).set(limit as f64);
        }
        Ok(headroom)
    }

    /// Whether this process has fewer than `reserve` descriptors left: sampled now, and true
    /// when sampling itself fails for want of a descriptor. Unknown (no `/proc`) is not full.
    pub fn is_full(reserve: u64) -> bool {
        match Headroom::sample() {
            Ok(headroom) => headroom.full(reserve),
            Err(e) => {
                tracing::debug!(error = %e, "file-descriptor headroom unknown");
                switchyard_common::http_server::out_of_descriptors(&e)
            }
        }
    }

    /// True when fewer than `reserve` descriptors are left under the limit.
    pub fn full(&self, reserve: u64) -> bool {
        self.limit
            .is_some_and(|limit| self.held.saturating_add(reserve) >= limit)
    }
}

/// The soft limit of the `Max open files` row of `/proc/<pid>/limits`: `Some(None)` when
/// unlimited, `None` when the row is missing or unreadable.
fn soft_nofile(limits: &str) -> Option<Option<u64>> {
    let row = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = row
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?;
    if soft == "unlimited" {
        return Some(None);
    }
    soft.parse().ok().map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: &str = "Limit                     Soft Limit           Hard Limit           Units     \n\
Max cpu time              unlimited            unlimited            seconds   \n\
Max open files            1024                 524288               files     \n";

    #[test]
    fn the_soft_open_files_limit_is_read_from_proc_limits() {
        assert_eq!(soft_nofile(LIMITS), Some(Some(1024)));
        assert_eq!(
            soft_nofile(
                "Max open files            unlimited            unlimited            files"
            ),
            Some(None)
        );
        assert_eq!(
            soft_nofile("Max cpu time unlimited unlimited seconds"),
            None
        );
    }

    #[test]
    fn full_once_fewer_than_the_reserve_are_left() {
        let h = |held| Headroom {
            held,
            limit: Some(256),
        };
        assert!(!h(191).full(64));
        assert!(h(192).full(64));
        assert!(h(300).full(64));
        let unlimited = Headroom {
            held: 1 << 40,
            limit: None,
        };
        assert!(!unlimited.full(64));
    }

    #[test]
    fn this_process_can_be_sampled() {
        let h = Headroom::sample();
        assert!(h.as_ref().is_ok_and(|h| h.held > 0), "{h:?}");
    }
}
