//! How a refused connection is answered on each kind of connection (DESIGN.md §6).

use tokio::{io::AsyncWriteExt, net::TcpStream};

use crate::{
    deny::{Denial, DenyCode},
    peek::tls::AlertDescription,
    policy::{Denied, Policy},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// TLS: an `access_denied` alert, then close (or, when the sandbox trusts the agent's
    /// CA, a minted certificate and a 403).
    Tls,
    /// Plain HTTP: 403 with Proxy-Status and the JSON body.
    Http,
    /// An explicit CONNECT: the same 403, before the tunnel exists.
    Connect,
    /// Opaque TCP: a reset.
    Reset,
}

impl Reply {
    pub fn label(self) -> &'static str {
        match self {
            Reply::Tls => "tls",
            Reply::Http => "http",
            Reply::Connect => "connect",
            Reply::Reset => "opaque",
        }
    }
}

/// Why a connection is refused, and how to say it on this connection.
#[derive(Debug)]
pub struct Refusal {
    pub reply: Reply,
    pub code: DenyCode,
    /// The name (or what the client sent for one) the refusal is about; may be empty.
    pub host: String,
    pub port: u16,
    pub reason: String,
    pub rule: Option<String>,
    pub hint: String,
}

impl Refusal {
    /// A refusal no policy rule made (the connection itself was unacceptable).
    pub fn new(
        reply: Reply,
        code: DenyCode,
        host: impl Into<String>,
        port: u16,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            reply,
            code,
            host: host.into(),
            port,
            reason: reason.into(),
            rule: None,
            hint: String::new(),
        }
    }

    /// The policy's own refusal of `host:port`.
    pub fn by_policy(reply: Reply, d: Denied, host: &str, port: u16) -> Self {
        Self {
            rule: d.rule.map(|r| r.to_string()),
            hint: d.hint,
            ..Self::new(reply, d.code, host, port, d.reason)
        }
    }

    /// The deny contract's record of this refusal under `policy`.
    pub fn denial(&self, policy: &Policy) -> Denial {
        Denial {
            code: self.code,
            host: self.host.clone(),
            port: self.port,
            reason: self.reason.clone(),
            rule: self.rule.clone(),
            policy: policy.version().to_string(),
            hint: self.hint.clone(),
        }
    }
}

pub async fn send(mut client: TcpStream, reply: Reply, denial: &Denial) {
    match reply {
        Reply::Tls => {
            // `access_denied` for every refusal, a denied name included: `unrecognized_name`
            // reads as a misconfigured server, not as a policy decision.
            let alert = crate::peek::tls::alert(AlertDescription::AccessDenied);
            let _ = client.write_all(&alert).await;
            let _ = client.shutdown().await;
        }
        Reply::Http | Reply::Connect => {
            let status = crate::deny::status_for(denial.code);
            let _ = client.write_all(&denial.http_response(status)).await;
            let _ = client.shutdown().await;
        }
        Reply::Reset => reset(client),
    }
}

/// Close with RST (SO_LINGER 0), the documented answer for opaque TCP.
pub fn reset(client: TcpStream) {
    // Linger 0 makes close() send RST at once; it never blocks with a zero timeout.
    let _ = socket2::SockRef::from(&client).set_linger(Some(std::time::Duration::ZERO));
    drop(client);
}

pub fn json_ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{}",
        body.len(),
        body
    )
    .into_bytes()
}
