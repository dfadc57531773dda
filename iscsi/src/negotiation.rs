//! Operational parameter negotiation (RFC 7143 §13). The initiator offers,
//! the target answers with the result: list keys pick the first value the
//! target supports, numeric keys take the minimum or maximum, booleans AND
//! or OR. Declarative keys need no answer.

use std::collections::HashSet;

/// Key answer constants (RFC 7143 §6.2).
pub const NOT_UNDERSTOOD: &str = "NotUnderstood";
pub const IRRELEVANT: &str = "Irrelevant";
pub const REJECT: &str = "Reject";

/// The outcome of operational negotiation for one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OperationalParams {
    pub header_digest: bool,
    pub data_digest: bool,
    pub max_connections: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub first_burst_length: u32,
    pub max_burst_length: u32,
    /// The initiator's receive limit: Data-In and other target PDUs must
    /// carry at most this much data.
    pub initiator_max_recv_dsl: u32,
    /// The target's own receive limit as declared to the initiator.
    pub target_max_recv_dsl: u32,
    pub max_outstanding_r2t: u32,
    pub default_time2wait: u32,
    pub default_time2retain: u32,
    pub error_recovery_level: u32,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
}

impl Default for OperationalParams {
    /// The RFC's defaults, which apply to keys that are never negotiated.
    fn default() -> Self {
        OperationalParams {
            header_digest: false,
            data_digest: false,
            max_connections: 1,
            initial_r2t: true,
            immediate_data: true,
            first_burst_length: 65536,
            max_burst_length: 262_144,
            initiator_max_recv_dsl: 8192,
            target_max_recv_dsl: 8192,
            max_outstanding_r2t: 1,
            default_time2wait: 2,
            default_time2retain: 20,
            error_recovery_level: 0,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
        }
    }
}

/// What the target is willing to accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetLimits {
    pub max_recv_data_segment_length: u32,
    pub first_burst_length: u32,
    pub max_burst_length: u32,
    pub max_outstanding_r2t: u32,
}

/// How an offered key was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Send `key=value` back.
    Value(String),
    /// Declarative or otherwise needs no answer.
    Silent,
    /// The key is not an operational key; the caller handles it.
    NotOperational,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    #[error("key {0} negotiated twice")]
    Renegotiated(String),
}

/// Keys that only make sense in a normal session (RFC 7143 §13: "Irrelevant"
/// in discovery sessions).
const NORMAL_ONLY: &[&str] = &[
    "MaxConnections",
    "InitialR2T",
    "ImmediateData",
    "MaxBurstLength",
    "FirstBurstLength",
    "MaxOutstandingR2T",
    "DataPDUInOrder",
    "DataSequenceInOrder",
];

pub struct Negotiator {
    limits: TargetLimits,
    discovery: bool,
    params: OperationalParams,
    seen: HashSet<String>,
}

fn parse_number(v: &str) -> Option<u64> {
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        if h.is_empty() || h.len() > 16 {
            return None;
        }
        u64::from_str_radix(h, 16).ok()
    } else {
        if v.is_empty() || v.len() > 20 || !v.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        v.parse().ok()
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

fn yes_no(b: bool) -> String {
    if b { "Yes" } else { "No" }.to_string()
}

fn in_range(v: &str, lo: u64, hi: u64) -> Option<u32> {
    parse_number(v)
        .filter(|n| (lo..=hi).contains(n))
        .map(|n| n as u32)
}

impl Negotiator {
    pub fn new(limits: TargetLimits, discovery: bool) -> Self {
        let params = OperationalParams {
            target_max_recv_dsl: limits.max_recv_data_segment_length,
            ..OperationalParams::default()
        };
        Negotiator {
            limits,
            discovery,
            params,
            seen: HashSet::new(),
        }
    }

    pub fn params(&self) -> OperationalParams {
        self.params
    }

    /// Answers one key. Values out of range or malformed are answered
    /// `Reject`, leaving the default in force, as §6.2 prescribes.
    pub fn offer(&mut self, key: &str, value: &str) -> Result<Answer, NegotiationError> {
        const KEYS: &[&str] = &[
            "HeaderDigest",
            "DataDigest",
            "MaxConnections",
            "InitialR2T",
            "ImmediateData",
            "FirstBurstLength",
            "MaxBurstLength",
            "MaxRecvDataSegmentLength",
            "MaxOutstandingR2T",
            "DefaultTime2Wait",
            "DefaultTime2Retain",
            "ErrorRecoveryLevel",
            "DataPDUInOrder",
            "DataSequenceInOrder",
            "IFMarker",
            "OFMarker",
            "IFMarkInt",
            "OFMarkInt",
        ];
        if !KEYS.contains(&key) {
            return Ok(Answer::NotOperational);
        }
        // A declarative key may be re-declared; a negotiated one may not be
        // re-offered once answered.
        if key != "MaxRecvDataSegmentLength" && !self.seen.insert(key.to_string()) {
            return Err(NegotiationError::Renegotiated(key.to_string()));
        }
        if self.discovery && NORMAL_ONLY.contains(&key) {
            return Ok(Answer::Value(IRRELEVANT.into()));
        }
        let reject = || Ok(Answer::Value(REJECT.into()));
        let p = &mut self.params;
        let l = &self.limits;
        match key {
            "HeaderDigest" | "DataDigest" => {
                let pick = value.split(',').find(|v| *v == "CRC32C" || *v == "None");
                let Some(pick) = pick else { return reject() };
                let on = pick == "CRC32C";
                if key == "HeaderDigest" {
                    p.header_digest = on;
                } else {
                    p.data_digest = on;
                }
                Ok(Answer::Value(pick.to_string()))
            }
            "MaxConnections" => match in_range(value, 1, 65535) {
                Some(_) => {
                    p.max_connections = 1;
                    Ok(Answer::Value("1".into()))
                }
                None => reject(),
            },
            "InitialR2T" => match parse_bool(value) {
                // OR: the target would accept unsolicited data, so the
                // initiator's wish decides.
                Some(v) => {
                    p.initial_r2t = v;
                    Ok(Answer::Value(yes_no(v)))
                }
                None => reject(),
            },
            "ImmediateData" => match parse_bool(value) {
                Some(v) => {
                    p.immediate_data = v;
                    Ok(Answer::Value(yes_no(v)))
                }
                None => reject(),
            },
            "FirstBurstLength" => match in_range(value, 512, 0xff_ffff) {
                Some(v) => {
                    p.first_burst_length = v.min(l.first_burst_length);
                    Ok(Answer::Value(p.first_burst_length.to_string()))
                }
                None => reject(),
            },
            "MaxBurstLength" => match in_range(value, 512, 0xff_ffff) {
                Some(v) => {
                    p.max_burst_length = v.min(l.max_burst_length);
                    Ok(Answer::Value(p.max_burst_length.to_string()))
                }
                None => reject(),
            },
            "MaxRecvDataSegmentLength" => match in_range(value, 512, 0xff_ffff) {
                Some(v) => {
                    p.initiator_max_recv_dsl = v;
                    Ok(Answer::Silent)
                }
                None => reject(),
            },
            "MaxOutstandingR2T" => match in_range(value, 1, 65535) {
                Some(v) => {
                    p.max_outstanding_r2t = v.min(l.max_outstanding_r2t.max(1));
                    Ok(Answer::Value(p.max_outstanding_r2t.to_string()))
                }
                None => reject(),
            },
            "DefaultTime2Wait" => match in_range(value, 0, 3600) {
                Some(v) => {
                    p.default_time2wait = v.max(2);
                    Ok(Answer::Value(p.default_time2wait.to_string()))
                }
                None => reject(),
            },
            "DefaultTime2Retain" => match in_range(value, 0, 3600) {
                // Without connection recovery (ERL 0) nothing is retained.
                Some(_) => {
                    p.default_time2retain = 0;
                    Ok(Answer::Value("0".into()))
                }
                None => reject(),
            },
            "ErrorRecoveryLevel" => match in_range(value, 0, 2) {
                Some(_) => {
                    p.error_recovery_level = 0;
                    Ok(Answer::Value("0".into()))
                }
                None => reject(),
            },
            "DataPDUInOrder" | "DataSequenceInOrder" => match parse_bool(value) {
                // OR with the target's Yes.
                Some(_) => Ok(Answer::Value("Yes".into())),
                None => reject(),
            },
            "IFMarker" | "OFMarker" => match parse_bool(value) {
                // AND with the target's No.
                Some(_) => Ok(Answer::Value("No".into())),
                None => reject(),
            },
            // Markers are never enabled, so their intervals do not matter.
            _ => Ok(Answer::Value(IRRELEVANT.into())),
        }
    }

    /// Clamps results whose defaults exceed what the target offers and keeps
    /// FirstBurstLength within MaxBurstLength (§13.14).
    pub fn finish(&mut self) -> OperationalParams {
        let p = &mut self.params;
        if p.first_burst_length > p.max_burst_length {
            p.first_burst_length = p.max_burst_length;
        }
        self.params
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> TargetLimits {
        TargetLimits {
            max_recv_data_segment_length: 262144,
            first_burst_length: 65536,
            max_burst_length: 1048576,
            max_outstanding_r2t: 1,
        }
    }

    fn val(a: Answer) -> String {
        match a {
            Answer::Value(v) => v,
            other => panic!("expected a value, got {other:?}"),
        }
    }

    #[test]
    fn numeric_keys_take_min_and_max() {
        let mut n = Negotiator::new(limits(), false);
        assert_eq!(
            val(n.offer("MaxBurstLength", "16776192").unwrap()),
            "1048576"
        );
        assert_eq!(val(n.offer("FirstBurstLength", "0x1000").unwrap()), "4096");
        assert_eq!(val(n.offer("MaxOutstandingR2T", "8").unwrap()), "1");
        assert_eq!(val(n.offer("DefaultTime2Wait", "0").unwrap()), "2");
        assert_eq!(
            n.offer("MaxRecvDataSegmentLength", "65536").unwrap(),
            Answer::Silent
        );
        let p = n.finish();
        assert_eq!(p.initiator_max_recv_dsl, 65536);
        assert_eq!(p.target_max_recv_dsl, 262144);
        assert_eq!(p.first_burst_length, 4096);
    }

    #[test]
    fn booleans_and_lists() {
        let mut n = Negotiator::new(limits(), false);
        assert_eq!(val(n.offer("InitialR2T", "No").unwrap()), "No");
        assert_eq!(val(n.offer("ImmediateData", "Yes").unwrap()), "Yes");
        assert_eq!(
            val(n.offer("HeaderDigest", "CRC32C,None").unwrap()),
            "CRC32C"
        );
        assert_eq!(val(n.offer("DataDigest", "MD5,None").unwrap()), "None");
        assert_eq!(val(n.offer("IFMarker", "Yes").unwrap()), "No");
        assert_eq!(val(n.offer("DataPDUInOrder", "No").unwrap()), "Yes");
        let p = n.finish();
        assert!(p.header_digest && !p.data_digest && !p.initial_r2t);
    }

    #[test]
    fn bad_values_are_rejected_and_repeats_are_errors() {
        let mut n = Negotiator::new(limits(), false);
        assert_eq!(val(n.offer("MaxBurstLength", "12").unwrap()), REJECT);
        assert_eq!(val(n.offer("InitialR2T", "maybe").unwrap()), REJECT);
        assert_eq!(val(n.offer("HeaderDigest", "MD5").unwrap()), REJECT);
        assert_eq!(
            val(n
                .offer("ErrorRecoveryLevel", "99999999999999999999999")
                .unwrap()),
            REJECT
        );
        assert!(n.offer("InitialR2T", "Yes").is_err());
        assert_eq!(n.offer("TargetName", "x").unwrap(), Answer::NotOperational);
    }

    #[test]
    fn discovery_marks_normal_keys_irrelevant() {
        let mut n = Negotiator::new(limits(), true);
        assert_eq!(val(n.offer("MaxBurstLength", "4096").unwrap()), IRRELEVANT);
        assert_eq!(val(n.offer("HeaderDigest", "None").unwrap()), "None");
    }
}
