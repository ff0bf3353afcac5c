//! Self-tests of the test kit itself: the registry harness, the OCI pusher, the feature-set
//! generator's expected-tree model and the tree walker. If these fail, every integration
//! test built on them is meaningless.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;

use base64::Engine;
use support::registry::TestRegistry;

/// Status code of a GET, over a raw socket so the registry tests need nothing else.
fn raw_get_status(addr: &str, path: &str, auth: Option<(&str, &str)>) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some((u, p)) = auth {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        req.push_str(&format!("Authorization: Basic {token}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn registry_starts_answers_and_stops() {
    let reg = TestRegistry::start();
    assert_eq!(
        raw_get_status(&reg.addr(), "/v2/", None),
        200,
        "{}",
        reg.log()
    );
    let addr = reg.addr();
    drop(reg);
    // Dropping reaps the registry: its port stops answering.
    assert!(
        TcpStream::connect(&addr).is_err(),
        "registry still up after drop"
    );
}

#[test]
fn htpasswd_registry_refuses_anonymous_and_accepts_credentials() {
    let reg = TestRegistry::start_with_htpasswd("alice", "s3cret");
    let addr = reg.addr();
    assert_eq!(raw_get_status(&addr, "/v2/", None), 401, "{}", reg.log());
    assert_eq!(raw_get_status(&addr, "/v2/", Some(("alice", "wrong"))), 401);
    assert_eq!(
        raw_get_status(&addr, "/v2/", Some(("alice", "s3cret"))),
        200
    );
}

#[test]
fn registries_run_side_by_side() {
    let regs: Vec<_> = (0..4).map(|_| TestRegistry::start()).collect();
    let mut ports: Vec<_> = regs.iter().map(|r| r.port()).collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 4);
    for r in &regs {
        assert_eq!(raw_get_status(&r.addr(), "/v2/", None), 200);
    }
}
