//! The daemon.
use crate::config::Config;
pub fn run(_config: Config) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
