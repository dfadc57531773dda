/// FNV-1a, 64-bit. Chosen for being a few lines with no dependency; this is
/// not a security boundary, only a spread.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Derives a stable MAC for NIC `index` of the instance whose id is `seed`
/// (a UUID's 16 bytes), so a NIC keeps its MAC across restarts and
/// migrations without the MAC having to be stored, and guests' udev/netplan
/// rules keyed on the MAC keep working.
///
/// The first octet is `02`: locally administered (no clash with any vendor
/// OUI) and unicast. The other five octets are the low 40 bits of
/// FNV-1a(seed ‖ index). Those low bits depend only on the low bits of the
/// running state, and the last step XORs `index` into the lowest byte and
/// then multiplies by an odd prime, which is a bijection modulo 2^40, so
/// different indexes of the same instance are guaranteed distinct MACs, not
/// just probably distinct.
pub fn derive_mac(seed: &[u8; 16], index: u8) -> String {
    let mut h = FNV_OFFSET;
    for &byte in seed.iter().chain(std::iter::once(&index)) {
        h ^= u64::from(byte);
        h = h.wrapping_mul(FNV_PRIME);
    }
    let b = h.to_be_bytes();
    format!(
        "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        b[3], b[4], b[5], b[6], b[7]
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn deterministic() {
        let seed = *b"0123456789abcdef";
        assert_eq!(derive_mac(&seed, 0), derive_mac(&seed, 0));
        assert_eq!(derive_mac(&seed, 3), derive_mac(&seed, 3));
    }

    #[test]
    fn format_is_local_unicast_lowercase() {
        for seed in [[0u8; 16], [0xff; 16], *b"0123456789abcdef"] {
            for index in [0, 1, 255] {
                let mac = derive_mac(&seed, index);
                assert_eq!(mac.len(), 17, "{mac}");
                assert!(mac.starts_with("02:"), "{mac}");
                let octets: Vec<&str> = mac.split(':').collect();
                assert_eq!(octets.len(), 6, "{mac}");
                for o in octets {
                    assert_eq!(o.len(), 2, "{mac}");
                    assert!(
                        o.chars()
                            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
                        "{mac}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_index_gets_a_distinct_mac() {
        for seed in [[0u8; 16], [0xff; 16], *b"0123456789abcdef"] {
            let macs: HashSet<String> = (0..=255).map(|i| derive_mac(&seed, i)).collect();
            assert_eq!(macs.len(), 256);
        }
    }

    #[test]
    fn different_seeds_differ() {
        let mut a = [0u8; 16];
        let b = a;
        a[15] = 1;
        assert_ne!(derive_mac(&a, 0), derive_mac(&b, 0));
        let macs: HashSet<String> = (0..=255u8)
            .map(|i| {
                let mut s = [0u8; 16];
                s[0] = i;
                derive_mac(&s, 0)
            })
            .collect();
        assert_eq!(macs.len(), 256);
    }
}
