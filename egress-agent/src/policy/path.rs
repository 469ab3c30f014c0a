//! What a `paths` rule judges: the path the upstream will act on, not the spelling the
//! client chose (issue 17 §6).
//!
//! A request path is first checked for spellings whose meaning depends on the server that
//! reads it ([`Unjudgeable`]: an encoded `%`, `/` or `\`, NUL, invalid UTF-8, `;` on a dot
//! segment, ...): those are refused outright. Every other path has a few readings a real
//! server may act on ([`Readings`]), each after a single percent-decoding of the
//! unreserved characters (RFC 3986 §2.3, §6.2.2):
//!
//! - **normalised**: dot segments removed (RFC 3986 §5.2.4) — what most servers do;
//! - **as sent**: dot segments kept — what a router that matches the raw path acts on
//!   (`/admin/../ok/x` is routed by its first segment);
//! - **servlet**: `;` parameters stripped from every segment and `//` merged, then dot
//!   segments removed — what Tomcat, Jetty and Spring act on (`/ok/a.txt;.png`).
//!
//! A path rule allows a path only when it allows every reading, so no server of these
//! families acts on a path the rule did not allow. Hand-written rather than with the
//! `percent-encoding` crate: that decodes every escape or none, and this needs to decode the
//! unreserved ones only and classify each of the others.

use std::borrow::Cow;
use std::fmt;

/// Why a path cannot be matched against path rules: servers disagree about what it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unjudgeable {
    Backslash,
    ControlChar,
    BadPercent,
    EncodedSeparator,
    EncodedPercent,
    EncodedNul,
    EncodedControl,
    InvalidUtf8,
    DotSegmentParams,
}

impl Unjudgeable {
    /// A short label, for tests and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Unjudgeable::Backslash => "backslash",
            Unjudgeable::ControlChar => "control_char",
            Unjudgeable::BadPercent => "bad_percent",
            Unjudgeable::EncodedSeparator => "encoded_separator",
            Unjudgeable::EncodedPercent => "encoded_percent",
            Unjudgeable::EncodedNul => "encoded_nul",
            Unjudgeable::EncodedControl => "encoded_control",
            Unjudgeable::InvalidUtf8 => "invalid_utf8",
            Unjudgeable::DotSegmentParams => "dot_segment_params",
        }
    }
}

impl fmt::Display for Unjudgeable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unjudgeable::Backslash => "a backslash, which IIS and some Java servers read as `/`",
            Unjudgeable::ControlChar => "a control character",
            Unjudgeable::BadPercent => {
                "a `%` not followed by two hex digits (IIS reads `%u002e` as `.`)"
            }
            Unjudgeable::EncodedSeparator => {
                "an encoded `/` or `\\` (`%2f`, `%5c`), a separator to some servers and not to others"
            }
            Unjudgeable::EncodedPercent => {
                "an encoded `%` (`%25`): double encoding, another path to servers that decode twice"
            }
            Unjudgeable::EncodedNul => "an encoded NUL (`%00`), where servers written in C end the path",
            Unjudgeable::EncodedControl => "an encoded control character",
            Unjudgeable::InvalidUtf8 => {
                "escapes that are not valid UTF-8 (lenient decoders read the overlong `%c0%ae` as `.`)"
            }
            Unjudgeable::DotSegmentParams => {
                "`;` parameters on a dot segment (`..;`), which Tomcat, Jetty and Spring read as `..`"
            }
        })
    }
}

/// The readings of a request path (without its query) that a server may act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readings<'a> {
    normalised: Cow<'a, str>,
    as_sent: Cow<'a, str>,
    servlet: Cow<'a, str>,
}

/// Which reading of a path; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    Normalised,
    AsSent,
    Servlet,
}

impl Reading {
    /// How a denial names the servers that read a path this way.
    pub fn who(self) -> &'static str {
        match self {
            Reading::Normalised => "servers that remove dot segments (RFC 3986)",
            Reading::AsSent => "routers that match the path as sent",
            Reading::Servlet => "Tomcat, Jetty and Spring (`;` parameters stripped)",
        }
    }
}

impl<'a> Readings<'a> {
    /// The readings of `path`, or why it has no reliable one. Allocates only for paths with
    /// escapes, `;`, dot segments or empty segments.
    pub fn of(path: &'a str) -> Result<Self, Unjudgeable> {
        if is_plain(path) {
            return Ok(Self {
                normalised: Cow::Borrowed(path),
                as_sent: Cow::Borrowed(path),
                servlet: Cow::Borrowed(path),
            });
        }
        let as_sent = decode_unreserved(path)?;
        if as_sent.split('/').any(dot_segment_with_params) {
            return Err(Unjudgeable::DotSegmentParams);
        }
        let normalised = remove_dot_segments(&as_sent);
        let servlet = remove_dot_segments(&merge_slashes(&strip_params(&as_sent)));
        Ok(Self {
            normalised: Cow::Owned(normalised),
            as_sent: Cow::Owned(as_sent),
            servlet: Cow::Owned(servlet),
        })
    }

    /// Whether servers may disagree about the path (some reading differs from another).
    pub fn differ(&self) -> bool {
        self.normalised != self.as_sent || self.as_sent != self.servlet
    }

    /// The RFC 3986 normalised path (what most servers act on).
    pub fn normalised(&self) -> &str {
        &self.normalised
    }

    /// Every reading with its name.
    pub fn each(&self) -> [(Reading, &str); 3] {
        [
            (Reading::Normalised, &self.normalised),
            (Reading::AsSent, &self.as_sent),
            (Reading::Servlet, &self.servlet),
        ]
    }
}

/// No escape, `;`, backslash or control character, no dot segment and no empty segment
/// (`//`): every reading is the path itself.
fn is_plain(path: &str) -> bool {
    !path
        .bytes()
        .any(|c| matches!(c, b'%' | b';' | b'\\') || c.is_ascii_control())
        && !path.contains("//")
        && !path.split('/').any(|s| s == "." || s == "..")
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// One percent-decoding of the unreserved characters; other escapes stay, in upper case.
/// Refuses what no single decoding makes unambiguous (see [`Unjudgeable`]).
fn decode_unreserved(path: &str) -> Result<String, Unjudgeable> {
    let b = path.as_bytes();
    let mut out = String::with_capacity(b.len());
    // Every escape decoded, only to check that the bytes they stand for are UTF-8.
    let mut full = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'\\' {
            return Err(Unjudgeable::Backslash);
        }
        if c.is_ascii_control() {
            return Err(Unjudgeable::ControlChar);
        }
        if c != b'%' {
            // `path` is a str: copy whole characters.
            let len = utf8_len(c);
            let ch = &path[i..i + len];
            out.push_str(ch);
            full.extend_from_slice(ch.as_bytes());
            i += len;
            continue;
        }
        let (Some(h), Some(l)) = (
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(Unjudgeable::BadPercent);
        };
        let v = h << 4 | l;
        match v {
            b'/' | b'\\' => return Err(Unjudgeable::EncodedSeparator),
            b'%' => return Err(Unjudgeable::EncodedPercent),
            0 => return Err(Unjudgeable::EncodedNul),
            v if v.is_ascii_control() => return Err(Unjudgeable::EncodedControl),
            v if is_unreserved(v) => out.push(v as char),
            v => {
                out.push('%');
                out.push_str(&format!("{v:02X}"));
            }
        }
        full.push(v);
        i += 3;
    }
    if std::str::from_utf8(&full).is_err() {
        return Err(Unjudgeable::InvalidUtf8);
    }
    Ok(out)
}

/// The byte length of the UTF-8 character starting with `first`.
fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

/// `..;x`, `.;`, `..%3B`: a segment that is a dot segment once its `;` parameters are
/// stripped, but not before (so RFC 3986 keeps it and servlet containers remove it).
fn dot_segment_with_params(seg: &str) -> bool {
    if seg == "." || seg == ".." {
        return false;
    }
    let semi = [seg.find(';'), seg.find("%3B")].into_iter().flatten().min();
    semi.is_some_and(|at| matches!(&seg[..at], "." | ".."))
}

/// RFC 3986 §5.2.4 for an absolute path: `.` segments go, `..` removes the one before.
/// A path that does not start with `/` (`*`) is returned as is.
fn remove_dot_segments(path: &str) -> String {
    let Some(rest) = path.strip_prefix('/') else {
        return path.to_string();
    };
    let segs: Vec<&str> = rest.split('/').collect();
    let mut out: Vec<&str> = Vec::with_capacity(segs.len());
    for (i, s) in segs.iter().enumerate() {
        let last = i + 1 == segs.len();
        match *s {
            "." => {}
            ".." => {
                out.pop();
            }
            s => {
                out.push(s);
                continue;
            }
        }
        // A trailing dot segment leaves the directory: `/a/b/..` is `/a/`.
        if last {
            out.push("");
        }
    }
    format!("/{}", out.join("/"))
}

/// Every segment without its `;` parameters (`/a;v=1/b;jsessionid=x` is `/a/b`).
fn strip_params(path: &str) -> String {
    path.split('/')
        .map(|s| s.split(';').next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("/")
}

/// `//` as `/`, as Tomcat, nginx and Spring do.
fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

/// The text a path glob is matched with: unreserved escapes decoded (as paths are). Refuses a
/// glob that no judged path could ever match.
pub(super) fn normalise_glob(text: &str) -> Result<String, String> {
    let decoded = decode_unreserved(text)
        .map_err(|u| format!("path glob {text:?} can never match: it contains {u}"))?;
    let never = |why: &str| Err(format!("path glob {text:?} can never match: {why}"));
    if decoded.split('/').any(|s| s == "." || s == "..") {
        return never("paths are judged after their dot segments are removed");
    }
    if decoded.contains(';') || decoded.contains("%3B") {
        return never("servlet containers strip `;` parameters (`/a;b` is `/a` to Tomcat)");
    }
    if decoded.contains("//") {
        return never("servers merge `//` into `/`");
    }
    Ok(decoded)
}

/// A path glob: `*` is any run of characters except `/`, `**` any run at all. Its text is
/// normalised like a path (unreserved escapes decoded), so it is matched against readings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathGlob {
    text: String,
    toks: Vec<GlobTok>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GlobTok {
    Lit(u8),
    Star,
    DoubleStar,
}

/// Tokens per glob: the matcher keeps its state set in a u128.
const GLOB_MAX_TOKENS: usize = 127;

impl PathGlob {
    pub(super) fn parse(text: &str) -> Result<Self, String> {
        if !text.starts_with('/') {
            return Err(format!("path glob {text:?} must start with `/`"));
        }
        if text.contains(|c: char| c.is_ascii_control() || c == ' ' || c == '?' || c == '#') {
            return Err(format!(
                "path glob {text:?} contains a control character, space, `?` or `#`"
            ));
        }
        let text = normalise_glob(text)?;
        let b = text.as_bytes();
        let mut toks = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'*' {
                if b.get(i + 1) == Some(&b'*') {
                    toks.push(GlobTok::DoubleStar);
                    i += 2;
                } else {
                    toks.push(GlobTok::Star);
                    i += 1;
                }
            } else {
                toks.push(GlobTok::Lit(b[i]));
                i += 1;
            }
        }
        if toks.len() > GLOB_MAX_TOKENS {
            return Err(format!(
                "path glob is too long ({} > {GLOB_MAX_TOKENS} characters)",
                toks.len()
            ));
        }
        Ok(Self { text, toks })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// NFA simulation over the tokens: linear in the path, no allocation, no backtracking.
    pub fn matches(&self, path: &str) -> bool {
        let n = self.toks.len();
        let closure = |mut set: u128| {
            // A star may match nothing: state i (a star) also reaches i + 1.
            for (i, t) in self.toks.iter().enumerate() {
                if set & (1 << i) != 0 && matches!(t, GlobTok::Star | GlobTok::DoubleStar) {
                    set |= 1 << (i + 1);
                }
            }
            set
        };
        let mut set = closure(1);
        for &c in path.as_bytes() {
            let mut next: u128 = 0;
            for (i, t) in self.toks.iter().enumerate() {
                if set & (1 << i) == 0 {
                    continue;
                }
                match t {
                    GlobTok::Lit(l) if *l == c => next |= 1 << (i + 1),
                    GlobTok::Star if c != b'/' => next |= 1 << i,
                    GlobTok::DoubleStar => next |= 1 << i,
                    _ => {}
                }
            }
            if next == 0 {
                return false;
            }
            set = closure(next);
        }
        set & (1 << n) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readings(p: &str) -> [String; 3] {
        let r = Readings::of(p).unwrap_or_else(|u| panic!("{p}: {u}"));
        r.each().map(|(_, s)| s.to_string())
    }

    #[test]
    fn plain_paths_are_their_own_readings_without_allocating() {
        for p in [
            "/",
            "/ok/",
            "/ok/a",
            "/ok/a.b/.well-known/x",
            "/ok/...",
            "*",
            "",
        ] {
            let r = Readings::of(p).expect(p);
            for (_, s) in r.each() {
                assert_eq!(s, p);
            }
            assert!(
                matches!(r.normalised, Cow::Borrowed(_)),
                "{p} should take the fast path"
            );
        }
    }

    // One table per class of spelling (issue 17 §6): what each reading is, or why none is.

    #[test]
    fn dot_segments_plain_and_encoded() {
        // (path, normalised, as sent, servlet)
        let table = [
            ("/ok/../admin", "/admin", "/ok/../admin", "/admin"),
            ("/ok/./x", "/ok/x", "/ok/./x", "/ok/x"),
            ("/ok/a/..", "/ok/", "/ok/a/..", "/ok/"),
            ("/ok/a/.", "/ok/a/", "/ok/a/.", "/ok/a/"),
            ("/..", "/", "/..", "/"),
            ("/../../x", "/x", "/../../x", "/x"),
            ("/admin/../ok/x", "/ok/x", "/admin/../ok/x", "/ok/x"),
            ("/ok/%2e%2e/admin", "/admin", "/ok/../admin", "/admin"),
            ("/ok/%2E%2e/admin", "/admin", "/ok/../admin", "/admin"),
            ("/ok/.%2e/admin", "/admin", "/ok/../admin", "/admin"),
            ("/ok/%2e/x", "/ok/x", "/ok/./x", "/ok/x"),
            ("/ok//../admin", "/ok/admin", "/ok//../admin", "/admin"),
        ];
        for (p, n, s, t) in table {
            assert_eq!(readings(p), [n, s, t], "{p}");
        }
    }

    #[test]
    fn path_parameters() {
        let table = [
            ("/ok/a;v=1", "/ok/a;v=1", "/ok/a;v=1", "/ok/a"),
            (
                "/ok;jsessionid=1/x",
                "/ok;jsessionid=1/x",
                "/ok;jsessionid=1/x",
                "/ok/x",
            ),
            (
                "/ok/a.txt;.png",
                "/ok/a.txt;.png",
                "/ok/a.txt;.png",
                "/ok/a.txt",
            ),
            ("/ok/;/x", "/ok/;/x", "/ok/;/x", "/ok/x"),
        ];
        for (p, n, s, t) in table {
            assert_eq!(readings(p), [n, s, t], "{p}");
        }
        for p in [
            "/ok/..;/admin",
            "/ok/..;x=1/admin",
            "/ok/.;/x",
            "/ok/..%3b/admin",
            "/ok/%2e%2e;/admin",
            "/ok/.%2E;/admin",
        ] {
            assert_eq!(Readings::of(p), Err(Unjudgeable::DotSegmentParams), "{p}");
        }
    }

    #[test]
    fn escapes_of_unreserved_characters_are_decoded_once() {
        let table = [
            ("/ok/%7Euser", "/ok/~user"),
            ("/ok/%41%62c", "/ok/Abc"),
            ("/ok/a%2Db%5Fc", "/ok/a-b_c"),
            // Others stay escaped, in upper case (RFC 3986 §6.2.2.1).
            ("/ok/a%20b", "/ok/a%20b"),
            ("/ok/caf%c3%a9", "/ok/caf%C3%A9"),
            ("/ok/a%3fb", "/ok/a%3Fb"),
            ("/ok/a%3bb", "/ok/a%3Bb"),
            ("/ok/caf\u{e9}", "/ok/caf\u{e9}"),
        ];
        for (p, n) in table {
            assert_eq!(readings(p), [n, n, n], "{p}");
        }
    }

    #[test]
    fn double_encoding_invalid_utf8_nul_and_separators_are_unjudgeable() {
        use Unjudgeable::*;
        let table = [
            ("/ok/%252e%252e/admin", EncodedPercent),
            ("/ok/%25", EncodedPercent),
            ("/ok/%c0%ae%c0%ae/admin", InvalidUtf8),
            ("/ok/%C0%AE", InvalidUtf8),
            ("/ok/%e0%80%ae", InvalidUtf8),
            ("/ok/%ff", InvalidUtf8),
            ("/ok/%c3", InvalidUtf8),
            ("/ok/%ed%a0%80", InvalidUtf8), // a UTF-16 surrogate
            ("/ok/x%00", EncodedNul),
            ("/ok/..%00/admin", EncodedNul),
            ("/ok/a%0d%0ab", EncodedControl),
            ("/ok/a%7f", EncodedControl),
            ("/ok/..%2fadmin", EncodedSeparator),
            ("/ok/a%2Fb", EncodedSeparator),
            ("/ok/..%5cadmin", EncodedSeparator),
            ("/ok\\..\\admin", Backslash),
            ("/ok/%u002e%u002e/admin", BadPercent),
            ("/ok/%", BadPercent),
            ("/ok/%4", BadPercent),
            ("/ok/%zz", BadPercent),
            ("/ok/a\tb", ControlChar),
        ];
        for (p, want) in table {
            assert_eq!(Readings::of(p), Err(want), "{p}");
        }
    }

    /// Random paths from the pieces that matter: never a panic; a judged path's normalised
    /// reading has no dot segment left; an unjudgeable one is refused whatever follows it.
    #[test]
    fn random_paths_never_panic_and_normalise_fully() {
        const PIECES: &[&str] = &[
            "/", "ok", ".", "..", ";", "%2e", "%2E", "%25", "%00", "%c0%ae", "%C3%A9", "%7e",
            "%2f", "%5c", "\\", "%", "%u", "a", "\u{e9}", "//", "%3b", "x=1", "~",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let mut p = String::from("/");
            for _ in 0..(seed % 9) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                p.push_str(PIECES[(seed % PIECES.len() as u64) as usize]);
            }
            seed = seed.wrapping_add(1);
            if let Ok(r) = Readings::of(&p) {
                for (reading, s) in r.each() {
                    if reading != Reading::AsSent {
                        assert!(!s.split('/').any(|x| x == "." || x == ".."), "{p} -> {s}");
                    }
                    assert!(s.starts_with('/'), "{p} -> {s}");
                }
            }
        }
    }

    #[test]
    fn globs_are_normalised_like_paths() {
        assert_eq!(normalise_glob("/ok/%7E*").as_deref(), Ok("/ok/~*"));
        assert_eq!(normalise_glob("/ok/**").as_deref(), Ok("/ok/**"));
        assert_eq!(normalise_glob("/caf%c3%a9").as_deref(), Ok("/caf%C3%A9"));
        for (g, why) in [
            ("/ok/../x", "dot segments"),
            ("/ok/%2e%2e/x", "dot segments"),
            ("/ok/a;b", "`;` parameters"),
            ("/ok//x", "merge"),
            ("/ok/%2f", "encoded `/`"),
            ("/ok/%25", "encoded `%`"),
            ("/ok/%c0%ae", "UTF-8"),
            ("/ok/%zz", "two hex digits"),
        ] {
            let e = normalise_glob(g).expect_err(g);
            assert!(e.contains(why) && e.contains("can never match"), "{g}: {e}");
        }
    }
}
