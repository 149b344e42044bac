//! Connects to a gateway, subscribes, publishes, registers a procedure, calls it, and leaves.
//!
//! Start a meshgate gateway (it listens on 127.0.0.1:9443 with a self-signed certificate by
//! default), then:
//!
//! ```sh
//! cargo run -p meshgate-client --example quickstart [ADDRESS [REALM]]
//! ```

use std::time::Duration;

use meshgate_client::{random_node_id, Client, ClientConfig, ProcedureError, Tls};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut config = ClientConfig {
        // The gateway's default certificate is self-signed: accept it.
        tls: Tls::Insecure,
        ..ClientConfig::default()
    };
    if let Some(address) = args.next() {
        config.server = address.parse()?;
    }
    if let Some(realm) = args.next() {
        config.realm = realm;
    }

    let client = Client::connect(config.clone()).await?;
    println!("connected to gateway {:?}", client.server_id());

    // A session is not served its own publishes, so a second one listens. It needs a node id
    // of its own: connecting with the same one would replace the first session.
    let listener = Client::connect(ClientConfig {
        node_id: random_node_id(),
        ..config
    })
    .await?;
    let mut readings = listener.subscribe(["sensor.*.room1"]).await?;
    client.publish("sensor.temp.room1", b"21.5").await?;
    match tokio::time::timeout(Duration::from_secs(2), readings.next()).await {
        Ok(Some(delivery)) => println!(
            "{} from {:?}: {}",
            delivery.topic,
            delivery.publisher,
            String::from_utf8_lossy(&delivery.payload)
        ),
        _ => println!("no delivery within 2 s"),
    }

    // Arguments and results are MessagePack: 0x2a is the integer 42.
    listener
        .register(
            "demo.echo",
            |args| async move { Ok::<_, ProcedureError>(args) },
        )
        .await?;
    let result = client.call("demo.echo", &[0x2a]).await?;
    println!("demo.echo(0x2a) = {result:02x?}");

    println!("round trip: {:?}", client.ping().await?);
    listener.close().await?;
    client.close().await?;
    Ok(())
}
