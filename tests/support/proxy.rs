//! A TCP proxy in front of a test registry that paces what the registry sends, across all
//! connections, at a rate the test may change while it runs: a build can be caught in the
//! middle of a pull, or held there and then let go.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Starts the proxy to `upstream` ("127.0.0.1:PORT") passing `rate` bytes per second from
/// it; returns the proxy's "127.0.0.1:PORT". Its threads end with the test process.
pub fn throttled_proxy(upstream: String, rate: Arc<AtomicU64>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    // When the bytes sent so far are allowed to have gone out, across every connection.
    let pace = Arc::new(Mutex::new(Instant::now()));
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(server) = TcpStream::connect(&upstream) else {
                continue;
            };
            let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || pipe(c2, s2, None));
            let paced = (pace.clone(), rate.clone());
            std::thread::spawn(move || pipe(server, client, Some(paced)));
        }
    });
    addr
}

fn pipe(
    mut from: TcpStream,
    mut to: TcpStream,
    paced: Option<(Arc<Mutex<Instant>>, Arc<AtomicU64>)>,
) {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some((pace, rate)) = &paced {
            let rate = rate.load(Ordering::Relaxed).max(1);
            let due = {
                let mut next = pace.lock().unwrap();
                *next =
                    (*next).max(Instant::now()) + Duration::from_secs_f64(n as f64 / rate as f64);
                *next
            };
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}
