//! The async runtime every service binary runs on, sized by configuration.
//!
//! Tokio's default is one worker thread per CPU the process may use (`available_parallelism`,
//! which follows a container's CPU quota). That is right for a service with a node or a pod's
//! quota to itself. Where several services share a few cores (many gateways per machine,
//! as in `cargo xtask bench scale`), each extra worker costs context switches on every
//! wake-up: with 6 gateways and 2 relays on 2 cores, one worker each cut the cluster's CPU
//! per delivery by 17% (see `docs/scale.md`).

use std::num::NonZeroUsize;

use clap::Args;

/// Runtime flags shared by every service binary (`#[command(flatten)]`).
#[derive(Debug, Clone, Default, Args)]
pub struct RuntimeArgs {
    /// Tokio worker threads; unset, one per CPU this process may use (its container's CPU
    /// quota included).
    #[arg(long, env = "SWITCHYARD_WORKER_THREADS")]
    pub worker_threads: Option<NonZeroUsize>,
}

impl RuntimeArgs {
    /// The multi-threaded runtime these flags describe, with I/O and timers on.
    pub fn build(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if let Some(n) = self.worker_threads {
            builder.worker_threads(n.get());
        }
        builder.enable_all().build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_has_the_workers_asked_for() -> std::io::Result<()> {
        let args = RuntimeArgs {
            worker_threads: NonZeroUsize::new(1),
        };
        let runtime = args.build()?;
        assert_eq!(runtime.metrics().num_workers(), 1);
        Ok(())
    }
}
