//! `cargo fuzz run dns_message` — the sandbox DNS path on hostile datagrams:
//! parsing never panics, and every reply it builds (error replies, answers,
//! blocked answers with an Extended DNS Error) is itself a valid DNS message
//! for the same id and question.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use egress_agent::dns::{parse, respond, Outcome, Parsed};
use hickory_proto::op::{Message, ResponseCode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Parsed::Drop => {}
        Parsed::Reply(r) => {
            Message::from_vec(&r).expect("error replies decode");
        }
        Parsed::Query(req) => {
            let outcomes = [
                Outcome::Answer(vec![IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)), IpAddr::V6(Ipv6Addr::LOCALHOST)], 30),
                Outcome::NoData,
                Outcome::Blocked { rcode: ResponseCode::NXDomain, code: "host_not_allowed", reason: "fuzz \u{1F600} reason".into() },
            ];
            for o in &outcomes {
                if let Some(r) = respond(&req, o) {
                    let m = Message::from_vec(&r).expect("replies decode");
                    assert_eq!(m.metadata.id, req.metadata.id);
                    assert_eq!(m.queries.first().map(|q| q.name()), req.queries.first().map(|q| q.name()));
                }
            }
        }
    }
});
