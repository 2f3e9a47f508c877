//! Checks a service's `/metrics` the way Prometheus and an operator read it.
//!
//! [`check`] runs `promtool check metrics` (Debian's `prometheus` package; `cargo xtask test`
//! installs it in CI) on a scrape, then holds the service's metric table (each crate's
//! `metrics::ALL`: every name it can emit, its type and HELP text) and the scrape against the
//! tables of `docs/operations.md`:
//!
//! - every metric of the table has a row there, with the same type, and the row's meaning starts
//!   with its HELP text (markdown backticks aside), so the page and `# HELP` say the same;
//! - every label a scraped series carries is named in the row's labels column;
//! - every `switchyard_<service>_` metric in the scrape is in the table, with that HELP text.
//!
//! Metrics that the traffic before the scrape did not touch are still checked against the page,
//! from the table.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, bail, ensure};

use crate::process::workspace_root;

/// One metric of a service's table: name, type (`counter`, `gauge`, `histogram`) and HELP text.
pub type Documented<'a> = (&'a str, &'a str, &'a str);

/// A row of `docs/operations.md`'s metric tables.
#[derive(Debug)]
struct Row {
    kind: String,
    labels: String,
    meaning: String,
}

/// `promtool check metrics` on `scrape`, then the checks of the module docs for the metrics of
/// `service` (`gateway`, `placement`, `relay`) listed in `table`.
pub fn check(service: &str, scrape: &str, table: &[Documented<'_>]) -> anyhow::Result<()> {
    promtool(scrape)?;
    let page_path = workspace_root()?.join("docs").join("operations.md");
    let page = std::fs::read_to_string(&page_path)
        .with_context(|| format!("reading {}", page_path.display()))?;
    let rows = rows(&page);
    let prefix = format!("switchyard_{service}_");
    let mut problems = Vec::new();
    let mut known = BTreeMap::new();
    for &(name, kind, help) in table {
        if !name.starts_with(&prefix) {
            problems.push(format!("{name}: not named switchyard_{service}_…"));
        }
        if known.insert(name, help).is_some() {
            problems.push(format!("{name}: listed twice in the table"));
        }
        let Some(row) = rows.get(name) else {
            problems.push(format!("{name}: no row in docs/operations.md"));
            continue;
        };
        if row.kind != kind {
            problems.push(format!(
                "{name}: a {kind} in metrics.rs, a {} in docs/operations.md",
                row.kind
            ));
        }
        let help = help.trim_end_matches('.');
        if !row.meaning.starts_with(help) {
            problems.push(format!(
                "{name}: docs/operations.md says {:?}, which does not start with its HELP text {help:?}",
                row.meaning
            ));
        }
    }
    let scraped = parse(scrape);
    for (name, help) in &scraped.help {
        if !name.starts_with(&prefix) {
            continue;
        }
        match known.get(name.as_str()) {
            None => problems.push(format!("{name}: scraped, but not in the service's table")),
            Some(&expected) if expected != help => problems.push(format!(
                "{name}: HELP {help:?} on /metrics, {expected:?} in the table"
            )),
            Some(_) => {}
        }
    }
    for (name, labels) in &scraped.labels {
        let Some(row) = rows.get(name.as_str()) else {
            continue; // reported above
        };
        for label in labels {
            if !row.labels.contains(&format!("`{label}`")) {
                problems.push(format!(
                    "{name}: label `{label}` is not named in docs/operations.md"
                ));
            }
        }
    }
    if !problems.is_empty() {
        bail!(
            "/metrics of {service} and docs/operations.md disagree:\n  {}",
            problems.join("\n  ")
        );
    }
    Ok(())
}

/// `promtool check metrics` with `scrape` on its standard input; fails with what it printed.
fn promtool(scrape: &str) -> anyhow::Result<()> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context(
            "running promtool (Debian's `prometheus` package: `sudo apt-get install -y \
             prometheus`; `CI=true cargo xtask test` installs it)",
        )?;
    child
        .stdin
        .take()
        .context("promtool's stdin")?
        .write_all(scrape.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{}{}\n--- the scrape ---\n{scrape}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The metric rows of every table of the page: `| `name` | type | labels | meaning |`, by name,
/// backticks removed from the meaning.
fn rows(page: &str) -> BTreeMap<&str, Row> {
    let mut rows = BTreeMap::new();
    for line in page.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let [_, name, kind, labels, meaning, ..] = cells.as_slice() else {
            continue;
        };
        let Some(name) = name
            .strip_prefix('`')
            .and_then(|n| n.strip_suffix('`'))
            .filter(|n| n.starts_with("switchyard_"))
        else {
            continue;
        };
        rows.insert(
            name,
            Row {
                kind: (*kind).to_owned(),
                labels: (*labels).to_owned(),
                meaning: meaning.replace('`', ""),
            },
        );
    }
    rows
}

/// What a scrape says: the HELP text of each metric and the label names of its series.
#[derive(Debug, Default)]
struct Scraped {
    help: BTreeMap<String, String>,
    labels: BTreeMap<String, BTreeSet<String>>,
}

fn parse(scrape: &str) -> Scraped {
    let mut scraped = Scraped::default();
    let mut types = BTreeMap::new();
    for line in scrape.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            scraped.help.insert(name.to_owned(), unescape(help));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            types.insert(name.to_owned(), kind.to_owned());
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let series = line.split_once(' ').map_or(line, |(s, _)| s);
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            // A summary's `_sum` and `_count` series belong to the metric its TYPE line named.
            let name = ["_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|base| types.get(*base).is_some_and(|k| k == "summary"))
                })
                .unwrap_or(name);
            let keys = scraped.labels.entry(name.to_owned()).or_default();
            for pair in split_labels(labels) {
                if let Some((key, _)) = pair.split_once('=')
                    && key != "quantile"
                {
                    keys.insert(key.to_owned());
                }
            }
        }
    }
    scraped
}

/// `a="x",b="y,z"` → `a="x"`, `b="y,z"` (commas inside quoted values kept).
fn split_labels(labels: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in labels.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&labels[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < labels.len() {
        out.push(&labels[start..]);
    }
    out
}

/// A HELP text as written in the exposition format (`\\` and `\n` escaped), read back.
fn unescape(help: &str) -> String {
    help.replace("\\n", "\n").replace("\\\\", "\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "\
| metric | type | labels | meaning |
|---|---|---|---|
| `switchyard_x_things_total` | counter | `kind`: `a`, `b` | Things done, by kind. More words. |
| `switchyard_x_level` | gauge | | How high `it` is. |
";

    #[test]
    fn the_page_and_a_scrape_are_read() {
        let rows = rows(PAGE);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows["switchyard_x_level"].meaning, "How high it is.");
        let scraped = parse(
            "# HELP switchyard_x_things_total Things done, by kind.\n\
             # TYPE switchyard_x_things_total counter\n\
             switchyard_x_things_total{kind=\"a,b\",node=\"n\"} 3\n\
             # TYPE switchyard_x_wait summary\n\
             switchyard_x_wait{quantile=\"0.5\"} 1\n\
             switchyard_x_wait_sum{op=\"o\"} 1\n\
             switchyard_x_wait_count 1\n",
        );
        assert_eq!(
            scraped.help["switchyard_x_things_total"],
            "Things done, by kind."
        );
        let keys = |n: &str| scraped.labels[n].iter().cloned().collect::<Vec<_>>();
        assert_eq!(keys("switchyard_x_things_total"), ["kind", "node"]);
        assert_eq!(keys("switchyard_x_wait"), ["op"]);
        assert!(!scraped.labels.contains_key("switchyard_x_wait_sum"));
    }
}
