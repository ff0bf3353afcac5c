//! The credentials a pull uses: the CRI pull's own (a cold pull's build), then the request's
//! pull secrets, then the node's docker config.

use std::sync::Arc;

use super::{BuildError, BuildSpec};
use crate::daemon::Daemon;
use crate::registry::Keyring;

pub(crate) fn keyring_for(d: &Daemon, pull_secrets: &[String]) -> Result<Arc<Keyring>, BuildError> {
    Ok(Arc::new(node_keyring(d, pull_secrets)?))
}

/// A build's keyring: [`keyring_for`] its cache's pull secrets, with the credentials of the
/// CRI pull that asked for it (held in memory only, daemon/pull_auth.rs) first.
pub(crate) fn keyring_for_build(d: &Daemon, spec: &BuildSpec) -> Result<Arc<Keyring>, BuildError> {
    let mut keyring = node_keyring(d, &spec.pull_secrets)?;
    if let Some(pulled) = &spec.pulled_with {
        keyring = keyring.with_pull_credentials(pulled.registry(), pulled.credentials().clone());
    }
    Ok(Arc::new(keyring))
}

fn node_keyring(d: &Daemon, pull_secrets: &[String]) -> Result<Keyring, BuildError> {
    let cfg = &d.inner.config;
    let mut keyring = Keyring::from_pull_secrets(&cfg.secrets_dir, pull_secrets)?;
    if let Some(path) = &cfg.docker_config {
        keyring = keyring.with_docker_config(path)?;
    }
    Ok(keyring)
}
