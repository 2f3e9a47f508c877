//! A private `redis-server` per test or suite, plain or run the way managed Redis runs.
//!
//! [`RedisServer::start`] runs Debian's `redis-server` on a free port of 127.0.0.1 with
//! persistence off (`--save "" --appendonly no`), and returns once it answers `PING`. It never
//! touches the Redis on 6379. The process is SIGKILLed when the handle is dropped.
//!
//! [`RedisServer::start_with`] can run it as managed Redis offerings do ([`RedisOptions`]):
//! TLS only (`--tls-port`, `--port 0`, the server certificate of a [`TestPki`]; client
//! certificates optional, or required), and an ACL user ([`AclUser`]) with the rule the test
//! gives; the `default` user then gets a password only the testkit knows, so a service that
//! forgot to authenticate as the ACL user is refused rather than served as `default`.
//! [`RedisServer::access`] is what a service needs to reach it (`--redis-url rediss://…`, the CA
//! file, the user, the password for `SWITCHYARD_REDIS_PASSWORD`), and
//! [`RedisServer::acl_denials`] reads the server's `ACL LOG`: what the ACL user was refused.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::ports::free_port;
use crate::process::{log_dir, open_log, tail, unique_suffix};
use crate::resp::{AdminLink, Resp, tls_client_config};
use crate::tls::TestPki;
use crate::wait::{eventually_blocking, give_up};

pub use crate::resp::Resp as RespValue;

/// The error text when `redis-server` is missing, so every test says the same actionable thing.
pub const MISSING_REDIS: &str = "redis-server not found on PATH; install Debian's redis-server \
                                 (xtask test installs it in CI)";

/// How long a fresh redis-server may take to answer PING.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// How a test Redis runs. The default is plain TCP with the `default` user and no password.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// Serve TLS only, with this PKI's `server.pem` (for `127.0.0.1` and `localhost`) and
    /// trusting its `ca.pem` for client certificates. The PKI's files live as long as the
    /// server does.
    pub tls: Option<Arc<TestPki>>,
    /// With `tls`: refuse clients without a certificate from the PKI's CA
    /// (`tls-auth-clients yes`; otherwise `optional`).
    pub require_client_cert: bool,
    /// Create this ACL user (and give `default` a password of the testkit's).
    pub acl_user: Option<AclUser>,
    /// Run the server (and every restart of it) in a process group of its own.
    pub own_process_group: bool,
}

impl RedisOptions {
    /// TLS only, with an ACL user `name` confined by `rule` (the text after
    /// `ACL SETUSER <name> on ><password>`): how managed Redis is run.
    pub fn managed(pki: Arc<TestPki>, name: &str, rule: &str) -> RedisOptions {
        RedisOptions {
            tls: Some(pki),
            require_client_cert: false,
            acl_user: Some(AclUser::new(name, rule)),
            own_process_group: false,
        }
    }
}

/// An ACL user the server creates at startup. `Debug` does not show the password.
#[derive(Clone)]
pub struct AclUser {
    pub name: String,
    pub password: String,
    /// Keys, channels and commands: `~… &… -@all +…` (ACL SETUSER syntax, space separated).
    pub rule: String,
}

impl AclUser {
    /// A user with a fresh random password.
    pub fn new(name: &str, rule: &str) -> AclUser {
        AclUser {
            name: name.to_owned(),
            password: random_secret("user"),
            rule: rule.to_owned(),
        }
    }
}

impl std::fmt::Debug for AclUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AclUser")
            .field("name", &self.name)
            .field("rule", &self.rule)
            .finish_non_exhaustive()
    }
}

/// What a client needs to reach a test Redis as its ACL user (or as `default`): the values of
/// placement's and the relay's Redis flags.
#[derive(Debug, Clone, Default)]
pub struct RedisAccess {
    /// `--redis-url`: `redis://`, `rediss://`, `redis+cluster://` or `rediss+cluster://`.
    pub url: String,
    /// `--redis-ca-file` (TLS only).
    pub ca_file: Option<PathBuf>,
    /// `--redis-client-cert-file` and `--redis-client-key-file` (servers requiring them).
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    /// `--redis-username`.
    pub username: Option<String>,
    /// `--redis-password`; [`RedisAccess::env`] passes it as `SWITCHYARD_REDIS_PASSWORD`.
    pub password: Option<String>,
}

impl RedisAccess {
    /// The flags for a service, without the password (which goes in [`RedisAccess::env`]).
    pub fn args(&self) -> Vec<String> {
        let mut args = vec!["--redis-url".to_owned(), self.url.clone()];
        let mut path = |flag: &str, p: &Option<PathBuf>| {
            if let Some(p) = p {
                args.extend([flag.to_owned(), p.display().to_string()]);
            }
        };
        path("--redis-ca-file", &self.ca_file);
        path("--redis-client-cert-file", &self.client_cert_file);
        path("--redis-client-key-file", &self.client_key_file);
        if let Some(user) = &self.username {
            args.extend(["--redis-username".to_owned(), user.clone()]);
        }
        args
    }

    /// `SWITCHYARD_REDIS_PASSWORD`, when there is a password: a secret goes through the
    /// environment, as in a Kubernetes Secret.
    pub fn env(&self) -> Vec<(String, String)> {
        self.password
            .iter()
            .map(|p| ("SWITCHYARD_REDIS_PASSWORD".to_owned(), p.clone()))
            .collect()
    }
}

/// How every node of a test Redis is launched and reached; shared with the cluster.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    pub program: PathBuf,
    pub options: RedisOptions,
    /// The testkit's own password for `default`, when there is an ACL user.
    admin_password: Option<String>,
    admin_tls: Option<Arc<rustls::ClientConfig>>,
}

impl Launch {
    pub fn new(options: RedisOptions) -> anyhow::Result<Launch> {
        let program = find_on_path("redis-server").context(MISSING_REDIS)?;
        let admin_tls = match &options.tls {
            Some(pki) => {
                let cert = std::fs::read(pki.file("client.pem"))?;
                let key = std::fs::read(pki.file("client-key.pem"))?;
                Some(tls_client_config(&pki.ca_pem()?, Some((&cert, &key)))?)
            }
            None => None,
        };
        Ok(Launch {
            program,
            admin_password: options.acl_user.as_ref().map(|_| random_secret("admin")),
            options,
            admin_tls,
        })
    }

    pub fn is_tls(&self) -> bool {
        self.options.tls.is_some()
    }

    /// The testkit's line to the node on `port`.
    pub fn admin(&self, port: u16) -> AdminLink {
        AdminLink {
            port,
            tls: self.admin_tls.clone(),
            auth: self
                .admin_password
                .as_ref()
                .map(|p| ("default".to_owned(), p.clone())),
        }
    }

    /// `redis-cli` flags to reach a node as the testkit's admin (TLS, password).
    pub fn cli_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(pki) = &self.options.tls {
            args.extend([
                "--tls".to_owned(),
                "--cacert".to_owned(),
                pki.ca(),
                "--cert".to_owned(),
                pki.file("client.pem").display().to_string(),
                "--key".to_owned(),
                pki.file("client-key.pem").display().to_string(),
            ]);
        }
        if let Some(password) = &self.admin_password {
            args.extend([
                "-a".to_owned(),
                password.clone(),
                "--no-auth-warning".to_owned(),
            ]);
        }
        args
    }

    /// Listening, TLS and ACL arguments for a node on `port`.
    fn args(&self, port: u16) -> Vec<String> {
        let mut args = Vec::new();
        match &self.options.tls {
            None => args.extend(["--port".to_owned(), port.to_string()]),
            Some(pki) => {
                let file = |name: &str| pki.file(name).display().to_string();
                args.extend([
                    "--port".to_owned(),
                    "0".to_owned(),
                    "--tls-port".to_owned(),
                    port.to_string(),
                    "--tls-cert-file".to_owned(),
                    file("server.pem"),
                    "--tls-key-file".to_owned(),
                    file("server-key.pem"),
                    "--tls-ca-cert-file".to_owned(),
                    pki.ca(),
                    "--tls-auth-clients".to_owned(),
                    if self.options.require_client_cert {
                        "yes"
                    } else {
                        "optional"
                    }
                    .to_owned(),
                    // What a node presents when it connects to another (cluster bus): the
                    // server certificate is for servers only.
                    "--tls-client-cert-file".to_owned(),
                    file("client.pem"),
                    "--tls-client-key-file".to_owned(),
                    file("client-key.pem"),
                ]);
            }
        }
        if let (Some(user), Some(admin)) = (&self.options.acl_user, &self.admin_password) {
            args.extend(["--requirepass".to_owned(), admin.clone()]);
            args.extend([
                "--user".to_owned(),
                user.name.clone(),
                "on".to_owned(),
                format!(">{}", user.password),
            ]);
            args.extend(user.rule.split_whitespace().map(str::to_owned));
        }
        args
    }

    /// What a service needs to reach `url` (built by the caller from the node ports).
    pub fn access(&self, url: String) -> RedisAccess {
        let pki = self.options.tls.as_ref();
        let client = |name: &str| {
            pki.filter(|_| self.options.require_client_cert)
                .map(|p| p.file(name))
        };
        RedisAccess {
            url,
            ca_file: pki.map(|p| p.file("ca.pem")),
            client_cert_file: client("client.pem"),
            client_key_file: client("client-key.pem"),
            username: self.options.acl_user.as_ref().map(|u| u.name.clone()),
            password: self.options.acl_user.as_ref().map(|u| u.password.clone()),
        }
    }

    /// The entries of `ACL LOG` on the node on `port`, one line each: who was refused what.
    pub fn acl_denials(&self, port: u16) -> anyhow::Result<Vec<String>> {
        let log = self.admin(port).query(&["ACL", "LOG"])?;
        let Resp::Array(Some(entries)) = log else {
            bail!("ACL LOG on port {port} answered {log:?}");
        };
        Ok(entries
            .iter()
            .map(|entry| {
                let fields = entry.pairs();
                let get = |k: &str| {
                    fields
                        .iter()
                        .find(|(key, _)| key == k)
                        .and_then(|(_, v)| v.text())
                        .unwrap_or_default()
                };
                let object = get("object");
                let what = match get("reason").as_str() {
                    "command" => format!("was refused the command `{object}`"),
                    "key" => format!("was refused the key `{object}`"),
                    "channel" => format!("was refused the channel `{object}`"),
                    "auth" => format!("failed to authenticate ({object})"),
                    other => format!("was refused {other} `{object}`"),
                };
                format!(
                    "node :{port}: user `{}` {what} ({}, {} time(s))",
                    get("username"),
                    get("context"),
                    get("count"),
                )
            })
            .collect())
    }
}

/// `Ok` when `denials` is empty, else an error listing them.
pub(crate) fn no_denials(denials: Vec<String>) -> anyhow::Result<()> {
    if denials.is_empty() {
        return Ok(());
    }
    bail!(
        "the ACL user lacked permissions ({} ACL LOG entries):\n{}",
        denials.len(),
        denials.join("\n")
    )
}

/// A secret that differs per call (tests only: not cryptographic).
fn random_secret(what: &str) -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default(),
    );
    format!("{what}-{:016x}{:08x}", h.finish(), std::process::id())
}

/// A running `redis-server` owned by a test; killed on Drop.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    /// Boxed: handles are embedded in larger structs, and this is the bulk of one.
    launch: Box<Launch>,
    child: Mutex<Option<Child>>,
    log_path: Mutex<PathBuf>,
}

impl RedisServer {
    /// Starts a plain `redis-server` on a free port and waits until it answers `PING`.
    ///
    /// Retries on another port when the chosen one was taken in the meantime.
    pub fn start() -> anyhow::Result<RedisServer> {
        Self::start_with(RedisOptions::default())
    }

    /// [`RedisServer::start`], with the server (and every restart of it) in a process group of
    /// its own, so a terminal's Ctrl-C reaches only the supervisor that owns it
    /// (`cargo xtask up`, which stops the services in order and Redis last).
    pub fn start_in_own_process_group() -> anyhow::Result<RedisServer> {
        Self::start_with(RedisOptions {
            own_process_group: true,
            ..RedisOptions::default()
        })
    }

    /// [`RedisServer::start`] with TLS and/or an ACL user (see the module docs).
    pub fn start_with(options: RedisOptions) -> anyhow::Result<RedisServer> {
        let launch = Box::new(Launch::new(options)?);
        let mut last_error = None;
        for _ in 0..5 {
            let port = free_port();
            match spawn_ready(&launch, port, &[]) {
                Ok((child, log_path)) => {
                    return Ok(RedisServer {
                        port,
                        launch,
                        child: Mutex::new(Some(child)),
                        log_path: Mutex::new(log_path),
                    });
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("redis-server did not start")))
    }

    /// `redis://127.0.0.1:<port>`, or `rediss://127.0.0.1:<port>` with TLS. Never carries
    /// credentials: see [`RedisServer::access`].
    pub fn url(&self) -> String {
        let scheme = if self.launch.is_tls() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// What placement and the relay need to reach it: the URL, the CA file, the ACL user and
    /// its password.
    pub fn access(&self) -> RedisAccess {
        self.launch.access(self.url())
    }

    /// What the ACL user was refused so far (`ACL LOG`), one line per entry; empty when the
    /// user had every permission it asked for.
    pub fn acl_denials(&self) -> anyhow::Result<Vec<String>> {
        self.launch.acl_denials(self.port)
    }

    /// Fails, listing them, when the ACL user was refused anything: the proof that its rule
    /// gave everything that was asked for.
    pub fn ensure_no_acl_denials(&self) -> anyhow::Result<()> {
        no_denials(self.acl_denials()?)
    }

    /// The TCP port it listens on (stays the same across [`RedisServer::restart_empty`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The current process's log file.
    pub fn log_path(&self) -> PathBuf {
        self.log_path
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pid of the running server, if one runs.
    pub fn pid(&self) -> Option<u32> {
        self.child().as_ref().map(Child::id)
    }

    /// The exit status if the server exited (or was killed) on its own, without waiting;
    /// `None` while it runs, and after [`RedisServer::kill`].
    pub fn exit_status(&self) -> anyhow::Result<Option<ExitStatus>> {
        match self.child().as_mut() {
            Some(child) => Ok(child.try_wait()?),
            None => Ok(None),
        }
    }

    /// SIGKILLs the server (an outage as clients see it: connections drop, the port refuses).
    /// Fine to call twice.
    pub fn kill(&self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child().take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Kills the server if it runs and starts a new, empty one on the same port (same TLS and
    /// ACL settings); returns once it answers `PING`. Simulates a Redis that lost all its data.
    pub fn restart_empty(&self) -> anyhow::Result<()> {
        self.kill()?;
        // The old socket is gone with the process, but give the kernel a moment if the port is
        // still reported busy.
        let what = format!("restarting redis on port {}", self.port);
        let (child, log_path) = eventually_blocking(what, Duration::from_secs(10), || {
            spawn_ready(&self.launch, self.port, &[])
        })?;
        *self.child() = Some(child);
        *self.log_path.lock().unwrap_or_else(|e| e.into_inner()) = log_path;
        Ok(())
    }

    /// Sends one command over a fresh connection (TLS and the testkit's admin password when
    /// the server has them) and returns the raw RESP reply, e.g. `command(&["PING"])` gives
    /// `"+PONG\r\n"`. Meant for test assertions and setup that do not warrant a Redis client.
    pub fn command(&self, args: &[&str]) -> anyhow::Result<String> {
        self.launch.admin(self.port).command(args)
    }

    /// [`RedisServer::command`] with the reply parsed.
    pub fn query(&self, args: &[&str]) -> anyhow::Result<RespValue> {
        self.launch.admin(self.port).query(args)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let slot = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(mut child) = slot.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Finds an executable called `name` on `PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Spawns redis-server on `port` as `launch` says (with `extra` arguments after the defaults,
/// which they override) and waits for PING; kills it again on failure.
pub(crate) fn spawn_ready(
    launch: &Launch,
    port: u16,
    extra: &[String],
) -> anyhow::Result<(Child, PathBuf)> {
    let log_path = log_dir()?.join(format!("redis-server-{port}-{}.log", unique_suffix()));
    let log = open_log(&log_path)?;
    let mut command = Command::new(&launch.program);
    if launch.options.own_process_group {
        command.process_group(0);
    }
    let mut child = command
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .args(["--protected-mode", "no"])
        .args(["--daemonize", "no"])
        .args(["--logfile", ""])
        .arg("--dir")
        .arg(std::env::temp_dir())
        .args(launch.args(port))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()
        .with_context(|| format!("spawning {}", launch.program.display()))?;
    let admin = launch.admin(port);
    let what = format!("redis-server on port {port} to answer PING");
    let answered = eventually_blocking(what, READY_TIMEOUT, || {
        if let Some(status) = child.try_wait()? {
            return Err(give_up(anyhow::anyhow!("it exited with {status}")));
        }
        let reply = admin.command(&["PING"])?;
        anyhow::ensure!(reply.starts_with("+PONG"), "PING answered {reply:?}");
        Ok(())
    });
    if let Err(e) = answered {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e.context(format!(
            "--- last lines of {} ---\n{}",
            log_path.display(),
            tail(&log_path, 20)
        )));
    }
    Ok((child, log_path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resp::AdminLink;

    #[test]
    fn starts_answers_and_restarts_empty() -> anyhow::Result<()> {
        let redis = RedisServer::start()?;
        assert!(redis.url().ends_with(&format!(":{}", redis.port())));
        assert_eq!(redis.command(&["PING"])?, "+PONG\r\n");
        assert_eq!(redis.command(&["SET", "k", "v"])?, "+OK\r\n");
        assert_eq!(redis.command(&["GET", "k"])?, "$1\r\nv\r\n");

        redis.kill()?;
        assert!(redis.command(&["PING"]).is_err(), "a killed server refuses");

        redis.restart_empty()?;
        assert_eq!(redis.command(&["GET", "k"])?, "$-1\r\n");
        Ok(())
    }

    /// TLS only, an ACL user, `default` behind the testkit's password; what the user is
    /// refused shows in `acl_denials`.
    #[test]
    fn managed_mode_serves_tls_only_and_reports_what_the_acl_user_was_refused() -> anyhow::Result<()>
    {
        let pki = Arc::new(TestPki::generate("redis-managed")?);
        let redis = RedisServer::start_with(RedisOptions::managed(
            Arc::clone(&pki),
            "app",
            "resetkeys ~app:* resetchannels -@all +get +set",
        ))?;
        assert_eq!(redis.url(), format!("rediss://127.0.0.1:{}", redis.port()));
        assert_eq!(
            redis.command(&["PING"])?,
            "+PONG\r\n",
            "the testkit's admin line"
        );
        let access = redis.access();
        assert_eq!(access.username.as_deref(), Some("app"));
        assert_eq!(access.ca_file, Some(pki.file("ca.pem")));
        assert!(access.client_cert_file.is_none());
        let password = access.password.clone().unwrap_or_default();
        assert_eq!(
            access.env(),
            [("SWITCHYARD_REDIS_PASSWORD".to_owned(), password.clone())]
        );
        assert!(
            !access.args().contains(&password),
            "the password goes through the env"
        );

        // Plain TCP gets no Redis answer from a TLS-only port.
        let plain = AdminLink {
            port: redis.port(),
            tls: None,
            auth: None,
        };
        assert!(plain.command(&["PING"]).is_err());

        let user = AdminLink {
            port: redis.port(),
            tls: redis.launch.admin_tls.clone(),
            auth: Some(("app".to_owned(), password)),
        };
        assert_eq!(user.command(&["SET", "app:k", "v"])?, "+OK\r\n");
        assert!(user.command(&["SET", "other", "v"])?.starts_with("-NOPERM"));
        assert!(user.command(&["DEL", "app:k"])?.starts_with("-NOPERM"));
        let denials = redis.acl_denials()?;
        assert_eq!(denials.len(), 2, "{denials:?}");
        assert!(
            denials.iter().any(|d| d.contains("the command `del`")),
            "{denials:?}"
        );
        assert!(
            denials.iter().any(|d| d.contains("the key `other`")),
            "{denials:?}"
        );
        Ok(())
    }

    #[test]
    fn two_servers_are_independent() -> anyhow::Result<()> {
        let a = RedisServer::start()?;
        let b = RedisServer::start()?;
        assert_ne!(a.port(), b.port());
        a.command(&["SET", "only-a", "1"])?;
        assert_eq!(b.command(&["EXISTS", "only-a"])?, ":0\r\n");
        let pid = a.pid();
        drop(a);
        assert!(pid.is_some());
        Ok(())
    }
}
