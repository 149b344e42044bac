//! Refusing a connection at the QUIC level without TLS work: a server Initial packet that
//! carries only CONNECTION_CLOSE with transport error CONNECTION_REFUSED (RFC 9000 §19.19),
//! protected with the Initial keys derived from the client's connection ID (RFC 9001 §5.2).
//! No connection state is made and no handshake message is read.

use ring::aead::quic::{HeaderProtectionKey, AES_128};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use ring::hkdf;

/// QUIC version 1.
const VERSION_1: u32 = 1;
/// RFC 9001 §5.2: the salt of version 1's Initial secrets.
const INITIAL_SALT_V1: [u8; 20] = [
    0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17, 0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad,
    0xcc, 0xbb, 0x7f, 0x0a,
];
/// Transport error CONNECTION_REFUSED.
const CONNECTION_REFUSED: u8 = 0x02;
/// Plaintext length: CONNECTION_CLOSE, then PADDING, so that the header-protection sample
/// (16 bytes from 4 bytes past the packet number) lies within the packet.
const PLAINTEXT_LEN: usize = 20;

/// The server's Initial keys for a client's original destination connection ID.
pub struct InitialKeys {
    pub key: [u8; 16],
    pub iv: [u8; 12],
    pub hp: [u8; 16],
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-Expand-Label (RFC 8446 §7.1) with an empty context.
fn expand_label(prk: &hkdf::Prk, label: &[u8], out: &mut [u8]) -> Option<()> {
    let full_len = u8::try_from(6 + label.len()).ok()?;
    let length = u16::try_from(out.len()).ok()?.to_be_bytes();
    let info: [&[u8]; 5] = [&length, &[full_len], b"tls13 ", label, &[0]];
    prk.expand(&info, Len(out.len())).ok()?.fill(out).ok()
}

/// Derives the server's Initial keys (RFC 9001 §5.2).
pub fn server_initial_keys(client_dcid: &[u8]) -> Option<InitialKeys> {
    let initial = hkdf::Salt::new(hkdf::HKDF_SHA256, &INITIAL_SALT_V1).extract(client_dcid);
    let mut secret = [0u8; 32];
    expand_label(&initial, b"server in", &mut secret)?;
    let server = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, &secret);
    let mut keys = InitialKeys {
        key: [0; 16],
        iv: [0; 12],
        hp: [0; 16],
    };
    expand_label(&server, b"quic key", &mut keys.key)?;
    expand_label(&server, b"quic iv", &mut keys.iv)?;
    expand_label(&server, b"quic hp", &mut keys.hp)?;
    Some(keys)
}

/// Writes into `out` a server Initial packet refusing the connection the client's Initial
/// `hdr` opens; returns its length, or `None` for a version other than 1 or a short buffer.
pub fn connection_refused(hdr: &quiche::Header<'_>, out: &mut [u8]) -> Option<usize> {
    if hdr.version != VERSION_1 {
        return None;
    }
    build(&hdr.dcid, &hdr.scid, out)
}

/// Builds the packet for a client whose Initial had destination `odcid` and source `client_scid`.
pub fn build(odcid: &[u8], client_scid: &[u8], out: &mut [u8]) -> Option<usize> {
    let keys = server_initial_keys(odcid)?;
    // Long header: Initial, packet number length 1; DCID = the client's SCID, SCID = the
    // client's original DCID (any value works: no connection follows).
    let dcid_len = u8::try_from(client_scid.len()).ok()?;
    let scid_len = u8::try_from(odcid.len()).ok()?;
    let header_len = 1 + 4 + 1 + client_scid.len() + 1 + odcid.len() + 1 + 2;
    let pn_offset = header_len;
    let total = pn_offset + 1 + PLAINTEXT_LEN + 16;
    if out.len() < total || dcid_len > 20 || scid_len > 20 {
        return None;
    }
    let mut at = 0;
    let mut put = |bytes: &[u8], out: &mut [u8]| {
        out[at..at + bytes.len()].copy_from_slice(bytes);
        at += bytes.len();
    };
    put(&[0xc0], out);
    put(&VERSION_1.to_be_bytes(), out);
    put(&[dcid_len], out);
    put(client_scid, out);
    put(&[scid_len], out);
    put(odcid, out);
    put(&[0x00], out); // token length
    let length = (1 + PLAINTEXT_LEN + 16) as u16 | 0x4000; // two-byte varint
    put(&length.to_be_bytes(), out);
    put(&[0x00], out); // packet number 0
    debug_assert_eq!(at, pn_offset + 1);

    let mut payload = [0u8; PLAINTEXT_LEN]; // trailing zeros are PADDING frames
    payload[..4].copy_from_slice(&[0x1c, CONNECTION_REFUSED, 0x00, 0x00]);
    let (head, body) = out.split_at_mut(pn_offset + 1);
    body[..PLAINTEXT_LEN].copy_from_slice(&payload);
    let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &keys.key).ok()?);
    let nonce = Nonce::assume_unique_for_key(keys.iv); // packet number 0: iv XOR 0
    let tag = key
        .seal_in_place_separate_tag(nonce, Aad::from(&head[..]), &mut body[..PLAINTEXT_LEN])
        .ok()?;
    body[PLAINTEXT_LEN..PLAINTEXT_LEN + 16].copy_from_slice(tag.as_ref());

    let hp = HeaderProtectionKey::new(&AES_128, &keys.hp).ok()?;
    let sample_at = pn_offset + 4;
    let mask = hp.new_mask(&out[sample_at..sample_at + 16]).ok()?;
    out[0] ^= mask[0] & 0x0f;
    out[pn_offset] ^= mask[1];
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn initial_keys_match_rfc_9001_appendix_a() {
        let keys = server_initial_keys(&hex("8394c8f03e515708")).unwrap();
        assert_eq!(keys.key.to_vec(), hex("cf3a5331653c364c88f0f379b6067e37"));
        assert_eq!(keys.iv.to_vec(), hex("0ac1493ca1905853b0bba03e"));
        assert_eq!(keys.hp.to_vec(), hex("c206b8d9b9f0f37644430b490eeaa314"));
    }

    #[test]
    fn the_refusal_decrypts_to_connection_close_connection_refused() {
        let odcid = hex("8394c8f03e515708");
        let client_scid = hex("aabbccdd");
        let mut packet = [0u8; 1500];
        let len = build(&odcid, &client_scid, &mut packet).unwrap();
        let packet = &mut packet[..len];
        let keys = server_initial_keys(&odcid).unwrap();
        let pn_offset = 1 + 4 + 1 + client_scid.len() + 1 + odcid.len() + 1 + 2;
        let hp = HeaderProtectionKey::new(&AES_128, &keys.hp).unwrap();
        let mask = hp.new_mask(&packet[pn_offset + 4..pn_offset + 20]).unwrap();
        packet[0] ^= mask[0] & 0x0f;
        packet[pn_offset] ^= mask[1];
        assert_eq!(packet[0], 0xc0, "Initial, one-byte packet number");
        assert_eq!(packet[pn_offset], 0);
        let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &keys.key).unwrap());
        let (head, body) = packet.split_at_mut(pn_offset + 1);
        let plain = key
            .open_in_place(
                Nonce::assume_unique_for_key(keys.iv),
                Aad::from(&head[..]),
                body,
            )
            .unwrap();
        assert_eq!(&plain[..4], &[0x1c, 0x02, 0x00, 0x00]);
        let hdr = quiche::Header::from_slice(packet, 20).unwrap();
        assert_eq!(hdr.ty, quiche::Type::Initial);
        assert_eq!(&hdr.dcid[..], &client_scid[..]);
    }
}
