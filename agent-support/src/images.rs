//! The image cache: every image is fetched (URL or host path), verified
//! against its sha256, checked to be what it claims, and converted to
//! qcow2 once. Instance root disks are thin overlays on the cached file, so
//! all instances of an image share it.
//!
//! Cache layout: `<dir>/<sha256>.qcow2`, world-readable so the QEMU user can
//! read it as a backing file. Work files start with `.` and never outlive a
//! failed attempt.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use api::internal::ImageSpec;
use api::resources::ImageFormat;
use futures::StreamExt;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{Error, Result};
use crate::exec;
use crate::fs::set_mode;

pub struct ImageCache {
    dir: PathBuf,
    http: reqwest::Client,
    max_bytes: u64,
    /// Directories local image sources must lie in (canonicalized).
    roots: Vec<PathBuf>,
    /// One fetch per image at a time; concurrent creates of the same image
    /// wait for the first instead of downloading it twice. The lock guards
    /// the image's virtual size once known, so converges do not re-run
    /// `qemu-img info`.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<u64>>>>>,
}

/// A cached image ready to back root disks.
#[derive(Debug, Clone)]
pub struct CachedImage {
    pub path: PathBuf,
    pub virtual_size: u64,
}

#[derive(Deserialize)]
struct QemuImgInfo {
    format: String,
    #[serde(rename = "virtual-size")]
    virtual_size: u64,
    #[serde(rename = "backing-filename")]
    backing_filename: Option<String>,
    #[serde(rename = "format-specific")]
    format_specific: Option<serde_json::Value>,
}

/// `qemu-img info` of `path`, letting qemu-img probe the format. The third
/// value names an external file the image would read (a backing file or a
/// qcow2 external data file), if any.
pub async fn inspect(path: &Path) -> Result<(String, u64, Option<String>)> {
    let out = exec::run(
        "qemu-img",
        [
            "info".as_ref(),
            "--output=json".as_ref(),
            "-U".as_ref(),
            path.as_os_str(),
        ],
    )
    .await?;
    let info: QemuImgInfo = serde_json::from_str(&out)
        .map_err(|e| Error::Invalid(format!("qemu-img info {}: {e}", path.display())))?;
    let data_file = info
        .format_specific
        .as_ref()
        .and_then(|f| f.pointer("/data/data-file"))
        .and_then(|v| v.as_str())
        .map(str::to_string);
    Ok((
        info.format,
        info.virtual_size,
        info.backing_filename.or(data_file),
    ))
}

fn valid_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl ImageCache {
    pub fn new(dir: PathBuf, max_bytes: u64, roots: &[PathBuf]) -> Result<Self> {
        std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        // Leftovers of a crash mid-fetch.
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with('.') {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        // A server that stops sending must not hold a worker forever; a
        // slow but moving download may take as long as it needs.
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .read_timeout(std::time::Duration::from_secs(60))
            .build()
            .map_err(|e| Error::Invalid(format!("http client: {e}")))?;
        let roots = roots
            .iter()
            .filter_map(|r| std::fs::canonicalize(r).ok())
            .collect();
        Ok(Self {
            dir,
            http,
            max_bytes,
            roots,
            locks: Mutex::new(HashMap::new()),
        })
    }

    /// A local source, only if it is a regular file of bounded size inside
    /// one of the configured image roots: a tenant-registered path must not
    /// reach host files or devices.
    fn local_source(&self, source: &str, image: &str) -> Result<PathBuf> {
        let fail = |reason: String| Error::Image {
            image: image.to_string(),
            reason,
        };
        let p = std::fs::canonicalize(source)
            .map_err(|e| fail(format!("cannot read {source}: {e}")))?;
        if !self.roots.iter().any(|r| p.starts_with(r)) {
            return Err(fail(format!(
                "{source} is outside the image directories this host serves from"
            )));
        }
        let meta = std::fs::metadata(&p).map_err(|e| fail(format!("cannot read {source}: {e}")))?;
        if !meta.is_file() {
            return Err(fail(format!("{source} is not a regular file")));
        }
        if meta.len() > self.max_bytes {
            return Err(fail(format!(
                "{source} is larger than {} bytes",
                self.max_bytes
            )));
        }
        Ok(p)
    }

    pub fn path_of(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}.qcow2"))
    }

    /// The cached qcow2 of `spec`, fetching and converting it first if needed.
    pub async fn ensure(&self, spec: &ImageSpec) -> Result<CachedImage> {
        let image = spec.id.to_string();
        let sha = spec.sha256.to_ascii_lowercase();
        if !valid_sha256(&sha) {
            return Err(Error::Image {
                image,
                reason: format!("sha256 {:?} is not 64 hex digits", spec.sha256),
            });
        }
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(sha.clone()).or_default().clone()
        };
        let mut known_size = lock.lock().await;
        let path = self.path_of(&sha);
        if !path.exists() {
            *known_size = None;
            self.fetch(spec, &image, &sha, &path).await?;
        }
        let virtual_size = match *known_size {
            Some(size) => size,
            None => inspect(&path).await?.1,
        };
        *known_size = Some(virtual_size);
        Ok(CachedImage { path, virtual_size })
    }

    async fn fetch(&self, spec: &ImageSpec, image: &str, sha: &str, dest: &Path) -> Result<()> {
        let download = self.dir.join(format!(".{sha}.download"));
        let converting = self.dir.join(format!(".{sha}.qcow2"));
        let result = async {
            let (source, actual) =
                if spec.source.starts_with("http://") || spec.source.starts_with("https://") {
                    let actual = self.download(&spec.source, &download, image).await?;
                    (download.clone(), actual)
                } else if spec.source.starts_with('/') {
                    let p = self.local_source(&spec.source, image)?;
                    let actual = hash_file(&p).await.map_err(|e| Error::Image {
                        image: image.to_string(),
                        reason: format!("cannot read {}: {e}", p.display()),
                    })?;
                    (p, actual)
                } else {
                    return Err(Error::Image {
                        image: image.to_string(),
                        reason: format!(
                            "source {:?} is neither an http(s) URL nor an absolute path",
                            spec.source
                        ),
                    });
                };
            if actual != sha {
                // The actual digest stays in the log: telling tenants the
                // hash of whatever a path names would be an oracle.
                tracing::warn!(image, expected = sha, actual, "image checksum mismatch");
                return Err(Error::ChecksumMismatch {
                    image: image.to_string(),
                    expected: sha.to_string(),
                });
            }
            let (probed, _, backing) = inspect(&source).await?;
            if probed != spec.format.as_str() {
                return Err(Error::Image {
                    image: image.to_string(),
                    reason: format!(
                        "declared format {} but the file is {probed}",
                        spec.format.as_str()
                    ),
                });
            }
            if backing.is_some() {
                // A backing or external data file would let an image read
                // arbitrary host files.
                return Err(Error::Image {
                    image: image.to_string(),
                    reason:
                        "images that refer to other files (backing or data files) are not accepted"
                            .into(),
                });
            }
            let fmt = match spec.format {
                ImageFormat::Qcow2 => "qcow2",
                ImageFormat::Raw => "raw",
            };
            exec::run(
                "qemu-img",
                [
                    "convert".as_ref(),
                    "-f".as_ref(),
                    fmt.as_ref(),
                    "-O".as_ref(),
                    "qcow2".as_ref(),
                    source.as_os_str(),
                    converting.as_os_str(),
                ],
            )
            .await?;
            set_mode(&converting, 0o644)?;
            tokio::fs::rename(&converting, dest)
                .await
                .map_err(Error::io(dest))?;
            tracing::info!(image, sha256 = sha, "image cached");
            Ok(())
        }
        .await;
        let _ = tokio::fs::remove_file(&download).await;
        let _ = tokio::fs::remove_file(&converting).await;
        result
    }

    /// Streams `url` into `to`, returning the hex sha256 of what arrived.
    async fn download(&self, url: &str, to: &Path, image: &str) -> Result<String> {
        let fail = |reason: String| Error::Image {
            image: image.to_string(),
            reason,
        };
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| fail(format!("download {url}: {e}")))?;
        if !resp.status().is_success() {
            return Err(fail(format!("download {url}: HTTP {}", resp.status())));
        }
        let mut file = tokio::fs::File::create(to).await.map_err(Error::io(to))?;
        let mut hasher = Sha256::new();
        let mut total = 0u64;
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| fail(format!("download {url}: {e}")))?;
            total += chunk.len() as u64;
            if total > self.max_bytes {
                return Err(fail(format!(
                    "download {url}: larger than {} bytes",
                    self.max_bytes
                )));
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(Error::io(to))?;
        }
        file.flush().await.map_err(Error::io(to))?;
        Ok(hex::encode(hasher.finalize()))
    }
}

pub async fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut f = tokio::fs::File::open(path).await?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}
