//! Persistent lease database: an append-only JSON-lines journal, compacted
//! into a fresh file by write-to-temp + rename so a crash at any point
//! leaves either the old or the new file, never a mix.
//!
//! Each ACK's record is written (not fsynced) before the ACK is sent: that
//! survives a crash or restart of the server process, which is what the
//! provisioner needs; after a power loss clients re-request via INIT-REBOOT
//! and get their address back because nobody else holds it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::error::Error;
use crate::leases::Lease;
use crate::mac::Mac;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Record {
    Bind { lease: Lease },
    Release { ip: Ipv4Addr, mac: Mac, at_ms: u64 },
    Decline { ip: Ipv4Addr, until_ms: u64 },
}

pub struct Journal {
    path: PathBuf,
    file: File,
    /// Records in the file; compaction is due when this dwarfs the live set.
    records: usize,
}

impl Journal {
    /// Opens (creating if needed) and returns the records to replay.
    /// Unparseable lines are skipped: the last one may be torn by a crash.
    pub fn open(path: &Path) -> Result<(Journal, Vec<Record>), Error> {
        let err = |source| Error::LeaseDb {
            path: path.to_owned(),
            source,
        };
        let mut records = Vec::new();
        match File::open(path) {
            Ok(f) => {
                for (n, line) in BufReader::new(f).lines().enumerate() {
                    let line = line.map_err(err)?;
                    if line.trim().is_empty() {
                        continue;
                    }
                    match serde_json::from_str::<Record>(&line) {
                        Ok(r) => records.push(r),
                        Err(e) => {
                            warn!(path = %path.display(), line = n + 1, error = %e, "skipping corrupt lease record")
                        }
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(err)?;
        let count = records.len();
        Ok((
            Journal {
                path: path.to_owned(),
                file,
                records: count,
            },
            records,
        ))
    }

    pub fn append(&mut self, rec: &Record) -> io::Result<()> {
        let mut line = serde_json::to_vec(rec).map_err(io::Error::other)?;
        line.push(b'\n');
        // One write per record so a crash tears at most the last line.
        self.file.write_all(&line)?;
        self.records += 1;
        Ok(())
    }

    pub fn records(&self) -> usize {
        self.records
    }

    /// Rewrites the journal to exactly `live`.
    pub fn compact(&mut self, live: impl Iterator<Item = Record>) -> io::Result<()> {
        let tmp = self.path.with_extension("compact.tmp");
        let mut count = 0;
        {
            let mut w = io::BufWriter::new(File::create(&tmp)?);
            for rec in live {
                serde_json::to_writer(&mut w, &rec).map_err(io::Error::other)?;
                w.write_all(b"\n")?;
                count += 1;
            }
            let f = w.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Make the rename itself durable.
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.records = count;
        Ok(())
    }
}
