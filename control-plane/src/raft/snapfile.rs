//! Snapshot files: the state machine's bytes of each Raft snapshot live in a plain file in the
//! data dir, `<term>-<index>.snap` (16 hex digits each, as etcd's `snap/` dir names them); redb
//! holds only its record ([`SnapFile`]: name, size, CRC-32) next to the snapshot's index, term
//! and membership (`storage.rs`).
//!
//! # Why files
//! Stored as one redb value, a snapshot of a large registry was a large buffer on the Raft
//! thread, its page faults, then `pwrite` through redb's page cache — 9–13 % of the core under a
//! steady write load (perf, 3 nodes on one core), and a stall of every commit meanwhile. A file
//! is written by whoever produced the bytes: the compaction thread serializes the state machine
//! straight into it through a [`BufWriter`] (no whole-state buffer) and fsyncs it, and the Raft
//! thread only switches the small record.
//!
//! # Crash safety
//! [`write()`] fills a temporary file (`<name>.<random>.tmp`), fsyncs it, renames it to its name
//! and fsyncs the directory; only then is the file recorded in redb, and the file the previous
//! record named is deleted after that record commits. A crash at any point leaves either the
//! old record and its complete file, or the new record and its complete file; what else is
//! left over (temporary files, files no record names) is deleted when the store opens
//! ([`clean`]).
//!
//! # Integrity
//! [`read`] checks the file's size and CRC-32 against the record: a damaged or missing file is
//! a [`RaftError::Corrupt`] that names it, never a panic.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use tempfile::NamedTempFile;

use super::RaftError;

/// Suffix of a snapshot file's name.
const SUFFIX: &str = ".snap";
/// Suffix of a snapshot file being written.
const TEMP_SUFFIX: &str = ".tmp";
/// The write buffer between the serializer and the file: few system calls, little memory.
const BUFFER_BYTES: usize = 256 * 1024;

/// A complete snapshot file, as recorded in redb.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SnapFile {
    /// File name inside the data dir.
    pub(crate) name: String,
    /// Length in bytes.
    pub(crate) size: u64,
    /// CRC-32 (IEEE) of the whole file.
    pub(crate) crc32: u32,
}

/// Where a [`Snapshotter`](super::Snapshotter) writes: a new snapshot file, buffered (write
/// as small pieces as is convenient), counted and checksummed on the way.
///
/// A concrete type rather than `dyn Write`, so that a serializer's many small writes stay
/// inlined copies into the buffer.
pub struct SnapshotWriter {
    out: BufWriter<Summing<NamedTempFile>>,
}

/// Counts and checksums the bytes that pass through to the file.
struct Summing<W> {
    inner: W,
    hasher: crc32fast::Hasher,
    size: u64,
}

// === impl SnapFile ===

impl SnapFile {
    /// The record as stored in redb (JSON: small, rare, and readable with redb's tools).
    pub(crate) fn encode(&self) -> Result<Vec<u8>, RaftError> {
        serde_json::to_vec(self)
            .map_err(|e| RaftError::Corrupt(format!("snapshot file record: {e}")))
    }

    /// A record from [`SnapFile::encode`]'s bytes.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, RaftError> {
        let file: Self = serde_json::from_slice(bytes)
            .map_err(|e| RaftError::Corrupt(format!("unreadable snapshot file record: {e}")))?;
        if !is_snapshot_name(&file.name) {
            return Err(RaftError::Corrupt(format!(
                "the snapshot record names {:?}, not a snapshot file",
                file.name
            )));
        }
        Ok(file)
    }
}

// === impl SnapshotWriter ===

impl Write for SnapshotWriter {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.write(buf)
    }

    #[inline]
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.out.write_all(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

// === impl Summing ===

impl<W: Write> Write for Summing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The name of the snapshot file at `index`, taken in `term`.
pub(crate) fn name(term: u64, index: u64) -> String {
    format!("{term:016x}-{index:016x}{SUFFIX}")
}

/// Writes a snapshot file for `index` and `term` in `dir` with what `fill` writes, durably (see
/// the module doc): when this returns, the file is complete under its name and on disk.
pub(crate) fn write(
    dir: &Path,
    term: u64,
    index: u64,
    fill: impl FnOnce(&mut SnapshotWriter) -> std::io::Result<()>,
) -> Result<SnapFile, RaftError> {
    let name = name(term, index);
    let path = dir.join(&name);
    let failed = |source| RaftError::DataDir {
        path: path.clone(),
        source,
    };
    // Dropped on any error below: the temporary file is deleted.
    let temp = tempfile::Builder::new()
        .prefix(&format!("{name}."))
        .suffix(TEMP_SUFFIX)
        .tempfile_in(dir)
        .map_err(failed)?;
    let mut writer = SnapshotWriter {
        out: BufWriter::with_capacity(
            BUFFER_BYTES,
            Summing {
                inner: temp,
                hasher: crc32fast::Hasher::new(),
                size: 0,
            },
        ),
    };
    fill(&mut writer).map_err(failed)?;
    let summing = writer
        .out
        .into_inner()
        .map_err(|e| failed(e.into_error()))?;
    let Summing {
        inner: temp,
        hasher,
        size,
    } = summing;
    temp.as_file().sync_all().map_err(failed)?;
    temp.persist(&path).map_err(|e| failed(e.error))?;
    sync_dir(dir)?;
    Ok(SnapFile {
        name,
        size,
        crc32: hasher.finalize(),
    })
}

/// The bytes of `file`, checked against its record.
pub(crate) fn read(dir: &Path, file: &SnapFile) -> Result<Vec<u8>, RaftError> {
    let path = dir.join(&file.name);
    let data = std::fs::read(&path).map_err(|e| unreadable(&path, &e))?;
    if data.len() as u64 != file.size {
        return Err(RaftError::Corrupt(format!(
            "snapshot file {} is damaged: {} bytes, its record says {}",
            path.display(),
            data.len(),
            file.size
        )));
    }
    let crc32 = crc32fast::hash(&data);
    if crc32 != file.crc32 {
        return Err(RaftError::Corrupt(format!(
            "snapshot file {} is damaged: CRC-32 {crc32:08x}, its record says {:08x}",
            path.display(),
            file.crc32
        )));
    }
    Ok(data)
}

/// Checks that `file` exists with its recorded size (cheap: the checksum is verified by
/// [`read`]).
pub(crate) fn check(dir: &Path, file: &SnapFile) -> Result<(), RaftError> {
    let path = dir.join(&file.name);
    let meta = std::fs::metadata(&path).map_err(|e| unreadable(&path, &e))?;
    if meta.len() != file.size {
        return Err(RaftError::Corrupt(format!(
            "snapshot file {} is damaged: {} bytes, its record says {}",
            path.display(),
            meta.len(),
            file.size
        )));
    }
    Ok(())
}

/// Deletes what a crash can leave in `dir`: temporary snapshot files, and snapshot files other
/// than `keep` (the one the record names).
pub(crate) fn clean(dir: &Path, keep: Option<&str>) -> Result<(), RaftError> {
    let list = |source| RaftError::DataDir {
        path: dir.to_path_buf(),
        source,
    };
    for item in std::fs::read_dir(dir).map_err(list)? {
        let name = item.map_err(list)?.file_name();
        let Some(name) = name.to_str() else { continue };
        let temp = name.ends_with(TEMP_SUFFIX) && name.contains(&format!("{SUFFIX}."));
        if temp || (is_snapshot_name(name) && Some(name) != keep) {
            tracing::info!(file = name, "deleting a snapshot file left over by a crash");
            remove(dir, name)?;
        }
    }
    Ok(())
}

/// Deletes the snapshot file `name` (gone already is fine).
pub(crate) fn remove(dir: &Path, name: &str) -> Result<(), RaftError> {
    let path = dir.join(name);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(RaftError::DataDir { path, source }),
    }
}

/// Whether `name` is a snapshot file's name (`<16 hex>-<16 hex>.snap`).
fn is_snapshot_name(name: &str) -> bool {
    let Some(stem) = name.strip_suffix(SUFFIX) else {
        return false;
    };
    let Some((term, index)) = stem.split_once('-') else {
        return false;
    };
    [term, index]
        .iter()
        .all(|part| part.len() == 16 && part.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn unreadable(path: &Path, e: &std::io::Error) -> RaftError {
    if e.kind() == std::io::ErrorKind::NotFound {
        RaftError::Corrupt(format!(
            "snapshot file {} is missing (the snapshot record in {} names it)",
            path.display(),
            super::storage::FILE_NAME
        ))
    } else {
        RaftError::Corrupt(format!("snapshot file {} unreadable: {e}", path.display()))
    }
}

fn sync_dir(dir: &Path) -> Result<(), RaftError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| RaftError::DataDir {
            path: dir.to_path_buf(),
            source,
        })
}
