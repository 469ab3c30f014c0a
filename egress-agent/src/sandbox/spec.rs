//! What the agent tells the sandbox init: everything the init needs to build the command's
//! namespaces and start it, as JSON in a sealed memfd (nothing to parse from argv, nothing
//! secret: the environment in it is already scrubbed).

use std::{ffi::OsString, os::fd::OwnedFd, path::PathBuf};

use serde::{Deserialize, Serialize};

use super::SandboxError;

/// The user the command runs as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the primary group included, as `getgrouplist` returns them).
    pub groups: Vec<u32>,
    /// Bounding, permitted and effective capabilities after the switch (bit n = capability
    /// n): [`super::user::ROOT_CAPABILITIES`] for root, none for anyone else.
    pub capabilities: u64,
}

/// Paths the command must not reach (DESIGN.md §12). Non-existent ones are skipped; the
/// init resolves and classifies them in its own mount namespace.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Hide {
    /// The agent's state directories (the one in use and the default, where a daemon keeps
    /// its CA key): each replaced by an empty directory that keeps only `trust/`
    /// (certificates).
    pub state_dirs: Vec<OsString>,
    /// Directories hidden whole (the control socket's, `/run/egress-agent`).
    pub dirs: Vec<OsString>,
    /// Files hidden (`/dev/null` over them): what `inject = { file = … }` rules read, a
    /// control socket outside the default directory, the sockets of daemons that start
    /// processes elsewhere (systemd, D-Bus, container runtimes).
    pub files: Vec<OsString>,
}

/// `--trust-ca`: the trust files to show through the system store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrustSpec {
    /// The agent's CA certificate (PEM).
    pub ca: OsString,
    /// System roots + the CA (PEM).
    pub bundle: OsString,
    /// System roots + the CA (JKS, password `changeit`).
    pub jks: OsString,
    /// OpenSSL's subject hash of the CA (`<hash>.0` in a hashed directory).
    pub ca_hash: String,
    /// Distribution bundle paths and Java `cacerts` paths to cover, where they exist.
    pub bundle_paths: Vec<OsString>,
    pub java_paths: Vec<OsString>,
    /// The command's `$HOME/.pki/nssdb`, if it may have one.
    pub nssdb: Option<OsString>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    pub argv: Vec<String>,
    /// The command's whole environment.
    pub env: Vec<(OsString, OsString)>,
    pub cwd: OsString,
    pub creds: Credentials,
    pub hide: Hide,
    pub trust: Option<TrustSpec>,
    /// A minimal /dev instead of the host's (root only: root owns the disks' device nodes).
    pub private_dev: bool,
}

impl Spec {
    /// The spec in a sealed memfd (close-on-exec; the launcher lets the init inherit it).
    pub fn to_memfd(&self) -> Result<OwnedFd, SandboxError> {
        let json = serde_json::to_vec(self).map_err(|e| SandboxError::Spec(e.to_string()))?;
        crate::sys::sealed_memfd(c"egress-agent-sandbox-spec", &json)
            .map_err(|e| SandboxError::io("writing the sandbox spec", e))
    }

    /// Reads the spec the launcher passed (and closes its fd).
    pub fn from_fd(fd: OwnedFd) -> Result<Spec, SandboxError> {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::from(fd);
        let len = f
            .metadata()
            .map_err(|e| SandboxError::io("reading the sandbox spec", e))?
            .len();
        let mut buf = vec![0u8; len as usize];
        f.read_exact_at(&mut buf, 0)
            .map_err(|e| SandboxError::io("reading the sandbox spec", e))?;
        serde_json::from_slice(&buf).map_err(|e| SandboxError::Spec(e.to_string()))
    }

    /// The command's `PATH` (for finding argv[0]).
    pub fn path_var(&self) -> Option<&OsString> {
        self.env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v)
    }

    pub fn cwd(&self) -> PathBuf {
        PathBuf::from(&self.cwd)
    }
}
