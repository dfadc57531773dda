//! A storage node for the volume tests, until Strato's own storage agent
//! lands: Debian's `tgt` serves the volumes over real iSCSI, driven through
//! `tgtadm`, behind the real agent contract (`api::internal`): it enrolls,
//! heartbeats, and realizes `VolumeSpec`s (sparse backing file, target with
//! the spec's IQN, CHAP account, initiator ACL). tgt keeps LUN 0 for its
//! controller, so data is on LUN 1, which the node reports.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::ids::{HostId, VolumeId};
use api::internal::*;
use api::resources::{Capacity, EnrollmentTokenCreate, HostKind};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, put};
use axum::{Json, Router};

struct Volume {
    tid: u32,
    spec: VolumeSpec,
}

struct Inner {
    ctl: u16,
    dir: PathBuf,
    credential: String,
    volumes: HashMap<VolumeId, Volume>,
    next_tid: u32,
}

#[derive(Clone)]
struct Node(Arc<Mutex<Inner>>);

pub struct TgtNode {
    tgtd: Child,
    pub portal: String,
    pub host_id: HostId,
    node: Node,
    heartbeat: tokio::task::JoinHandle<()>,
}

fn tgtadm(ctl: u16, args: &[&str]) -> Result<String, String> {
    let out = Command::new("tgtadm")
        .arg("-C")
        .arg(ctl.to_string())
        .args(["--lld", "iscsi"])
        .args(args)
        .output()
        .map_err(|e| format!("tgtadm: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "tgtadm {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Creates a CHAP account and binds it to target `tid`.
fn add_chap(ctl: u16, tid: u32, user: &str, password: &str) -> Result<(), String> {
    let t = tid.to_string();
    tgtadm(
        ctl,
        &[
            "--op",
            "new",
            "--mode",
            "account",
            "--user",
            user,
            "--password",
            password,
        ],
    )?;
    tgtadm(
        ctl,
        &[
            "--op", "bind", "--mode", "account", "--tid", &t, "--user", user,
        ],
    )?;
    Ok(())
}

/// Unbinds a CHAP account from target `tid` (when given) and deletes it.
fn remove_chap(ctl: u16, tid: Option<u32>, user: &str) -> Result<(), String> {
    if let Some(tid) = tid {
        let t = tid.to_string();
        tgtadm(
            ctl,
            &[
                "--op", "unbind", "--mode", "account", "--tid", &t, "--user", user,
            ],
        )?;
    }
    tgtadm(
        ctl,
        &["--op", "delete", "--mode", "account", "--user", user],
    )?;
    Ok(())
}

fn observed(v: &VolumeSpec, reason: Option<String>) -> ObservedVolume {
    ObservedVolume {
        id: v.id,
        state: if reason.is_some() {
            ObservedVolumeState::Error
        } else {
            ObservedVolumeState::Available
        },
        generation: v.generation,
        size_bytes: v.size_bytes,
        snapshots: Vec::new(),
        reason,
        lun: 1,
    }
}

impl Inner {
    fn realize(&mut self, spec: VolumeSpec) -> Result<(), String> {
        let ctl = self.ctl;
        let tid = match self.volumes.get(&spec.id) {
            Some(v) => v.tid,
            None => {
                let tid = self.next_tid;
                self.next_tid += 1;
                let file = self.dir.join(format!("{}.img", spec.id));
                let f = std::fs::File::create(&file).map_err(|e| e.to_string())?;
                f.set_len(spec.size_bytes).map_err(|e| e.to_string())?;
                let t = tid.to_string();
                tgtadm(
                    ctl,
                    &[
                        "--op",
                        "new",
                        "--mode",
                        "target",
                        "--tid",
                        &t,
                        "--targetname",
                        &spec.iqn,
                    ],
                )?;
                tgtadm(
                    ctl,
                    &[
                        "--op",
                        "new",
                        "--mode",
                        "logicalunit",
                        "--tid",
                        &t,
                        "--lun",
                        "1",
                        "--backing-store",
                        &file.display().to_string(),
                    ],
                )?;
                if !spec.chap_user.is_empty() {
                    add_chap(ctl, tid, &spec.chap_user, &spec.chap_secret)?;
                }
                tid
            }
        };
        // The ACL follows the attachment: only the attached host may log in.
        let t = tid.to_string();
        let before: Vec<String> = self
            .volumes
            .get(&spec.id)
            .map(|v| v.spec.allowed_initiators.clone())
            .unwrap_or_default();
        for gone in before
            .iter()
            .filter(|i| !spec.allowed_initiators.contains(i))
        {
            tgtadm(
                ctl,
                &[
                    "--op",
                    "unbind",
                    "--mode",
                    "target",
                    "--tid",
                    &t,
                    "--initiator-name",
                    gone,
                ],
            )?;
        }
        for new in spec
            .allowed_initiators
            .iter()
            .filter(|i| !before.contains(i))
        {
            tgtadm(
                ctl,
                &[
                    "--op",
                    "bind",
                    "--mode",
                    "target",
                    "--tid",
                    &t,
                    "--initiator-name",
                    new,
                ],
            )?;
        }
        self.volumes.insert(spec.id, Volume { tid, spec });
        Ok(())
    }

    fn remove(&mut self, id: VolumeId) -> Result<(), String> {
        if let Some(v) = self.volumes.remove(&id) {
            let t = v.tid.to_string();
            tgtadm(
                self.ctl,
                &["--op", "delete", "--force", "--mode", "target", "--tid", &t],
            )?;
            if !v.spec.chap_user.is_empty() {
                let _ = remove_chap(self.ctl, None, &v.spec.chap_user);
            }
            let _ = std::fs::remove_file(self.dir.join(format!("{id}.img")));
        }
        Ok(())
    }
}

fn authorized(inner: &Inner, headers: &HeaderMap) -> Result<(), StatusCode> {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if bearer == Some(inner.credential.as_str()) {
        Ok(())
    } else {
        Err(StatusCode::UNAUTHORIZED)
    }
}

async fn volume_put(
    State(n): State<Node>,
    headers: HeaderMap,
    Path(_id): Path<VolumeId>,
    Json(spec): Json<VolumeSpec>,
) -> Result<Json<ObservedVolume>, StatusCode> {
    let mut inner = n.0.lock().expect("node");
    authorized(&inner, &headers)?;
    let reason = inner.realize(spec.clone()).err();
    Ok(Json(observed(&spec, reason)))
}

async fn volume_delete(
    State(n): State<Node>,
    headers: HeaderMap,
    Path(id): Path<VolumeId>,
) -> Result<StatusCode, StatusCode> {
    let mut inner = n.0.lock().expect("node");
    authorized(&inner, &headers)?;
    inner
        .remove(id)
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn volume_list(
    State(n): State<Node>,
    headers: HeaderMap,
) -> Result<Json<Vec<ObservedVolume>>, StatusCode> {
    let inner = n.0.lock().expect("node");
    authorized(&inner, &headers)?;
    Ok(Json(
        inner
            .volumes
            .values()
            .map(|v| observed(&v.spec, None))
            .collect(),
    ))
}

impl TgtNode {
    /// Starts a private tgtd on a loopback portal and enrolls it.
    pub async fn start(admin: &api::Client, internal_url: &str, dir: PathBuf) -> TgtNode {
        let port = super::free_port();
        let ctl = 100 + (port % 20000);
        let portal = format!("127.0.0.1:{port}");
        let tgtd = Command::new("tgtd")
            .args(["-f", "-C", &ctl.to_string(), "--iscsi", &format!("portal={portal}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tgtd is not installed: run the suite with `bash scripts/test.sh` (it installs tgt)");
        for _ in 0..40 {
            if tgtadm(ctl, &["--op", "show", "--mode", "target"]).is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tgtadm(ctl, &["--op", "show", "--mode", "target"]).expect("tgtd answers");
        std::fs::create_dir_all(&dir).expect("volume dir");
        let node = Node(Arc::new(Mutex::new(Inner {
            ctl,
            dir,
            credential: String::new(),
            volumes: HashMap::new(),
            next_tid: 1,
        })));
        let app = Router::new()
            .route("/agent/v1/volumes", get(volume_list))
            .route(
                "/agent/v1/volumes/{id}",
                put(volume_put).delete(volume_delete),
            )
            .with_state(node.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let agent_url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let token = admin
            .enrollment_token_create(&EnrollmentTokenCreate {
                kind: HostKind::Storage,
                rack: None,
                expires_in_secs: 600,
            })
            .await
            .expect("storage enrollment token");
        let capacity = Capacity {
            storage_bytes_total: 64 << 30,
            storage_bytes_free: 64 << 30,
            ..Capacity::default()
        };
        let internal = api::InternalClient::new(internal_url, None);
        let resp = internal
            .enroll(&EnrollRequest {
                token: token.secret,
                name: format!("tgt-{port}"),
                kind: HostKind::Storage,
                agent_url,
                capacity,
                initiator_iqn: None,
                iscsi_portal: Some(portal.clone()),
            })
            .await
            .expect("enroll the tgt node");
        node.0.lock().expect("node").credential = resp.credential.clone();
        let hb_node = node.clone();
        let hb_client = api::InternalClient::new(internal_url, Some(resp.credential));
        let host_id = resp.host_id;
        let heartbeat = tokio::spawn(async move {
            loop {
                let volumes = hb_node
                    .0
                    .lock()
                    .expect("node")
                    .volumes
                    .values()
                    .map(|v| observed(&v.spec, None))
                    .collect();
                let _ = hb_client
                    .heartbeat(
                        host_id,
                        &Heartbeat {
                            capacity,
                            instances: Vec::new(),
                            volumes,
                        },
                    )
                    .await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        TgtNode {
            tgtd,
            portal,
            host_id,
            node,
            heartbeat,
        }
    }

    /// Changes a volume's CHAP password behind Strato's back, so logins
    /// with the secret Strato knows are refused.
    pub fn break_chap(&self, volume: VolumeId) {
        let inner = self.node.0.lock().expect("node");
        let v = inner.volumes.get(&volume).expect("known volume");
        remove_chap(inner.ctl, Some(v.tid), &v.spec.chap_user).expect("remove CHAP account");
        add_chap(inner.ctl, v.tid, &v.spec.chap_user, "not-the-secret").expect("new CHAP account");
    }
}

impl Drop for TgtNode {
    fn drop(&mut self) {
        self.heartbeat.abort();
        let _ = self.tgtd.kill();
        let _ = self.tgtd.wait();
    }
}
