//! The QUIC client configuration: rustls with the ring provider, ALPN `macula`, the trust
//! chosen in [`Tls`], and the transport's idle timeout and windows.

use std::path::Path;
use std::sync::Arc;

use quinn::crypto::rustls::QuicClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::{ClientConfig, Tls};
use crate::error::ClientError;

/// The ALPN protocol of the Macula v0 gateway protocol.
pub const ALPN: &[u8] = b"macula";

/// Bytes the client may have sent and not yet had acknowledged, on all its streams.
const SEND_WINDOW: u64 = 16 << 20;

pub(crate) fn quic_config(config: &ClientConfig) -> Result<quinn::ClientConfig, ClientError> {
    if config.receive_window == 0 {
        return Err(ClientError::Tls(
            "the receive window must be at least 1 byte".to_owned(),
        ));
    }
    let mut transport = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(config.idle_timeout)
        .map_err(|_| ClientError::Tls("the idle timeout is out of range".to_owned()))?;
    transport
        .max_idle_timeout(Some(idle))
        .stream_receive_window(quinn::VarInt::from_u32(config.receive_window))
        .receive_window(
            quinn::VarInt::from_u64(2 * u64::from(config.receive_window))
                .expect("twice a u32 is under the 2^62 of a QUIC varint"),
        )
        .send_window(SEND_WINDOW);
    quic_client_config(&config.tls, transport)
}

/// The QUIC client configuration of a connection to a gateway: TLS 1.3 with the ring provider,
/// ALPN [`ALPN`], the trust `tls` chooses, and `transport`. The client builds its own with it;
/// it is public for tools and tests that open raw QUIC connections to a gateway.
pub fn quic_client_config(
    tls: &Tls,
    transport: quinn::TransportConfig,
) -> Result<quinn::ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Tls(e.to_string()))?;
    let mut crypto = match tls {
        Tls::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
        Tls::CaFile(path) => builder
            .with_root_certificates(load_roots(path)?)
            .with_no_client_auth(),
        Tls::Roots(roots) if roots.is_empty() => {
            return Err(ClientError::Tls(
                "no certificate is trusted: set `tls` to Tls::Insecure for a gateway with a \
                 self-signed certificate, or to Tls::CaFile"
                    .to_owned(),
            ))
        }
        Tls::Roots(roots) => builder
            .with_root_certificates(roots.clone())
            .with_no_client_auth(),
    };
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(crypto).map_err(|e| ClientError::Tls(e.to_string()))?;
    let mut quic = quinn::ClientConfig::new(Arc::new(crypto));
    quic.transport_config(Arc::new(transport));
    Ok(quic)
}

fn load_roots(path: &Path) -> Result<RootCertStore, ClientError> {
    let unreadable = |e: &dyn std::fmt::Display| {
        ClientError::Tls(format!(
            "cannot read certificates from {}: {e}",
            path.display()
        ))
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| unreadable(&e))? {
        let cert = cert.map_err(|e| unreadable(&e))?;
        roots.add(cert).map_err(|e| unreadable(&e))?;
    }
    if roots.is_empty() {
        return Err(unreadable(&"no PEM certificate in the file"));
    }
    Ok(roots)
}

/// Accepts any server certificate, while still checking that the handshake is signed with the
/// certificate's key.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
