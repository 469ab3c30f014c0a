//! The ask-mode endpoints of a control socket (the daemon's, or the one `exec --ask` serves):
//!
//! | method | path | body / query | answer |
//! | --- | --- | --- | --- |
//! | GET | `/v1/pending` | `?follow=1` | the pending decisions (JSON array); with `follow`, an event stream (one JSON object a line: `pending`, `approved`, `denied`, `expired`, `keepalive`) starting with every pending one |
//! | POST | `/v1/pending/ID/approve` | `{"scope": "once"\|"session"\|"save", "by"}` | `{id, scope, rule, policy?}`; 404 unknown ID; 422 (nothing changed) when `save` would leave the file invalid |
//! | POST | `/v1/pending/ID/deny` | `{"by"}` | `{id}` |

use std::{future::Future, path::Path, pin::Pin, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{channel::Channel, Either};
use hyper::{body::Incoming, Method, Request, Response};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use super::{body_json, error, json, Body, Reply};
use crate::ask::{save, Asks, Event, Scope, Verdict};
use crate::attachment::Shared;

/// The policy file behind a control socket, and how its owner reloads it.
pub trait PolicyFile: Send + Sync {
    /// `None`: the policy did not come from a file (`exec --allow`).
    fn path(&self) -> Option<&Path>;
    /// Reload the file; the new version, or the one-line reason it was refused.
    fn reload(&self) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + '_>>;
}

/// The policy file of a standalone agent (`exec`, a foreground `attach`), reloaded by itself:
/// an invalid file, or one without the profile, changes nothing.
pub struct StandaloneFile {
    pub shared: Arc<Shared>,
    pub path: Option<std::path::PathBuf>,
    pub profile: String,
    /// `exec --ask`: the profile stays in ask mode whatever the file says.
    pub keep_asking: bool,
}

impl PolicyFile for StandaloneFile {
    fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn reload(&self) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + '_>> {
        Box::pin(async move {
            let path = self.path.as_deref().ok_or("no policy file")?;
            let in_use = std::slice::from_ref(&self.profile);
            if !self.keep_asking {
                let res = self.shared.reload(path, in_use);
                self.shared.audit.metrics().reloaded(res.is_ok());
                return res;
            }
            let p = crate::policy::Policy::load(path).map_err(|e| e.to_string())?;
            if !p.has_profile(&self.profile) {
                return Err(format!(
                    "{}: profile `{}` is in use but not defined",
                    path.display(),
                    self.profile
                ));
            }
            let p = p.asking(&self.profile);
            let version = p.version().to_string();
            self.shared.policy.store(Arc::new(p));
            Ok(version)
        })
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ApproveBody {
    scope: Option<String>,
    by: Option<String>,
}

/// Events are tiny; a follower this far behind loses some (and is told).
const FOLLOW_BUFFER: usize = 64;
/// A follower that went away is noticed at the next line at the latest.
const KEEPALIVE: Duration = Duration::from_secs(10);

/// Whether `path` is one of these endpoints.
pub fn owns(path: &str) -> bool {
    path == "/v1/pending" || path.starts_with("/v1/pending/")
}

pub async fn route(
    req: Request<Incoming>,
    shared: &Arc<Shared>,
    file: &dyn PolicyFile,
) -> Response<Body> {
    let asks = &shared.asks;
    let path = req.uri().path().to_string();
    let follow = super::query_pairs(req.uri().query().unwrap_or(""))
        .iter()
        .any(|(k, v)| k == "follow" && v != "0");
    let left = |r: Reply| r.map(Either::Left);
    if path == "/v1/pending" {
        return match (req.method(), follow) {
            (&Method::GET, true) => stream(shared.clone()),
            (&Method::GET, false) => left(json(200, &serde_json::json!(asks.list()))),
            _ => left(error(
                405,
                format!("method {} not allowed on {path}", req.method()),
            )),
        };
    }
    let rest = path.trim_start_matches("/v1/pending/");
    let Some((id, action)) = rest.split_once('/') else {
        return left(error(404, format!("no such endpoint {path}")));
    };
    let Ok(id) = id.parse::<u64>() else {
        return left(error(
            400,
            format!("{id:?} is not a pending decision's id (a number)"),
        ));
    };
    if req.method() != Method::POST {
        return left(error(
            405,
            format!("method {} not allowed on {path}", req.method()),
        ));
    }
    let body: ApproveBody = match body_json(req).await {
        Ok(b) => b,
        Err(e) => return left(e),
    };
    let by = body
        .by
        .filter(|b| !b.is_empty() && b.len() <= 64 && !b.chars().any(char::is_control))
        .unwrap_or_else(|| "control socket".into());
    left(match action {
        "approve" => approve(asks, file, id, body.scope.as_deref(), by).await,
        "deny" => match asks.decide(id, Verdict::Denied { by }) {
            Ok(s) => json(200, &serde_json::json!({"id": s.id, "denied": s.rule})),
            Err(e) => error(404, e),
        },
        _ => error(404, format!("no such endpoint {path}")),
    })
}

async fn approve(
    asks: &Asks,
    file: &dyn PolicyFile,
    id: u64,
    scope: Option<&str>,
    by: String,
) -> Reply {
    let scope = match scope.map(Scope::parse) {
        None => Scope::Once,
        Some(Some(s)) => s,
        Some(None) => {
            return error(400, "scope: expected \"once\", \"session\" or \"save\"");
        }
    };
    match approve_as(asks, file, id, scope, by).await {
        Ok(v) => json(200, &v),
        Err((status, e)) => error(status, e),
    }
}

/// Approves `id` (for `scope`; `save` writes and reloads the file first): the answer's JSON,
/// or the status and one-line reason nothing was done.
pub async fn approve_as(
    asks: &Asks,
    file: &dyn PolicyFile,
    id: u64,
    scope: Scope,
    by: String,
) -> Result<serde_json::Value, (u16, String)> {
    let Some(shown) = asks.get(id) else {
        return Err((404, crate::ask::DecideError::Unknown(id).to_string()));
    };
    let mut policy = None;
    let _saving = (scope == Scope::Save).then(|| asks.saving(id));
    if scope == Scope::Save {
        policy = Some(save_rule(file, &shown, &by).await.map_err(|e| (422, e))?);
    }
    let s = asks
        .decide(id, Verdict::Approved { scope, by })
        .map_err(|e| (404, e.to_string()))?;
    Ok(
        serde_json::json!({"id": s.id, "scope": scope, "rule": s.rule, "profile": s.profile, "policy": policy}),
    )
}

/// Saves are one at a time: each reads the file the previous one wrote.
static SAVING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Writes the rule into the file, then reloads it; a reload that refuses the file puts the
/// old text back (and reloads that), so nothing changes.
async fn save_rule(
    file: &dyn PolicyFile,
    shown: &crate::ask::Shown,
    by: &str,
) -> Result<String, String> {
    let _one = SAVING.lock().await;
    let path = file
        .path()
        .ok_or("--save: the policy did not come from a file (--allow); nothing to save into")?;
    let comment = format!(
        "approved by {by} at {} (egress-agent approve {} --save; asked by {} in cgroup {})",
        crate::record::Record::now(),
        shown.id,
        if shown.comm.is_empty() {
            "a DNS question"
        } else {
            &shown.comm
        },
        shown.cgroup_id
    );
    let old = save::save(path, &shown.profile, &shown.rule, &comment).map_err(|e| e.to_string())?;
    match file.reload().await {
        Ok(v) => Ok(v),
        Err(e) => {
            let put_back = save::restore(path, &old).map_err(|e| e.to_string());
            let _ = file.reload().await;
            Err(match put_back {
                Ok(()) => format!("{e} (the file was put back as it was)"),
                Err(p) => format!("{e}; and putting the file back failed: {p}"),
            })
        }
    }
}

/// `GET /v1/pending?follow=1`: every pending decision, then each event as it happens.
fn stream(shared: Arc<Shared>) -> Response<Body> {
    let (mut tx, body) = Channel::<Bytes>::new(FOLLOW_BUFFER);
    let mut rx = shared.asks.subscribe();
    let now = shared.asks.list();
    drop(shared);
    tokio::spawn(async move {
        for s in now {
            if tx.send_data(line(&Event::Pending(s))).await.is_err() {
                return;
            }
        }
        loop {
            let next = tokio::time::timeout(KEEPALIVE, rx.recv()).await;
            let data = match next {
                Err(_) => Bytes::from_static(b"{\"event\":\"keepalive\"}\n"),
                Ok(Ok(ev)) => line(&ev),
                Ok(Err(RecvError::Lagged(n))) => {
                    Bytes::from(format!("{{\"event\":\"lagged\",\"missed\":{n}}}\n"))
                }
                Ok(Err(RecvError::Closed)) => return,
            };
            if tx.send_data(data).await.is_err() {
                return;
            }
        }
    });
    let mut r = Response::new(Either::Right(body));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/x-ndjson"),
    );
    r
}

fn line(ev: &Event) -> Bytes {
    let mut v = serde_json::to_vec(ev).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}
