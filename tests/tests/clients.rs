//! Real clients under the real `egress-agent exec` against real registries and servers in the
//! fake internet (issue 16; the lab is tests/src/lab). One test runs every client in every mode
//! and every denial, writes `target/clients-report.md` and checks each run against the tables
//! below, which say what holds **today**: when a fix lands, flip its entries.
//!
//! Always asserted, whatever the tables say: every request succeeds without enforcement (the
//! set-up is real, also for the denied requests) and every denial fails.
//!
//! `LAB_ONLY=pip,npm` runs some clients only; `LAB_WORKERS=N` (default 3) runs N at a time;
//! `LAB_VERBOSE=1` prints a line per run as it ends.

use std::time::Instant;

use egress_tests::lab::clients::{self, Client};
use egress_tests::lab::run::{self, Case, Mode, Outcome, Way};
use egress_tests::lab::{report, Lab};
use egress_tests::require_root;

/// Whether an allowed request succeeds.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Allowed {
    Ok,
    Fails,
}
use Allowed::{Fails, Ok};

/// Allowed requests: (client, [direct, passthrough under exec, inspect under exec --trust-ca with
/// no per-tool setting]).
const ALLOWED: &[(&str, [Allowed; 3])] = &[
    ("pip", [Ok, Ok, Ok]),
    ("npm", [Ok, Ok, Ok]),
    ("git-https", [Ok, Ok, Ok]),
    ("git-daemon", [Ok, Ok, Ok]),
    ("cargo", [Ok, Ok, Ok]),
    ("go", [Ok, Ok, Ok]),
    ("java", [Ok, Ok, Ok]),
    // grpcio: GRPC_DEFAULT_SSL_ROOTS_FILE_PATH, set by exec --trust-ca.
    ("grpc", [Ok, Ok, Ok]),
    ("websocket", [Ok, Ok, Ok]),
    ("curl-h2", [Ok, Ok, Ok]),
    // GnuTLS reads the system store, which exec --trust-ca's mount namespace shows.
    ("wget", [Ok, Ok, Ok]),
    ("openssl", [Ok, Ok, Ok]),
];

/// What a denial shows: in the client's own output (`egress-agent` or the reason code), and as a
/// line on exec's stderr. Every denial fails either way.
#[derive(Clone, Copy, PartialEq, Debug)]
struct Shown {
    client: bool,
    exec: bool,
}
/// Only exec's stderr says what happened.
const EXEC: Shown = Shown {
    client: false,
    exec: true,
};
/// The client's own output says it, and so does exec's stderr.
const BOTH: Shown = Shown {
    client: true,
    exec: true,
};

/// Denied requests, under exec --trust-ca: (client, [a name in no policy, another SNI on the
/// allowed address, a path the rule refuses]); `None`: the way does not apply.
///
/// A denied name resolves to the agent (`dns_deny = "explain"`) and, like another SNI on an
/// allowed address, is answered inside TLS (a certificate minted for it, since the sandbox
/// trusts the agent's CA) with the 403 and its JSON body; exec prints one line per denial.
/// `EXEC` rows: the client gets the 403 but shows only its status, or never gets that far.
const DENIED: &[(&str, [Option<Shown>; 3])] = &[
    // pip shows no HTTP body: "Could not find a version that satisfies the requirement".
    ("pip", [Some(EXEC), Some(EXEC), Some(EXEC)]),
    ("npm", [Some(BOTH), Some(BOTH), Some(BOTH)]),
    // git: "The requested URL returned error: 403"; it shows a body only when it is
    // text/plain (as "remote: ..." lines), and the contract's body is JSON.
    ("git-https", [Some(EXEC), Some(EXEC), Some(EXEC)]),
    // Opaque TCP: reset (no request to judge by path, no protocol to say anything in).
    ("git-daemon", [Some(EXEC), Some(EXEC), None]),
    ("cargo", [Some(BOTH), Some(BOTH), Some(BOTH)]),
    // go prints the status line, no body: a refused name's connection is HTTP/1.1 with
    // "403 Forbidden by egress-agent: host_not_allowed"; the path rule's 403 is h2, which has
    // no reason phrase (go shows a body only when it is text/plain; the contract's is JSON).
    ("go", [Some(BOTH), Some(BOTH), Some(EXEC)]),
    ("java", [Some(BOTH), Some(BOTH), Some(BOTH)]),
    // Every refused gRPC call gets grpc-status 7 with the reason, which grpcio prints.
    ("grpc", [Some(BOTH), Some(BOTH), Some(BOTH)]),
    // websockets: "server rejected WebSocket connection: HTTP 403", no body.
    ("websocket", [Some(EXEC), Some(EXEC), Some(EXEC)]),
    ("curl-h2", [Some(BOTH), Some(BOTH), Some(BOTH)]),
    // wget (HTTP/1.1) prints the status line: "ERROR 403: Forbidden by egress-agent: CODE."
    ("wget", [Some(BOTH), Some(BOTH), Some(BOTH)]),
    ("openssl", [Some(BOTH), Some(BOTH), Some(BOTH)]),
];

fn selected() -> Vec<&'static Client> {
    let only = std::env::var("LAB_ONLY").unwrap_or_default();
    let names: Vec<&str> = only.split(',').filter(|s| !s.is_empty()).collect();
    for n in &names {
        assert!(clients::by_name(n).is_some(), "LAB_ONLY: no client {n:?}");
    }
    clients::ALL
        .iter()
        .filter(|c| names.is_empty() || names.contains(&c.name))
        .collect()
}

fn describe(o: &Outcome) -> String {
    format!(
        "{} {} ({}; {:?}): {:?} / exec: {:?}",
        o.client,
        o.case.label(),
        o.status(),
        o.check,
        o.first_lines(3),
        o.exec_denials()
    )
}

/// Every mismatch between the outcomes and the tables, one line each.
fn mismatches(outcomes: &[Outcome]) -> Vec<String> {
    let mut bad = Vec::new();
    for o in outcomes {
        let row = |t: &str| format!("{t}: {}", describe(o));
        match o.case.way {
            None => {
                let (_, want) = ALLOWED.iter().find(|(c, _)| *c == o.client).unwrap();
                let i = Mode::ALL.iter().position(|m| *m == o.case.mode).unwrap();
                let got = if o.ok() { Ok } else { Fails };
                if got != want[i] {
                    bad.push(row(&format!("expected {:?}, got {got:?}", want[i])));
                }
            }
            Some(_) if o.case.mode == Mode::Direct => {
                if !o.ok() {
                    bad.push(row("without enforcement this request must succeed"));
                }
            }
            Some(way) => {
                if o.ok() {
                    bad.push(row(
                        "DENIAL BYPASSED: the request succeeded under enforcement",
                    ));
                }
                let (_, want) = DENIED.iter().find(|(c, _)| *c == o.client).unwrap();
                let i = Way::ALL.iter().position(|w| *w == way).unwrap();
                let got = Shown {
                    client: o.explains(),
                    exec: !o.exec_denials().is_empty(),
                };
                if want[i] != Some(got) {
                    bad.push(row(&format!("expected {:?}, got {got:?}", want[i])));
                }
            }
        }
    }
    bad
}

#[test]
fn every_client_has_one_row_in_each_table_and_the_ways_match() {
    for c in clients::ALL {
        assert_eq!(
            ALLOWED.iter().filter(|(n, _)| *n == c.name).count(),
            1,
            "{}",
            c.name
        );
        let denied: Vec<_> = DENIED.iter().filter(|(n, _)| *n == c.name).collect();
        assert_eq!(denied.len(), 1, "{}", c.name);
        assert_eq!(denied[0].1[2].is_none(), c.paths.is_none(), "{}", c.name);
        let cases = run::cases(c);
        assert!(cases.contains(&Case {
            mode: Mode::Direct,
            way: Some(Way::Name)
        }));
    }
    assert_eq!(ALLOWED.len(), clients::ALL.len());
    assert_eq!(DENIED.len(), clients::ALL.len());
}

#[test]
fn real_clients_allowed_and_denied() {
    require_root!();
    let chosen = selected();
    let workers = std::env::var("LAB_WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(3);
    let t0 = Instant::now();
    let lab = Lab::start("clients");
    let outcomes = run::run_all(&lab, &chosen, workers);
    drop(lab);
    let wall = t0.elapsed();
    let md = report::markdown(&chosen, &outcomes, wall, workers);
    let path = report::default_path();
    std::fs::write(&path, &md).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    println!(
        "report: {} ({} runs, {:.0} s)",
        path.display(),
        outcomes.len(),
        wall.as_secs_f64()
    );
    let bad = mismatches(&outcomes);
    assert!(
        bad.is_empty(),
        "{} of {} runs differ from the tables (see {}):\n{}",
        bad.len(),
        outcomes.len(),
        path.display(),
        bad.join("\n")
    );
}
