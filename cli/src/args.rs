//! Flags every command of `meshgate-cli` shares: where the gateway is, which realm to join and
//! how to trust its certificate.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use meshgate_client::{ClientConfig, Tls};

/// How to reach a gateway: the flags of every client command and every load scenario.
#[derive(Args, Debug, Clone)]
pub struct Connection {
    /// The gateway's QUIC address.
    #[arg(long, default_value = "127.0.0.1:9443")]
    pub server: SocketAddr,
    /// The realm to join.
    #[arg(long, default_value = "macula.default")]
    pub realm: String,
    /// The realm's token, if it has tokens.
    #[arg(long)]
    pub token: Option<String>,
    /// Accept any certificate, such as the self-signed one a gateway makes when started
    /// without --cert: the traffic is encrypted, but the gateway is not authenticated.
    #[arg(long, conflicts_with = "ca")]
    pub insecure: bool,
    /// Trust the certificates in this PEM file (the gateway's own, or its CA).
    #[arg(long, value_name = "PEM_FILE")]
    pub ca: Option<PathBuf>,
    /// The name the gateway's certificate must carry.
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
}

impl Connection {
    /// The session configuration these flags ask for; the rest as [`ClientConfig::default`]
    /// (a fresh node id). The error is one line for the terminal.
    pub fn client_config(&self) -> Result<ClientConfig, String> {
        let tls = match (&self.ca, self.insecure) {
            (_, true) => Tls::Insecure,
            (Some(ca), false) => Tls::CaFile(ca.clone()),
            (None, false) => {
                return Err(
                    "the gateway's certificate cannot be checked: give --ca PEM_FILE, \
                     or --insecure for a gateway with a self-signed certificate"
                        .to_owned(),
                )
            }
        };
        Ok(ClientConfig {
            server: self.server,
            server_name: self.server_name.clone(),
            realm: self.realm.clone(),
            token: self.token.clone(),
            tls,
            ..ClientConfig::default()
        })
    }
}

/// A `--pmtud-max`: 0 (discovery off) or a UDP payload of 1200 to 16383 bytes, as the
/// gateway's flag of the same name.
pub fn parse_pmtud_max(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(v) if v == 0 || (1200..=16383).contains(&v) => Ok(v),
        _ => Err(format!(
            "{s:?}: must be 0 (no path MTU discovery) or 1200 to 16383 bytes"
        )),
    }
}

/// Parses `250ms`, `5s`, `2m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like 250ms, 5s or 2m: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::path::Path;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        connection: Connection,
    }

    fn parse(args: &[&str]) -> Result<Connection, clap::Error> {
        Cli::try_parse_from([&["cli"], args].concat()).map(|cli| cli.connection)
    }

    #[test]
    fn the_certificate_is_checked_unless_insecure_is_given() {
        let plain = parse(&[]).unwrap();
        assert!(!plain.insecure);
        assert!(plain
            .client_config()
            .unwrap_err()
            .contains("give --ca PEM_FILE, or --insecure"));
        let insecure = parse(&["--insecure"]).unwrap().client_config().unwrap();
        assert!(matches!(insecure.tls, Tls::Insecure));
        let ca = parse(&["--ca", "gw.pem"]).unwrap().client_config().unwrap();
        assert!(matches!(ca.tls, Tls::CaFile(path) if path == Path::new("gw.pem")));
        assert!(parse(&["--insecure", "--ca", "gw.pem"]).is_err());
    }

    #[test]
    fn the_flags_name_the_gateway_the_realm_and_the_token() {
        let c = parse(&["--server", "10.0.0.1:4433", "--realm", "r", "--token", "t"])
            .unwrap()
            .client_config();
        assert!(c.is_err(), "no trust given");
        let c = parse(&[
            "--server",
            "10.0.0.1:4433",
            "--realm",
            "r",
            "--token",
            "t",
            "--insecure",
        ])
        .unwrap()
        .client_config()
        .unwrap();
        assert_eq!(c.server, "10.0.0.1:4433".parse().unwrap());
        assert_eq!((c.realm.as_str(), c.token.as_deref()), ("r", Some("t")));
        assert_eq!(c.server_name, "localhost");
    }

    #[test]
    fn a_duration_is_a_number_and_a_unit() {
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("5")
            .unwrap_err()
            .contains("like 250ms, 5s or 2m"));
    }
}
