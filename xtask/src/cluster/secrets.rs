//! The cluster's secrets (token secret, admin and link tokens, the admin UI password): the
//! environment's when set, else random for this run.

use std::fs;
use std::io::Read;

use anyhow::Context;

/// The value of env `var` when set and non-empty, else 32 random bytes as hex.
pub fn secret_from_env_or_random(var: &str) -> anyhow::Result<String> {
    if let Ok(value) = std::env::var(var)
        && !value.is_empty()
    {
        return Ok(value);
    }
    let mut bytes = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom for a random secret")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_secrets_differ() -> anyhow::Result<()> {
        let a = secret_from_env_or_random("SWITCHYARD_XTASK_TEST_UNSET_VAR")?;
        let b = secret_from_env_or_random("SWITCHYARD_XTASK_TEST_UNSET_VAR")?;
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        Ok(())
    }
}
