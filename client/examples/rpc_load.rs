//! Calls an echo procedure from several callers with many calls in flight for a few seconds and
//! prints the rate. Usage: rpc_load [ADDRESS] [CALLERS] [IN_FLIGHT] [SECONDS]
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshgate_client::{random_node_id, Client, ClientConfig, ProcedureError, Tls};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut config = ClientConfig {
        tls: Tls::Insecure,
        ..ClientConfig::default()
    };
    if let Some(a) = args.first() {
        config.server = a.parse()?;
    }
    let callers: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(4);
    let in_flight: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(16);
    let secs: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(5);
    let provider = Client::connect(ClientConfig {
        node_id: random_node_id(),
        ..config.clone()
    })
    .await?;
    provider
        .register(
            "bench.echo",
            |args| async move { Ok::<_, ProcedureError>(args) },
        )
        .await?;
    provider.flush().await?;
    let done = Arc::new(AtomicU64::new(0));
    let payload = vec![0xc4, 62]
        .into_iter()
        .chain(std::iter::repeat_n(7u8, 62))
        .collect::<Vec<u8>>();
    let end = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let c = Client::connect(ClientConfig {
            node_id: random_node_id(),
            ..config.clone()
        })
        .await?;
        let c = Arc::new(c);
        for _ in 0..in_flight {
            let (c, done, payload) = (c.clone(), done.clone(), payload.clone());
            tasks.push(tokio::spawn(async move {
                while Instant::now() < end {
                    if c.call("bench.echo", &payload).await.is_ok() {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
    }
    let start = Instant::now();
    for t in tasks {
        let _ = t.await;
    }
    let n = done.load(Ordering::Relaxed);
    println!(
        "{n} calls in {:?}: {:.0} calls/s",
        start.elapsed(),
        n as f64 / start.elapsed().as_secs_f64()
    );
    Ok(())
}
