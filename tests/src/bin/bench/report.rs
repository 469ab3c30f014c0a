//! Samples, medians and ranges, ratios to direct; `bench/RESULTS.md` and the JSON files.

use std::{collections::BTreeMap, fmt::Write as _};

use serde_json::{json, Value};

use crate::env::Config;

/// How a figure is compared with direct's in the same run.
#[derive(Clone, Copy, PartialEq)]
pub enum Vs {
    /// `+N unit` (latencies).
    Delta,
    /// `N×` (throughput, rates).
    Ratio,
    /// Direct has no such figure (proxy CPU, proxy memory).
    None,
}

pub struct Metric {
    pub id: String,
    pub unit: &'static str,
    pub vs: Vs,
}

#[derive(Default)]
pub struct Results {
    pub metrics: Vec<Metric>,
    /// metric id → config → one sample per round.
    pub samples: BTreeMap<String, BTreeMap<Config, Vec<f64>>>,
    /// (workload, config) → (client errors, upstream errors), summed over every run.
    pub errors: BTreeMap<(String, Config), (u64, u64)>,
    /// Every run, as measured.
    pub raw: Vec<Value>,
    pub notes: Vec<String>,
}

pub fn median_range(v: &[f64]) -> (f64, f64, f64) {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if s.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    let med = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    (med, s[0], s[n - 1])
}

fn fmt(x: f64) -> String {
    if x.is_nan() {
        "—".into()
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

impl Results {
    pub fn metric(&mut self, id: &str, unit: &'static str, vs: Vs) {
        if !self.metrics.iter().any(|m| m.id == id) {
            self.metrics.push(Metric {
                id: id.into(),
                unit,
                vs,
            });
        }
    }

    pub fn add(&mut self, id: &str, c: Config, v: f64) {
        self.samples
            .entry(id.into())
            .or_default()
            .entry(c)
            .or_default()
            .push(v);
    }

    pub fn errors(&mut self, workload: &str, c: Config, client: u64, upstream: u64) {
        let e = self.errors.entry((workload.into(), c)).or_default();
        e.0 += client;
        e.1 += upstream;
    }

    pub fn cell(&self, m: &Metric, c: Config) -> String {
        let Some(v) = self.samples.get(&m.id).and_then(|s| s.get(&c)) else {
            return "—".into();
        };
        let (med, lo, hi) = median_range(v);
        let mut s = format!("{} ({}–{})", fmt(med), fmt(lo), fmt(hi));
        let direct = self
            .samples
            .get(&m.id)
            .and_then(|s| s.get(&Config::Direct))
            .map(|d| median_range(d).0);
        if let (Some(d), true) = (direct, c != Config::Direct) {
            match m.vs {
                Vs::Delta => {
                    let _ = write!(s, "<br>{:+} {}", fmt(med - d), m.unit);
                }
                Vs::Ratio if (med / d).is_finite() => {
                    let _ = write!(s, "<br>{:.2}×", med / d);
                }
                Vs::Ratio => {}
                Vs::None => {}
            }
        }
        s
    }

    pub fn markdown(&self, configs: &[Config], header: &str) -> String {
        let mut out = String::from(header);
        out.push_str("\n| workload · figure | unit |");
        for c in configs {
            let _ = write!(out, " {} |", c.label());
        }
        out.push_str("\n|---|---|");
        for _ in configs {
            out.push_str("---|");
        }
        out.push('\n');
        for m in &self.metrics {
            let _ = write!(out, "| {} | {} |", m.id, m.unit);
            for c in configs {
                let _ = write!(out, " {} |", self.cell(m, *c));
            }
            out.push('\n');
        }
        out.push_str("\nCells: median (min–max) of the rounds; second line: difference or ratio to **direct** \
                      measured in the same run.\n\n### Errors (client-side errors + non-200 / upstream TLS and HTTP errors, every run summed)\n\n\
                      | workload |");
        for c in configs {
            let _ = write!(out, " {} |", c.label());
        }
        out.push_str("\n|---|");
        for _ in configs {
            out.push_str("---|");
        }
        out.push('\n');
        let workloads: std::collections::BTreeSet<&String> =
            self.errors.keys().map(|(w, _)| w).collect();
        for w in workloads {
            let _ = write!(out, "| {w} |");
            for c in configs {
                match self.errors.get(&(w.clone(), *c)) {
                    Some((a, b)) => {
                        let _ = write!(out, " {a} / {b} |");
                    }
                    None => out.push_str(" — |"),
                }
            }
            out.push('\n');
        }
        if !self.notes.is_empty() {
            out.push_str("\n### Notes\n\n");
            for n in &self.notes {
                let _ = writeln!(out, "- {n}");
            }
        }
        out
    }

    pub fn summary_json(&self, configs: &[Config], machine: &Value) -> Value {
        let mut figures = serde_json::Map::new();
        for m in &self.metrics {
            let mut per = serde_json::Map::new();
            for c in configs {
                if let Some(v) = self.samples.get(&m.id).and_then(|s| s.get(c)) {
                    let (med, lo, hi) = median_range(v);
                    per.insert(
                        c.name().into(),
                        json!({"median": med, "min": lo, "max": hi, "samples": v}),
                    );
                }
            }
            figures.insert(m.id.clone(), json!({"unit": m.unit, "configs": per}));
        }
        let errors: Vec<Value> = self
            .errors
            .iter()
            .map(|((w, c), (a, b))| {
                json!({"workload": w, "config": c.name(), "client_errors": a, "upstream_errors": b})
            })
            .collect();
        json!({"machine": machine, "figures": figures, "errors": errors, "notes": self.notes})
    }

    /// Whether every configuration finished every workload without an error.
    pub fn zero_errors(&self) -> bool {
        self.errors.values().all(|(a, b)| *a == 0 && *b == 0)
    }
}
