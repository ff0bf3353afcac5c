//! The credentials a pull uses: the request's pull secrets, then the node's docker config.

use std::sync::Arc;

use super::BuildError;
use crate::daemon::Daemon;
use crate::registry::Keyring;

pub(crate) fn keyring_for(d: &Daemon, pull_secrets: &[String]) -> Result<Arc<Keyring>, BuildError> {
    let cfg = &d.inner.config;
    let mut keyring = Keyring::from_pull_secrets(&cfg.secrets_dir, pull_secrets)?;
    if let Some(path) = &cfg.docker_config {
        keyring = keyring.with_docker_config(path)?;
    }
    Ok(Arc::new(keyring))
}
