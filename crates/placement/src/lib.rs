//! Placement: the counter ledger, the fenced lease and least-loaded assignment of new
//! connections. See ARCHITECTURE.md for the reading order: `config` → `server` → `assign` →
//! `ledger` → `report_stream` → `lease` + `reaper` → `admin`.

pub mod admin;
pub mod app_token;
pub mod assign;
pub mod config;
pub mod lease;
pub mod ledger;
pub mod rate_limit;
pub mod reaper;
pub mod report_stream;
pub mod server;
