//! What can go wrong, and the exit code each failure maps to.
//!
//! The exit codes are part of syctl's contract with scripts (they are listed in `--help`):
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | success |
//! | 1 | usage or configuration error: bad flags, no placement address, unreadable `cluster.json`, an argument placement rejected (`INVALID_ARGUMENT`) |
//! | 2 | not found: the node is not in the ledger (`NOT_FOUND`) |
//! | 3 | unauthenticated: missing or wrong admin token (`UNAUTHENTICATED`) |
//! | 4 | unavailable: cannot connect, the call timed out, or placement answered `UNAVAILABLE` (for example its Redis is down) |
//! | 5 | any other error |
//!
//! clap exits with 2 on a usage error by default; syctl moves usage errors to 1 so that 2 always
//! means "not found".

use std::process::ExitCode;

use tonic::{Code, Status};

/// A failed syctl run. The message is what the operator reads on stderr.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// Bad flags or configuration, or an argument placement rejected. Exit code 1.
    #[error("{0}")]
    Config(String),
    /// The node named on the command line is not in the ledger. Exit code 2.
    #[error("{0}")]
    NotFound(String),
    /// Placement refused the admin token (or none was sent). Exit code 3.
    #[error("{0}")]
    Unauthenticated(String),
    /// Placement could not be reached or could not serve the call. Exit code 4.
    #[error("{0}")]
    Unavailable(String),
    /// Anything else. Exit code 5.
    #[error("{0}")]
    Other(String),
}

impl CtlError {
    /// The process exit code for this failure (see the module docs).
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Config(_) => 1,
            CtlError::NotFound(_) => 2,
            CtlError::Unauthenticated(_) => 3,
            CtlError::Unavailable(_) => 4,
            CtlError::Other(_) => 5,
        }
    }

    /// Converts a failed admin call, adding a hint the operator can act on.
    pub fn from_status(status: &Status, endpoint: &str) -> CtlError {
        let detail = status_detail(status);
        match status.code() {
            Code::NotFound => CtlError::NotFound(detail),
            Code::Unauthenticated => CtlError::Unauthenticated(format!(
                "placement at {endpoint} refused the admin token: {detail}\n\
                 hint: pass --admin-token or set SWITCHYARD_ADMIN_TOKEN to the placement's \
                 --admin-token (`cargo xtask up` prints it and writes it to .switchyard/cluster.json)"
            )),
            Code::Unavailable => {
                CtlError::Unavailable(format!("placement at {endpoint} is unavailable: {detail}"))
            }
            Code::DeadlineExceeded => CtlError::Unavailable(format!(
                "placement at {endpoint} did not answer in time ({detail}); raise --timeout or \
                 check that it is healthy"
            )),
            Code::InvalidArgument => {
                CtlError::Config(format!("placement rejected the request: {detail}"))
            }
            Code::Unimplemented => CtlError::Other(format!(
                "{endpoint} does not serve switchyard.admin.v1.Admin ({detail}); is it \
                 placement's gRPC address?"
            )),
            code => CtlError::Other(format!(
                "admin call to {endpoint} failed ({code:?}): {detail}"
            )),
        }
    }

    /// Prints the message on stderr and returns the exit code.
    pub fn report(&self) -> ExitCode {
        eprintln!("syctl: error: {self}");
        ExitCode::from(self.exit_code())
    }
}

/// The status message, followed by its error sources (tonic hides the useful part of transport
/// failures, like "connection refused", in the source chain).
fn status_detail(status: &Status) -> String {
    let mut detail = if status.message().is_empty() {
        format!("{:?}", status.code())
    } else {
        status.message().to_owned()
    };
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        let text = e.to_string();
        if !detail.contains(&text) {
            detail.push_str(": ");
            detail.push_str(&text);
        }
        source = e.source();
    }
    detail
}

/// An error and its sources on one line, `outer: inner: innermost`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = inner.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_map_to_documented_exit_codes() {
        let cases = [
            (Status::not_found("no node `x`"), 2),
            (Status::unauthenticated("invalid admin token"), 3),
            (Status::unavailable("ledger unavailable"), 4),
            (Status::deadline_exceeded("timeout"), 4),
            (Status::invalid_argument("weight must be 1..=1000"), 1),
            (Status::unimplemented(""), 5),
            (Status::internal("boom"), 5),
        ];
        for (status, code) in cases {
            let err = CtlError::from_status(&status, "http://127.0.0.1:1");
            assert_eq!(err.exit_code(), code, "{status:?}");
        }
    }

    #[test]
    fn unauthenticated_says_where_the_token_comes_from() {
        let err = CtlError::from_status(
            &Status::unauthenticated("invalid admin token"),
            "http://127.0.0.1:1",
        );
        let text = err.to_string();
        assert!(text.contains("invalid admin token"), "{text}");
        assert!(text.contains("SWITCHYARD_ADMIN_TOKEN"), "{text}");
    }
}
