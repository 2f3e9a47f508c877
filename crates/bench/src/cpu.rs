//! CPU time a set of processes spent, user and system mode apart, from `/proc/<pid>/stat`: what
//! a system under test costs per delivered message, whatever its process layout.
//!
//! Resolution is one clock tick (10 ms on Linux with `CLK_TCK` 100) per process and per mode;
//! the scenarios measure phases of several seconds over many processes, so a figure is good to
//! about `processes × 10 ms / phase length`.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

/// CPU time spent so far (or over a phase), by mode.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuTime {
    pub user: Duration,
    pub system: Duration,
}

impl CpuTime {
    /// User plus system.
    pub fn total(self) -> Duration {
        self.user + self.system
    }

    /// What was spent between `earlier` and `self` (zero where a counter went backwards, which
    /// only a restarted process does).
    pub fn since(self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }
}

impl std::iter::Sum for CpuTime {
    fn sum<I: Iterator<Item = CpuTime>>(iter: I) -> CpuTime {
        iter.fold(CpuTime::default(), |a, b| CpuTime {
            user: a.user + b.user,
            system: a.system + b.system,
        })
    }
}

/// Reads CPU times with the kernel's clock tick, asked once.
#[derive(Debug, Clone, Copy)]
pub struct CpuMeter {
    tick: Duration,
}

impl CpuMeter {
    /// Asks `getconf CLK_TCK` for the tick `/proc` counts in.
    pub fn new() -> anyhow::Result<CpuMeter> {
        let out = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .context("running getconf CLK_TCK")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let hz: u64 = text
            .trim()
            .parse()
            .with_context(|| format!("getconf CLK_TCK printed {text:?}"))?;
        if hz == 0 {
            bail!("getconf CLK_TCK printed 0");
        }
        Ok(CpuMeter {
            tick: Duration::from_nanos(1_000_000_000 / hz),
        })
    }

    /// The CPU time `pid` has spent since it started.
    pub fn of(&self, pid: u32) -> anyhow::Result<CpuTime> {
        let path = format!("/proc/{pid}/stat");
        let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let (user, system) = parse_stat(&stat).with_context(|| format!("parsing {path}"))?;
        Ok(CpuTime {
            user: self.tick * user,
            system: self.tick * system,
        })
    }

    /// The CPU time all of `pids` have spent, summed.
    pub fn sum(&self, pids: &[(String, u32)]) -> anyhow::Result<CpuTime> {
        Ok(self.each(pids)?.into_iter().map(|(_, t)| t).sum())
    }

    /// The CPU time each of `pids` has spent, by name.
    pub fn each(&self, pids: &[(String, u32)]) -> anyhow::Result<Vec<(String, CpuTime)>> {
        pids.iter()
            .map(|(name, pid)| {
                let t = self
                    .of(*pid)
                    .with_context(|| format!("CPU time of {name}"))?;
                Ok((name.clone(), t))
            })
            .collect()
    }
}

/// What each kind of process ([`role`]) spent between two readings of [`CpuMeter::each`] over
/// the same processes, in the same order.
pub fn by_role(
    before: &[(String, CpuTime)],
    after: &[(String, CpuTime)],
) -> BTreeMap<String, CpuTime> {
    let mut roles: BTreeMap<String, CpuTime> = BTreeMap::new();
    for ((name, after), (_, before)) in after.iter().zip(before) {
        let total = roles.entry(role(name).to_owned()).or_default();
        *total = [*total, after.since(*before)].into_iter().sum();
    }
    roles
}

/// The kind of a process named by `Running::processes`: its name without a trailing
/// `-<number>` (`bench-gw-3` → `bench-gw`, `relay-1` → `relay`, `server-0` → `server`).
pub fn role(name: &str) -> &str {
    match name.rsplit_once('-') {
        Some((kind, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => kind,
        _ => name,
    }
}

/// `utime` and `stime` (fields 14 and 15, in ticks) of a `/proc/<pid>/stat` line. The command
/// name (field 2) is in parentheses and may hold spaces or parentheses itself, so fields are
/// counted from the last `)`.
fn parse_stat(stat: &str) -> anyhow::Result<(u32, u32)> {
    let rest = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .context("no command name")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, index 11.
    let field = |i: usize| -> anyhow::Result<u32> {
        let v = fields.get(i).context("too few fields")?;
        let ticks: u64 = v.parse().with_context(|| format!("field {v:?}"))?;
        u32::try_from(ticks).context("tick count out of range")
    };
    Ok((field(11)?, field(12)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_drop_the_instance_number() {
        assert_eq!(role("bench-gw-13"), "bench-gw");
        assert_eq!(role("relay-0"), "relay");
        assert_eq!(role("placement"), "placement");
        assert_eq!(role("redis-server"), "redis-server");
    }

    #[test]
    fn fields_are_counted_from_the_last_parenthesis() -> anyhow::Result<()> {
        let stat = "4242 (node (worker) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    731 129 0 0 20 0 11 0 100 1000 100";
        assert_eq!(parse_stat(stat)?, (731, 129));
        assert!(parse_stat("4242 (short) S 1").is_err());
        Ok(())
    }

    #[test]
    fn this_process_has_spent_some_cpu() -> anyhow::Result<()> {
        let meter = CpuMeter::new()?;
        let before = meter.of(std::process::id())?;
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let spent = meter.of(std::process::id())?.since(before);
        assert!(spent.total() > Duration::ZERO, "{spent:?}");
        Ok(())
    }
}
