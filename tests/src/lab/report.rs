//! The lab's report (markdown): client × mode → ok/fail + seconds; client × denial way → the
//! client's status and first line, whether its output names egress-agent or a reason code, and
//! what exec's stderr said.

use std::fmt::Write as _;
use std::time::Duration;

use super::clients::{Client, SniWay};
use super::run::{Case, Mode, Outcome, Way};

fn find<'a>(outcomes: &'a [Outcome], client: &str, case: Case) -> Option<&'a Outcome> {
    outcomes
        .iter()
        .find(|o| o.client == client && o.case == case)
}

/// Text for a table cell: one line, pipes escaped, at most `max` characters.
fn cell(text: &str, max: usize) -> String {
    let one = text.replace('|', "\\|").replace('`', "'");
    let mut s: String = one.chars().take(max).collect();
    if one.chars().count() > max {
        s.push('…');
    }
    s
}

fn mode_cell(o: Option<&Outcome>) -> String {
    match o {
        None => "—".into(),
        Some(o) if o.ok() => format!("ok {:.1} s", o.secs),
        Some(o) => format!("**fail** {:.1} s", o.secs),
    }
}

fn denial_cell(o: Option<&Outcome>) -> String {
    match o {
        None => "n/a".into(),
        Some(o) => {
            let first = o.first_lines(1).first().copied().unwrap_or("(nothing)");
            let names = if o.explains() { "**yes**" } else { "no" };
            let result = if o.ok() { "**ALLOWED** " } else { "" };
            format!(
                "{result}{}: `{}` · explains: {names}",
                o.status(),
                cell(first, 100)
            )
        }
    }
}

fn exec_cell(o: Option<&Outcome>) -> String {
    match o {
        None => "n/a".into(),
        Some(o) => match o.exec_denials().as_slice() {
            [] => "(nothing)".into(),
            lines => {
                // The message, without tracing's timestamp and level.
                let l = &lines[0];
                let msg = l.split_once(": ").map(|(_, m)| m).unwrap_or(l);
                format!("{} line(s): `{}`", lines.len(), cell(msg, 110))
            }
        },
    }
}

/// `target/clients-report.md`: `$CARGO_TARGET_DIR`, else the target directory the running test
/// binary lives in (`target/debug/deps/clients-…`).
pub fn default_path() -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            let exe = std::env::current_exe().ok()?;
            Some(exe.ancestors().nth(3)?.to_path_buf())
        })
        .unwrap_or_else(|| std::path::PathBuf::from("target"));
    target.join("clients-report.md")
}

fn deny(way: Way) -> Case {
    Case {
        mode: Mode::Inspect,
        way: Some(way),
    }
}

/// The whole report.
pub fn markdown(
    clients: &[&Client],
    outcomes: &[Outcome],
    wall: Duration,
    workers: usize,
) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Real clients under `egress-agent exec` (issue 16)\n\n\
         Written by `cargo test -p egress-tests --test clients`: {} runs, {workers} at a time, \
         {:.0} s wall. Every client runs against real servers in the test's fake internet \
         (tests/src/lab); nothing is downloaded.\n",
        outcomes.len(),
        wall.as_secs_f64()
    );
    md.push_str(
        "## Allowed: client × mode\n\n\
         *direct*: no enforcement, the test CA by the client's own setting (proves the set-up); \
         *passthrough*: `exec --policy passthrough.toml`, same trust setting; *inspect*: `exec \
         --trust-ca --policy inspect.toml` and **no** per-tool setting (only what --trust-ca sets).\n\n\
         | client | what | direct | passthrough | inspect (--trust-ca only) |\n|---|---|---|---|---|\n",
    );
    for c in clients {
        let at = |mode| mode_cell(find(outcomes, c.name, Case { mode, way: None }));
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            c.name,
            c.what,
            at(Mode::Direct),
            at(Mode::Passthrough),
            at(Mode::Inspect)
        );
    }
    md.push_str(
        "\n## Denied: client × way → the client's status and first line\n\n\
         Under `exec --trust-ca --policy inspect.toml`. *name*: a name in no policy, served by \
         the same server; *sni*: that name at the allowed name's address (how: last column); \
         *path*: the allowed, inspected host asked for a path its rule refuses. *explains*: the \
         client's output (stdout+stderr) names `egress-agent` or a reason code.\n\n\
         | client | name | sni | path | sni how |\n|---|---|---|---|---|\n",
    );
    let mut total = 0;
    let mut explained = 0;
    for c in clients {
        for w in Way::ALL {
            if let Some(o) = find(outcomes, c.name, deny(w)) {
                total += 1;
                explained += usize::from(o.explains());
            }
        }
        let how = match c.sni_way {
            SniWay::Flag(f) => f.to_string(),
            SniWay::Hosts => "/etc/hosts (private mount ns)".to_string(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {how} |",
            c.name,
            denial_cell(find(outcomes, c.name, deny(Way::Name))),
            denial_cell(find(outcomes, c.name, deny(Way::Sni))),
            denial_cell(find(outcomes, c.name, deny(Way::Path))),
        );
    }
    let _ = writeln!(
        md,
        "\n**{explained} of {total} denials explain themselves in the client's own output.**\n"
    );
    let unenforced: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.case.mode == Mode::Direct && o.case.way.is_some())
        .collect();
    let failed: Vec<String> = unenforced
        .iter()
        .filter(|o| !o.ok())
        .map(|o| format!("{} {}", o.client, o.case.label()))
        .collect();
    if failed.is_empty() {
        let _ = writeln!(
            md,
            "Without enforcement, each of these {} requests succeeds (the set-up is real).\n",
            unenforced.len()
        );
    } else {
        let _ = writeln!(
            md,
            "Without enforcement, these FAILED (the set-up is broken): {}\n",
            failed.join(", ")
        );
    }
    md.push_str(
        "## Denied: what exec's stderr printed about it\n\n\
         Lines naming a reason code or saying deny/denied (exec's start-up lines left out).\n\n\
         | client | name | sni | path |\n|---|---|---|---|\n",
    );
    for c in clients {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            c.name,
            exec_cell(find(outcomes, c.name, deny(Way::Name))),
            exec_cell(find(outcomes, c.name, deny(Way::Sni))),
            exec_cell(find(outcomes, c.name, deny(Way::Path))),
        );
    }
    md.push_str("\n## Every failed or denied run: the first lines\n\n");
    for o in outcomes.iter().filter(|o| !o.ok()) {
        let _ = writeln!(
            md,
            "- **{} {}** ({}; {}):",
            o.client,
            o.case.label(),
            o.status(),
            o.check.as_ref().err().map(String::as_str).unwrap_or("")
        );
        for l in o.first_lines(6) {
            let _ = writeln!(md, "  `{}`", cell(l, 160));
        }
        for l in o.exec_lines() {
            let _ = writeln!(md, "  exec: `{}`", cell(&l, 200));
        }
    }
    md
}
