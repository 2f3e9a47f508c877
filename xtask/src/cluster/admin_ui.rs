//! The admin UI of `cargo xtask up`: generated credentials for every gateway's `--admin-ui`,
//! and the official dashboard (`@socket.io/admin-ui`'s `ui/dist`, from
//! `clients/socketio-tools`) served on a local port.
//!
//! The password is `SWITCHYARD_ADMIN_UI_PASSWORD` when set, else random; only its bcrypt hash
//! reaches the gateways. Both go to `cluster.json` (`admin_ui`), which only this user reads.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use switchyard_testkit::redis::find_on_path;

use super::secrets::secret_from_env_or_random;
use super::state::{ADMIN_UI_SERVER, AdminUiEntry};
use super::supervise::{Unit, process_info, ready};

/// The admin UI's login for one cluster.
pub struct Login {
    pub username: String,
    pub password: String,
    pub hash: String,
}

/// The namespace the gateways serve the admin UI on (their default).
pub const NAMESPACE: &str = "/admin";

/// The login: the password from the environment or random, and its bcrypt hash (cost 10).
pub fn login() -> anyhow::Result<Login> {
    let password = secret_from_env_or_random("SWITCHYARD_ADMIN_UI_PASSWORD")?;
    // A bcrypt password is at most 72 bytes; the random one is 64 hex characters.
    let hash = bcrypt::hash(&password, 10).context("hashing the admin UI password")?;
    Ok(Login {
        username: "admin".to_owned(),
        password,
        hash,
    })
}

/// The flags every gateway gets.
pub fn gateway_args(login: &Login) -> Vec<String> {
    vec![
        "--admin-ui".to_owned(),
        "--admin-ui-username".to_owned(),
        login.username.clone(),
        "--admin-ui-password-hash".to_owned(),
        login.hash.clone(),
    ]
}

/// Serves the dashboard on `port` (0: not served) with Node, after `npm ci` in
/// clients/socketio-tools when needed. Like the demo page, a convenience: whatever stands in
/// its way is said, and the cluster starts without it.
pub fn start_ui(root: &Path, port: u16) -> Option<Unit> {
    if port == 0 {
        return None;
    }
    let script = root.join(ADMIN_UI_SERVER);
    let Some(node) = find_on_path("node") else {
        eprintln!("admin UI page not served: Node.js is not installed");
        return None;
    };
    if let Err(e) = crate::prereqs::ensure_node_deps(root) {
        eprintln!("admin UI page not served: {e:#}");
        return None;
    }
    let args = vec![
        script.display().to_string(),
        "--host".to_owned(),
        "127.0.0.1".to_owned(),
        "--port".to_owned(),
        port.to_string(),
    ];
    match Unit::program("admin-ui", &node, args, Duration::from_secs(15)) {
        Ok(unit) => Some(unit),
        Err(e) => {
            eprintln!("admin UI page not served: {e:#}");
            None
        }
    }
}

/// What `cluster.json` says about the admin UI: where the dashboard is, the gateway URL to
/// type in it, and the login.
pub fn entry(login: &Login, ui: Option<&Unit>, server_url: &str) -> AdminUiEntry {
    let url = ui.and_then(|u| ready(u, "http").ok().map(|a| format!("http://{a}/")));
    AdminUiEntry {
        url,
        server_url: server_url.to_owned(),
        namespace: NAMESPACE.to_owned(),
        username: login.username.clone(),
        password: login.password.clone(),
        process: ui.map(process_info),
    }
}
