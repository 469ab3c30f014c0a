//! `approve ID --save`: the approved rule goes into the policy file, in the profile's `allow`
//! list, with a comment saying who approved it and when. The file keeps its layout and
//! comments (toml_edit); the new text is validated as a whole before anything is written; it
//! replaces the file atomically (a temporary file in the same directory, then rename), so the
//! file is never invalid nor half-written, and the caller reloads it.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use toml_edit::{Array, DocumentMut, Item, Table, Value};

use crate::policy::Policy;

#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error("{0}: cannot read the policy file: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("{0}: cannot write the policy file: {1}")]
    Write(PathBuf, std::io::Error),
    /// The file could not take the rule: it would be invalid, or it has no place for it.
    #[error("{0}")]
    Refused(String),
}

/// The file's text with `rule` appended to `[profile.PROFILE] allow`, validated.
pub fn with_rule(
    path: &Path,
    src: &str,
    profile: &str,
    rule: &str,
    comment: &str,
) -> Result<String, SaveError> {
    let origin = path.display().to_string();
    let refused = |m: String| SaveError::Refused(format!("{origin}: {m}"));
    let mut doc: DocumentMut = src
        .parse()
        .map_err(|e: toml_edit::TomlError| refused(one_line(&e.to_string())))?;
    let profiles = doc
        .entry("profile")
        .or_insert_with(|| Item::Table(implicit_table()))
        .as_table_like_mut()
        .ok_or_else(|| refused("`profile` is not a table".into()))?;
    let table = profiles
        .entry(profile)
        .or_insert(Item::Table(Table::new()))
        .as_table_like_mut()
        .ok_or_else(|| refused(format!("`profile.{profile}` is not a table")))?;
    let allow = table
        .entry("allow")
        .or_insert(Item::Value(Value::Array(Array::new())))
        .as_array_mut()
        .ok_or_else(|| refused(format!("`profile.{profile}.allow` is not an array")))?;
    let mut v = Value::from(rule);
    v.decor_mut()
        .set_prefix(format!("\n    # {}\n    ", one_line(comment)));
    allow.push_formatted(v);
    allow.set_trailing("\n");
    allow.set_trailing_comma(true);
    let text = doc.to_string();
    // The file as it will be, judged exactly as a reload will judge it.
    Policy::parse(&text, &origin).map_err(|e| SaveError::Refused(one_line(&e.to_string())))?;
    Ok(text)
}

fn implicit_table() -> Table {
    let mut t = Table::new();
    t.set_implicit(true);
    t
}

/// Adds `rule` to the file (see [`with_rule`]) and replaces it atomically. Returns the old
/// text, for [`restore`] should the reload that follows refuse the file.
pub fn save(path: &Path, profile: &str, rule: &str, comment: &str) -> Result<String, SaveError> {
    let old = std::fs::read_to_string(path).map_err(|e| SaveError::Read(path.into(), e))?;
    let new = with_rule(path, &old, profile, rule, comment)?;
    replace(path, &new)?;
    Ok(old)
}

/// Puts the file's earlier text back (atomically too).
pub fn restore(path: &Path, old: &str) -> Result<(), SaveError> {
    replace(path, old)
}

/// Write a temporary file beside `path` (same mode), fsync it, rename it over `path`.
fn replace(path: &Path, text: &str) -> Result<(), SaveError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let err = |e| SaveError::Write(path.into(), e);
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o600);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "policy.toml".into());
    let tmp = path.with_file_name(format!(".{name}.egress-save.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "# the team's policy\nversion = \"v1\"\n\n[profile.default]\nmode = \"ask\"\nallow = [\"a.test\"] # kept\n";

    #[test]
    fn appends_with_a_comment_and_keeps_the_rest() {
        let p = Path::new("/x/policy.toml");
        let t = with_rule(p, SRC, "default", "b.test:8443", "approved by ops").unwrap();
        assert!(t.starts_with("# the team's policy\n"), "{t}");
        assert!(t.contains("# approved by ops\n    \"b.test:8443\""), "{t}");
        assert!(t.contains("# kept"), "{t}");
        let pol = Policy::parse(&t, "t").unwrap();
        assert!(
            pol.show().contains("\"a.test\", \"b.test:8443\""),
            "{}",
            pol.show()
        );
    }

    #[test]
    fn a_rule_that_would_make_the_file_invalid_changes_nothing() {
        let p = Path::new("/x/policy.toml");
        // Listed twice: the whole file is judged, and refused in one line.
        let e = with_rule(p, SRC, "default", "a.test", "x").unwrap_err();
        let m = e.to_string();
        assert!(m.contains("listed twice") && !m.contains('\n'), "{m}");
    }

    #[test]
    fn replace_is_atomic_and_keeps_the_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("egress-save-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("policy.toml");
        std::fs::write(&f, SRC).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        let old = save(&f, "default", "c.test", "by t").unwrap();
        assert_eq!(old, SRC);
        let now = std::fs::read_to_string(&f).unwrap();
        assert!(now.contains("\"c.test\""));
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o640
        );
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file is left behind");
        restore(&f, &old).unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), SRC);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
