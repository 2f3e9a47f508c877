//! Free TCP ports on 127.0.0.1.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, OnceLock};

/// Ports already handed out by this process; never handed out twice, so two tests in one test
/// binary cannot race for the same port.
fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// The kernel picks it (bind to port 0), so it is outside the ports services use by default.
/// Another process may still take it before the caller binds it; callers that spawn a server on
/// it should retry on "address in use" (as [`crate::redis::RedisServer::start`] does).
///
/// # Panics
/// Only if the machine cannot bind any port on 127.0.0.1, in which case no test can run.
#[allow(clippy::expect_used)]
pub fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .expect("cannot bind 127.0.0.1:0; is the loopback interface up?");
        let port = listener
            .local_addr()
            .expect("a bound listener has a local address")
            .port();
        let mut seen = handed_out().lock().unwrap_or_else(|e| e.into_inner());
        if seen.insert(port) {
            return port;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_bindable() -> anyhow::Result<()> {
        let a = free_port();
        let b = free_port();
        assert_ne!(a, b);
        let _listener = TcpListener::bind((Ipv4Addr::LOCALHOST, a))?;
        Ok(())
    }
}
