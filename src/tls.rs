//! The gateway's certificate: the one given with `--cert`/`--key`, or a self-signed one made at
//! start, and its SHA-256 fingerprint for the start-up log line.

use std::path::{Path, PathBuf};

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

/// Makes a self-signed certificate for `localhost` and 127.0.0.1, written to a private
/// temporary directory removed at exit.
pub fn self_signed() -> Result<Identity, TlsError> {
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    let dir = TempDir::new().map_err(TlsError::Write)?;
    let cert_path = dir.0.join("cert.pem");
    let key_path = dir.0.join("key.pem");
    std::fs::write(&cert_path, cert.pem()).map_err(TlsError::Write)?;
    write_private(&key_path, key_pair.serialize_pem().as_bytes()).map_err(TlsError::Write)?;
    Ok(Identity {
        cert: cert_path,
        key: key_path,
        fingerprint: fingerprint(cert.der()),
        self_signed: true,
        _dir: Some(dir),
    })
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
    fn a_missing_or_empty_file_is_a_clear_error() {
        let made = self_signed().unwrap();
        let missing = load(Path::new("/nonexistent/cert.pem"), &made.key).unwrap_err();
        assert!(missing.to_string().contains("/nonexistent/cert.pem"));
        let not_a_cert = load(&made.key, &made.key).unwrap_err();
        assert!(matches!(not_a_cert, TlsError::NoCertificate { .. }));
    }
}
