//! The gateway's certificate: the one given with `--cert`/`--key`, or a self-signed one made at
//! start, and its SHA-256 fingerprint for the start-up log line.

use std::path::{Path, PathBuf};

use boring::asn1::Asn1Time;
use boring::bn::{BigNum, MsbOption};
use boring::ec::{EcGroup, EcKey};
use boring::error::ErrorStack;
use boring::hash::MessageDigest;
use boring::nid::Nid;
use boring::pkey::{PKey, Private};
use boring::x509::extension::SubjectAlternativeName;
use boring::x509::{X509Builder, X509NameBuilder, X509};
use sha2::{Digest, Sha256};

/// A certificate chain and key on disk, as quiche loads them.
#[derive(Debug)]
pub struct Identity {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// SHA-256 of the leaf certificate (DER), as colon-separated hex.
    pub fingerprint: String,
    /// Whether the certificate was made at start.
    pub self_signed: bool,
    /// Keeps the self-signed certificate's files until the gateway exits.
    _dir: Option<TempDir>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no PEM private key")]
    NoKey { path: PathBuf },
    #[error("cannot make a self-signed certificate: {0}")]
    Generate(String),
    #[error("cannot write the self-signed certificate: {0}")]
    Write(std::io::Error),
}

/// Loads `--cert`/`--key`, checking that they hold PEM blocks.
pub fn load(cert: &Path, key: &Path) -> Result<Identity, TlsError> {
    let cert_pem = std::fs::read_to_string(cert).map_err(|source| TlsError::Read {
        path: cert.into(),
        source,
    })?;
    let key_pem = std::fs::read_to_string(key).map_err(|source| TlsError::Read {
        path: key.into(),
        source,
    })?;
    let der = first_pem_block(&cert_pem, "CERTIFICATE")
        .ok_or_else(|| TlsError::NoCertificate { path: cert.into() })?;
    if !key_pem.contains("PRIVATE KEY-----") {
        return Err(TlsError::NoKey { path: key.into() });
    }
    Ok(Identity {
        cert: cert.into(),
        key: key.into(),
        fingerprint: fingerprint(&der),
        self_signed: false,
        _dir: None,
    })
}

/// Makes a self-signed certificate for `localhost`, 127.0.0.1 and ::1 (ECDSA P-256, signed
/// with SHA-256, valid for ten years from a day ago), written to a private temporary directory
/// removed at exit. BoringSSL, which the gateway links for QUIC already, makes it.
pub fn self_signed() -> Result<Identity, TlsError> {
    let (cert, key) = make_self_signed().map_err(|e| TlsError::Generate(e.to_string()))?;
    let generated = |e: boring::error::ErrorStack| TlsError::Generate(e.to_string());
    let cert_pem = cert.to_pem().map_err(generated)?;
    let key_pem = key.private_key_to_pem_pkcs8().map_err(generated)?;
    let der = cert.to_der().map_err(generated)?;
    let dir = TempDir::new().map_err(TlsError::Write)?;
    let cert_path = dir.0.join("cert.pem");
    let key_path = dir.0.join("key.pem");
    std::fs::write(&cert_path, cert_pem).map_err(TlsError::Write)?;
    write_private(&key_path, &key_pem).map_err(TlsError::Write)?;
    Ok(Identity {
        cert: cert_path,
        key: key_path,
        fingerprint: fingerprint(&der),
        self_signed: true,
        _dir: Some(dir),
    })
}

fn make_self_signed() -> Result<(X509, PKey<Private>), ErrorStack> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    let key = PKey::from_ec_key(EcKey::generate(&group)?)?;
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_nid(Nid::COMMONNAME, "meshgate self-signed")?;
    let name = name.build();
    let mut serial = BigNum::new()?;
    serial.rand(127, MsbOption::MAYBE_ZERO, false)?;
    let serial = serial.to_asn1_integer()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let day = 24 * 3600;
    let not_before = Asn1Time::from_unix((now - day) as libc::time_t)?;
    let not_after = Asn1Time::from_unix((now + 3650 * day) as libc::time_t)?;

    let mut cert = X509Builder::new()?;
    // Zero-based: 2 is X.509 version 3, which extensions need.
    cert.set_version(2)?;
    cert.set_serial_number(&serial)?;
    cert.set_subject_name(&name)?;
    cert.set_issuer_name(&name)?;
    cert.set_pubkey(&key)?;
    cert.set_not_before(&not_before)?;
    cert.set_not_after(&not_after)?;
    let names = SubjectAlternativeName::new()
        .dns("localhost")
        .ip("127.0.0.1")
        .ip("::1")
        .build(&cert.x509v3_context(None, None))?;
    cert.append_extension(&names)?;
    cert.sign(&key, MessageDigest::sha256())?;
    Ok((cert.build(), key))
}

/// The protocol a server that supports `supported` picks from a ClientHello's ALPN extension
/// (`ext`, its body): the client's first that the server supports, as quiche picks it.
pub fn chosen_alpn<'a>(ext: &[u8], supported: &[&'a [u8]]) -> Option<&'a [u8]> {
    let list_len = usize::from(u16::from_be_bytes([*ext.first()?, *ext.get(1)?]));
    let mut list = ext.get(2..2 + list_len)?;
    while let Some((&len, rest)) = list.split_first() {
        let name = rest.get(..usize::from(len))?;
        if let Some(found) = supported.iter().find(|s| **s == name) {
            return Some(found);
        }
        list = &rest[usize::from(len)..];
    }
    None
}

/// SHA-256 of DER bytes as `AB:CD:…`.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    digest
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn first_pem_block(pem: &str, label: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = start + pem[start..].find(&end)?;
    let body: String = pem[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}

/// A directory removed when dropped.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> std::io::Result<TempDir> {
        use std::os::unix::fs::DirBuilderExt as _;
        let base = std::env::temp_dir();
        for attempt in 0u32..100 {
            let path = base.join(format!("meshgate-{}-{attempt}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(TempDir(path)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::other("no free temporary directory name"))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_certificate_loads_back_with_the_same_fingerprint() {
        let made = self_signed().unwrap();
        let loaded = load(&made.cert, &made.key).unwrap();
        assert_eq!(made.fingerprint, loaded.fingerprint);
        assert_eq!(made.fingerprint.len(), 32 * 3 - 1);
    }

    #[test]
    fn the_self_signed_certificate_names_the_loopback_addresses() {
        let made = self_signed().unwrap();
        let cert = X509::from_pem(&std::fs::read(&made.cert).unwrap()).unwrap();
        let names: Vec<String> = cert
            .subject_alt_names()
            .unwrap()
            .iter()
            .map(|n| match (n.dnsname(), n.ipaddress()) {
                (Some(dns), _) => dns.to_owned(),
                (None, Some(ip)) => format!("{ip:?}"),
                (None, None) => String::new(),
            })
            .collect();
        assert_eq!(names[0], "localhost");
        assert_eq!(names[1], format!("{:?}", [127u8, 0, 0, 1]));
        assert_eq!(names.len(), 3);
        let key = PKey::private_key_from_pem(&std::fs::read(&made.key).unwrap()).unwrap();
        assert!(cert.public_key().unwrap().public_eq(&key));
        assert!(cert.verify(&key).unwrap());
    }

    #[test]
    fn the_chosen_alpn_is_the_clients_first_the_server_supports() {
        let ours: [&[u8]; 2] = [b"macula", b"meshgate-peer"];
        let ext = |names: &[&[u8]]| {
            let mut list = Vec::new();
            for n in names {
                list.push(n.len() as u8);
                list.extend_from_slice(n);
            }
            let mut ext = (list.len() as u16).to_be_bytes().to_vec();
            ext.extend(list);
            ext
        };
        let peer: Option<&[u8]> = Some(b"meshgate-peer");
        assert_eq!(chosen_alpn(&ext(&[b"meshgate-peer"]), &ours), peer);
        assert_eq!(
            chosen_alpn(&ext(&[b"h3", b"meshgate-peer", b"macula"]), &ours),
            peer
        );
        let macula: Option<&[u8]> = Some(b"macula");
        assert_eq!(
            chosen_alpn(&ext(&[b"macula", b"meshgate-peer"]), &ours),
            macula
        );
        assert_eq!(chosen_alpn(&ext(&[b"h3"]), &ours), None);
        assert_eq!(chosen_alpn(&[], &ours), None);
        assert_eq!(chosen_alpn(&[0, 9, 13, b'm'], &ours), None, "cut short");
    }

    #[test]
    fn a_missing_or_empty_file_is_a_clear_error() {
        let made = self_signed().unwrap();
        let missing = load(Path::new("/nonexistent/cert.pem"), &made.key).unwrap_err();
        assert!(missing.to_string().contains("/nonexistent/cert.pem"));
        let not_a_cert = load(&made.key, &made.key).unwrap_err();
        assert!(matches!(not_a_cert, TlsError::NoCertificate { .. }));
    }
}
