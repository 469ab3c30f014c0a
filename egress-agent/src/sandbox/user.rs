//! Who the command runs as (issue 11 §1, §4): the invoking user under sudo, `--user
//! USER[:GROUP]`, or root with a reduced capability set — decided before anything starts.

use std::ffi::OsString;

use super::spec::Credentials;
use crate::sys::{self, Passwd};

/// Capabilities root keeps under `exec` (`--user root`, or no SUDO_UID): what package
/// managers and build scripts use — Docker's default set without NET_RAW (AF_PACKET
/// bypasses every cgroup hook), MKNOD (a device node for the host's disk reads the CA key
/// off it) and SETFCAP (file capabilities planted for processes outside).
pub const ROOT_CAPABILITIES: &[(u32, &str)] = &[
    (0, "CHOWN"),
    (1, "DAC_OVERRIDE"),
    (3, "FOWNER"),
    (4, "FSETID"),
    (5, "KILL"),
    (6, "SETGID"),
    (7, "SETUID"),
    (8, "SETPCAP"),
    (10, "NET_BIND_SERVICE"),
    (18, "SYS_CHROOT"),
    (29, "AUDIT_WRITE"),
];

/// Never inside `exec`, whoever runs there (issue 11 §4).
pub const NEVER: &[(u32, &str)] = &[
    (2, "DAC_READ_SEARCH"),
    (12, "NET_ADMIN"),
    (13, "NET_RAW"),
    (16, "SYS_MODULE"),
    (19, "SYS_PTRACE"),
    (21, "SYS_ADMIN"),
    (39, "BPF"),
];

pub fn mask(caps: &[(u32, &str)]) -> u64 {
    caps.iter().fold(0, |m, (c, _)| m | (1u64 << c))
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("--user {0}: no such user")]
    NoUser(String),
    #[error("--user {0}: no such group")]
    NoGroup(String),
    #[error("--user {spec}: uid {uid} has no passwd entry, so no primary group: give --user {uid}:GROUP")]
    NoPrimaryGroup { spec: String, uid: u32 },
    #[error("--user {0}: give USER or USER:GROUP (names or numbers)")]
    Syntax(String),
    #[error("{var}={value} is not a number")]
    BadSudoVar { var: &'static str, value: String },
    #[error("looking up users and groups: {0}")]
    Nss(#[from] std::io::Error),
}

/// How the user was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chosen {
    /// `--user`.
    Flag,
    /// SUDO_UID / SUDO_GID.
    Sudo,
    /// Neither: root.
    Default,
}

/// The command's user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub creds: Credentials,
    /// The passwd entry, when there is one (name, home).
    pub passwd: Option<Passwd>,
    pub chosen: Chosen,
}

impl Target {
    pub fn is_root(&self) -> bool {
        self.creds.uid == 0
    }

    /// The line `exec` prints on stderr when the command keeps root (issue 11 §1).
    pub fn notice(&self) -> Option<String> {
        if !self.is_root() {
            return None;
        }
        let caps: Vec<&str> = ROOT_CAPABILITIES.iter().map(|(_, n)| *n).collect();
        let why = match self.chosen {
            Chosen::Flag => "--user root",
            _ => "no SUDO_UID and no --user",
        };
        Some(format!(
            "egress-agent: exec: the command runs as root ({why}), with only CAP_{}: root can still write the host's files (a cron job or unit it writes runs outside the sandbox); prefer --user USER",
            caps.join(",CAP_")
        ))
    }

    /// Warnings for stderr: a member of `disk` reads the host's disks (and the CA key's
    /// blocks on them) through /dev, which a user's sandbox shares.
    pub fn warnings(&self) -> Vec<String> {
        match sys::group_by_name("disk") {
            Ok(Some(disk)) if !self.is_root() && self.creds.groups.contains(&disk) => vec![format!(
                "egress-agent: exec: warning: uid {} is in group disk: it can read the host's disks, the agent's CA key included",
                self.creds.uid
            )],
            _ => Vec::new(),
        }
    }

    /// HOME, USER and LOGNAME of the target user when it is not root (the agent's own user):
    /// sudo leaves root's HOME, and caches and configs belong in the user's.
    pub fn env_overrides(&self) -> Vec<(OsString, OsString)> {
        match &self.passwd {
            Some(p) if !self.is_root() => vec![
                ("HOME".into(), p.home.clone().into_os_string()),
                ("USER".into(), p.name.clone().into()),
                ("LOGNAME".into(), p.name.clone().into()),
            ],
            _ => Vec::new(),
        }
    }
}

/// Decide the command's user from `--user` and the environment (SUDO_UID, SUDO_GID).
pub fn resolve(
    flag: Option<&str>,
    sudo_uid: Option<&str>,
    sudo_gid: Option<&str>,
) -> Result<Target, UserError> {
    if let Some(spec) = flag {
        return from_flag(spec);
    }
    if let Some(uid) = sudo_uid.filter(|v| !v.is_empty()) {
        let uid = number("SUDO_UID", uid)?;
        let passwd = sys::passwd_by_uid(uid)?;
        let gid = match sudo_gid.filter(|v| !v.is_empty()) {
            Some(g) => number("SUDO_GID", g)?,
            None => passwd.as_ref().map(|p| p.gid).unwrap_or(uid),
        };
        return build(uid, gid, passwd, Chosen::Sudo);
    }
    let passwd = sys::passwd_by_uid(0)?;
    build(0, 0, passwd, Chosen::Default)
}

fn number(var: &'static str, value: &str) -> Result<u32, UserError> {
    value.trim().parse().map_err(|_| UserError::BadSudoVar {
        var,
        value: value.to_string(),
    })
}

fn from_flag(spec: &str) -> Result<Target, UserError> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() || group.is_some_and(str::is_empty) {
        return Err(UserError::Syntax(spec.to_string()));
    }
    let passwd = match user.parse::<u32>() {
        Ok(uid) => sys::passwd_by_uid(uid)?,
        Err(_) => Some(sys::passwd_by_name(user)?.ok_or_else(|| UserError::NoUser(spec.into()))?),
    };
    let uid = match (&passwd, user.parse::<u32>()) {
        (Some(p), _) => p.uid,
        (None, Ok(uid)) => uid,
        (None, Err(_)) => return Err(UserError::NoUser(spec.into())),
    };
    let gid = match group {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => sys::group_by_name(g)?.ok_or_else(|| UserError::NoGroup(spec.into()))?,
        },
        None => match &passwd {
            Some(p) => p.gid,
            None => {
                return Err(UserError::NoPrimaryGroup {
                    spec: spec.into(),
                    uid,
                })
            }
        },
    };
    build(uid, gid, passwd, Chosen::Flag)
}

fn build(uid: u32, gid: u32, passwd: Option<Passwd>, chosen: Chosen) -> Result<Target, UserError> {
    let mut groups = match &passwd {
        Some(p) => sys::group_list(&p.name, gid)?,
        None => vec![gid],
    };
    if !groups.contains(&gid) {
        groups.insert(0, gid);
    }
    groups.dedup();
    let capabilities = if uid == 0 { mask(ROOT_CAPABILITIES) } else { 0 };
    Ok(Target {
        creds: Credentials {
            uid,
            gid,
            groups,
            capabilities,
        },
        passwd,
        chosen,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_keeps_none_of_the_forbidden_capabilities() {
        assert_eq!(mask(ROOT_CAPABILITIES) & mask(NEVER), 0);
        // MKNOD (27) and SETFCAP (31) stay out too.
        assert_eq!(mask(ROOT_CAPABILITIES) & (1 << 27 | 1 << 31), 0);
    }

    #[test]
    fn users_from_flags_sudo_and_default() {
        // root and nobody exist on every Debian.
        let t = resolve(Some("root"), Some("65534"), None).unwrap();
        assert_eq!((t.creds.uid, t.chosen), (0, Chosen::Flag));
        assert!(t.notice().unwrap().contains("--user root"));
        let t = resolve(None, Some("65534"), Some("65534")).unwrap();
        assert_eq!(
            (t.creds.uid, t.creds.gid, t.creds.capabilities),
            (65534, 65534, 0)
        );
        assert!(t.notice().is_none());
        assert!(t.env_overrides().iter().any(|(k, _)| k == "HOME"));
        let t = resolve(None, None, None).unwrap();
        assert_eq!((t.creds.uid, t.chosen), (0, Chosen::Default));
        assert!(t.notice().unwrap().contains("no SUDO_UID"));
        assert!(t.env_overrides().is_empty());
        let t = resolve(Some("nobody:0"), None, None).unwrap();
        assert_eq!((t.creds.uid, t.creds.gid), (65534, 0));
        let t = resolve(Some("4242:4343"), None, None).unwrap();
        assert_eq!(
            (t.creds.uid, t.creds.gid, t.creds.groups.clone()),
            (4242, 4343, vec![4343])
        );
    }

    #[test]
    fn bad_users_are_one_line_errors() {
        for (spec, want) in [
            ("no-such-user-x", "--user no-such-user-x: no such user"),
            (
                "nobody:no-such-group-x",
                "--user nobody:no-such-group-x: no such group",
            ),
            ("4242", "uid 4242 has no passwd entry"),
            (":x", "give USER or USER:GROUP"),
            ("nobody:", "give USER or USER:GROUP"),
        ] {
            let e = resolve(Some(spec), None, None).unwrap_err().to_string();
            assert!(e.contains(want), "{spec}: {e}");
        }
        let e = resolve(None, Some("x1"), None).unwrap_err().to_string();
        assert_eq!(e, "SUDO_UID=x1 is not a number");
    }
}
