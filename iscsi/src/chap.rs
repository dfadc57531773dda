//! CHAP (RFC 1994 as profiled by RFC 7143 §12.1.3): the target challenges,
//! the initiator answers H(id || secret || challenge). MD5 is CHAP_A=5;
//! SHA-256 is CHAP_A=7 (RFC 7143 as updated by RFC 9606 registry values).

use base64::Engine;
use md5::Digest as _;
use rand::RngCore;

pub const CHAP_MD5: u32 = 5;
pub const CHAP_SHA256: u32 = 7;
/// Longest challenge or response the target accepts, in bytes.
pub const MAX_BINARY_LEN: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChapError {
    #[error("no supported CHAP algorithm offered")]
    NoAlgorithm,
    #[error("malformed binary value")]
    BadEncoding,
    #[error("wrong user name")]
    WrongUser,
    #[error("wrong response")]
    WrongResponse,
    #[error("initiator reflected the target's challenge")]
    Reflected,
    #[error("malformed CHAP_I")]
    BadIdentifier,
}

/// Picks the first algorithm of the initiator's CHAP_A list the target
/// supports, honouring the initiator's preference order.
pub fn choose_algorithm(offer: &str) -> Result<u32, ChapError> {
    offer
        .split(',')
        .filter_map(|a| a.trim().parse::<u32>().ok())
        .find(|a| *a == CHAP_MD5 || *a == CHAP_SHA256)
        .ok_or(ChapError::NoAlgorithm)
}

fn digest_len(alg: u32) -> usize {
    if alg == CHAP_SHA256 {
        32
    } else {
        16
    }
}

/// H(id || secret || challenge) for the chosen algorithm.
pub fn response(alg: u32, id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
    if alg == CHAP_SHA256 {
        let mut h = sha2::Sha256::new();
        sha2::Digest::update(&mut h, [id]);
        sha2::Digest::update(&mut h, secret);
        sha2::Digest::update(&mut h, challenge);
        sha2::Digest::finalize(h).to_vec()
    } else {
        let mut h = md5::Md5::new();
        h.update([id]);
        h.update(secret);
        h.update(challenge);
        h.finalize().to_vec()
    }
}

/// Decodes a binary value: 0x/0X hex or 0b/0B base64 (RFC 7143 §6.1).
pub fn decode_binary(v: &str) -> Result<Vec<u8>, ChapError> {
    let out = if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        // Odd-length hex is allowed by the RFC; a leading nibble is implied.
        if h.len() % 2 == 1 {
            hex::decode(format!("0{h}")).map_err(|_| ChapError::BadEncoding)?
        } else {
            hex::decode(h).map_err(|_| ChapError::BadEncoding)?
        }
    } else if let Some(b) = v.strip_prefix("0b").or_else(|| v.strip_prefix("0B")) {
        base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|_| ChapError::BadEncoding)?
    } else {
        return Err(ChapError::BadEncoding);
    };
    if out.is_empty() || out.len() > MAX_BINARY_LEN {
        return Err(ChapError::BadEncoding);
    }
    Ok(out)
}

pub fn encode_hex(b: &[u8]) -> String {
    format!("0x{}", hex::encode(b))
}

/// CHAP_I is a decimal (or hex) number 0..=255.
pub fn parse_identifier(v: &str) -> Result<u8, ChapError> {
    let n = if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        u32::from_str_radix(h, 16).ok()
    } else if !v.is_empty() && v.len() <= 3 && v.bytes().all(|c| c.is_ascii_digit()) {
        v.parse::<u32>().ok()
    } else {
        None
    };
    n.filter(|n| *n <= 255)
        .map(|n| n as u8)
        .ok_or(ChapError::BadIdentifier)
}

/// The target's side of one CHAP exchange.
#[derive(Debug, Clone)]
pub struct Challenge {
    pub algorithm: u32,
    pub id: u8,
    pub challenge: Vec<u8>,
}

impl Challenge {
    pub fn new(algorithm: u32) -> Self {
        let mut rng = rand::thread_rng();
        let mut challenge = vec![0u8; digest_len(algorithm)];
        rng.fill_bytes(&mut challenge);
        let id = (rng.next_u32() & 0xff) as u8;
        Challenge {
            algorithm,
            id,
            challenge,
        }
    }

    /// Checks CHAP_N and CHAP_R against the expected credentials, in
    /// constant time over the response bytes.
    pub fn verify(
        &self,
        user: &str,
        secret: &str,
        chap_n: &str,
        chap_r: &str,
    ) -> Result<(), ChapError> {
        let got = decode_binary(chap_r)?;
        if chap_n != user {
            return Err(ChapError::WrongUser);
        }
        let want = response(self.algorithm, self.id, secret.as_bytes(), &self.challenge);
        let diff = if got.len() == want.len() {
            got.iter().zip(&want).fold(0u8, |acc, (a, b)| acc | (a ^ b))
        } else {
            1
        };
        if diff != 0 {
            return Err(ChapError::WrongResponse);
        }
        Ok(())
    }

    /// Answers the initiator's challenge for mutual CHAP.
    pub fn answer_mutual(
        &self,
        id: &str,
        challenge: &str,
        target_secret: &str,
    ) -> Result<Vec<u8>, ChapError> {
        let id = parse_identifier(id)?;
        let c = decode_binary(challenge)?;
        if c == self.challenge {
            return Err(ChapError::Reflected);
        }
        Ok(response(self.algorithm, id, target_secret.as_bytes(), &c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_matches_rfc1994_shape() {
        let c = Challenge {
            algorithm: CHAP_MD5,
            id: 1,
            challenge: vec![1, 2, 3, 4],
        };
        let r = response(CHAP_MD5, 1, b"secret", &[1, 2, 3, 4]);
        assert_eq!(r.len(), 16);
        assert!(c.verify("user", "secret", "user", &encode_hex(&r)).is_ok());
        assert_eq!(
            c.verify("user", "secret", "other", &encode_hex(&r)),
            Err(ChapError::WrongUser)
        );
        assert_eq!(
            c.verify("user", "wrong", "user", &encode_hex(&r)),
            Err(ChapError::WrongResponse)
        );
        let b64 = format!("0b{}", base64::engine::general_purpose::STANDARD.encode(&r));
        assert!(c.verify("user", "secret", "user", &b64).is_ok());
    }

    #[test]
    fn known_md5_vector() {
        // md5(0x00 || "a" || 0x00) computed independently.
        let r = response(CHAP_MD5, 0, b"a", &[0]);
        assert_eq!(
            hex::encode(r),
            hex::encode(md5::Md5::digest([0u8, b'a', 0]))
        );
    }

    #[test]
    fn sha256_is_chosen_when_preferred() {
        assert_eq!(choose_algorithm("7,5"), Ok(CHAP_SHA256));
        assert_eq!(choose_algorithm("6,5"), Ok(CHAP_MD5));
        assert_eq!(choose_algorithm("6"), Err(ChapError::NoAlgorithm));
        let c = Challenge::new(CHAP_SHA256);
        assert_eq!(c.challenge.len(), 32);
        let r = response(CHAP_SHA256, c.id, b"s", &c.challenge);
        assert!(c.verify("u", "s", "u", &encode_hex(&r)).is_ok());
    }

    #[test]
    fn decoding_rejects_garbage_and_reflection() {
        assert!(decode_binary("abc").is_err());
        assert!(decode_binary("0xzz").is_err());
        assert!(decode_binary("0x").is_err());
        assert_eq!(decode_binary("0xabc").unwrap(), vec![0x0a, 0xbc]);
        assert!(parse_identifier("256").is_err());
        assert_eq!(parse_identifier("17"), Ok(17));
        let c = Challenge::new(CHAP_MD5);
        assert_eq!(
            c.answer_mutual("1", &encode_hex(&c.challenge), "t"),
            Err(ChapError::Reflected)
        );
        assert!(c.answer_mutual("1", "0x0102", "t").is_ok());
    }
}
