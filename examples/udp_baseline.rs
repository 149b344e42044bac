//! The machine's baseline for the benchmark report: a plain UDP echo over loopback, the server
//! thread pinned to one core and the client to another, with a fixed number of datagrams in
//! flight. The gateway's rates are reported as a ratio of this one.
//!
//! Usage: udp_baseline [SECONDS] [IN_FLIGHT] [PAYLOAD_BYTES] [SERVER_CPU] [CLIENT_CPU]
//! Prints one line: `udp_echo_round_trips_per_s <rate>`.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

fn pin(cpu: usize) {
    if let Some(core) =
        core_affinity::get_core_ids().and_then(|ids| ids.into_iter().find(|c| c.id == cpu))
    {
        core_affinity::set_for_current(core);
    }
}

fn main() -> std::io::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let secs = args.first().copied().unwrap_or(5) as u64;
    let in_flight = args.get(1).copied().unwrap_or(64).max(1);
    let size = args.get(2).copied().unwrap_or(64).clamp(1, 1400);
    let server_cpu = args.get(3).copied().unwrap_or(0);
    let client_cpu = args.get(4).copied().unwrap_or(1);

    let server = UdpSocket::bind("127.0.0.1:0")?;
    let addr = server.local_addr()?;
    server.set_read_timeout(Some(Duration::from_millis(200)))?;
    let stop = Instant::now() + Duration::from_secs(secs) + Duration::from_millis(500);
    let echo = std::thread::spawn(move || {
        pin(server_cpu);
        let mut buf = [0u8; 2048];
        while Instant::now() < stop {
            if let Ok((n, from)) = server.recv_from(&mut buf) {
                let _ = server.send_to(&buf[..n], from);
            }
        }
    });

    pin(client_cpu);
    let client = UdpSocket::bind("127.0.0.1:0")?;
    client.connect(addr)?;
    client.set_read_timeout(Some(Duration::from_millis(200)))?;
    let payload = vec![7u8; size];
    for _ in 0..in_flight {
        client.send(&payload)?;
    }
    let mut buf = [0u8; 2048];
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut round_trips = 0u64;
    while Instant::now() < end {
        match client.recv(&mut buf) {
            Ok(_) => {
                round_trips += 1;
                client.send(&payload)?;
            }
            // A lost datagram: put another in flight.
            Err(_) => client.send(&payload).map(drop)?,
        }
    }
    let rate = round_trips as f64 / start.elapsed().as_secs_f64();
    println!("udp_echo_round_trips_per_s {rate:.0}");
    let _ = echo.join();
    Ok(())
}
