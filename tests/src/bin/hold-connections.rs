//! Holds many TCP connections to one address, for `tests/connections.rs`: a process of its own
//! because a process may hold only so many descriptors, and one source address each because a
//! source address has only so many ephemeral ports.
//!
//! Run as `hold-connections TARGET SOURCE_IP COUNT REQUEST`: opens COUNT non-blocking connections
//! from SOURCE_IP to TARGET, sends REQUEST (with `\r\n` for `\n`; empty: nothing) on each once
//! connected, never reads an answer, and prints `connected N failed M`. Then, for each line on
//! stdin, prints `open K`: how many the peer has not closed. Exits (closing them all) at the end
//! of stdin.

use std::{
    io::{BufRead, ErrorKind, Read, Write},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use socket2::{Domain, SockAddr, Socket, Type};

/// Linux's `EINPROGRESS`: a non-blocking connect under way.
const EINPROGRESS: i32 = 115;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, target, source, count, request] = args.as_slice() else {
        anyhow::bail!("usage: hold-connections TARGET SOURCE_IP COUNT REQUEST");
    };
    let target: SocketAddr = target.parse()?;
    let source = SockAddr::from(SocketAddr::new(source.parse::<IpAddr>()?, 0));
    let count: usize = count.parse()?;
    let request = request.replace('\n', "\r\n").into_bytes();
    rlimit::increase_nofile_limit(u64::MAX)?;

    let mut pending = Vec::with_capacity(count);
    for _ in 0..count {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        socket.bind(&source)?;
        socket.set_nonblocking(true)?;
        match socket.connect(&target.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(EINPROGRESS) => {}
            Err(e) => return Err(e.into()),
        }
        pending.push(socket);
    }
    // Sweeps until every connect completed or failed: one the listen queue had no room for is
    // retried by the kernel (after 1 s, 3 s, ...), for as long as the base takes to accept.
    let (mut connected, mut failed) = (Vec::with_capacity(count), 0);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !pending.is_empty() && Instant::now() < deadline {
        let mut still = Vec::with_capacity(pending.len());
        for socket in pending {
            if let Ok(Some(_)) | Err(_) = socket.take_error() {
                failed += 1;
            } else if socket.peer_addr().is_ok() {
                if !request.is_empty() {
                    // A fresh socket's send buffer takes a small request whole.
                    let _ = (&socket).write_all(&request);
                }
                connected.push(socket);
            } else {
                still.push(socket);
            }
        }
        pending = still;
        std::thread::sleep(Duration::from_millis(10));
    }
    failed += pending.len();
    drop(pending);
    let mut stdout = std::io::stdout();
    writeln!(stdout, "connected {} failed {failed}", connected.len())?;
    stdout.flush()?;

    for line in std::io::stdin().lock().lines() {
        line?;
        let open = connected.iter().filter(|socket| is_open(socket)).count();
        writeln!(stdout, "open {open}")?;
        stdout.flush()?;
    }
    Ok(())
}

/// Whether the peer has not closed `socket` (reading and dropping what it sent).
fn is_open(mut socket: &Socket) -> bool {
    let mut buf = [0u8; 4096];
    for _ in 0..64 {
        match socket.read(&mut buf) {
            Ok(0) => return false,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
    true
}
