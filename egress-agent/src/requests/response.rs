//! What goes back to the client: the upstream's response with the request's audit record
//! riding on its body, the deny contract as a response, and hop-by-hop header hygiene.

use std::{sync::Arc, time::Instant};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;

use super::metered::{BoxError, Charged, Cut};
use crate::{
    attachment::Attachment,
    budget::{Dir, Meter},
    deny::Denial,
    record::Record,
};

pub type Body = BoxBody<Bytes, BoxError>;

/// The upstream's response, whose body writes the request's record when it ends (or the
/// client goes away), with the bytes actually relayed, each charged to `meter`.
pub fn audited(
    resp: Response<Incoming>,
    att: Arc<Attachment>,
    rec: Record,
    started: Instant,
    meter: Option<Arc<Meter>>,
) -> Response<Body> {
    let meter = meter.map(|m| (m, Dir::Down, Cut::default()));
    resp.map(|inner| {
        Audited {
            body: Charged::new(inner, meter),
            done: Some((att, rec, started)),
        }
        .boxed()
    })
}

/// The agent could not do its part (not a policy refusal): 502 with the reason.
pub fn bad_gateway(code: &str, host: &str, port: u16, reason: &str) -> Response<Body> {
    let body = serde_json::json!({"error": code, "host": host, "port": port, "reason": reason})
        .to_string();
    Response::builder()
        .status(StatusCode::BAD_GATEWAY)
        .header(
            "proxy-status",
            format!("egress-agent; error=proxy_internal_error; details={code:?}"),
        )
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(full(body))
        .unwrap_or_else(|_| Response::new(full(String::new())))
}

pub fn content_length(v: &Option<HeaderValue>) -> u64 {
    v.as_ref()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A response body that counts what it relays and writes the request's audit record when it
/// is done or dropped. Over a budget it relays the bytes that fit, then fails (the client
/// sees the response cut, never a shorter one that looks complete).
pub struct Audited {
    body: Charged<Incoming>,
    done: Option<(Arc<Attachment>, Record, Instant)>,
}

impl hyper::body::Body for Audited {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        let p = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(f))) = &p {
            if let (Some(d), Some((_, rec, _))) = (f.data_ref(), self.done.as_mut()) {
                rec.bytes_down += d.len() as u64;
            }
        }
        p
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Audited {
    fn drop(&mut self) {
        if let Some((att, mut rec, started)) = self.done.take() {
            if let Some(x) = self.body.cut() {
                x.record_cut(&mut rec);
            }
            rec.duration_ms = started.elapsed().as_millis() as u64;
            att.shared.audit.record(rec);
        }
    }
}

fn full(s: String) -> Body {
    Full::new(Bytes::from(s))
        .map_err(|never| match never {})
        .boxed()
}

/// The deny contract (DESIGN.md §6) as a hyper response: the same status, `Proxy-Status`
/// and JSON body as [`Denial::http_response`], without `Connection: close` (each later
/// request on the connection is judged on its own; HTTP/2 forbids the header anyway).
pub fn denial_response(d: &Denial, grpc: bool) -> Response<Body> {
    let mut body = d.json_body();
    body.push('\n');
    let status = StatusCode::from_u16(d.status()).unwrap_or(StatusCode::FORBIDDEN);
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&d.proxy_status()) {
        h.insert("proxy-status", v);
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if grpc {
        as_grpc_status(&mut resp, d);
    } else {
        // HTTP/1.1 only: HTTP/2 has no reason phrase.
        if let Ok(p) = hyper::ext::ReasonPhrase::try_from(d.reason_phrase(status)) {
            resp.extensions_mut().insert(p);
        }
    }
    resp
}

/// Whether a request is a gRPC call (its denial then takes gRPC's own form).
pub fn is_grpc(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// gRPC's form of a denial, which gRPC clients print (for a 403 they show only "status 403"):
/// trailers-only, HTTP 200, `grpc-status` 7 PERMISSION_DENIED (8 RESOURCE_EXHAUSTED for a
/// budget) with the code and reason as `grpc-message`, no messages.
fn as_grpc_status(resp: &mut Response<Body>, d: &Denial) {
    *resp.status_mut() = StatusCode::OK;
    *resp.body_mut() = Body::default();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    let status = match d.code {
        crate::deny::DenyCode::BudgetExceeded => "8",
        _ => "7",
    };
    h.insert("grpc-status", HeaderValue::from_static(status));
    let message = grpc_message(&format!("egress-agent: {}: {}", d.code.as_str(), d.reason));
    if let Ok(v) = HeaderValue::from_str(&message) {
        h.insert("grpc-message", v);
    }
}

/// `grpc-message` is percent-encoded (gRPC over HTTP/2: everything but printable ASCII other
/// than `%`).
fn grpc_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Connection-specific headers (RFC 9110 §7.6.1) and those the Connection header names.
/// `keep_upgrade`: a WebSocket request keeps `Connection: upgrade` and `Upgrade`.
pub fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !(keep_upgrade && n == header::UPGRADE))
        .collect();
    for n in named {
        h.remove(n);
    }
    // `TE: trailers` is the one TE value HTTP/2 allows, and gRPC needs it end to end.
    let te_trailers = h
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for n in [
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "transfer-encoding",
    ] {
        h.remove(n);
    }
    if te_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        h.remove(header::CONNECTION);
        h.remove(header::UPGRADE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deny::DenyCode;

    fn denial() -> Denial {
        Denial {
            code: DenyCode::PathNotAllowed,
            host: "api.test".into(),
            port: 443,
            reason: "path \"/x\" is not allowed, 100%".into(),
            rule: None,
            policy: "v1".into(),
            hint: String::new(),
        }
    }

    #[test]
    fn a_denial_names_egress_agent_in_its_status_line() {
        let r = denial_response(&denial(), false);
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let phrase = r.extensions().get::<hyper::ext::ReasonPhrase>().unwrap();
        assert_eq!(
            phrase.as_bytes(),
            b"Forbidden by egress-agent: path_not_allowed"
        );
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
    }

    #[test]
    fn a_refused_grpc_call_gets_permission_denied_with_the_reason() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        assert!(is_grpc(&h));
        let r = denial_response(&denial(), true);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "7");
        assert_eq!(
            r.headers()["grpc-message"],
            "egress-agent: path_not_allowed: path \"/x\" is not allowed, 100%25"
        );
        assert!(r.headers().contains_key("proxy-status"));
    }
}
