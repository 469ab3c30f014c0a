//! `cargo xtask modules`: the agent's module graph and its longest functions, from the source
//! text alone (no compiler plugin, so anyone can rerun it on any checkout).
//!
//! - Nodes are files (`interceptor::upstream` is `src/interceptor/upstream.rs`); an edge is a
//!   `crate::…` path (in a `use` or inline) or a `super::…` path that leaves the file.
//! - Circles are the strongly connected components with more than one node, at file level and
//!   at top-level-module level (`interceptor::*` folded into `interceptor`).
//! - Function length: lines from `fn` to its closing brace, tests (`#[cfg(test)]` modules and
//!   `tests.rs` files) excluded.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

/// Modules a connection passes through (the data path), for the function-length report.
const CONNECTION_PATH: &[&str] = &[
    "interceptor",
    "passthrough",
    "inspect",
    "requests",
    "upstream",
    "dns",
    "copy",
    "deny",
    "http_proxy",
    "tls",
    "status",
];

pub fn run(src: &Path, top_functions: usize) -> Result<()> {
    let files = rust_files(src)?;
    let mut texts = BTreeMap::new();
    for f in &files {
        let module = module_of(src, f);
        if module == "tests" || module.ends_with("::tests") {
            continue;
        }
        let text = std::fs::read_to_string(f).with_context(|| f.display().to_string())?;
        texts.insert(module, strip_tests(&strip_comments_and_strings(&text)));
    }
    let known: BTreeSet<String> = texts.keys().cloned().collect();

    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, text) in &texts {
        let deps = edges.entry(module.clone()).or_default();
        for path in referenced_paths(module, text) {
            if let Some(target) = resolve(&path, &known) {
                if &target != module && !is_ancestor(&target, module) {
                    deps.insert(target);
                }
            }
        }
    }
    let top_edges = fold_to_top(&edges);

    println!("## top-level modules: imports");
    for (m, deps) in &top_edges {
        let d: Vec<&str> = deps.iter().map(String::as_str).collect();
        println!(
            "{m:<14} -> {}",
            if d.is_empty() {
                "-".into()
            } else {
                d.join(", ")
            }
        );
    }
    println!();
    print_circles("top-level circles", &top_edges);
    print_circles("file-level circles", &edges);

    let mut fns = Vec::new();
    for (module, text) in &texts {
        fns.extend(
            function_lengths(text)
                .into_iter()
                .map(|(name, len)| (len, module.clone(), name)),
        );
    }
    fns.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let on_path = |m: &str| CONNECTION_PATH.contains(&m.split("::").next().unwrap_or(m));
    println!(
        "## longest functions on the connection path ({})",
        CONNECTION_PATH.join(", ")
    );
    for (len, module, name) in fns.iter().filter(|f| on_path(&f.1)).take(top_functions) {
        println!("{len:>5}  {module}::{name}");
    }
    println!();
    println!("## longest functions elsewhere");
    for (len, module, name) in fns.iter().filter(|f| !on_path(&f.1)).take(top_functions) {
        println!("{len:>5}  {module}::{name}");
    }
    Ok(())
}

fn rust_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| d.display().to_string())? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `src/a/b.rs` → `a::b`; `src/a/mod.rs` → `a`; `src/lib.rs` → `crate`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap_or(file).with_extension("");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|l| l == "mod") {
        parts.pop();
    }
    if parts == ["lib"] || parts == ["main"] {
        return format!("crate({})", parts[0]);
    }
    parts.join("::")
}

fn is_ancestor(a: &str, b: &str) -> bool {
    b.starts_with(a) && b[a.len()..].starts_with("::")
}

/// Every `crate::x::y` path (expanding `use crate::{a::b, c}` groups) and every `super::` path,
/// made absolute, as a list of segments.
fn referenced_paths(module: &str, text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (prefix, base) in [("crate::", Vec::new()), ("super::", parent_of(module))] {
        let mut rest = text;
        while let Some(i) = rest.find(prefix) {
            let before = rest[..i].chars().last();
            rest = &rest[i + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            for p in expand(rest) {
                let mut full = base.clone();
                full.extend(p);
                out.push(full);
            }
        }
    }
    out
}

fn parent_of(module: &str) -> Vec<String> {
    let mut parts: Vec<String> = module.split("::").map(str::to_string).collect();
    parts.pop();
    parts
}

/// The paths at the start of `s`: `a::b::C` or `{a::b, c::{d, e}}`.
fn expand(s: &str) -> Vec<Vec<String>> {
    let s = s.trim_start();
    if let Some(inner) = s.strip_prefix('{') {
        let mut depth = 1;
        let mut end = inner.len();
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        return split_top(&inner[..end])
            .into_iter()
            .flat_map(expand)
            .collect();
    }
    let mut segs = Vec::new();
    let mut rest = s;
    loop {
        let ident: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if ident.is_empty() {
            break;
        }
        rest = &rest[ident.len()..];
        segs.push(ident);
        match rest.strip_prefix("::") {
            Some(r) if r.trim_start().starts_with('{') => {
                return expand(r)
                    .into_iter()
                    .map(|tail| segs.iter().cloned().chain(tail).collect())
                    .collect();
            }
            Some(r) => rest = r,
            None => break,
        }
    }
    if segs.is_empty() {
        Vec::new()
    } else {
        vec![segs]
    }
}

fn split_top(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// The longest known module that is a prefix of the path.
fn resolve(path: &[String], known: &BTreeSet<String>) -> Option<String> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|m| known.contains(m))
}

fn fold_to_top(edges: &BTreeMap<String, BTreeSet<String>>) -> BTreeMap<String, BTreeSet<String>> {
    let top = |m: &str| m.split("::").next().unwrap_or(m).to_string();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, deps) in edges {
        let t = top(m);
        let entry = out.entry(t.clone()).or_default();
        for d in deps {
            if top(d) != t {
                entry.insert(top(d));
            }
        }
    }
    out
}

fn print_circles(title: &str, edges: &BTreeMap<String, BTreeSet<String>>) {
    let circles: Vec<Vec<String>> = sccs(edges).into_iter().filter(|c| c.len() > 1).collect();
    println!("## {title}: {}", circles.len());
    for c in circles {
        println!("  {}", c.join(" <-> "));
    }
    println!();
}

/// Tarjan's strongly connected components.
fn sccs(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        on: BTreeSet<&'a str>,
        stack: Vec<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        t.index.insert(v, t.next);
        t.low.insert(v, t.next);
        t.next += 1;
        t.stack.push(v);
        t.on.insert(v);
        if let Some(ws) = t.edges.get(v) {
            for w in ws {
                let w = w.as_str();
                if !t.index.contains_key(w) {
                    visit(t, w);
                    let lw = t.low[w];
                    let lv = t.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if t.on.contains(w) {
                    let iw = t.index[w];
                    let lv = t.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
        }
        if t.low[v] == t.index[v] {
            let mut c = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                c.push(w.to_string());
                if w == v {
                    break;
                }
            }
            c.sort();
            t.out.push(c);
        }
    }
    let mut t = T {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        on: BTreeSet::new(),
        stack: Vec::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

/// Comments and string/char literal contents blanked (kept as spaces so line numbers hold).
fn strip_comments_and_strings(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                if b[i] == b'\n' {
                    out.push('\n');
                }
                i += 1;
            }
            i += 2;
        } else if c == b'r'
            && (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#'))
            && !prev_ident(b, i)
        {
            // Raw string: r"…", r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push(c as char);
                i += 1;
                continue;
            }
            j += 1;
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            while j < b.len() && !b[j..].starts_with(&close) {
                if b[j] == b'\n' {
                    out.push('\n');
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j + close.len();
        } else if c == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                if i < b.len() && b[i] == b'\n' {
                    out.push('\n');
                }
                i += 1;
            }
            out.push_str("\"\"");
            i += 1;
        } else if c == b'\'' && is_char_literal(b, i) {
            let mut j = i + 1;
            if b.get(j) == Some(&b'\\') {
                j += 1;
            }
            while j < b.len() && b[j] != b'\'' {
                j += 1;
            }
            out.push_str("' '");
            i = j + 1;
        } else {
            // Copy one UTF-8 character.
            let ch = text[i..].chars().next().unwrap_or(' ');
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

fn prev_ident(b: &[u8], i: usize) -> bool {
    i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')
}

/// `'x'`, `'\n'`, `'\u{..}'` — not a lifetime `'a`.
fn is_char_literal(b: &[u8], i: usize) -> bool {
    match (b.get(i + 1), b.get(i + 2)) {
        (Some(b'\\'), _) => true,
        (Some(_), Some(b'\'')) => true,
        _ => {
            // A multi-byte character: find the closing quote within 5 bytes.
            b.get(i + 1).is_some_and(|c| *c >= 0x80)
                && b[i + 1..(i + 6).min(b.len())].contains(&b'\'')
        }
    }
}

/// Blanks `#[cfg(test)] mod … { … }` blocks; files named `tests` are dropped by the caller's
/// module names (they only hold tests).
fn strip_tests(text: &str) -> String {
    let mut out = text.to_string();
    while let Some(i) = out.find("#[cfg(test)]") {
        let after = &out[i..];
        let Some(open) = after.find('{') else { break };
        let end = matching_brace(after, open).map_or(out.len(), |e| i + e + 1);
        let blank: String = out[i..end]
            .chars()
            .map(|c| if c == '\n' { '\n' } else { ' ' })
            .collect();
        out.replace_range(i..end, &blank);
    }
    out
}

fn matching_brace(s: &str, open: usize) -> Option<usize> {
    let mut depth = 0;
    for (i, c) in s[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(open + i);
                }
            }
            _ => {}
        }
    }
    None
}

/// (name, lines) of every `fn` with a body.
fn function_lengths(text: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let mut search = 0;
    while let Some(rel) = text[search..].find("fn ") {
        let at = search + rel;
        search = at + 3;
        if prev_ident(text.as_bytes(), at) {
            continue;
        }
        let name: String = text[at + 3..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() {
            continue;
        }
        // The body starts at the first `{` before any `;` (a declaration without body has `;`).
        let tail = &text[at..];
        let (Some(open), semi) = (tail.find('{'), tail.find(';')) else {
            continue;
        };
        if semi.is_some_and(|s| s < open) {
            continue;
        }
        let Some(close) = matching_brace(tail, open) else {
            continue;
        };
        let lines = tail[..close].matches('\n').count() + 1;
        out.push((name, lines));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_use_groups_and_inline_paths() {
        let text = "use crate::{agent::Attachment, peek::{self, http::Target}};\nfn f() { crate::copy::bidirectional(); super::respond::x(); }";
        let mut paths: Vec<String> = referenced_paths("interceptor::mod_like", text)
            .into_iter()
            .map(|p| p.join("::"))
            .collect();
        paths.sort();
        assert_eq!(
            paths,
            [
                "agent::Attachment",
                "copy::bidirectional",
                "interceptor::respond::x",
                "peek::http::Target",
                "peek::self"
            ]
        );
    }

    #[test]
    fn finds_circles() {
        let mut e: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        e.insert("a".into(), ["b".to_string()].into());
        e.insert("b".into(), ["a".to_string(), "c".to_string()].into());
        e.insert("c".into(), BTreeSet::new());
        let c: Vec<_> = sccs(&e).into_iter().filter(|c| c.len() > 1).collect();
        assert_eq!(c, vec![vec!["a".to_string(), "b".to_string()]]);
    }

    #[test]
    fn measures_functions_and_ignores_strings() {
        let t = strip_comments_and_strings("fn a() {\n let s = \"}\";\n}\nfn b();\nfn c() { }\n");
        assert_eq!(
            function_lengths(&t),
            vec![("a".to_string(), 3), ("c".to_string(), 1)]
        );
    }
}
