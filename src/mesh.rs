//! The gateway mesh's start-up (PROTOCOL.md 9.1): its flags checked before anything is bound,
//! the cluster tokens read, and, once the listen address is known, the [`MeshConfig`] every
//! shard gets, with the [`Identity`] the gateway gives in its PEER_HELLO.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use meshgate_shard::config::MeshConfig;
use meshgate_shard::mesh::handshake::Identity;
use meshgate_shard::mesh::hello::RealmAuth;
use meshgate_shard::mesh::proof::realm_digest;
use meshgate_shard::{NodeId, RealmConfig};

use crate::cli::ServeArgs;

/// What the mesh flags say, checked: present only with `--node-name`.
#[derive(Debug)]
pub struct MeshFlags {
    pub node_name: String,
    /// The cluster token file's lines, the first first.
    tokens: Vec<Box<[u8]>>,
}

/// Checks the mesh flags: `Ok(None)` without `--node-name`, and the one line that says what is
/// wrong when they cannot work.
pub fn check(args: &ServeArgs) -> Result<Option<MeshFlags>, String> {
    let Some(node_name) = &args.node_name else {
        let needing = [
            ("--peer", !args.peers.is_empty()),
            ("--advertise", args.advertise.is_some()),
            ("--cluster-token-file", args.cluster_token_file.is_some()),
        ];
        if let Some((flag, _)) = needing.iter().find(|(_, given)| *given) {
            return Err(format!(
                "{flag} needs --node-name: the gateway mesh is off without it"
            ));
        }
        if args.peer_ca.is_some() {
            log::warn!("--peer-ca has no effect without --node-name");
        }
        return Ok(None);
    };
    let Some(path) = &args.cluster_token_file else {
        return Err(
            "--node-name needs --cluster-token-file: peers must prove they hold a cluster token"
                .into(),
        );
    };
    Ok(Some(MeshFlags {
        node_name: node_name.clone(),
        tokens: read_tokens(path)?,
    }))
}

/// The lines of a cluster token file, trimmed, empty ones left out; at least one.
fn read_tokens(path: &Path) -> Result<Vec<Box<[u8]>>, String> {
    match token_lines(path) {
        Err(e) => Err(format!(
            "--cluster-token-file {}: cannot read it: {e}",
            path.display()
        )),
        Ok(tokens) if tokens.is_empty() => Err(format!(
            "--cluster-token-file {} holds no token",
            path.display()
        )),
        Ok(tokens) => Ok(tokens),
    }
}

/// The tokens of a token file (a realm's or the cluster's): one a line, trimmed, empty lines
/// left out.
pub fn token_lines(path: &Path) -> std::io::Result<Vec<Box<[u8]>>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| l.as_bytes().into())
        .collect())
}

/// The address peers are told to dial: `--advertise`, else the listen address (`listen`, the
/// bound one). An unspecified listen address advertises 127.0.0.1 with its port.
pub fn advertise(args: &ServeArgs, listen: SocketAddr) -> String {
    match &args.advertise {
        Some(addr) => addr.clone(),
        None if listen.ip().is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), listen.port()).to_string()
        }
        None => listen.to_string(),
    }
}

/// The mesh settings of every shard.
pub fn config(
    flags: MeshFlags,
    args: &ServeArgs,
    node_id: NodeId,
    realms: &[RealmConfig],
    advertise: &str,
    incarnation: u64,
) -> Arc<MeshConfig> {
    let identity = Identity {
        node_id,
        node_name: flags.node_name.as_bytes().into(),
        incarnation,
        advertise: advertise.as_bytes().into(),
        realms: realms
            .iter()
            .map(|r| RealmAuth {
                name: r.name.clone(),
                digest: realm_digest(&r.name, &r.tokens),
            })
            .collect(),
        max_frame: u64::from(args.max_frame),
        tokens: flags.tokens,
    };
    Arc::new(MeshConfig {
        seeds: args.peers.iter().map(|p| p.as_str().into()).collect(),
        max_peers: args.max_peers,
        peer_idle_timeout: args.peer_idle_timeout,
        max_peer_output: args.max_peer_output,
        interest_refresh: args.interest_refresh,
        max_advertised_patterns: args.max_advertised_patterns,
        ..MeshConfig::new(identity)
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn serve(flags: &[&str]) -> ServeArgs {
        let args = ["meshgate", "serve"].iter().chain(flags);
        let Command::Serve(a) = Cli::try_parse_from(args).expect("valid flags").command;
        a
    }

    #[test]
    fn mesh_flags_without_a_node_name_are_refused_and_none_is_no_mesh() {
        assert!(check(&serve(&[])).expect("no mesh").is_none());
        for flags in [
            &["--peer", "10.0.0.1:9443"][..],
            &["--advertise", "10.0.0.1:9443"][..],
            &["--cluster-token-file", "/etc/tokens"][..],
        ] {
            let e = check(&serve(flags)).expect_err("refused");
            assert!(e.contains(flags[0]) && e.contains("--node-name"), "{e}");
        }
        let e = check(&serve(&["--node-name", "a"])).expect_err("refused");
        assert!(e.contains("--cluster-token-file"), "{e}");
    }

    #[test]
    fn the_token_file_must_hold_a_token() {
        let dir = std::env::temp_dir().join(format!("meshgate-mesh-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a directory");
        let empty = dir.join("empty");
        std::fs::write(&empty, "\n  \n").expect("written");
        let tokens = dir.join("tokens");
        std::fs::write(&tokens, " first \n\nsecond\n").expect("written");
        let with = |file: &Path| {
            let file = file.to_str().expect("UTF-8");
            check(&serve(&["--node-name", "a", "--cluster-token-file", file]))
        };
        assert!(with(&empty).expect_err("empty").contains("holds no token"));
        assert!(with(&dir.join("missing"))
            .expect_err("missing")
            .contains("cannot read"));
        let flags = with(&tokens).expect("valid").expect("a mesh");
        assert_eq!(flags.tokens, [b"first"[..].into(), b"second"[..].into()]);
        std::fs::remove_dir_all(&dir).expect("removed");
    }

    #[test]
    fn the_advertised_address_defaults_to_the_listen_address_or_loopback() {
        let a = serve(&[]);
        let listen: SocketAddr = "10.1.2.3:9443".parse().expect("an address");
        assert_eq!(advertise(&a, listen), "10.1.2.3:9443");
        let any: SocketAddr = "0.0.0.0:7000".parse().expect("an address");
        assert_eq!(advertise(&a, any), "127.0.0.1:7000");
        let any6: SocketAddr = "[::]:7000".parse().expect("an address");
        assert_eq!(advertise(&a, any6), "127.0.0.1:7000");
        let given = serve(&["--advertise", "gw.example:1"]);
        assert_eq!(advertise(&given, any), "gw.example:1");
    }
}
