//! The machine inventory (SQLite through sqlx, in the provisioner's state
//! directory) and every operation on it. Each change of state is one
//! transaction that checks the transition with `lifecycle::next`, writes
//! the machine and appends the event, so history and state never disagree.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use api::ids::{HostId, MachineId};
use api::provision::{
    Inventory, Machine, MachineAction, MachineCreate, MachineEvent, MachineState, PowerSpec,
};
use api::resources::HostKind;
use chrono::{DateTime, TimeZone, Utc};
use rand::distributions::{Alphanumeric, DistString};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
};
use sqlx::Row;

use crate::error::{ProvisionError, Result};
use crate::imagemap::{self, Chunk};
use crate::lifecycle::{self, Event, Timeouts};
use crate::power::{Power, PowerConfig};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Values computed from files, each kept while its file's length and
/// mtime stay the same.
struct FileCache<T> {
    known: std::sync::Mutex<std::collections::HashMap<PathBuf, (FileVersion, T)>>,
}

type FileVersion = (u64, std::time::SystemTime);

impl<T> Default for FileCache<T> {
    fn default() -> Self {
        Self {
            known: Default::default(),
        }
    }
}

impl<T: Clone> FileCache<T> {
    fn get(&self, path: &Path, version: FileVersion) -> Option<T> {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known
            .get(path)
            .filter(|(v, _)| *v == version)
            .map(|(_, value)| value.clone())
    }

    fn put(&self, path: &Path, version: FileVersion, value: T) {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.to_path_buf(), (version, value));
    }
}

/// What is computed from image files: digests and sparse-deploy maps.
#[derive(Default)]
struct Digests {
    sums: FileCache<String>,
    maps: FileCache<Arc<Vec<Chunk>>>,
    /// One image read at a time: a request arriving while the image is
    /// being read waits for that result instead of reading it again.
    reading: tokio::sync::Mutex<()>,
}

fn version(path: &Path) -> Result<FileVersion> {
    let meta = std::fs::metadata(path)
        .map_err(|e| ProvisionError::NotFound(format!("{}: {e}", path.display())))?;
    Ok((meta.len(), meta.modified().unwrap_or(std::time::UNIX_EPOCH)))
}

/// `cache`'s value for this version of `path`, computed once.
async fn computed<T, Fut>(
    reading: &tokio::sync::Mutex<()>,
    cache: &FileCache<T>,
    path: &Path,
    compute: impl FnOnce() -> Fut,
) -> Result<T>
where
    T: Clone,
    Fut: std::future::Future<Output = Result<T>>,
{
    let version = version(path)?;
    if let Some(v) = cache.get(path, version) {
        return Ok(v);
    }
    let _one = reading.lock().await;
    if let Some(v) = cache.get(path, version) {
        return Ok(v);
    }
    let v = compute().await?;
    cache.put(path, version, v.clone());
    Ok(v)
}

/// Hex SHA-256 of an image file.
async fn image_digest(d: &Digests, path: &Path) -> Result<String> {
    computed(&d.reading, &d.sums, path, || async {
        agent_support::images::hash_file(path)
            .await
            .map_err(|e| ProvisionError::Invalid(format!("{}: {e}", path.display())))
    })
    .await
}

/// The sparse-deploy map of an image.
async fn image_chunks(d: &Digests, path: &Path) -> Result<Arc<Vec<Chunk>>> {
    computed(&d.reading, &d.maps, path, || async {
        let p = path.to_path_buf();
        let map = tokio::task::spawn_blocking(move || imagemap::chunks(&p))
            .await
            .map_err(|e| ProvisionError::Invalid(format!("mapping the image: {e}")))?
            .map_err(|e| ProvisionError::Invalid(format!("{}: {e}", path.display())))?;
        Ok(Arc::new(map))
    })
    .await
}

pub struct Machines {
    db: SqlitePool,
    timeouts: Timeouts,
    images: PathBuf,
    http: reqwest::Client,
    power: PowerConfig,
    digests: Arc<Digests>,
    /// Every write takes it: SQLite has one writer anyway, and a
    /// transaction that reads before it writes fails at once (not after the
    /// busy timeout) if another connection wrote in between. Ten machines
    /// booting together showed it.
    write: tokio::sync::Mutex<()>,
}

/// A lease the DHCP server bound, as the inventory records it.
#[derive(Debug, Clone, Default)]
pub struct LeaseSeen {
    pub mac: String,
    pub address: Option<String>,
    pub arch: Option<String>,
    pub switch_port: Option<String>,
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn at(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or_else(Utc::now)
}

/// `aa:bb:cc:dd:ee:ff`, lower case; accepts `-` separators.
pub fn normalize_mac(mac: &str) -> Result<String> {
    let parts: Vec<&str> = mac.split([':', '-']).collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    if !ok {
        return Err(ProvisionError::Invalid(format!(
            "{mac:?} is not a MAC address"
        )));
    }
    Ok(parts.join(":").to_ascii_lowercase())
}

fn valid_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(ProvisionError::Invalid(format!(
            "{name:?} is not a machine name (letters, digits, '-', '.'; at most 63)"
        )))
    }
}

/// Images are files in the image directory, named by a plain name.
pub fn valid_image_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

fn state_of(r: &SqliteRow, col: &str) -> Result<MachineState> {
    let s: String = r.try_get(col)?;
    MachineState::parse(&s).ok_or_else(|| ProvisionError::Invalid(format!("unknown state {s:?}")))
}

fn progress_of(r: &SqliteRow) -> Result<DeployProgress> {
    Ok(DeployProgress {
        image_written: r.try_get::<Option<i64>, _>("image_written_ms")?.is_some(),
        ssh_host_keys: r.try_get("ssh_host_keys")?,
    })
}

fn machine(r: &SqliteRow) -> Result<Machine> {
    let id: String = r.try_get("id")?;
    let role: String = r.try_get("role")?;
    let power: String = r.try_get("power")?;
    let inventory: Option<String> = r.try_get("inventory")?;
    let deadline: Option<i64> = r.try_get("deadline_ms")?;
    Ok(Machine {
        id: id
            .parse()
            .map_err(|e| ProvisionError::Invalid(format!("{e}")))?,
        name: r.try_get("name")?,
        mac: r.try_get("mac")?,
        role: if role == "storage" {
            HostKind::Storage
        } else {
            HostKind::Hypervisor
        },
        rack: r.try_get("rack")?,
        state: state_of(r, "state")?,
        state_reason: r.try_get("state_reason")?,
        deadline: deadline.map(at),
        address: r.try_get("address")?,
        switch_port: r.try_get("switch_port")?,
        arch: r.try_get("arch")?,
        power: serde_json::from_str(&power)
            .map_err(|e| ProvisionError::Invalid(format!("stored power spec: {e}")))?,
        inventory: inventory
            .map(|i| serde_json::from_str(&i))
            .transpose()
            .map_err(|e| ProvisionError::Invalid(format!("stored inventory: {e}")))?,
        image: r.try_get("image")?,
        host_id: r
            .try_get::<Option<String>, _>("host_id")?
            .and_then(|h| h.parse().ok()),
        created_at: at(r.try_get("created_ms")?),
        updated_at: at(r.try_get("updated_ms")?),
    })
}

/// What a state change writes besides the state.
#[derive(Default)]
struct Change {
    reason: Option<String>,
    image: Option<String>,
    inventory: Option<Inventory>,
    rescue_from: Option<MachineState>,
    role: Option<HostKind>,
    host_id: Option<HostId>,
    message: String,
}

/// Where a deploying machine is after its image: what the boot decision
/// and post-install need beyond the API's `Machine`.
#[derive(Debug, Clone, Default)]
pub struct DeployProgress {
    /// The boot environment wrote the image: from now on the machine boots
    /// from its disk, even though it is still deploying.
    pub image_written: bool,
    /// The installed system's SSH host keys (OpenSSH lines), from its
    /// phone-home.
    pub ssh_host_keys: Option<String>,
}

impl Machines {
    pub async fn open(
        state_dir: &Path,
        images: PathBuf,
        timeouts: Timeouts,
        power: PowerConfig,
    ) -> Result<Machines> {
        std::fs::create_dir_all(state_dir)
            .map_err(|e| ProvisionError::Invalid(format!("{}: {e}", state_dir.display())))?;
        let opts = SqliteConnectOptions::from_str(&format!(
            "sqlite://{}",
            state_dir.join("machines.db").display()
        ))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(10));
        let db = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await?;
        MIGRATOR.run(&db).await?;
        Ok(Machines {
            db,
            timeouts,
            images,
            http: reqwest::Client::new(),
            power,
            digests: Default::default(),
            write: tokio::sync::Mutex::new(()),
        })
    }

    pub fn image_path(&self, name: &str) -> Option<PathBuf> {
        valid_image_name(name).then(|| self.images.join(name))
    }

    /// Hex SHA-256 of an image file, computed once per version of the file.
    pub async fn image_sha256(&self, path: &Path) -> Result<String> {
        image_digest(&self.digests, path).await
    }

    /// The image's data in checked chunks, for a sparse deploy.
    pub async fn image_chunks(&self, path: &Path) -> Result<Arc<Vec<Chunk>>> {
        image_chunks(&self.digests, path).await
    }

    pub async fn list(&self) -> Result<Vec<Machine>> {
        let rows = sqlx::query("SELECT * FROM machines ORDER BY name")
            .fetch_all(&self.db)
            .await?;
        rows.iter().map(machine).collect()
    }

    pub async fn get(&self, id: MachineId) -> Result<Machine> {
        let row = sqlx::query("SELECT * FROM machines WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.db)
            .await?
            .ok_or_else(|| ProvisionError::NotFound(format!("machine {id}")))?;
        machine(&row)
    }

    /// A machine by id or name.
    pub async fn find(&self, key: &str) -> Result<Machine> {
        let row = sqlx::query("SELECT * FROM machines WHERE id = ? OR name = ?")
            .bind(key)
            .bind(key)
            .fetch_optional(&self.db)
            .await?
            .ok_or_else(|| ProvisionError::NotFound(format!("machine {key}")))?;
        machine(&row)
    }

    pub async fn by_mac(&self, mac: &str) -> Result<Option<Machine>> {
        let mac = normalize_mac(mac)?;
        let row = sqlx::query("SELECT * FROM machines WHERE mac = ?")
            .bind(mac)
            .fetch_optional(&self.db)
            .await?;
        row.as_ref().map(machine).transpose()
    }

    /// The secret of the machine's boot-environment callbacks.
    pub async fn bootenv_secret(&self, id: MachineId) -> Result<String> {
        let row = sqlx::query("SELECT bootenv_secret FROM machines WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.db)
            .await?
            .ok_or_else(|| ProvisionError::NotFound(format!("machine {id}")))?;
        Ok(row.try_get("bootenv_secret")?)
    }

    pub async fn events(&self, id: MachineId) -> Result<Vec<MachineEvent>> {
        self.get(id).await?;
        let rows = sqlx::query(
            "SELECT at_ms, from_state, to_state, message FROM machine_events WHERE machine_id = ? ORDER BY id",
        )
        .bind(id.to_string())
        .fetch_all(&self.db)
        .await?;
        rows.iter()
            .map(|r| {
                let from: Option<String> = r.try_get("from_state")?;
                Ok(MachineEvent {
                    at: at(r.try_get("at_ms")?),
                    from: from.as_deref().and_then(MachineState::parse),
                    to: state_of(r, "to_state")?,
                    message: r.try_get("message")?,
                })
            })
            .collect()
    }

    pub async fn create(&self, req: MachineCreate) -> Result<Machine> {
        valid_name(&req.name)?;
        let mac = normalize_mac(&req.mac)?;
        self.insert(
            &req.name,
            &mac,
            req.role,
            req.rack,
            &req.power,
            "enlisted by an operator",
        )
        .await
    }

    /// An unknown MAC PXE-booted: enlist it as a new machine, which then
    /// commissions itself (its boot leads into the inventory environment).
    pub async fn discover(&self, mac: &str) -> Result<Machine> {
        let mac = normalize_mac(mac)?;
        if let Some(m) = self.by_mac(&mac).await? {
            return Ok(m);
        }
        let name = format!("node-{}", mac.replace(':', ""));
        match self
            .insert(
                &name,
                &mac,
                HostKind::Hypervisor,
                None,
                &PowerSpec::Manual,
                "discovered when it network-booted",
            )
            .await
        {
            Ok(m) => Ok(m),
            // Two DHCP packets raced: the other one enlisted it.
            Err(ProvisionError::Conflict(_)) => self
                .by_mac(&mac)
                .await?
                .ok_or_else(|| ProvisionError::NotFound(format!("machine with MAC {mac}"))),
            Err(e) => Err(e),
        }
    }

    async fn insert(
        &self,
        name: &str,
        mac: &str,
        role: HostKind,
        rack: Option<String>,
        power: &PowerSpec,
        message: &str,
    ) -> Result<Machine> {
        let _w = self.write.lock().await;
        let id = MachineId::new();
        let now = now_ms();
        let secret = Alphanumeric.sample_string(&mut rand::thread_rng(), 32);
        let mut tx = self.db.begin().await?;
        let r = sqlx::query(
            "INSERT INTO machines (id, name, mac, role, rack, state, power, bootenv_secret, created_ms, updated_ms) \
             VALUES (?, ?, ?, ?, ?, 'new', ?, ?, ?, ?)",
        )
        .bind(id.to_string())
        .bind(name)
        .bind(mac)
        .bind(role.as_str())
        .bind(rack)
        .bind(serde_json::to_string(power).map_err(|e| ProvisionError::Invalid(e.to_string()))?)
        .bind(secret)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await;
        if let Err(sqlx::Error::Database(e)) = &r {
            if e.is_unique_violation() {
                return Err(ProvisionError::Conflict(format!(
                    "a machine named {name:?} or with MAC {mac} already exists"
                )));
            }
        }
        r?;
        sqlx::query(
            "INSERT INTO machine_events (machine_id, at_ms, from_state, to_state, message) VALUES (?, ?, NULL, 'new', ?)",
        )
        .bind(id.to_string())
        .bind(now)
        .bind(message)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(machine = %id, name, mac, "{message}");
        self.get(id).await
    }

    pub async fn delete(&self, id: MachineId) -> Result<()> {
        let _w = self.write.lock().await;
        let n = sqlx::query("DELETE FROM machines WHERE id = ?")
            .bind(id.to_string())
            .execute(&self.db)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(ProvisionError::NotFound(format!("machine {id}")));
        }
        Ok(())
    }

    /// Moves `id` by `event`, in one transaction with its event record.
    async fn transition(&self, id: MachineId, event: Event, change: Change) -> Result<Machine> {
        let _w = self.write.lock().await;
        let mut tx = self.db.begin().await?;
        let row = sqlx::query("SELECT state, rescue_from FROM machines WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| ProvisionError::NotFound(format!("machine {id}")))?;
        let from = state_of(&row, "state")?;
        let event = match event {
            Event::ExitRescue(_) => {
                let back: Option<String> = row.try_get("rescue_from")?;
                Event::ExitRescue(
                    back.as_deref()
                        .and_then(MachineState::parse)
                        .unwrap_or(MachineState::Ready),
                )
            }
            e => e,
        };
        let to = lifecycle::next(from, event)?;
        let now = now_ms();
        let deadline = self
            .timeouts
            .of(to)
            .map(|d| now + i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2));
        sqlx::query(
            "UPDATE machines SET state = ?1, state_reason = ?2, deadline_ms = ?3, updated_ms = ?4, \
             image = COALESCE(?5, image), inventory = COALESCE(?6, inventory), \
             rescue_from = CASE WHEN ?1 = 'rescue' THEN ?7 ELSE NULL END, \
             role = COALESCE(?8, role), \
             image_written_ms = CASE WHEN ?1 = 'deploying' THEN NULL ELSE image_written_ms END, \
             ssh_host_keys = CASE WHEN ?1 = 'deploying' THEN NULL ELSE ssh_host_keys END, \
             host_id = CASE WHEN ?1 IN ('deploying', 'releasing', 'ready') THEN NULL \
                            ELSE COALESCE(?9, host_id) END \
             WHERE id = ?10",
        )
        .bind(to.as_str())
        .bind(&change.reason)
        .bind(deadline)
        .bind(now)
        .bind(&change.image)
        .bind(
            change
                .inventory
                .as_ref()
                .map(serde_json::to_string)
                .transpose()
                .map_err(|e| ProvisionError::Invalid(e.to_string()))?,
        )
        .bind(change.rescue_from.map(|s| s.as_str()))
        .bind(change.role.map(|r| r.as_str()))
        .bind(change.host_id.map(|h| h.to_string()))
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO machine_events (machine_id, at_ms, from_state, to_state, message) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(id.to_string())
        .bind(now)
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(&change.message)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(machine = %id, from = from.as_str(), to = to.as_str(), "{}", change.message);
        self.get(id).await
    }

    /// Records a power action in the history without changing state.
    async fn note(&self, m: &Machine, message: String) -> Result<()> {
        let _w = self.write.lock().await;
        sqlx::query(
            "INSERT INTO machine_events (machine_id, at_ms, from_state, to_state, message) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(m.id.to_string())
        .bind(now_ms())
        .bind(m.state.as_str())
        .bind(m.state.as_str())
        .bind(message)
        .execute(&self.db)
        .await?;
        Ok(())
    }

    /// An operator's request.
    pub async fn act(&self, id: MachineId, action: MachineAction) -> Result<Machine> {
        let m = self.get(id).await?;
        match action {
            MachineAction::Commission => {
                let m = self
                    .transition(
                        id,
                        Event::Commission,
                        Change {
                            message: "commissioning requested".into(),
                            ..Default::default()
                        },
                    )
                    .await?;
                self.boot_network(&m).await?;
                Ok(m)
            }
            MachineAction::Deploy { image, role } => {
                let path = self.image_path(&image).ok_or_else(|| {
                    ProvisionError::Invalid(format!("{image:?} is not an image name"))
                })?;
                if !path.is_file() {
                    return Err(ProvisionError::Invalid(format!(
                        "no image {image:?} in {}",
                        self.images.display()
                    )));
                }
                let m = self
                    .transition(
                        id,
                        Event::Deploy,
                        Change {
                            image: Some(image.clone()),
                            role,
                            message: format!(
                                "deploying image {image} as a {} host",
                                role.unwrap_or(m.role).as_str()
                            ),
                            ..Default::default()
                        },
                    )
                    .await?;
                // Mapping a multi-GiB image takes a while: start now, so
                // the environment's image-map request finds it done.
                let digests = self.digests.clone();
                tokio::spawn(async move {
                    if let Err(e) = image_chunks(&digests, &path).await {
                        tracing::warn!(error = %e, "cannot hash the image");
                    }
                });
                self.boot_network(&m).await?;
                Ok(m)
            }
            MachineAction::Release => {
                self.transition(
                    id,
                    Event::Release,
                    Change {
                        message: "release requested".into(),
                        ..Default::default()
                    },
                )
                .await?;
                let result = Power::new(&m.power, &self.http, self.power).off().await;
                match result {
                    Ok(()) => {
                        self.transition(
                            id,
                            Event::PoweredOff,
                            Change {
                                message: "powered off; back in the pool".into(),
                                ..Default::default()
                            },
                        )
                        .await
                    }
                    // Releasing keeps its deadline: the sweeper marks the
                    // machine broken if it never powers off.
                    Err(e) => Err(e.into()),
                }
            }
            MachineAction::MarkBroken { reason } => {
                self.transition(
                    id,
                    Event::MarkBroken,
                    Change {
                        reason: (!reason.is_empty()).then(|| reason.clone()),
                        message: format!("marked broken: {reason}"),
                        ..Default::default()
                    },
                )
                .await
            }
            MachineAction::MarkFixed => {
                self.transition(
                    id,
                    Event::MarkFixed,
                    Change {
                        message: "marked fixed".into(),
                        ..Default::default()
                    },
                )
                .await
            }
            MachineAction::Rescue => {
                let from = m.state;
                let m = self
                    .transition(
                        id,
                        Event::Rescue,
                        Change {
                            rescue_from: Some(from),
                            message: "rescue requested".into(),
                            ..Default::default()
                        },
                    )
                    .await?;
                self.boot_network(&m).await?;
                Ok(m)
            }
            MachineAction::ExitRescue => {
                self.transition(
                    id,
                    Event::ExitRescue(MachineState::Ready),
                    Change {
                        message: "left rescue".into(),
                        ..Default::default()
                    },
                )
                .await
            }
            MachineAction::PowerOn | MachineAction::PowerOff | MachineAction::PowerCycle => {
                let p = Power::new(&m.power, &self.http, self.power);
                let (r, what) = match action {
                    MachineAction::PowerOn => (p.on().await, "power on"),
                    MachineAction::PowerOff => (p.off().await, "power off"),
                    _ => (p.cycle().await, "power cycle"),
                };
                self.note(
                    &m,
                    match &r {
                        Ok(()) => what.to_string(),
                        Err(e) => format!("{what} failed: {e}"),
                    },
                )
                .await?;
                r?;
                self.get(id).await
            }
        }
    }

    /// What the machine's power driver reports.
    pub async fn power_status(&self, m: &Machine) -> Result<api::provision::PowerState> {
        Ok(Power::new(&m.power, &self.http, self.power)
            .status()
            .await?)
    }

    /// Power off, then wait for the driver to report off. Noted in the
    /// history either way: who fenced what, and whether it held.
    pub async fn fence(&self, m: &Machine) -> Result<()> {
        let r = Power::new(&m.power, &self.http, self.power).fence().await;
        self.note(
            m,
            match &r {
                Ok(()) => "fenced: powered off, driver reports off".into(),
                Err(e) => format!("fence failed: {e}"),
            },
        )
        .await?;
        Ok(r?)
    }

    /// Next boot from the network, then (re)start: the machine comes back
    /// into the environment its new state asks for.
    async fn boot_network(&self, m: &Machine) -> Result<()> {
        let p = Power::new(&m.power, &self.http, self.power);
        let r = async {
            p.next_boot_network().await?;
            p.cycle().await
        }
        .await;
        self.note(
            m,
            match &r {
                Ok(()) if m.power == PowerSpec::Manual => {
                    "waiting for an operator to network-boot it".into()
                }
                Ok(()) => "network boot and power cycle".into(),
                Err(e) => format!("power cycle failed: {e}"),
            },
        )
        .await?;
        Ok(r?)
    }

    /// The boot environment's reports. `secret` proves the caller is the
    /// environment this provisioner booted for that machine.
    pub async fn check_secret(&self, id: MachineId, secret: &str) -> Result<()> {
        let expected = self.bootenv_secret(id).await?;
        if constant_time::eq(expected.as_bytes(), secret.as_bytes()) {
            Ok(())
        } else {
            Err(ProvisionError::NotFound(format!("machine {id}")))
        }
    }

    pub async fn inventory_reported(&self, id: MachineId, inventory: Inventory) -> Result<Machine> {
        let summary = format!(
            "inventory: {} CPUs, {} MiB RAM, {} disks, {} NICs",
            inventory.cpus,
            inventory.ram_mib,
            inventory.disks.len(),
            inventory.nics.len()
        );
        self.transition(
            id,
            Event::InventoryReported,
            Change {
                inventory: Some(inventory),
                message: summary,
                ..Default::default()
            },
        )
        .await
    }

    /// The boot environment wrote the image. Without post-install that
    /// finishes the deployment; with it, the machine stays deploying (now
    /// booting from its disk) until its agent enrolls.
    pub async fn image_written(&self, id: MachineId, post_install: bool) -> Result<Machine> {
        if !post_install {
            return self
                .transition(
                    id,
                    Event::Deployed,
                    Change {
                        message: "image written; booting from disk".into(),
                        ..Default::default()
                    },
                )
                .await;
        }
        // A repeated report (its first answer was lost) is not an error.
        let m = self.get(id).await?;
        if m.state == MachineState::Deploying && self.deploy_progress(id).await?.image_written {
            return Ok(m);
        }
        self.progress(
            id,
            "image written; waiting for the installed system to phone home",
            "image written; booting the installed system",
            Some("image_written_ms = ?"),
            Some(now_ms().to_string()),
            |p| !p.image_written,
        )
        .await
    }

    /// The installed system phoned home with its SSH host keys. The first
    /// keys after the image was written are the ones post-install trusts;
    /// later, different keys are refused.
    pub async fn phoned_home(&self, id: MachineId, host_keys: String) -> Result<Machine> {
        self.progress(
            id,
            "installed system up; post-install over SSH",
            "the installed system phoned home",
            Some("ssh_host_keys = ?"),
            Some(host_keys),
            |p| p.image_written && p.ssh_host_keys.is_none(),
        )
        .await
    }

    /// A post-install step, in the reason and the history.
    pub async fn post_install_step(&self, id: MachineId, what: &str) -> Result<Machine> {
        self.progress(id, what, what, None, None, |p| p.image_written)
            .await
    }

    /// Records progress within `deploying` (no state change): the reason,
    /// an event, and optionally one column. Refused unless the machine is
    /// deploying and `allowed` holds for where it is.
    async fn progress(
        &self,
        id: MachineId,
        reason: &str,
        message: &str,
        column: Option<&str>,
        value: Option<String>,
        allowed: impl Fn(&DeployProgress) -> bool,
    ) -> Result<Machine> {
        let _w = self.write.lock().await;
        let mut tx = self.db.begin().await?;
        let row =
            sqlx::query("SELECT state, image_written_ms, ssh_host_keys FROM machines WHERE id = ?")
                .bind(id.to_string())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| ProvisionError::NotFound(format!("machine {id}")))?;
        let state = state_of(&row, "state")?;
        let p = progress_of(&row)?;
        if state != MachineState::Deploying || !allowed(&p) {
            return Err(ProvisionError::Conflict(format!(
                "machine {id} is {}{}; cannot record: {message}",
                state.as_str(),
                if p.image_written {
                    " (image written)"
                } else {
                    ""
                }
            )));
        }
        let now = now_ms();
        let set = column.map(|c| format!(", {c}")).unwrap_or_default();
        let sql = format!("UPDATE machines SET state_reason = ?, updated_ms = ?{set} WHERE id = ?");
        let mut update = sqlx::query(&sql).bind(reason).bind(now);
        if column.is_some() {
            update = update.bind(value);
        }
        update.bind(id.to_string()).execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO machine_events (machine_id, at_ms, from_state, to_state, message) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(id.to_string())
        .bind(now)
        .bind(state.as_str())
        .bind(state.as_str())
        .bind(message)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(machine = %id, "{message}");
        drop(_w);
        self.get(id).await
    }

    pub async fn deploy_progress(&self, id: MachineId) -> Result<DeployProgress> {
        let row = sqlx::query("SELECT image_written_ms, ssh_host_keys FROM machines WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.db)
            .await?
            .ok_or_else(|| ProvisionError::NotFound(format!("machine {id}")))?;
        progress_of(&row)
    }

    /// Deploying machines that phoned home, with their host keys: the
    /// post-install runs to resume after a restart.
    pub async fn awaiting_post_install(&self) -> Result<Vec<(Machine, String)>> {
        let rows = sqlx::query(
            "SELECT * FROM machines WHERE state = 'deploying' AND ssh_host_keys IS NOT NULL",
        )
        .fetch_all(&self.db)
        .await?;
        rows.iter()
            .map(|r| Ok((machine(r)?, r.try_get("ssh_host_keys")?)))
            .collect()
    }

    /// Post-install finished: the agent enrolled as `host_id`.
    pub async fn enrolled(
        &self,
        id: MachineId,
        host_id: HostId,
        message: String,
    ) -> Result<Machine> {
        self.transition(
            id,
            Event::Deployed,
            Change {
                host_id: Some(host_id),
                message,
                ..Default::default()
            },
        )
        .await
    }

    /// The boot environment reported a failure.
    pub async fn failed(&self, id: MachineId, reason: String) -> Result<Machine> {
        self.fail(id, "the boot environment failed", reason).await
    }

    /// Post-install gave up.
    pub async fn post_install_failed(&self, id: MachineId, reason: String) -> Result<Machine> {
        self.fail(id, "post-install failed", reason).await
    }

    async fn fail(&self, id: MachineId, source: &str, reason: String) -> Result<Machine> {
        let reason: String = reason
            .chars()
            .filter(|c| !c.is_control())
            .take(500)
            .collect();
        self.transition(
            id,
            Event::Failed,
            Change {
                reason: Some(reason.clone()),
                message: format!("{source}: {reason}"),
                ..Default::default()
            },
        )
        .await
    }

    /// A DHCP lease was bound: remember where the machine is.
    pub async fn lease_seen(&self, lease: &LeaseSeen) -> Result<()> {
        let mac = normalize_mac(&lease.mac)?;
        let _w = self.write.lock().await;
        sqlx::query(
            "UPDATE machines SET address = COALESCE(?, address), arch = COALESCE(?, arch), \
             switch_port = COALESCE(?, switch_port), updated_ms = ? WHERE mac = ?",
        )
        .bind(&lease.address)
        .bind(&lease.arch)
        .bind(&lease.switch_port)
        .bind(now_ms())
        .bind(mac)
        .execute(&self.db)
        .await?;
        Ok(())
    }

    /// Moves machines whose in-progress state outlived its deadline to the
    /// failed state; returns how many.
    pub async fn sweep(&self) -> Result<usize> {
        let rows = sqlx::query(
            "SELECT id, state FROM machines WHERE deadline_ms IS NOT NULL AND deadline_ms < ?",
        )
        .bind(now_ms())
        .fetch_all(&self.db)
        .await?;
        let mut n = 0;
        for r in rows {
            let id: String = r.try_get("id")?;
            let state = state_of(&r, "state")?;
            let Ok(id) = id.parse::<MachineId>() else {
                continue;
            };
            let res = self
                .transition(
                    id,
                    Event::TimedOut,
                    Change {
                        reason: Some(format!("{} timed out", state.as_str())),
                        message: format!("{} timed out", state.as_str()),
                        ..Default::default()
                    },
                )
                .await;
            match res {
                Ok(_) => n += 1,
                // It moved on meanwhile.
                Err(ProvisionError::Illegal(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }
}

/// Constant-time comparison without pulling a crypto crate for it.
mod constant_time {
    pub fn eq(a: &[u8], b: &[u8]) -> bool {
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store(dir: &Path) -> Machines {
        let images = dir.join("images");
        std::fs::create_dir_all(&images).unwrap();
        std::fs::write(images.join("img.raw"), vec![1u8; 4096]).unwrap();
        let t = Duration::from_secs(600);
        Machines::open(
            dir,
            images,
            Timeouts {
                commissioning: t,
                deploying: t,
                releasing: t,
            },
            PowerConfig::default(),
        )
        .await
        .unwrap()
    }

    /// The review's cases: a lost answer to "deployed" is retried, only the
    /// first host keys count, and nothing is taken once the machine left
    /// deploying.
    #[tokio::test]
    async fn phone_home_takes_the_first_keys_while_deploying_only() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path()).await;
        let m = s
            .create(MachineCreate {
                name: "m1".into(),
                mac: "52:54:00:00:00:01".into(),
                role: HostKind::Storage,
                rack: None,
                power: PowerSpec::Manual,
            })
            .await
            .unwrap();
        s.act(m.id, MachineAction::Commission).await.unwrap();
        let inv = Inventory {
            cpus: 1,
            cpu_model: String::new(),
            ram_mib: 512,
            disks: vec![],
            nics: vec![],
        };
        s.inventory_reported(m.id, inv).await.unwrap();
        let deploy = MachineAction::Deploy {
            image: "img.raw".into(),
            role: None,
        };
        s.act(m.id, deploy).await.unwrap();
        // Keys before the image is written are refused.
        assert!(s.phoned_home(m.id, "A".into()).await.is_err());
        s.image_written(m.id, true).await.unwrap();
        s.image_written(m.id, true).await.unwrap();
        assert!(s.deploy_progress(m.id).await.unwrap().image_written);
        s.phoned_home(m.id, "A".into()).await.unwrap();
        let e = s.phoned_home(m.id, "B".into()).await.unwrap_err();
        assert!(matches!(e, ProvisionError::Conflict(_)), "{e}");
        assert_eq!(
            s.deploy_progress(m.id)
                .await
                .unwrap()
                .ssh_host_keys
                .as_deref(),
            Some("A")
        );
        s.act(m.id, MachineAction::Release).await.unwrap();
        assert!(s.post_install_step(m.id, "late").await.is_err());
        assert!(s.phoned_home(m.id, "A".into()).await.is_err());
    }
}
