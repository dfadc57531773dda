//! A sequence of PDUs into the login state machine. The input is cut into
//! PDUs by its own length fields, as the wire would.
#![no_main]

use std::sync::Arc;

use iscsi::login::{Login, LoginEnv, LoginStatus};
use iscsi::negotiation::TargetLimits;
use iscsi::pdu::{padded, segment_lengths, Bhs, BHS_LEN};
use iscsi::{Auth, Nexus, Registry, ScsiOutcome, Target, TmFunction, TmResponse};
use libfuzzer_sys::fuzz_target;

struct T(Auth);
impl Target for T {
    fn name(&self) -> &str {
        "iqn.t"
    }
    fn auth(&self) -> Auth {
        self.0.clone()
    }
    fn allows(&self, i: &str) -> bool {
        i != "iqn.denied"
    }
    fn execute(&self, _: &Nexus, _: u64, _: &[u8], _: &[u8], _: u32) -> ScsiOutcome {
        ScsiOutcome::default()
    }
    fn transfer_length(&self, _: u64, _: &[u8]) -> Option<u32> {
        None
    }
    fn task_management(&self, _: &Nexus, _: u64, _: TmFunction) -> TmResponse {
        TmResponse::Complete
    }
    fn session_opened(&self, _: &Nexus) {}
    fn session_closed(&self, _: &Nexus) {}
}

struct R;
impl Registry for R {
    fn discover(&self, _: &str) -> Vec<String> {
        vec!["iqn.t".into(), "iqn.c".into()]
    }
    fn target(&self, name: &str) -> Option<Arc<dyn Target>> {
        match name {
            "iqn.t" => Some(Arc::new(T(Auth::None))),
            "iqn.c" => Some(Arc::new(T(Auth::MutualChap {
                user: "u".into(),
                secret: "s".into(),
                target_user: "t".into(),
                target_secret: "ts".into(),
            }))),
            _ => None,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut login = Login::new(LoginEnv {
        registry: Arc::new(R),
        limits: TargetLimits {
            max_recv_data_segment_length: 65536,
            first_burst_length: 65536,
            max_burst_length: 262144,
            max_outstanding_r2t: 1,
        },
        tpgt: 1,
        queue_depth: 32,
        new_tsih: 1,
        session_exists: Box::new(|tsih, _, _| tsih == 2),
    });
    let mut rest = data;
    while rest.len() >= BHS_LEN {
        let Ok((ahs, len)) = segment_lengths(rest) else {
            return;
        };
        let total = BHS_LEN + ahs + padded(len as usize);
        let end = total.min(rest.len());
        let seg_start = (BHS_LEN + ahs).min(end);
        let seg_end = (seg_start + len as usize).min(end);
        if let Ok(Bhs::LoginRequest(req)) = Bhs::parse(rest) {
            let reply = login.handle(&req, &rest[seg_start..seg_end]);
            let _ = iscsi::text::parse(&reply.data);
            if !matches!(reply.status, LoginStatus::Continue) {
                return;
            }
        }
        rest = &rest[end..];
    }
});
