//! The login phase (RFC 7143 §6.3): security negotiation (AuthMethod, CHAP),
//! operational negotiation, and the move to full feature phase, one Login
//! Request at a time. Pure state machine: no sockets, so it can be fuzzed.

use std::sync::Arc;

use crate::chap::{self, Challenge};
use crate::negotiation::{
    Answer, Negotiator, OperationalParams, TargetLimits, IRRELEVANT, NOT_UNDERSTOOD,
};
use crate::pdu::{stage, LoginRequest, LoginResponse};
use crate::text::{self, TextBuilder};
use crate::{Auth, Registry, Target};

/// Login status class and detail (RFC 7143 §11.13.5).
pub mod status {
    pub const SUCCESS: (u8, u8) = (0, 0);
    pub const INITIATOR_ERROR: (u8, u8) = (2, 0x00);
    pub const AUTHENTICATION_FAILURE: (u8, u8) = (2, 0x01);
    pub const AUTHORIZATION_FAILURE: (u8, u8) = (2, 0x02);
    pub const NOT_FOUND: (u8, u8) = (2, 0x03);
    pub const TARGET_REMOVED: (u8, u8) = (2, 0x04);
    pub const UNSUPPORTED_VERSION: (u8, u8) = (2, 0x05);
    pub const TOO_MANY_CONNECTIONS: (u8, u8) = (2, 0x06);
    pub const MISSING_PARAMETER: (u8, u8) = (2, 0x07);
    pub const CANT_INCLUDE_IN_SESSION: (u8, u8) = (2, 0x08);
    pub const SESSION_TYPE_NOT_SUPPORTED: (u8, u8) = (2, 0x09);
    pub const SESSION_DOES_NOT_EXIST: (u8, u8) = (2, 0x0a);
    pub const INVALID_DURING_LOGIN: (u8, u8) = (2, 0x0b);
    pub const TARGET_ERROR: (u8, u8) = (3, 0x00);
    pub const SERVICE_UNAVAILABLE: (u8, u8) = (3, 0x01);
    pub const OUT_OF_RESOURCES: (u8, u8) = (3, 0x02);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionType {
    Normal,
    Discovery,
}

/// Whether a live session with this TSIH belongs to (initiator, ISID).
pub type SessionExists = Box<dyn Fn(u16, &str, [u8; 6]) -> bool + Send>;

/// What the login machine needs from the server.
pub struct LoginEnv {
    pub registry: Arc<dyn Registry>,
    pub limits: TargetLimits,
    pub tpgt: u16,
    pub queue_depth: u32,
    /// TSIH the session gets if this login creates a new one.
    pub new_tsih: u16,
    /// Whether a live session with this TSIH belongs to (initiator, ISID);
    /// a nonzero TSIH in a login names such a session.
    pub session_exists: SessionExists,
}

/// A completed login.
pub struct LoginResult {
    pub session_type: SessionType,
    pub initiator_name: String,
    pub isid: [u8; 6],
    /// The session's TSIH: new, or the one the initiator named.
    pub tsih: u16,
    /// Set when the initiator named an existing session, which it replaces.
    pub replaces_tsih: Option<u16>,
    pub target_name: String,
    pub target: Option<Arc<dyn Target>>,
    pub params: OperationalParams,
    pub cid: u16,
    /// CmdSN of the last Login Request: the first ExpCmdSN of the session.
    pub exp_cmdsn: u32,
    /// The StatSN the first full-feature response carries.
    pub statsn: u32,
}

impl std::fmt::Debug for LoginResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginResult")
            .field("session_type", &self.session_type)
            .field("initiator_name", &self.initiator_name)
            .field("target_name", &self.target_name)
            .field("tsih", &self.tsih)
            .field("params", &self.params)
            .finish()
    }
}

pub enum LoginStatus {
    /// Send the response and wait for the next Login Request.
    Continue,
    /// Send the response, then close the connection.
    Failed,
    /// Send the response; the connection is in full feature phase.
    Complete(Box<LoginResult>),
}

pub struct LoginReply {
    pub response: LoginResponse,
    pub data: Vec<u8>,
    pub status: LoginStatus,
}

enum Security {
    /// AuthMethod not yet negotiated.
    Start,
    /// AuthMethod=CHAP agreed, waiting for CHAP_A.
    WaitAlgorithm,
    /// Challenge sent, waiting for CHAP_N/CHAP_R.
    WaitResponse(Challenge),
    /// Authenticated (or no authentication needed).
    Done,
}

pub struct Login {
    env: LoginEnv,
    started: bool,
    ended: bool,
    isid: [u8; 6],
    tsih: u16,
    cid: u16,
    stage: u8,
    statsn: u32,
    initiator_name: String,
    target_name: String,
    session_type: SessionType,
    target: Option<Arc<dyn Target>>,
    auth: Auth,
    security: Security,
    negotiator: Option<Negotiator>,
    declared_mrdsl: bool,
    sent_tpgt: bool,
    partial: Vec<u8>,
    replaces_tsih: Option<u16>,
}

fn auth_required(auth: &Auth) -> bool {
    !matches!(auth, Auth::None)
}

impl Login {
    pub fn new(env: LoginEnv) -> Self {
        Login {
            env,
            started: false,
            ended: false,
            isid: [0; 6],
            tsih: 0,
            cid: 0,
            stage: stage::SECURITY,
            statsn: 0,
            initiator_name: String::new(),
            target_name: String::new(),
            session_type: SessionType::Normal,
            target: None,
            auth: Auth::None,
            security: Security::Start,
            negotiator: None,
            declared_mrdsl: false,
            sent_tpgt: false,
            partial: Vec::new(),
            replaces_tsih: None,
        }
    }

    fn header(&mut self, req: &LoginRequest) -> LoginResponse {
        let statsn = self.statsn;
        self.statsn = self.statsn.wrapping_add(1);
        LoginResponse {
            transit: false,
            cont: false,
            csg: req.csg & 3,
            nsg: 0,
            version_max: 0,
            version_active: 0,
            isid: req.isid,
            tsih: req.tsih,
            itt: req.itt,
            statsn,
            exp_cmdsn: req.cmdsn,
            max_cmdsn: req.cmdsn.wrapping_add(self.env.queue_depth.max(1) - 1),
            status_class: 0,
            status_detail: 0,
        }
    }

    fn fail(&mut self, req: &LoginRequest, st: (u8, u8), why: &str) -> LoginReply {
        tracing::debug!(initiator = %self.initiator_name, class = st.0, detail = st.1, "login refused: {why}");
        self.ended = true;
        let mut response = self.header(req);
        response.tsih = 0;
        response.status_class = st.0;
        response.status_detail = st.1;
        LoginReply {
            response,
            data: Vec::new(),
            status: LoginStatus::Failed,
        }
    }

    /// Handles one Login Request and its data segment.
    pub fn handle(&mut self, req: &LoginRequest, data: &[u8]) -> LoginReply {
        if self.ended {
            return self.fail(req, status::INITIATOR_ERROR, "login already ended");
        }
        if !self.started {
            self.statsn = req.exp_statsn;
            self.isid = req.isid;
            self.tsih = req.tsih;
            self.cid = req.cid;
            self.stage = req.csg;
            if req.version_min > 0 {
                return self.fail(req, status::UNSUPPORTED_VERSION, "version");
            }
        } else if req.isid != self.isid || req.tsih != self.tsih_as_sent() || req.cid != self.cid {
            return self.fail(req, status::INITIATOR_ERROR, "ISID, TSIH or CID changed");
        } else if req.csg != self.stage {
            return self.fail(req, status::INITIATOR_ERROR, "CSG is not the current stage");
        }
        if req.csg != stage::SECURITY && req.csg != stage::OPERATIONAL {
            return self.fail(req, status::INITIATOR_ERROR, "invalid CSG");
        }
        if req.transit {
            let ok = match req.csg {
                stage::SECURITY => req.nsg == stage::OPERATIONAL || req.nsg == stage::FULL_FEATURE,
                _ => req.nsg == stage::FULL_FEATURE,
            };
            if !ok {
                return self.fail(req, status::INITIATOR_ERROR, "invalid NSG");
            }
            if req.cont {
                return self.fail(req, status::INITIATOR_ERROR, "T and C both set");
            }
        }
        if self.partial.len() + data.len() > text::MAX_TEXT_LEN {
            return self.fail(req, status::INITIATOR_ERROR, "login text too long");
        }
        self.partial.extend_from_slice(data);
        if req.cont {
            // The initiator continues its text in the next PDU; acknowledge
            // with an empty response in the same stage.
            let response = self.header(req);
            return LoginReply {
                response,
                data: Vec::new(),
                status: LoginStatus::Continue,
            };
        }
        let text = std::mem::take(&mut self.partial);
        let pairs = match text::parse(&text) {
            Ok(p) => p,
            Err(_) => return self.fail(req, status::INITIATOR_ERROR, "malformed login text"),
        };
        if !self.started {
            if let Some(r) = self.first_request(req, &pairs) {
                return r;
            }
            self.started = true;
        }
        self.negotiate(req, &pairs)
    }

    /// The TSIH the initiator is expected to repeat: what it sent first.
    fn tsih_as_sent(&self) -> u16 {
        if self.replaces_tsih.is_some() {
            self.tsih
        } else {
            0
        }
    }

    fn first_request(
        &mut self,
        req: &LoginRequest,
        pairs: &[(String, String)],
    ) -> Option<LoginReply> {
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(pk, _)| pk == k)
                .map(|(_, v)| v.as_str())
        };
        let Some(initiator) = get("InitiatorName").filter(|v| !v.is_empty()) else {
            return Some(self.fail(req, status::MISSING_PARAMETER, "no InitiatorName"));
        };
        self.initiator_name = initiator.to_string();
        self.session_type = match get("SessionType") {
            None | Some("Normal") => SessionType::Normal,
            Some("Discovery") => SessionType::Discovery,
            Some(_) => {
                return Some(self.fail(req, status::SESSION_TYPE_NOT_SUPPORTED, "SessionType"))
            }
        };
        if self.session_type == SessionType::Normal {
            let Some(name) = get("TargetName").filter(|v| !v.is_empty()) else {
                return Some(self.fail(req, status::MISSING_PARAMETER, "no TargetName"));
            };
            self.target_name = name.to_string();
            let Some(target) = self.env.registry.target(name) else {
                return Some(self.fail(req, status::NOT_FOUND, "unknown target"));
            };
            if !target.allows(&self.initiator_name) {
                return Some(self.fail(req, status::AUTHORIZATION_FAILURE, "ACL"));
            }
            self.auth = target.auth();
            self.target = Some(target);
        }
        if req.tsih != 0 {
            if self.session_type == SessionType::Discovery
                || !(self.env.session_exists)(req.tsih, &self.initiator_name, req.isid)
            {
                return Some(self.fail(req, status::SESSION_DOES_NOT_EXIST, "unknown TSIH"));
            }
            self.replaces_tsih = Some(req.tsih);
            self.tsih = req.tsih;
        } else {
            self.tsih = self.env.new_tsih;
        }
        if req.csg == stage::OPERATIONAL && auth_required(&self.auth) {
            return Some(self.fail(
                req,
                status::AUTHENTICATION_FAILURE,
                "security stage skipped",
            ));
        }
        if req.csg == stage::OPERATIONAL {
            self.security = Security::Done;
        }
        self.negotiator = Some(Negotiator::new(
            self.env.limits,
            self.session_type == SessionType::Discovery,
        ));
        None
    }

    fn negotiate(&mut self, req: &LoginRequest, pairs: &[(String, String)]) -> LoginReply {
        let mut out = TextBuilder::new();
        let mut chap: Vec<(&str, &str)> = Vec::new();
        let mut auth_method: Option<&str> = None;
        for (k, v) in pairs {
            match k.as_str() {
                "InitiatorName" => {
                    if *v != self.initiator_name {
                        return self.fail(req, status::INITIATOR_ERROR, "InitiatorName changed");
                    }
                }
                "TargetName" => {
                    if self.session_type == SessionType::Normal && *v != self.target_name {
                        return self.fail(req, status::INITIATOR_ERROR, "TargetName changed");
                    }
                }
                "SessionType" | "InitiatorAlias" => {}
                "AuthMethod" => {
                    if req.csg != stage::SECURITY {
                        out.add(k, IRRELEVANT);
                    } else {
                        auth_method = Some(v);
                    }
                }
                key if key.starts_with("CHAP_") => {
                    if req.csg != stage::SECURITY {
                        return self.fail(
                            req,
                            status::INITIATOR_ERROR,
                            "CHAP outside the security stage",
                        );
                    }
                    chap.push((key, v));
                }
                "TargetAlias" | "TargetAddress" | "TargetPortalGroupTag" | "SendTargets" => {
                    out.add(k, IRRELEVANT);
                }
                _ => {
                    let Some(n) = self.negotiator.as_mut() else {
                        return self.fail(req, status::TARGET_ERROR, "no negotiator");
                    };
                    match n.offer(k, v) {
                        Ok(Answer::Value(a)) => {
                            out.add(k, &a);
                        }
                        Ok(Answer::Silent) => {}
                        Ok(Answer::NotOperational) => {
                            out.add(k, NOT_UNDERSTOOD);
                        }
                        Err(_) => {
                            return self.fail(req, status::INITIATOR_ERROR, "key renegotiated")
                        }
                    }
                }
            }
        }

        if req.csg == stage::SECURITY {
            if let Err(r) = self.security_step(req, auth_method, &chap, &mut out) {
                return r;
            }
        }

        let mut response = self.header(req);
        if self.session_type == SessionType::Normal && !self.sent_tpgt {
            out.add("TargetPortalGroupTag", &self.env.tpgt.to_string());
            self.sent_tpgt = true;
        }
        if req.csg == stage::OPERATIONAL && !self.declared_mrdsl {
            out.add(
                "MaxRecvDataSegmentLength",
                &self.env.limits.max_recv_data_segment_length.to_string(),
            );
            self.declared_mrdsl = true;
        }

        let mut status = LoginStatus::Continue;
        if req.transit {
            let secure = matches!(self.security, Security::Done)
                || (matches!(self.security, Security::Start) && !auth_required(&self.auth));
            if req.csg == stage::SECURITY && !secure {
                if matches!(self.security, Security::Start) {
                    return self.fail(req, status::AUTHENTICATION_FAILURE, "no authentication");
                }
                // CHAP still in progress: stay in the security stage.
            } else {
                response.transit = true;
                response.nsg = req.nsg;
                self.stage = req.nsg;
                if req.nsg == stage::FULL_FEATURE {
                    response.tsih = self.tsih;
                    status = LoginStatus::Complete(Box::new(self.result(req)));
                    self.ended = true;
                }
            }
        }
        LoginReply {
            response,
            data: out.into_bytes(),
            status,
        }
    }

    fn security_step(
        &mut self,
        req: &LoginRequest,
        auth_method: Option<&str>,
        chap: &[(&str, &str)],
        out: &mut TextBuilder,
    ) -> Result<(), LoginReply> {
        let get = |k: &str| chap.iter().find(|(ck, _)| *ck == k).map(|(_, v)| *v);
        if let Some(methods) = auth_method {
            if !matches!(self.security, Security::Start) {
                return Err(self.fail(req, status::INITIATOR_ERROR, "AuthMethod renegotiated"));
            }
            let offered: Vec<&str> = methods.split(',').collect();
            if auth_required(&self.auth) {
                if !offered.contains(&"CHAP") {
                    return Err(self.fail(req, status::AUTHENTICATION_FAILURE, "CHAP not offered"));
                }
                out.add("AuthMethod", "CHAP");
                self.security = Security::WaitAlgorithm;
            } else if offered.contains(&"None") {
                out.add("AuthMethod", "None");
                self.security = Security::Done;
            } else {
                return Err(self.fail(req, status::AUTHENTICATION_FAILURE, "no common AuthMethod"));
            }
        }
        if chap.is_empty() {
            return Ok(());
        }
        match std::mem::replace(&mut self.security, Security::Done) {
            Security::WaitAlgorithm => {
                let alg = match get("CHAP_A").map(chap::choose_algorithm) {
                    Some(Ok(a)) => a,
                    _ => return Err(self.fail(req, status::AUTHENTICATION_FAILURE, "CHAP_A")),
                };
                let c = Challenge::new(alg);
                out.add("CHAP_A", &alg.to_string());
                out.add("CHAP_I", &c.id.to_string());
                out.add("CHAP_C", &chap::encode_hex(&c.challenge));
                self.security = Security::WaitResponse(c);
                Ok(())
            }
            Security::WaitResponse(c) => {
                let (Some(n), Some(r)) = (get("CHAP_N"), get("CHAP_R")) else {
                    return Err(self.fail(
                        req,
                        status::AUTHENTICATION_FAILURE,
                        "CHAP_N/CHAP_R missing",
                    ));
                };
                let (user, secret) = match &self.auth {
                    Auth::Chap { user, secret } | Auth::MutualChap { user, secret, .. } => {
                        (user.clone(), secret.clone())
                    }
                    Auth::None => {
                        return Err(self.fail(
                            req,
                            status::AUTHENTICATION_FAILURE,
                            "no credentials",
                        ))
                    }
                };
                if c.verify(&user, &secret, n, r).is_err() {
                    return Err(self.fail(req, status::AUTHENTICATION_FAILURE, "CHAP response"));
                }
                match (get("CHAP_I"), get("CHAP_C"), &self.auth) {
                    (None, None, _) => Ok(()),
                    (
                        Some(i),
                        Some(ch),
                        Auth::MutualChap {
                            target_user,
                            target_secret,
                            ..
                        },
                    ) => match c.answer_mutual(i, ch, target_secret) {
                        Ok(resp) => {
                            out.add("CHAP_N", target_user);
                            out.add("CHAP_R", &chap::encode_hex(&resp));
                            Ok(())
                        }
                        Err(_) => {
                            Err(self.fail(req, status::AUTHENTICATION_FAILURE, "mutual CHAP"))
                        }
                    },
                    _ => Err(self.fail(
                        req,
                        status::AUTHENTICATION_FAILURE,
                        "mutual CHAP not configured",
                    )),
                }
            }
            Security::Start | Security::Done => {
                Err(self.fail(req, status::AUTHENTICATION_FAILURE, "unexpected CHAP keys"))
            }
        }
    }

    fn result(&mut self, req: &LoginRequest) -> LoginResult {
        let params = match self.negotiator.as_mut() {
            Some(n) => n.finish(),
            None => OperationalParams::default(),
        };
        LoginResult {
            session_type: self.session_type,
            initiator_name: self.initiator_name.clone(),
            isid: self.isid,
            tsih: self.tsih,
            replaces_tsih: self.replaces_tsih,
            target_name: self.target_name.clone(),
            target: self.target.clone(),
            params,
            cid: self.cid,
            exp_cmdsn: req.cmdsn,
            statsn: self.statsn,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Nexus, ScsiOutcome, TmFunction, TmResponse};

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
    struct R(Auth);
    impl Registry for R {
        fn discover(&self, _: &str) -> Vec<String> {
            vec!["iqn.t".into()]
        }
        fn target(&self, name: &str) -> Option<Arc<dyn Target>> {
            (name == "iqn.t").then(|| Arc::new(T(self.0.clone())) as Arc<dyn Target>)
        }
    }

    fn login(auth: Auth) -> Login {
        Login::new(LoginEnv {
            registry: Arc::new(R(auth)),
            limits: TargetLimits {
                max_recv_data_segment_length: 262144,
                first_burst_length: 65536,
                max_burst_length: 1048576,
                max_outstanding_r2t: 1,
            },
            tpgt: 1,
            queue_depth: 32,
            new_tsih: 7,
            session_exists: Box::new(|_, _, _| false),
        })
    }

    fn req(csg: u8, nsg: u8, transit: bool) -> LoginRequest {
        LoginRequest {
            transit,
            csg,
            nsg,
            isid: [0x80, 0, 0, 0, 0, 1],
            itt: 1,
            cmdsn: 10,
            ..Default::default()
        }
    }

    fn text(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut b = TextBuilder::new();
        for (k, v) in pairs {
            b.add(k, v);
        }
        b.into_bytes()
    }

    fn pairs(d: &[u8]) -> Vec<(String, String)> {
        text::parse(d).unwrap()
    }

    fn class(r: &LoginReply) -> (u8, u8) {
        (r.response.status_class, r.response.status_detail)
    }

    #[test]
    fn no_auth_login_reaches_full_feature() {
        let mut l = login(Auth::None);
        let r = l.handle(
            &req(0, 1, true),
            &text(&[
                ("InitiatorName", "iqn.i"),
                ("TargetName", "iqn.t"),
                ("AuthMethod", "None"),
            ]),
        );
        assert_eq!(class(&r), status::SUCCESS);
        assert!(r.response.transit);
        let p = pairs(&r.data);
        assert!(p.contains(&("AuthMethod".into(), "None".into())));
        assert!(p.contains(&("TargetPortalGroupTag".into(), "1".into())));
        let r = l.handle(
            &req(1, 3, true),
            &text(&[
                ("HeaderDigest", "None"),
                ("MaxRecvDataSegmentLength", "65536"),
                ("X-foo", "1"),
            ]),
        );
        let p = pairs(&r.data);
        assert!(p.contains(&("MaxRecvDataSegmentLength".into(), "262144".into())));
        assert!(p.contains(&("X-foo".into(), "NotUnderstood".into())));
        assert_eq!(r.response.tsih, 7);
        match r.status {
            LoginStatus::Complete(res) => {
                assert_eq!(res.params.initiator_max_recv_dsl, 65536);
                assert_eq!(res.exp_cmdsn, 10);
            }
            _ => panic!("login should complete"),
        }
    }

    #[test]
    fn failures_have_the_right_status() {
        let mut l = login(Auth::None);
        let r = l.handle(&req(0, 1, true), &text(&[("TargetName", "iqn.t")]));
        assert_eq!(class(&r), status::MISSING_PARAMETER);
        let mut l = login(Auth::None);
        let r = l.handle(
            &req(0, 1, true),
            &text(&[("InitiatorName", "iqn.i"), ("TargetName", "iqn.none")]),
        );
        assert_eq!(class(&r), status::NOT_FOUND);
        let mut l = login(Auth::None);
        let r = l.handle(
            &req(0, 1, true),
            &text(&[("InitiatorName", "iqn.denied"), ("TargetName", "iqn.t")]),
        );
        assert_eq!(class(&r), status::AUTHORIZATION_FAILURE);
        let mut l = login(Auth::None);
        let r = l.handle(&req(0, 1, true), &text(&[("InitiatorName", "iqn.i")]));
        assert_eq!(class(&r), status::MISSING_PARAMETER);
        let mut l = login(Auth::None);
        let r = l.handle(
            &req(0, 2, true),
            &text(&[("InitiatorName", "iqn.i"), ("TargetName", "iqn.t")]),
        );
        assert_eq!(class(&r), status::INITIATOR_ERROR);
        let mut l = login(Auth::Chap {
            user: "u".into(),
            secret: "s".into(),
        });
        let r = l.handle(
            &req(1, 3, true),
            &text(&[("InitiatorName", "iqn.i"), ("TargetName", "iqn.t")]),
        );
        assert_eq!(class(&r), status::AUTHENTICATION_FAILURE);
    }

    fn chap_login(auth: Auth, secret: &str, alg: &str) -> LoginReply {
        let mut l = login(auth);
        let r = l.handle(
            &req(0, 1, true),
            &text(&[
                ("InitiatorName", "iqn.i"),
                ("TargetName", "iqn.t"),
                ("AuthMethod", "CHAP,None"),
            ]),
        );
        assert!(!r.response.transit);
        assert!(pairs(&r.data).contains(&("AuthMethod".into(), "CHAP".into())));
        let r = l.handle(&req(0, 1, false), &text(&[("CHAP_A", alg)]));
        let p = pairs(&r.data);
        let get = |k: &str| {
            p.iter()
                .find(|(pk, _)| pk == k)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        let a: u32 = get("CHAP_A").parse().unwrap();
        let id: u8 = get("CHAP_I").parse().unwrap();
        let c = chap::decode_binary(&get("CHAP_C")).unwrap();
        let resp = chap::response(a, id, secret.as_bytes(), &c);
        l.handle(
            &req(0, 1, true),
            &text(&[("CHAP_N", "u"), ("CHAP_R", &chap::encode_hex(&resp))]),
        )
    }

    #[test]
    fn chap_accepts_the_right_secret_only() {
        let auth = Auth::Chap {
            user: "u".into(),
            secret: "secret".into(),
        };
        let r = chap_login(auth.clone(), "secret", "5");
        assert_eq!(class(&r), status::SUCCESS);
        assert!(r.response.transit);
        let r = chap_login(auth.clone(), "wrong", "5");
        assert_eq!(class(&r), status::AUTHENTICATION_FAILURE);
        let r = chap_login(auth, "secret", "7,5");
        assert_eq!(class(&r), status::SUCCESS);
    }

    #[test]
    fn chap_target_refuses_none_only() {
        let mut l = login(Auth::Chap {
            user: "u".into(),
            secret: "s".into(),
        });
        let r = l.handle(
            &req(0, 1, true),
            &text(&[
                ("InitiatorName", "iqn.i"),
                ("TargetName", "iqn.t"),
                ("AuthMethod", "None"),
            ]),
        );
        assert_eq!(class(&r), status::AUTHENTICATION_FAILURE);
    }

    #[test]
    fn discovery_needs_no_target() {
        let mut l = login(Auth::None);
        let r = l.handle(
            &req(0, 3, true),
            &text(&[
                ("InitiatorName", "iqn.i"),
                ("SessionType", "Discovery"),
                ("AuthMethod", "CHAP,None"),
            ]),
        );
        assert_eq!(class(&r), status::SUCCESS);
        assert!(matches!(r.status, LoginStatus::Complete(_)));
    }

    #[test]
    fn continued_text_is_joined() {
        let mut l = login(Auth::None);
        let all = text(&[
            ("InitiatorName", "iqn.i"),
            ("TargetName", "iqn.t"),
            ("AuthMethod", "None"),
        ]);
        let mut first = req(0, 1, false);
        first.cont = true;
        let r = l.handle(&first, &all[..10]);
        assert_eq!(class(&r), status::SUCCESS);
        assert!(r.data.is_empty());
        let r = l.handle(&req(0, 1, true), &all[10..]);
        assert_eq!(class(&r), status::SUCCESS);
        assert!(r.response.transit);
    }
}
