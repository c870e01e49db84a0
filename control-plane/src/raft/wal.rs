//! The write-ahead log: raft entries and hard states appended to preallocated segment files.
//!
//! Every write the cluster acknowledges passes through here on a quorum of nodes, so its cost
//! is the cost of a write. A B-tree commit (redb) cost ~155 µs of CPU and ~650 µs of wall time
//! per batch on this machine kind; appending the same batch to a preallocated file and
//! `fdatasync` cost ~50 µs and ~310 µs (a throwaway measurement, 3,000 batches of 8 × 220 B).
//! etcd's WAL works the same way. redb keeps what is rare and random-access: snapshots,
//! membership, peer addresses.
//!
//! # Format
//! Segments `wal-<seq>.log` (sequence numbers in decimal, zero-padded, increasing) are created
//! full of zeros (256 KiB first, doubling up to [`SEGMENT_BYTES`], or more for a larger
//! batch) and fsynced, so appending
//! never changes a file's size and `fdatasync` writes the data alone. A record is
//! `len: u32 LE | crc32(kind ++ payload): u32 LE | kind: u8 | payload` with `len` counting
//! `kind ++ payload`; a zero `len` marks the end of the written part.
//! - kind 1, entries: `(u32 LE length, protobuf Entry)*`; a batch that starts at index `i`
//!   replaces whatever the log held from `i` on (a follower's conflicting tail);
//! - kind 2, hard state: a protobuf `HardState`.
//!
//! # Recovery
//! Segments are replayed in order. In the last one, the first record whose length runs past
//! the file or whose checksum fails is a write torn by a crash: it was never acknowledged
//! (acknowledgements wait for the fsync), so it and everything after it are zeroed and writing
//! resumes there. The same damage in an earlier segment is corruption and stops the node.
//!
//! # Compaction
//! [`Wal::restart`] writes a new segment holding the current hard state and the log tail after
//! the snapshot, fsyncs it and the directory, then deletes every older segment: each segment
//! chain starts self-contained, and the disk holds one tail plus what was appended since.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use ::raft::eraftpb::{Entry, HardState};
use protobuf::Message as _;

use super::RaftError;

/// Largest segment: ~18,000 registrations. Zero-filling one (a few milliseconds) happens
/// ahead of need, on the `wal-prealloc` thread; switching segments costs a rename.
pub(crate) const SEGMENT_BYTES: u64 = 4 * 1024 * 1024;
/// First segment: a node that writes little (most of a test suite's, a quiet registry) never
/// zero-fills more than a few hundred kilobytes. Each next segment doubles, up to
/// [`SEGMENT_BYTES`].
pub(crate) const FIRST_SEGMENT_BYTES: u64 = 256 * 1024;

const HEADER: usize = 9;
/// A batch buffer larger than this (a burst of large entries) is dropped after use rather than
/// kept for the next batch.
const MAX_KEPT_BUFFER: usize = 1 << 20;
const KIND_ENTRIES: u8 = 1;
const KIND_HARD_STATE: u8 = 2;

/// The open log.
pub(crate) struct Wal {
    dir: PathBuf,
    file: File,
    seq: u64,
    /// Where the next record goes in the current segment.
    offset: u64,
    /// The current segment's size.
    capacity: u64,
    /// The next segment, zero-filled ahead of need on its own thread once the current one is
    /// half full (etcd's "file pipeline"): taking a new segment is then a rename, not
    /// megabytes of writes on the Raft thread.
    spare: Option<Spare>,
    /// The record being written, reused from batch to batch: a fresh buffer per batch showed
    /// as page clearing on the Raft threads (~5 % of the core under 64 writers).
    buf: Vec<u8>,
}

/// A segment being prepared.
struct Spare {
    bytes: u64,
    thread: std::thread::JoinHandle<std::io::Result<()>>,
}

/// One record, as replayed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Record {
    /// Appended entries (replacing the log from the first one's index on).
    Entries(Vec<Entry>),
    /// The hard state as of this point.
    HardState(HardState),
}

// === impl Wal ===

impl Wal {
    /// Opens the log in `dir` and returns every record it holds, in order; `None` when `dir`
    /// held no log (its first segment is created then).
    pub(crate) fn open(dir: &Path) -> Result<(Self, Option<Vec<Record>>), RaftError> {
        let segments = segments(dir)?;
        let Some(&last) = segments.last() else {
            return Ok((Self::create(dir, 1, FIRST_SEGMENT_BYTES)?, None));
        };
        let mut records = Vec::new();
        let mut end = 0;
        for &seq in &segments {
            let path = segment_path(dir, seq);
            let bytes = std::fs::read(&path).map_err(io("read a WAL segment"))?;
            let (parsed, parsed_end, torn) = parse(&bytes)?;
            if torn && seq != last {
                return Err(RaftError::Corrupt(format!(
                    "{}: damaged record at byte {parsed_end} before the last segment",
                    path.display()
                )));
            }
            records.extend(parsed);
            end = parsed_end;
            // Bytes after the end in the last segment are what a crash left of a write
            // whose header never made it: clear them so a later, shorter record is not
            // followed by garbage that would read as damage once this segment is not the last.
            let dirty = seq == last && bytes[parsed_end..].iter().any(|b| *b != 0);
            if torn || dirty {
                tracing::warn!(
                    segment = %path.display(),
                    offset = parsed_end,
                    "WAL: a write torn by a crash was dropped (it was never acknowledged)"
                );
                zero(&path, parsed_end as u64, bytes.len() as u64)?;
            }
        }
        let path = segment_path(dir, last);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io("open the WAL"))?;
        let capacity = file.metadata().map_err(io("stat the WAL"))?.len();
        let wal = Self {
            dir: dir.to_path_buf(),
            file,
            seq: last,
            offset: end as u64,
            capacity,
            spare: None,
            buf: Vec::new(),
        };
        Ok((wal, Some(records)))
    }

    /// Appends `entries` (if any) and `hard_state` (if given) as one write; with `sync` they
    /// are on disk when this returns.
    pub(crate) fn append(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
        sync: bool,
    ) -> Result<(), RaftError> {
        let mut bytes = std::mem::take(&mut self.buf);
        bytes.clear();
        let written = encode(&mut bytes, entries, hard_state).and_then(|()| self.write(&bytes));
        let empty = bytes.is_empty();
        if bytes.capacity() <= MAX_KEPT_BUFFER {
            self.buf = bytes;
        }
        written?;
        if empty {
            return Ok(());
        }
        if self.spare.is_none() && self.offset > self.capacity / 2 {
            self.prepare_spare()?;
        }
        if sync {
            self.file.sync_data().map_err(io("sync the WAL"))?;
        }
        Ok(())
    }

    /// Writes one encoded batch at the end of the log (no sync).
    fn write(&mut self, bytes: &[u8]) -> Result<(), RaftError> {
        if bytes.is_empty() {
            return Ok(());
        }
        // Leave at least one zero length after the last record.
        let needed = bytes.len() as u64 + 4;
        if self.offset + needed > self.capacity {
            self.advance(needed)?;
        }
        self.file
            .write_all_at(bytes, self.offset)
            .map_err(io("append to the WAL"))?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    /// Makes everything appended so far durable.
    pub(crate) fn sync(&mut self) -> Result<(), RaftError> {
        self.file.sync_data().map_err(io("sync the WAL"))
    }

    /// Starts a new segment holding exactly `hard_state` and `entries` (durably), then deletes
    /// the older segments (see the module doc).
    pub(crate) fn restart(
        &mut self,
        entries: &[Entry],
        hard_state: &HardState,
    ) -> Result<(), RaftError> {
        let mut bytes = Vec::new();
        encode(&mut bytes, entries, Some(hard_state))?;
        self.advance(bytes.len() as u64 + 4)?;
        self.append(entries, Some(hard_state), true)?;
        for seq in segments(&self.dir)? {
            if seq < self.seq {
                std::fs::remove_file(segment_path(&self.dir, seq))
                    .map_err(io("delete an old WAL segment"))?;
            }
        }
        sync_dir(&self.dir)
    }

    /// Entries on disk across all segments, superseded ones included (tests: proof that
    /// compaction trims the disk).
    #[cfg(test)]
    pub(crate) fn entries_on_disk(&self) -> Result<usize, RaftError> {
        let mut count = 0;
        for seq in segments(&self.dir)? {
            let bytes =
                std::fs::read(segment_path(&self.dir, seq)).map_err(io("read a WAL segment"))?;
            for record in parse(&bytes)?.0 {
                if let Record::Entries(entries) = record {
                    count += entries.len();
                }
            }
        }
        Ok(count)
    }

    /// Makes segment `seq` of at least `capacity` zeros, durably (file and directory entry).
    fn create(dir: &Path, seq: u64, capacity: u64) -> Result<Self, RaftError> {
        Self::next(dir, seq, capacity, None)
    }

    /// Moves to the segment after this one, of at least `needed` bytes: the spare when it is
    /// ready and large enough, a new file otherwise.
    fn advance(&mut self, needed: u64) -> Result<(), RaftError> {
        let spare = self.spare.take();
        let size = self
            .capacity
            .saturating_mul(2)
            .min(SEGMENT_BYTES)
            .max(needed);
        *self = Self::next(&self.dir, self.seq + 1, size, spare)?;
        Ok(())
    }

    /// Starts zero-filling the segment after this one.
    fn prepare_spare(&mut self) -> Result<(), RaftError> {
        let bytes = self.capacity.saturating_mul(2).min(SEGMENT_BYTES);
        let path = self.dir.join(SPARE);
        let thread = std::thread::Builder::new()
            .name("wal-prealloc".into())
            .spawn(move || zero_file(&path, bytes))
            .map_err(io("start the WAL preallocator"))?;
        self.spare = Some(Spare { bytes, thread });
        Ok(())
    }

    fn next(dir: &Path, seq: u64, capacity: u64, spare: Option<Spare>) -> Result<Self, RaftError> {
        let path = segment_path(dir, seq);
        let spare_bytes = match spare {
            Some(Spare { bytes, thread }) => match thread.join() {
                Ok(Ok(())) => Some(bytes),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "WAL: preparing a spare segment failed");
                    None
                }
                Err(_) => None,
            },
            None => None,
        };
        let capacity = match spare_bytes {
            Some(bytes) if bytes >= capacity => {
                std::fs::rename(dir.join(SPARE), &path).map_err(io("name a new WAL segment"))?;
                bytes
            }
            _ => {
                let tmp = path.with_extension("tmp");
                zero_file(&tmp, capacity).map_err(io("preallocate a WAL segment"))?;
                // Renamed only once complete: a crash never leaves a half-zeroed segment.
                std::fs::rename(&tmp, &path).map_err(io("name a new WAL segment"))?;
                capacity
            }
        };
        sync_dir(dir)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io("open a new WAL segment"))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            file,
            seq,
            offset: 0,
            capacity,
            spare: None,
            buf: Vec::new(),
        })
    }
}

/// Where the spare segment is prepared (ignored by replay: not a `wal-*.log` name).
const SPARE: &str = "wal-spare.tmp";

/// Writes a file of `capacity` zeros and syncs it.
fn zero_file(path: &Path, capacity: u64) -> std::io::Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let zeros = vec![0u8; 1 << 20];
    let mut written = 0;
    while written < capacity {
        let n = (capacity - written).min(zeros.len() as u64);
        let n_usize = usize::try_from(n).expect("invariant: at most 1 MiB");
        file.write_all_at(&zeros[..n_usize], written)?;
        written += n;
    }
    file.sync_all()
}

/// Encodes the records for `entries` and `hard_state`.
/// Appends the records for `entries` (if any) and `hard_state` (if given) to `out`, each
/// serialized in place: no buffer per entry or per record.
fn encode(
    out: &mut Vec<u8>,
    entries: &[Entry],
    hard_state: Option<&HardState>,
) -> Result<(), RaftError> {
    if !entries.is_empty() {
        let start = begin_record(out, KIND_ENTRIES);
        for entry in entries {
            let at = out.len();
            out.extend_from_slice(&[0; 4]);
            entry.write_to_vec(out)?;
            let len = len32(out.len() - at - 4)?;
            out[at..at + 4].copy_from_slice(&len.to_le_bytes());
        }
        end_record(out, start)?;
    }
    if let Some(hs) = hard_state {
        let start = begin_record(out, KIND_HARD_STATE);
        hs.write_to_vec(out)?;
        end_record(out, start)?;
    }
    Ok(())
}

/// Writes a record header with its length and checksum left blank, and the kind; returns
/// where the record starts. The payload follows; [`end_record`] fills the blanks.
fn begin_record(out: &mut Vec<u8>, kind: u8) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    out.push(kind);
    start
}

/// Fills in the length and checksum of the record that starts at `start` and runs to the end
/// of `out`: `len` counts `kind ++ payload`, the CRC covers the same bytes.
fn end_record(out: &mut [u8], start: usize) -> Result<(), RaftError> {
    let body = &out[start + 8..];
    let len = len32(body.len())?;
    let crc = crc32fast::hash(body);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

fn len32(len: usize) -> Result<u32, RaftError> {
    u32::try_from(len).map_err(|_| RaftError::Corrupt(format!("a WAL record of {len} bytes")))
}

/// Parses the records of one segment: the records, where the written part ends, and whether
/// it ended at a damaged record rather than at zeros or the file's end.
fn parse(bytes: &[u8]) -> Result<(Vec<Record>, usize, bool), RaftError> {
    let mut records = Vec::new();
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + HEADER) {
        let len = u32::from_le_bytes(header[..4].try_into().expect("invariant: 4 bytes")) as usize;
        if len == 0 {
            return Ok((records, at, false));
        }
        let crc = u32::from_le_bytes(header[4..8].try_into().expect("invariant: 4 bytes"));
        let Some(body) = bytes.get(at + 8..at + 8 + len) else {
            return Ok((records, at, true));
        };
        if crc32fast::hash(body) != crc {
            return Ok((records, at, true));
        }
        let (kind, payload) = body.split_first().expect("invariant: len > 0");
        records.push(match *kind {
            KIND_ENTRIES => Record::Entries(parse_entries(payload)?),
            KIND_HARD_STATE => Record::HardState(HardState::parse_from_bytes(payload)?),
            other => {
                return Err(RaftError::Corrupt(format!(
                    "WAL record of unknown kind {other} at byte {at}"
                )));
            }
        });
        at += 8 + len;
    }
    // Fewer than HEADER bytes left: zeros of a full segment, or a torn header.
    let torn = bytes[at..].iter().any(|b| *b != 0);
    Ok((records, at, torn))
}

fn parse_entries(mut payload: &[u8]) -> Result<Vec<Entry>, RaftError> {
    let mut entries = Vec::new();
    while !payload.is_empty() {
        let damaged = || RaftError::Corrupt("a WAL entries record is malformed".into());
        let (len, rest) = payload.split_first_chunk::<4>().ok_or_else(damaged)?;
        let len = u32::from_le_bytes(*len) as usize;
        let bytes = rest.get(..len).ok_or_else(damaged)?;
        entries.push(Entry::parse_from_bytes(bytes)?);
        payload = &rest[len..];
    }
    Ok(entries)
}

/// The segment sequence numbers in `dir`, ascending.
fn segments(dir: &Path) -> Result<Vec<u64>, RaftError> {
    let mut seqs = Vec::new();
    for item in std::fs::read_dir(dir).map_err(io("list the data dir"))? {
        let name = item.map_err(io("list the data dir"))?.file_name();
        let name = name.to_string_lossy();
        if let Some(seq) = name
            .strip_prefix("wal-")
            .and_then(|rest| rest.strip_suffix(".log"))
            .and_then(|seq| seq.parse::<u64>().ok())
        {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("wal-{seq:020}.log"))
}

/// Overwrites `from..to` of the file at `path` with zeros, durably.
fn zero(path: &Path, from: u64, to: u64) -> Result<(), RaftError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io("open a WAL segment"))?;
    let len = usize::try_from(to.saturating_sub(from)).unwrap_or(0);
    file.write_all_at(&vec![0u8; len], from)
        .map_err(io("zero a torn WAL tail"))?;
    file.sync_data().map_err(io("sync a WAL segment"))
}

fn sync_dir(dir: &Path) -> Result<(), RaftError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync the data dir"))
}

fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> RaftError {
    move |source| RaftError::Wal { context, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![7; 100].into(),
            ..Default::default()
        }
    }

    fn hs(term: u64, commit: u64) -> HardState {
        HardState {
            term,
            vote: 1,
            commit,
            ..Default::default()
        }
    }

    #[test]
    fn appends_replay_in_order_across_reopens_and_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, records) = Wal::open(dir.path()).unwrap();
        assert!(records.is_none(), "a new log");
        wal.append(&[entry(1, 1), entry(2, 1)], Some(&hs(1, 0)), true)
            .unwrap();
        wal.append(&[], Some(&hs(1, 2)), false).unwrap();
        wal.append(&[entry(3, 1)], None, true).unwrap();
        drop(wal);

        let (mut wal, records) = Wal::open(dir.path()).unwrap();
        let records = records.unwrap();
        assert_eq!(
            records,
            vec![
                Record::Entries(vec![entry(1, 1), entry(2, 1)]),
                Record::HardState(hs(1, 0)),
                Record::HardState(hs(1, 2)),
                Record::Entries(vec![entry(3, 1)]),
            ]
        );
        // A batch larger than what is left of the segment goes to a new, larger one.
        let big: Vec<Entry> = (4..=4 + SEGMENT_BYTES / 100).map(|i| entry(i, 2)).collect();
        wal.append(&big, None, true).unwrap();
        wal.append(&[entry(5 + SEGMENT_BYTES / 100, 2)], None, true)
            .unwrap();
        drop(wal);
        // 1, then one sized for the big batch, then a spare for the entry after it.
        assert_eq!(segments(dir.path()).unwrap(), vec![1, 2, 3]);
        let (_, records) = Wal::open(dir.path()).unwrap();
        let records = records.unwrap();
        assert_eq!(records.len(), 6);
        drop(records);
        let (wal, _) = Wal::open(dir.path()).unwrap();
        assert_eq!(wal.entries_on_disk().unwrap(), 3 + big.len() + 1);
    }

    #[test]
    fn a_torn_tail_is_dropped_and_writing_resumes_there() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path()).unwrap();
        wal.append(&[entry(1, 1)], Some(&hs(1, 1)), true).unwrap();
        let good_end = wal.offset;
        wal.append(&[entry(2, 1)], None, true).unwrap();
        let torn_end = wal.offset;
        drop(wal);
        // A crash in the middle of the second record: its last bytes never reached the disk.
        let path = segment_path(dir.path(), 1);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0u8; 16], torn_end - 16).unwrap();

        let (mut wal, records) = Wal::open(dir.path()).unwrap();
        let records = records.unwrap();
        assert_eq!(
            records,
            vec![
                Record::Entries(vec![entry(1, 1)]),
                Record::HardState(hs(1, 1))
            ]
        );
        assert_eq!(wal.offset, good_end);
        wal.append(&[entry(2, 2)], None, true).unwrap();
        drop(wal);
        let (_, records) = Wal::open(dir.path()).unwrap();
        let records = records.unwrap();
        assert_eq!(records.last(), Some(&Record::Entries(vec![entry(2, 2)])));
    }

    #[test]
    fn damage_before_the_last_segment_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path()).unwrap();
        wal.append(&[entry(1, 1)], None, true).unwrap();
        let big: Vec<Entry> = (2..=2 + SEGMENT_BYTES / 100).map(|i| entry(i, 1)).collect();
        wal.append(&big, None, true).unwrap();
        drop(wal);
        let file = OpenOptions::new()
            .write(true)
            .open(segment_path(dir.path(), 1))
            .unwrap();
        file.write_all_at(&[0xff; 4], 20).unwrap();
        assert!(matches!(Wal::open(dir.path()), Err(RaftError::Corrupt(_))));
    }

    #[test]
    fn restart_keeps_only_the_new_segment() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path()).unwrap();
        for i in 1..=10 {
            wal.append(&[entry(i, 1)], Some(&hs(1, i)), true).unwrap();
        }
        wal.restart(&[entry(9, 1), entry(10, 1)], &hs(1, 10))
            .unwrap();
        wal.append(&[entry(11, 1)], None, true).unwrap();
        drop(wal);
        assert_eq!(segments(dir.path()).unwrap(), vec![2]);
        let (_, records) = Wal::open(dir.path()).unwrap();
        let records = records.unwrap();
        assert_eq!(
            records,
            vec![
                Record::Entries(vec![entry(9, 1), entry(10, 1)]),
                Record::HardState(hs(1, 10)),
                Record::Entries(vec![entry(11, 1)]),
            ]
        );
    }
}
