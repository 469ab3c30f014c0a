//! How a denial is spoken on each kind of connection (DESIGN.md §6).

use tokio::{io::AsyncWriteExt, net::TcpStream};

use crate::{
    deny::{Denial, DenyCode},
    peek::tls::AlertDescription,
    policy::Policy,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// TLS not under inspection: an alert, then close.
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

pub fn denial(
    policy: &Policy,
    code: DenyCode,
    host: String,
    port: u16,
    reason: String,
    rule: Option<String>,
    hint: String,
) -> Denial {
    Denial {
        code,
        host,
        port,
        reason,
        rule,
        policy: policy.version().to_string(),
        hint,
    }
}

pub async fn send(mut client: TcpStream, reply: Reply, denial: &Denial) {
    match reply {
        Reply::Tls => {
            let desc = if denial.code == DenyCode::HostNotAllowed {
                AlertDescription::UnrecognizedName
            } else {
                AlertDescription::AccessDenied
            };
            let _ = client.write_all(&crate::peek::tls::alert(desc)).await;
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
