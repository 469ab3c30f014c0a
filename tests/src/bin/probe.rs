//! probe: the raw-socket client of the integration tests.
//!
//! Each subcommand performs exactly one kind of syscall sequence and prints ONE JSON line
//! `{"op", "target", "ok", "errno", "error", "stage", ...}` (`stage` names the syscall that failed).
//! The exit status is 0 whenever the line was printed, whatever the outcome.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv6Addr, Shutdown, SocketAddr, SocketAddrV6};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use egress_tests::sys;
use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::rdata::opt::EdnsOption;
use hickory_proto::rr::{Name, RData, RecordType};
use serde_json::{json, Map, Value};
use socket2::{Domain, Protocol, Socket, Type};

#[derive(Parser, Debug)]
#[command(about = "One syscall sequence, one JSON line")]
struct Cli {
    /// Timeout for every blocking step, in milliseconds.
    #[arg(long, global = true, default_value_t = 5000)]
    timeout_ms: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Debug, Clone)]
struct Io {
    /// Bytes to send after connecting (`\r` and `\n` escapes are expanded).
    #[arg(long)]
    send: Option<String>,
    /// Read the reply (until EOF, or until the peer stays silent for --idle-ms after some data).
    #[arg(long)]
    read: bool,
    /// shutdown(SHUT_WR) after sending (so echo servers close).
    #[arg(long)]
    shut_wr: bool,
    /// Silence, after the first reply bytes, that ends --read.
    #[arg(long, default_value_t = 500)]
    idle_ms: u64,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// socket + connect (+ send / read).
    Tcp {
        target: SocketAddr,
        #[command(flatten)]
        io: Io,
        /// Use an AF_INET6 socket even for an IPv4 target (connects to ::ffff:a.b.c.d).
        #[arg(long)]
        v6_socket: bool,
    },
    /// sendto(MSG_FASTOPEN) on a fresh TCP socket (+ read).
    TfoSendto {
        target: SocketAddr,
        #[command(flatten)]
        io: Io,
    },
    /// setsockopt(TCP_FASTOPEN_CONNECT) + connect (+ send / read).
    TfoConnect {
        target: SocketAddr,
        #[command(flatten)]
        io: Io,
    },
    /// io_uring IORING_OP_CONNECT (+ send / read).
    UringConnect {
        target: SocketAddr,
        #[command(flatten)]
        io: Io,
    },
    /// Unconnected UDP sendto.
    UdpSendto {
        target: SocketAddr,
        #[arg(long, default_value = "ping")]
        send: String,
        #[arg(long)]
        v6_socket: bool,
        #[arg(long)]
        expect_reply: bool,
    },
    /// One sendmmsg carrying --count datagrams.
    UdpSendmmsg {
        target: SocketAddr,
        #[arg(long, default_value = "ping")]
        send: String,
        #[arg(long, default_value_t = 2)]
        count: usize,
        #[arg(long)]
        v6_socket: bool,
        #[arg(long)]
        expect_reply: bool,
    },
    /// connect + send on a UDP socket.
    /// connect() a UDP socket and send nothing (how clients pick a source address).
    UdpConnect {
        target: SocketAddr,
        #[arg(long)]
        v6_socket: bool,
    },
    UdpConnectSend {
        target: SocketAddr,
        #[arg(long, default_value = "ping")]
        send: String,
        #[arg(long)]
        v6_socket: bool,
        #[arg(long)]
        expect_reply: bool,
    },
    /// A real DNS query (hickory-proto): rcode, answers, EDNS extended errors, reply source.
    Dns {
        server: IpAddr,
        name: String,
        #[arg(long = "type", default_value = "A")]
        qtype: String,
        #[arg(long, default_value_t = 53)]
        port: u16,
        /// DNS over TCP.
        #[arg(long)]
        tcp: bool,
        /// connect() the UDP socket, then send/recv.
        #[arg(long)]
        connected: bool,
        #[arg(long)]
        v6_socket: bool,
    },
    /// socket(SOCK_RAW, ICMP); with ADDR also send an echo request and wait for the reply.
    RawSocket {
        addr: Option<IpAddr>,
        #[arg(long)]
        v6: bool,
    },
    /// socket(SOCK_DGRAM, IPPROTO_ICMP[V6]) "ping socket", send an echo request, wait for the reply.
    PingSocket { addr: IpAddr },
    /// setsockopt(IP_OPTIONS, LSRR via HOPs), then connect.
    IpOptions {
        target: SocketAddr,
        /// Source-route hops (default: the target itself).
        #[arg(long)]
        via: Vec<std::net::Ipv4Addr>,
        /// Strict source route (SSRR) instead of loose.
        #[arg(long)]
        strict: bool,
        #[command(flatten)]
        io: Io,
    },
    /// setsockopt(IPV6_RTHDR, routing header via HOPs), then connect.
    Rthdr {
        target: SocketAddr,
        #[arg(long)]
        via: Vec<Ipv6Addr>,
        /// Routing header type: 4 (SRH, default), 0 (RH0, deprecated), 2 (mobility).
        #[arg(long = "type", default_value_t = 4)]
        rtype: u8,
        #[command(flatten)]
        io: Io,
    },
    /// unshare(CLONE_NEWUSER|CLONE_NEWNET), bring lo up, connect.
    UnshareConnect {
        target: SocketAddr,
        #[command(flatten)]
        io: Io,
    },
    /// --count TCP connections, --concurrency at a time; each sends --send ({i} = index) and reads
    /// the reply until EOF.
    Many {
        target: SocketAddr,
        #[arg(long, default_value_t = 100)]
        count: usize,
        #[arg(long, default_value_t = 10)]
        concurrency: usize,
        #[arg(long, default_value = "hello {i}\n")]
        send: String,
        /// Do not shutdown(SHUT_WR) after sending.
        #[arg(long)]
        no_shutdown: bool,
        /// Truncate each reported reply to this many bytes.
        #[arg(long, default_value_t = 200)]
        reply_max: usize,
    },
    /// Time `count` blocking connect() calls (socket creation and close not
    /// timed): per-call microseconds, for benchmark W4.
    ConnectLoop {
        target: SocketAddr,
        #[arg(long, default_value_t = 1000)]
        count: usize,
    },
    /// Scenarios of the cgroup gate (tests/tests/gate.rs).
    #[command(subcommand)]
    Gate(GateCmd),
    #[command(flatten)]
    Boundary(boundary::Cmd),
    /// HTTPS GET verified against a CA file (what "the container trusts the agent's CA
    /// through its system store" means, checked from inside).
    Https(https::Args),
}

/// The output line under construction.
struct Out(Map<String, Value>);

impl Out {
    fn new(op: &str, target: impl ToString) -> Out {
        let mut m = Map::new();
        m.insert("op".into(), json!(op));
        m.insert("target".into(), json!(target.to_string()));
        m.insert("ok".into(), json!(false));
        m.insert("errno".into(), Value::Null);
        m.insert("error".into(), Value::Null);
        Out(m)
    }
    fn set(&mut self, k: &str, v: impl Into<Value>) {
        self.0.insert(k.into(), v.into());
    }
    fn fail(mut self, stage: &str, e: &io::Error) -> Out {
        self.set("ok", false);
        self.set("stage", stage);
        self.set("errno", json!(e.raw_os_error()));
        self.set("error", e.to_string());
        self
    }
    fn ok(mut self) -> Out {
        self.set("ok", true);
        self
    }
    fn print(self) {
        let mut stdout = io::stdout().lock();
        let _ = writeln!(stdout, "{}", Value::Object(self.0));
        let _ = stdout.flush();
    }
}

type Step<T> = Result<T, (&'static str, io::Error)>;

fn at(stage: &'static str) -> impl FnOnce(io::Error) -> (&'static str, io::Error) {
    move |e| (stage, e)
}

fn unescape(s: &str) -> Vec<u8> {
    s.replace("\\r", "\r")
        .replace("\\n", "\n")
        .replace("\\t", "\t")
        .into_bytes()
}

fn mapped(target: SocketAddr, v6_socket: bool) -> SocketAddr {
    match (target, v6_socket) {
        (SocketAddr::V4(a), true) => {
            SocketAddr::V6(SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0))
        }
        _ => target,
    }
}

fn domain_of(a: &SocketAddr) -> Domain {
    if a.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    }
}

fn sa(s: &Socket, peer: bool) -> Value {
    let r = if peer { s.peer_addr() } else { s.local_addr() };
    r.ok()
        .and_then(|a| a.as_socket())
        .map(|a| json!(a.to_string()))
        .unwrap_or(Value::Null)
}

fn record_addrs(out: &mut Out, s: &Socket) {
    out.set("peer", sa(s, true));
    out.set("local", sa(s, false));
}

/// The --send / --shut-wr / --read part shared by the TCP subcommands.
fn tcp_io(out: &mut Out, s: &mut Socket, io_opts: &Io, timeout: Duration, sent: bool) -> Step<()> {
    if let (Some(data), false) = (&io_opts.send, sent) {
        s.write_all(&unescape(data)).map_err(at("send"))?;
    }
    if io_opts.shut_wr {
        s.shutdown(Shutdown::Write).map_err(at("shutdown"))?;
    }
    if io_opts.read {
        let mut reply = Vec::new();
        let mut buf = [0u8; 16384];
        let mut eof = false;
        loop {
            let t = if reply.is_empty() {
                timeout
            } else {
                Duration::from_millis(io_opts.idle_ms)
            };
            s.set_read_timeout(Some(t)).map_err(at("read"))?;
            match s.read(&mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => reply.extend_from_slice(&buf[..n]),
                Err(e)
                    if !reply.is_empty()
                        && matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                {
                    break
                }
                Err(e) => {
                    out.set("reply", String::from_utf8_lossy(&reply).into_owned());
                    return Err(("read", e));
                }
            }
        }
        out.set("reply", String::from_utf8_lossy(&reply).into_owned());
        out.set("eof", eof);
    }
    Ok(())
}

fn finish(out: Out, r: Step<()>) -> Out {
    match r {
        Ok(()) => out.ok(),
        Err((stage, e)) => out.fail(stage, &e),
    }
}

fn tcp_socket(target: &SocketAddr) -> Step<Socket> {
    Socket::new(domain_of(target), Type::STREAM, Some(Protocol::TCP)).map_err(at("socket"))
}

fn cmd_tcp(target: SocketAddr, io_opts: &Io, v6_socket: bool, timeout: Duration) -> Out {
    let dst = mapped(target, v6_socket);
    let mut out = Out::new("tcp", dst);
    let r = (|| {
        let mut s = tcp_socket(&dst)?;
        s.connect_timeout(&dst.into(), timeout)
            .map_err(at("connect"))?;
        record_addrs(&mut out, &s);
        tcp_io(&mut out, &mut s, io_opts, timeout, false)
    })();
    finish(out, r)
}

fn cmd_tfo_sendto(target: SocketAddr, io_opts: &Io, timeout: Duration) -> Out {
    let mut out = Out::new("tfo-sendto", target);
    let r = (|| {
        let mut s = tcp_socket(&target)?;
        s.set_write_timeout(Some(timeout)).map_err(at("socket"))?;
        let data = unescape(
            io_opts
                .send
                .as_deref()
                .unwrap_or("GET / HTTP/1.0\\r\\n\\r\\n"),
        );
        let n = s
            .send_to_with_flags(&data, &target.into(), libc::MSG_FASTOPEN)
            .map_err(at("sendto"))?;
        out.set("sent", n);
        record_addrs(&mut out, &s);
        tcp_io(&mut out, &mut s, io_opts, timeout, true)
    })();
    finish(out, r)
}

fn cmd_tfo_connect(target: SocketAddr, io_opts: &Io, timeout: Duration) -> Out {
    let mut out = Out::new("tfo-connect", target);
    let r = (|| {
        let mut s = tcp_socket(&target)?;
        sys::setsockopt_int(s.as_fd(), libc::IPPROTO_TCP, libc::TCP_FASTOPEN_CONNECT, 1)
            .map_err(at("setsockopt"))?;
        s.set_write_timeout(Some(timeout)).map_err(at("socket"))?;
        // With TCP_FASTOPEN_CONNECT, connect() returns at once; the SYN leaves with the first write.
        s.connect(&target.into()).map_err(at("connect"))?;
        record_addrs(&mut out, &s);
        tcp_io(&mut out, &mut s, io_opts, timeout, false)
    })();
    finish(out, r)
}

fn cmd_uring_connect(target: SocketAddr, io_opts: &Io, timeout: Duration) -> Out {
    let mut out = Out::new("uring-connect", target);
    let r = (|| {
        let mut s = tcp_socket(&target)?;
        sys::uring_connect(s.as_fd(), &target.into(), timeout).map_err(at("connect"))?;
        record_addrs(&mut out, &s);
        tcp_io(&mut out, &mut s, io_opts, timeout, false)
    })();
    finish(out, r)
}

fn udp_socket(dst: &SocketAddr, timeout: Duration) -> Step<Socket> {
    let s = Socket::new(domain_of(dst), Type::DGRAM, Some(Protocol::UDP)).map_err(at("socket"))?;
    s.set_read_timeout(Some(timeout)).map_err(at("socket"))?;
    Ok(s)
}

fn udp_reply(out: &mut Out, s: &Socket) -> Step<()> {
    let mut buf = vec![0u8; 65535];
    let (bytes, from) = recv_all(s, &mut buf).map_err(at("recv"))?;
    out.set("reply", String::from_utf8_lossy(&bytes).into_owned());
    out.set("from", json!(from.map(|a| a.to_string())));
    Ok(())
}

fn cmd_udp(
    op: &'static str,
    target: SocketAddr,
    send: &str,
    v6_socket: bool,
    expect_reply: bool,
    count: usize,
    timeout: Duration,
) -> Out {
    let dst = mapped(target, v6_socket);
    let mut out = Out::new(op, dst);
    let r = (|| {
        let s = udp_socket(&dst, timeout)?;
        let data = unescape(send);
        match op {
            "udp-sendto" => {
                let n = s.send_to(&data, &dst.into()).map_err(at("sendto"))?;
                out.set("sent", n);
            }
            "udp-sendmmsg" => {
                let payloads: Vec<&[u8]> = (0..count).map(|_| data.as_slice()).collect();
                let n =
                    sys::sendmmsg_to(s.as_fd(), &dst.into(), &payloads).map_err(at("sendmmsg"))?;
                out.set("sent", n);
            }
            "udp-connect" => {
                s.connect(&dst.into()).map_err(at("connect"))?;
                out.set("peer", sa(&s, true));
            }
            _ => {
                s.connect(&dst.into()).map_err(at("connect"))?;
                out.set("peer", sa(&s, true));
                let n = s.send(&data).map_err(at("send"))?;
                out.set("sent", n);
            }
        }
        out.set("local", sa(&s, false));
        if expect_reply {
            udp_reply(&mut out, &s)?;
        }
        Ok(())
    })();
    finish(out, r)
}

fn recv_all(s: &Socket, buf: &mut [u8]) -> io::Result<(Vec<u8>, Option<SocketAddr>)> {
    let (n, from) = sys::recv_from(s, buf)?;
    Ok((buf[..n].to_vec(), from))
}

#[allow(clippy::too_many_arguments)] // one flag per DNS transport knob
fn cmd_dns(
    server: IpAddr,
    port: u16,
    name: &str,
    qtype: &str,
    tcp: bool,
    connected: bool,
    v6_socket: bool,
    timeout: Duration,
) -> Out {
    let dst = mapped(SocketAddr::new(server, port), v6_socket);
    let mut out = Out::new("dns", dst);
    out.set("name", name);
    out.set("type", qtype);
    out.set("transport", if tcp { "tcp" } else { "udp" });
    let r = (|| {
        let rtype: RecordType = qtype
            .to_ascii_uppercase()
            .parse()
            .map_err(|_| ("query", io::Error::other(format!("bad --type {qtype}"))))?;
        let qname = Name::from_ascii(name).map_err(|e| ("query", io::Error::other(e)))?;
        let mut msg = Message::query();
        msg.metadata.recursion_desired = true;
        msg.add_query(Query::query(qname, rtype));
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        msg.set_edns(edns);
        let id = msg.metadata.id;
        let wire = msg.to_vec().map_err(|e| ("query", io::Error::other(e)))?;
        let (reply, from) = if tcp {
            let mut s = tcp_socket(&dst)?;
            s.connect_timeout(&dst.into(), timeout)
                .map_err(at("connect"))?;
            s.set_read_timeout(Some(timeout)).map_err(at("connect"))?;
            let mut framed = (wire.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&wire);
            s.write_all(&framed).map_err(at("send"))?;
            let mut len = [0u8; 2];
            s.read_exact(&mut len).map_err(at("recv"))?;
            let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
            s.read_exact(&mut body).map_err(at("recv"))?;
            let peer = s.peer_addr().ok().and_then(|a| a.as_socket());
            (body, peer)
        } else {
            let s = udp_socket(&dst, timeout)?;
            if connected {
                s.connect(&dst.into()).map_err(at("connect"))?;
                s.send(&wire).map_err(at("send"))?;
            } else {
                s.send_to(&wire, &dst.into()).map_err(at("sendto"))?;
            }
            let mut buf = vec![0u8; 65535];
            loop {
                let (bytes, from) = recv_all(&s, &mut buf).map_err(at("recv"))?;
                // Skip stray datagrams with another id.
                if bytes.len() >= 2 && u16::from_be_bytes([bytes[0], bytes[1]]) == id {
                    break (bytes, from);
                }
            }
        };
        out.set("from", json!(from.map(|a| a.to_string())));
        let resp = Message::from_vec(&reply).map_err(|e| ("parse", io::Error::other(e)))?;
        out.set("id_match", resp.metadata.id == id);
        out.set("rcode", resp.metadata.response_code.to_string());
        out.set("rcode_num", u16::from(resp.metadata.response_code));
        let mut answers = Vec::new();
        let mut ips = Vec::new();
        for rec in &resp.answers {
            let ip = match rec.data {
                RData::A(a) => Some(IpAddr::from(a.0)),
                RData::AAAA(a) => Some(IpAddr::from(a.0)),
                _ => None,
            };
            if let Some(ip) = ip {
                ips.push(ip.to_string());
            }
            answers.push(
                json!({"name": rec.name.to_ascii(), "type": rec.record_type().to_string(),
                "ttl": rec.ttl, "data": rec.data.to_string()}),
            );
        }
        out.set("answers", answers);
        out.set("ips", ips);
        let mut ede = Vec::new();
        if let Some(e) = &resp.edns {
            for (code, opt) in &e.options().options {
                if u16::from(*code) != 15 {
                    continue;
                }
                if let EdnsOption::Unknown(_, data) = opt {
                    let info = (data.len() >= 2).then(|| u16::from_be_bytes([data[0], data[1]]));
                    let text = data
                        .get(2..)
                        .map(|t| String::from_utf8_lossy(t).into_owned());
                    ede.push(json!({"info_code": info, "extra_text": text}));
                }
            }
        }
        out.set("ede", ede);
        Ok(())
    })();
    finish(out, r)
}

fn icmp_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn echo_request(v6: bool, id: u16, seq: u16) -> Vec<u8> {
    let mut p = vec![if v6 { 128 } else { 8 }, 0, 0, 0];
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(b"egress-tests-probe");
    if !v6 {
        let c = icmp_checksum(&p);
        p[2..4].copy_from_slice(&c.to_be_bytes());
    }
    p
}

/// Waits for an ICMP echo reply; `strip_ip` for raw IPv4 sockets (they deliver the IP header).
fn icmp_wait_reply(
    out: &mut Out,
    s: &Socket,
    v6: bool,
    strip_ip: bool,
    timeout: Duration,
) -> Step<()> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65535];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(("recv", io::Error::from_raw_os_error(libc::ETIMEDOUT)));
        }
        s.set_read_timeout(Some(left)).map_err(at("recv"))?;
        let (bytes, from) = recv_all(s, &mut buf).map_err(at("recv"))?;
        let icmp = if strip_ip && !bytes.is_empty() {
            let ihl = usize::from(bytes[0] & 0x0f) * 4;
            bytes.get(ihl..).unwrap_or(&[]).to_vec()
        } else {
            bytes
        };
        let want = if v6 { 129 } else { 0 };
        if icmp.first() == Some(&want) {
            out.set("reply", true);
            out.set("from", json!(from.map(|a| a.ip().to_string())));
            return Ok(());
        }
    }
}

fn cmd_raw(addr: Option<IpAddr>, v6: bool, timeout: Duration) -> Out {
    let v6 = v6 || addr.is_some_and(|a| a.is_ipv6());
    let mut out = Out::new(
        "raw-socket",
        addr.map(|a| a.to_string()).unwrap_or_default(),
    );
    let r = (|| {
        let (d, p) = if v6 {
            (Domain::IPV6, Protocol::ICMPV6)
        } else {
            (Domain::IPV4, Protocol::ICMPV4)
        };
        let s = Socket::new(d, Type::RAW, Some(p)).map_err(at("socket"))?;
        if let Some(a) = addr {
            s.send_to(&echo_request(v6, 0x4567, 1), &SocketAddr::new(a, 0).into())
                .map_err(at("sendto"))?;
            icmp_wait_reply(&mut out, &s, v6, !v6, timeout)?;
        }
        Ok(())
    })();
    finish(out, r)
}

fn cmd_ping(addr: IpAddr, timeout: Duration) -> Out {
    let v6 = addr.is_ipv6();
    let mut out = Out::new("ping-socket", addr);
    let r = (|| {
        let (d, p) = if v6 {
            (Domain::IPV6, Protocol::ICMPV6)
        } else {
            (Domain::IPV4, Protocol::ICMPV4)
        };
        let s = Socket::new(d, Type::DGRAM, Some(p)).map_err(at("socket"))?;
        s.send_to(&echo_request(v6, 0, 1), &SocketAddr::new(addr, 0).into())
            .map_err(at("sendto"))?;
        icmp_wait_reply(&mut out, &s, v6, false, timeout)
    })();
    finish(out, r)
}

fn cmd_ip_options(
    target: SocketAddr,
    via: &[std::net::Ipv4Addr],
    strict: bool,
    io_opts: &Io,
    timeout: Duration,
) -> Out {
    let mut out = Out::new("ip-options", target);
    let r = (|| {
        let SocketAddr::V4(t) = target else {
            return Err(("socket", io::Error::from_raw_os_error(libc::EAFNOSUPPORT)));
        };
        let hops: Vec<std::net::Ipv4Addr> = if via.is_empty() {
            vec![*t.ip()]
        } else {
            via.to_vec()
        };
        // Linux takes the first address as the first hop and fills the last slot with the
        // connect() destination (ip_options_compile / ip_options_build).
        let mut opt = vec![if strict { 0x89 } else { 0x83 }, 0, 4];
        for h in &hops {
            opt.extend_from_slice(&h.octets());
        }
        opt.extend_from_slice(&t.ip().octets());
        opt[1] = opt.len() as u8;
        while opt.len() % 4 != 0 {
            opt.push(0); // IPOPT_END
        }
        out.set(
            "route",
            json!(hops.iter().map(|h| h.to_string()).collect::<Vec<_>>()),
        );
        let mut s = tcp_socket(&target)?;
        sys::setsockopt_bytes(s.as_fd(), libc::IPPROTO_IP, libc::IP_OPTIONS, &opt)
            .map_err(at("setsockopt"))?;
        s.connect_timeout(&target.into(), timeout)
            .map_err(at("connect"))?;
        record_addrs(&mut out, &s);
        tcp_io(&mut out, &mut s, io_opts, timeout, false)
    })();
    finish(out, r)
}

fn cmd_rthdr(
    target: SocketAddr,
    via: &[Ipv6Addr],
    rtype: u8,
    io_opts: &Io,
    timeout: Duration,
) -> Out {
    let dst = mapped(target, true);
    let mut out = Out::new("rthdr", dst);
    let r = (|| {
        let SocketAddr::V6(t) = dst else {
            unreachable!()
        };
        let hops: Vec<Ipv6Addr> = if via.is_empty() {
            vec![*t.ip()]
        } else {
            via.to_vec()
        };
        let hdr = match rtype {
            4 => {
                // SRH (RFC 8754): segments listed last-to-first; segments[0] is the final destination.
                let mut segs = vec![*t.ip()];
                segs.extend(hops.iter().rev());
                let n = segs.len() as u8;
                let mut h = vec![0, 2 * n, 4, n - 1, n - 1, 0, 0, 0];
                for s in segs {
                    h.extend_from_slice(&s.octets());
                }
                h
            }
            2 => {
                let mut h = vec![0, 2, 2, 1, 0, 0, 0, 0];
                h.extend_from_slice(&hops[0].octets());
                h
            }
            _ => {
                // RH0: addresses after the first hop, ending with the final destination.
                let mut addrs: Vec<Ipv6Addr> = hops.iter().skip(1).copied().collect();
                addrs.push(*t.ip());
                let n = addrs.len() as u8;
                let mut h = vec![0, 2 * n, 0, n, 0, 0, 0, 0];
                for a in addrs {
                    h.extend_from_slice(&a.octets());
                }
                h
            }
        };
        out.set(
            "route",
            json!(hops.iter().map(|h| h.to_string()).collect::<Vec<_>>()),
        );
        out.set("rthdr_type", rtype);
        let mut s = tcp_socket(&dst)?;
        sys::setsockopt_bytes(s.as_fd(), libc::IPPROTO_IPV6, libc::IPV6_RTHDR, &hdr)
            .map_err(at("setsockopt"))?;
        s.connect_timeout(&dst.into(), timeout)
            .map_err(at("connect"))?;
        record_addrs(&mut out, &s);
        tcp_io(&mut out, &mut s, io_opts, timeout, false)
    })();
    finish(out, r)
}

fn cmd_unshare(target: SocketAddr, io_opts: &Io, timeout: Duration) -> Out {
    let mut out = Out::new("unshare-connect", target);
    let r = (|| {
        sys::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET).map_err(at("unshare"))?;
        sys::link_up("lo").map_err(at("link_up"))?;
        let mut s = tcp_socket(&target)?;
        s.connect_timeout(&target.into(), timeout)
            .map_err(at("connect"))?;
        record_addrs(&mut out, &s);
        tcp_io(&mut out, &mut s, io_opts, timeout, false)
    })();
    finish(out, r)
}

fn cmd_many(
    target: SocketAddr,
    count: usize,
    concurrency: usize,
    send: &str,
    shutdown: bool,
    reply_max: usize,
    timeout: Duration,
) -> Out {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut out = Out::new("many", target);
    let nofile = sys::raise_nofile().ok();
    out.set("nofile", json!(nofile));
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return out.fail("runtime", &e),
    };
    let start = Instant::now();
    let template = unescape(send);
    let results = rt.block_on(async move {
        let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
        let mut tasks = Vec::with_capacity(count);
        for i in 0..count {
            let permit = sem.clone().acquire_owned().await.unwrap();
            let payload = String::from_utf8_lossy(&template)
                .replace("{i}", &i.to_string())
                .into_bytes();
            tasks.push(tokio::spawn(async move {
                let _permit = permit;
                // The local port is reported even when the connection later
                // fails (e.g. reset by an enforcer), so callers can match it.
                let mut local: Option<u16> = None;
                let r = tokio::time::timeout(timeout, async {
                    let mut s = tokio::net::TcpStream::connect(target).await?;
                    local = Some(s.local_addr()?.port());
                    s.write_all(&payload).await?;
                    if shutdown {
                        s.shutdown().await?;
                    }
                    let mut reply = Vec::new();
                    s.read_to_end(&mut reply).await?;
                    Ok::<_, io::Error>(reply)
                })
                .await
                .unwrap_or_else(|_| Err(io::Error::from_raw_os_error(libc::ETIMEDOUT)));
                (i, local, r)
            }));
        }
        let mut res = Vec::with_capacity(count);
        for t in tasks {
            if let Ok(r) = t.await {
                res.push(r);
            }
        }
        res
    });
    let mut ok = 0usize;
    let mut errors: std::collections::BTreeMap<String, usize> = Default::default();
    let mut conns = Vec::with_capacity(results.len());
    for (i, port, r) in results {
        match r {
            Ok(reply) => {
                ok += 1;
                let cut = &reply[..reply.len().min(reply_max)];
                conns.push(json!([i, port, String::from_utf8_lossy(cut), null]));
            }
            Err(e) => {
                *errors
                    .entry(
                        e.raw_os_error()
                            .map(|n| n.to_string())
                            .unwrap_or(e.to_string()),
                    )
                    .or_default() += 1;
                conns.push(json!([i, port, null, e.raw_os_error()]));
            }
        }
    }
    let failed = count - ok;
    out.set("count", count);
    out.set("succeeded", ok);
    out.set("failed", failed);
    out.set("errors", json!(errors));
    out.set("elapsed_ms", start.elapsed().as_millis() as u64);
    out.set("conns", conns);
    if failed == 0 {
        out.ok()
    } else {
        out.set("error", format!("{failed} of {count} connections failed"));
        out
    }
}

fn cmd_connect_loop(target: SocketAddr, count: usize) -> Out {
    let mut out = Out::new("connect-loop", target);
    let mut us = Vec::with_capacity(count);
    let mut errnos: std::collections::BTreeMap<i32, usize> = Default::default();
    for _ in 0..count {
        let s = match Socket::new(domain_of(&target), Type::STREAM, Some(Protocol::TCP)) {
            Ok(s) => s,
            Err(e) => return out.fail("socket", &e),
        };
        let addr = socket2::SockAddr::from(target);
        let t0 = Instant::now();
        let r = s.connect(&addr);
        us.push(t0.elapsed().as_nanos() as f64 / 1000.0);
        if let Err(e) = r {
            *errnos.entry(e.raw_os_error().unwrap_or(-1)).or_default() += 1;
        }
        drop(s);
    }
    us.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| us[((us.len() as f64 - 1.0) * p) as usize];
    out.set("count", count);
    out.set("median_us", pct(0.5));
    out.set("p90_us", pct(0.9));
    out.set("p99_us", pct(0.99));
    out.set("mean_us", us.iter().sum::<f64>() / us.len() as f64);
    out.set("errnos", json!(errnos));
    out.ok()
}

// ---- gate scenarios (tests/tests/gate.rs) ------------------------------------

#[derive(Subcommand, Debug)]
enum GateCmd {
    /// Create the socket here, move this process into cgroup --to, then --op: the
    /// connect/sendmsg hooks judge the task's cgroup, not the socket's.
    Moved {
        target: SocketAddr,
        /// The cgroup v2 directory to move into.
        #[arg(long)]
        to: std::path::PathBuf,
        /// `tcp` (connect), `udp-sendto` (unconnected) or `udp-connect-send`.
        #[arg(long, default_value = "tcp")]
        op: String,
    },
    /// socket + connect a UDP socket, print `READY`, wait for a line on stdin,
    /// then send one datagram and wait for its echo: packets of a socket made
    /// before a change (gate installed, adoption released).
    WaitSend {
        target: SocketAddr,
        #[arg(long, default_value = "ping")]
        send: String,
    },
}

fn cmd_gate(cmd: &GateCmd, timeout: Duration) -> Out {
    match cmd {
        GateCmd::Moved { target, to, op } => cmd_gate_moved(*target, to, op, timeout),
        GateCmd::WaitSend { target, send } => cmd_gate_wait_send(*target, send, timeout),
    }
}

fn cmd_gate_moved(target: SocketAddr, to: &std::path::Path, op: &str, timeout: Duration) -> Out {
    let mut out = Out::new("gate-moved", target);
    out.set("moved_to", to.display().to_string());
    out.set("via", op);
    let r = (|| {
        let ty = if op == "tcp" {
            Type::STREAM
        } else {
            Type::DGRAM
        };
        let s = Socket::new(domain_of(&target), ty, None).map_err(at("socket"))?;
        s.set_read_timeout(Some(timeout)).map_err(at("socket"))?;
        // Writing 0 to cgroup.procs moves the writer itself.
        std::fs::write(to.join("cgroup.procs"), "0").map_err(at("move"))?;
        match op {
            "tcp" => {
                s.connect_timeout(&target.into(), timeout)
                    .map_err(at("connect"))?;
            }
            "udp-sendto" => {
                s.send_to(b"ping", &target.into()).map_err(at("sendto"))?;
                udp_reply(&mut out, &s)?;
            }
            _ => {
                s.connect(&target.into()).map_err(at("connect"))?;
                s.send(b"ping").map_err(at("send"))?;
                udp_reply(&mut out, &s)?;
            }
        }
        Ok(())
    })();
    finish(out, r)
}

fn cmd_gate_wait_send(target: SocketAddr, send: &str, timeout: Duration) -> Out {
    let mut out = Out::new("gate-wait-send", target);
    let r = (|| {
        let s = udp_socket(&target, timeout)?;
        s.connect(&target.into()).map_err(at("connect"))?;
        println!("READY");
        io::stdout().flush().map_err(at("ready"))?;
        let mut line = String::new();
        io::stdin().read_line(&mut line).map_err(at("wait"))?;
        s.send(&unescape(send)).map_err(at("send"))?;
        udp_reply(&mut out, &s)
    })();
    finish(out, r)
}

fn main() {
    let cli = Cli::parse();
    let t = Duration::from_millis(cli.timeout_ms);
    let out = match &cli.cmd {
        Cmd::Tcp {
            target,
            io,
            v6_socket,
        } => cmd_tcp(*target, io, *v6_socket, t),
        Cmd::TfoSendto { target, io } => cmd_tfo_sendto(*target, io, t),
        Cmd::TfoConnect { target, io } => cmd_tfo_connect(*target, io, t),
        Cmd::UringConnect { target, io } => cmd_uring_connect(*target, io, t),
        Cmd::UdpSendto {
            target,
            send,
            v6_socket,
            expect_reply,
        } => cmd_udp("udp-sendto", *target, send, *v6_socket, *expect_reply, 1, t),
        Cmd::UdpSendmmsg {
            target,
            send,
            count,
            v6_socket,
            expect_reply,
        } => cmd_udp(
            "udp-sendmmsg",
            *target,
            send,
            *v6_socket,
            *expect_reply,
            *count,
            t,
        ),
        Cmd::UdpConnect { target, v6_socket } => {
            cmd_udp("udp-connect", *target, "", *v6_socket, false, 1, t)
        }
        Cmd::UdpConnectSend {
            target,
            send,
            v6_socket,
            expect_reply,
        } => cmd_udp(
            "udp-connect-send",
            *target,
            send,
            *v6_socket,
            *expect_reply,
            1,
            t,
        ),
        Cmd::Dns {
            server,
            name,
            qtype,
            port,
            tcp,
            connected,
            v6_socket,
        } => cmd_dns(*server, *port, name, qtype, *tcp, *connected, *v6_socket, t),
        Cmd::RawSocket { addr, v6 } => cmd_raw(*addr, *v6, t),
        Cmd::PingSocket { addr } => cmd_ping(*addr, t),
        Cmd::IpOptions {
            target,
            via,
            strict,
            io,
        } => cmd_ip_options(*target, via, *strict, io, t),
        Cmd::Rthdr {
            target,
            via,
            rtype,
            io,
        } => cmd_rthdr(*target, via, *rtype, io, t),
        Cmd::UnshareConnect { target, io } => cmd_unshare(*target, io, t),
        Cmd::ConnectLoop { target, count } => cmd_connect_loop(*target, *count),
        Cmd::Gate(cmd) => cmd_gate(cmd, t),
        Cmd::Boundary(b) => boundary::run(b, t),
        Cmd::Https(a) => https::run(a, t),
        Cmd::Many {
            target,
            count,
            concurrency,
            send,
            no_shutdown,
            reply_max,
        } => cmd_many(
            *target,
            *count,
            *concurrency,
            send,
            !no_shutdown,
            *reply_max,
            t,
        ),
    };
    out.print();
}

// ---- THREATS F: getting out from under the enforcement (tests/tests/exec_boundary.rs) ----
// The raw calls live here rather than in egress_tests::sys: they exist only for these
// subcommands (to move to sys.rs when the lead merges the harness).
mod boundary {
    use super::{cmd_tcp, Io, Out};
    use serde_json::{json, Value};
    use std::io;
    use std::net::SocketAddr;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    #[derive(clap::Subcommand, Debug)]
    pub enum Cmd {
        /// Write "0" (this process) into PROCS (a `cgroup.procs`), then connect to TARGET.
        CgroupEscape {
            #[arg(long)]
            procs: std::path::PathBuf,
            target: SocketAddr,
            #[command(flatten)]
            io: Io,
        },
        /// clone3(CLONE_INTO_CGROUP, DIR); the child connects to TARGET (the parent does when
        /// the clone fails).
        Clone3Escape {
            #[arg(long)]
            cgroup: std::path::PathBuf,
            target: SocketAddr,
            #[command(flatten)]
            io: Io,
        },
        /// ptrace(PTRACE_SEIZE), process_vm_readv, /proc/PID/environ and kill(SIGNAL) on PID.
        TouchProcess {
            pid: i32,
            #[arg(long, default_value_t = 0)]
            signal: i32,
        },
        /// Install a seccomp filter failing unshare(2) with EPERM when its flags intersect
        /// --deny-unshare, and mount(2) with --deny-mount; then exec CMD.
        SeccompExec {
            #[arg(long, value_parser = parse_hex, default_value = "0")]
            deny_unshare: u64,
            #[arg(long)]
            deny_mount: bool,
            #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
            cmd: Vec<String>,
        },
    }

    fn parse_hex(s: &str) -> Result<u64, String> {
        u64::from_str_radix(s.trim_start_matches("0x"), 16).map_err(|e| e.to_string())
    }

    pub fn run(c: &Cmd, t: Duration) -> Out {
        match c {
            Cmd::CgroupEscape { procs, target, io } => cgroup_escape(procs, *target, io, t),
            Cmd::Clone3Escape { cgroup, target, io } => clone3_escape(cgroup, *target, io, t),
            Cmd::TouchProcess { pid, signal } => touch_process(*pid, *signal),
            Cmd::SeccompExec {
                deny_unshare,
                deny_mount,
                cmd,
            } => seccomp_exec(*deny_unshare, *deny_mount, cmd),
        }
    }

    fn own_cgroup() -> Value {
        std::fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("0::").map(str::to_string))
            })
            .map(Value::from)
            .unwrap_or(Value::Null)
    }

    fn errno_of(r: &io::Result<()>) -> Value {
        match r {
            Ok(()) => Value::Null,
            Err(e) => json!(e.raw_os_error()),
        }
    }

    fn merge(mut out: Out, tcp: Out) -> Out {
        for (k, v) in tcp.0 {
            if k != "op" {
                out.set(&k, v);
            }
        }
        out
    }

    fn cgroup_escape(procs: &std::path::Path, target: SocketAddr, io: &Io, t: Duration) -> Out {
        let mut out = Out::new("cgroup-escape", target);
        let moved = std::fs::write(procs, "0");
        out.set("escaped", moved.is_ok());
        out.set("escape_errno", errno_of(&moved));
        out.set("cgroup", own_cgroup());
        merge(out, cmd_tcp(target, io, false, t))
    }

    fn clone3_escape(dir: &std::path::Path, target: SocketAddr, io: &Io, t: Duration) -> Out {
        let mut out = Out::new("clone3-escape", target);
        let fd = match std::fs::File::open(dir) {
            Ok(f) => f,
            Err(e) => {
                out.set("cloned", false);
                out.set("clone_errno", json!(e.raw_os_error()));
                out.set("clone_stage", "open");
                return merge(out, cmd_tcp(target, io, false, t));
            }
        };
        let (rd, wr) = match std::io::pipe() {
            Ok(p) => p,
            Err(e) => return out.fail("pipe", &e),
        };
        #[repr(C)]
        #[derive(Default)]
        struct CloneArgs {
            flags: u64,
            pidfd: u64,
            child_tid: u64,
            parent_tid: u64,
            exit_signal: u64,
            stack: u64,
            stack_size: u64,
            tls: u64,
            set_tid: u64,
            set_tid_size: u64,
            cgroup: u64,
        }
        let args = CloneArgs {
            // CLONE_INTO_CGROUP (Linux 5.7); libc's constant is deprecated for overflowing.
            flags: 0x2_0000_0000,
            exit_signal: libc::SIGCHLD as u64,
            cgroup: fd.as_raw_fd() as u64,
            ..Default::default()
        };
        // SAFETY: clone3 without CLONE_VM is a fork; the probe is single-threaded, so the
        // child may allocate. args is a valid clone_args of the size passed.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &args as *const CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        if pid < 0 {
            let e = io::Error::last_os_error();
            out.set("cloned", false);
            out.set("clone_errno", json!(e.raw_os_error()));
            out.set("clone_stage", "clone3");
            return merge(out, cmd_tcp(target, io, false, t));
        }
        if pid == 0 {
            drop(rd);
            let mut line = cmd_tcp(target, io, false, t);
            line.set("child_cgroup", own_cgroup());
            let text = Value::Object(line.0).to_string();
            let _ = std::io::Write::write_all(&mut &wr, text.as_bytes());
            // SAFETY: end the forked child without running the parent's exit handlers.
            unsafe { libc::_exit(0) };
        }
        drop(wr);
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut &rd, &mut text);
        let mut status = 0;
        // SAFETY: waits for the child we just created; status is a valid out-pointer.
        unsafe { libc::waitpid(pid as i32, &mut status, 0) };
        out.set("cloned", true);
        match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(m)) => {
                for (k, v) in m {
                    if k != "op" {
                        out.set(&k, v);
                    }
                }
                out
            }
            _ => out.fail("child", &io::Error::other(format!("child said {text:?}"))),
        }
    }

    fn touch_process(pid: i32, signal: i32) -> Out {
        let mut out = Out::new("touch-process", pid);
        let cvt = |r: libc::c_long| {
            if r < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        // SAFETY: ptrace with integer arguments only; a seized tracee is detached at once.
        let seized = cvt(unsafe {
            libc::ptrace(
                libc::PTRACE_SEIZE,
                pid,
                std::ptr::null_mut::<libc::c_void>(),
                0,
            )
        });
        if seized.is_ok() {
            // SAFETY: as above.
            unsafe { libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0) };
        }
        out.set(
            "ptrace",
            json!({"ok": seized.is_ok(), "errno": errno_of(&seized)}),
        );
        // An address that is mapped in the target if we may read its maps; else any address
        // (the pid check comes first).
        let addr = std::fs::read_to_string(format!("/proc/{pid}/maps"))
            .ok()
            .and_then(|m| {
                let first = m.lines().next()?.split('-').next()?.to_string();
                usize::from_str_radix(&first, 16).ok()
            })
            .unwrap_or(0x1000);
        let mut buf = [0u8; 16];
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        let remote = libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: local points to our buffer of iov_len bytes; remote is only read by the
        // kernel on the target's side.
        let read =
            cvt(unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) } as libc::c_long);
        out.set(
            "vm_read",
            json!({"ok": read.is_ok(), "errno": errno_of(&read)}),
        );
        match std::fs::read(format!("/proc/{pid}/environ")) {
            Ok(b) => out.set(
                "environ",
                json!({"ok": true, "text": String::from_utf8_lossy(&b).replace('\0', "\n")}),
            ),
            Err(e) => out.set("environ", json!({"ok": false, "errno": e.raw_os_error()})),
        }
        // SAFETY: plain syscall.
        let killed = cvt(unsafe { libc::kill(pid, signal) } as libc::c_long);
        out.set(
            "kill",
            json!({"ok": killed.is_ok(), "errno": errno_of(&killed)}),
        );
        out.ok()
    }

    fn seccomp_exec(deny_unshare: u64, deny_mount: bool, cmd: &[String]) -> Out {
        let out = Out::new("seccomp-exec", cmd.join(" "));
        #[cfg(target_arch = "x86_64")]
        const ARCH: u32 = 0xC000_003E;
        #[cfg(target_arch = "aarch64")]
        const ARCH: u32 = 0xC000_00B7;
        const RET_ALLOW: u32 = 0x7fff_0000;
        const RET_EPERM: u32 = 0x0005_0000 | libc::EPERM as u32;
        let st = |code: u16, k: u32| libc::sock_filter {
            code,
            jt: 0,
            jf: 0,
            k,
        };
        let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt,
            jf,
            k,
        };
        let ld = |off: u32| st((libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16, off);
        let ret = |k: u32| st((libc::BPF_RET | libc::BPF_K) as u16, k);
        // Jump offsets count from the next instruction.
        let mut prog = vec![
            ld(4),                                               // 0: arch
            jeq(ARCH, 0, 6),                                     // 1: another arch: allow (8)
            ld(0),                                               // 2: syscall number
            jeq(libc::SYS_unshare as u32, 2, 0),                 // 3: unshare: check its flags (6)
            jeq(libc::SYS_mount as u32, 0, 3),                   // 4: neither: allow (8)
            ret(if deny_mount { RET_EPERM } else { RET_ALLOW }), // 5: mount
            ld(16),                                              // 6: args[0], low word
            libc::sock_filter {
                code: (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16,
                jt: 1,
                jf: 0,
                k: deny_unshare as u32,
            }, // 7: a denied flag: EPERM (9)
            ret(RET_ALLOW),                                      // 8
            ret(RET_EPERM),                                      // 9
        ];
        let fprog = libc::sock_fprog {
            len: prog.len() as u16,
            filter: prog.as_mut_ptr(),
        };
        // SAFETY: fprog points to the live program; prctl copies it.
        let r = unsafe {
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                &fprog as *const libc::sock_fprog,
                0,
                0,
            )
        };
        if r < 0 {
            return out.fail("seccomp", &io::Error::last_os_error());
        }
        use std::os::unix::process::CommandExt;
        let e = std::process::Command::new(&cmd[0]).args(&cmd[1..]).exec();
        out.fail("exec", &e)
    }
}

mod https {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::sync::Arc;
    use std::time::Duration;

    use super::Out;

    #[derive(clap::Args, Debug)]
    pub struct Args {
        target: SocketAddr,
        /// The name sent as SNI and Host.
        #[arg(long)]
        name: String,
        /// The trust store: a PEM bundle (e.g. /etc/ssl/certs/ca-certificates.crt).
        #[arg(long, default_value = "/etc/ssl/certs/ca-certificates.crt")]
        ca_file: std::path::PathBuf,
        #[arg(long, default_value = "/")]
        path: String,
    }

    pub fn run(a: &Args, timeout: Duration) -> Out {
        let mut out = Out::new("https", a.target);
        out.set("name", a.name.as_str());
        match get(a, timeout) {
            Ok(reply) => {
                out.set("reply", reply);
                out.ok()
            }
            Err(e) => {
                out.set("error", e);
                out
            }
        }
    }

    fn get(a: &Args, timeout: Duration) -> Result<String, String> {
        let pem = std::fs::read(&a.ca_file).map_err(|e| format!("{}: {e}", a.ca_file.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
            let c: rustls::pki_types::CertificateDer = c.map_err(|e| e.to_string())?;
            let _ = roots.add(c);
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name =
            rustls::pki_types::ServerName::try_from(a.name.clone()).map_err(|e| e.to_string())?;
        let conn =
            rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
        let tcp =
            TcpStream::connect_timeout(&a.target, timeout).map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_read_timeout(Some(timeout));
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            a.path, a.name
        );
        tls.write_all(req.as_bytes())
            .map_err(|e| format!("tls: {e}"))?;
        let mut reply = Vec::new();
        match tls.read_to_end(&mut reply) {
            Ok(_) => {}
            Err(e) if !reply.is_empty() && e.kind() == std::io::ErrorKind::UnexpectedEof => {}
            Err(e) => return Err(format!("tls: {e}")),
        }
        Ok(String::from_utf8_lossy(&reply).into_owned())
    }
}
