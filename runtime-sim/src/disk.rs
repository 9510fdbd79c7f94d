//! A simulated disk that keeps written-but-unsynced bytes apart from synced ones.
//!
//! Each file has its durable content and the operations issued since its last sync. A sync
//! folds them in. A crash keeps the durable content plus a random prefix of the pending
//! operations, the last of which may be torn at a sector boundary: exactly what a real disk
//! may leave behind. Directory entries created or removed are durable when the operation
//! completes (the real runtime fsyncs the directory before reporting it).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use bytes::Bytes;
use rand::Rng;
use sluice_core::{DirEntry, DiskError, DiskOp, DiskReply, FileId};

/// Bytes a torn write is cut at a multiple of.
pub const SECTOR_BYTES: usize = 512;

#[derive(Clone, Debug)]
enum Pending {
    Write { position: u64, data: Vec<u8> },
    Truncate { len: u64 },
}

#[derive(Clone, Debug, Default)]
struct SimFile {
    durable: Vec<u8>,
    current: Vec<u8>,
    pending: Vec<Pending>,
    /// Handles open on it: an unlinked file lives on until the last is closed.
    open: u32,
    /// Its name is gone (it lives on for its open handles).
    unlinked: bool,
}

fn apply(buf: &mut Vec<u8>, p: &Pending) {
    match p {
        Pending::Write { position, data } => {
            let at = *position as usize;
            if buf.len() < at + data.len() {
                buf.resize(at + data.len(), 0);
            }
            buf[at..at + data.len()].copy_from_slice(data);
        }
        Pending::Truncate { len } => buf.truncate(*len as usize),
    }
}

/// A sync in flight: which file (by inode, so a file deleted and created again at the same
/// path is not confused with it) and how many of its pending operations it covers.
#[derive(Clone, Debug)]
pub struct SyncTicket {
    ino: u64,
    pending: usize,
}

/// What a crash did to the files.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CrashReport {
    pub files_with_lost_writes: usize,
    pub torn_writes: usize,
}

#[derive(Default)]
pub struct SimDisk {
    /// Path → inode. Operations on open files go by inode: no path is compared on the way.
    files: BTreeMap<String, u64>,
    inodes: BTreeMap<u64, SimFile>,
    dirs: BTreeSet<String>,
    handles: BTreeMap<FileId, u64>,
    next_ino: u64,
    /// When set, writes fail with NoSpace once the disk holds this many bytes.
    pub capacity_bytes: Option<u64>,
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

/// The paths directly in `dir` (with their names), from the paths at or after `dir/` in
/// order (every path under it sorts together, so a range finds them without a walk of every
/// path on the disk).
fn in_dir<'a>(from_prefix: impl Iterator<Item = &'a String>, dir: &str) -> impl Iterator<Item = (&'a String, &'a str)> {
    let prefix = if dir.is_empty() { String::new() } else { format!("{dir}/") };
    let skip = prefix.len();
    from_prefix.take_while(move |p| p.starts_with(&prefix)).filter_map(move |p| {
        let rest = &p[skip..];
        (!rest.is_empty() && !rest.contains('/')).then_some((p, rest))
    })
}

/// The range of sorted paths that starts at `dir/`.
fn prefix_of(dir: &str) -> (Bound<String>, Bound<String>) {
    (Bound::Included(if dir.is_empty() { String::new() } else { format!("{dir}/") }), Bound::Unbounded)
}

impl SimDisk {
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    fn used_bytes(&self) -> u64 {
        self.inodes.values().map(|f| f.current.len() as u64).sum()
    }

    fn file(&mut self, id: FileId) -> Result<&mut SimFile, DiskError> {
        let ino = self.handles.get(&id).ok_or_else(|| DiskError::Io(format!("{id:?} not open")))?;
        self.inodes.get_mut(ino).ok_or(DiskError::NotFound)
    }

    /// Unlinks `path`; its inode goes with it (an open handle then finds nothing, as before
    /// the disk kept inodes).
    /// Removes a name; the file itself goes once no handle is open on it either (as POSIX
    /// keeps an unlinked file readable through its open descriptors).
    fn unlink(&mut self, path: &str) {
        if let Some(ino) = self.files.remove(path) {
            match self.inodes.get_mut(&ino) {
                Some(f) if f.open == 0 => {
                    self.inodes.remove(&ino);
                }
                Some(f) => f.unlinked = true,
                None => {}
            }
        }
    }

    /// A handle is closed (or replaced): the file goes if it was its last and it has no name.
    fn release(&mut self, ino: u64) {
        let Some(f) = self.inodes.get_mut(&ino) else { return };
        f.open = f.open.saturating_sub(1);
        if f.open == 0 && f.unlinked {
            self.inodes.remove(&ino);
        }
    }

    fn open(&mut self, file: FileId, path: String, create: bool) -> Result<DiskReply, DiskError> {
        if !parent(&path).is_empty() && !self.dirs.contains(parent(&path)) {
            return Err(DiskError::NotFound);
        }
        let ino = match self.files.get(&path) {
            Some(ino) => *ino,
            None if create => {
                self.next_ino += 1;
                let ino = self.next_ino;
                self.inodes.insert(ino, SimFile::default());
                self.files.insert(path, ino);
                ino
            }
            None => return Err(DiskError::NotFound),
        };
        let f = self.inodes.get_mut(&ino).expect("named files exist");
        f.open += 1;
        let len = f.current.len() as u64;
        if let Some(old) = self.handles.insert(file, ino) {
            self.release(old);
        }
        Ok(DiskReply::Opened { len })
    }

    fn rename(&mut self, from: &str, to: String) -> Result<DiskReply, DiskError> {
        let ino = *self.files.get(from).ok_or(DiskError::NotFound)?;
        if !parent(&to).is_empty() && !self.dirs.contains(parent(&to)) {
            return Err(DiskError::NotFound);
        }
        self.unlink(&to);
        self.files.remove(from);
        self.files.insert(to, ino);
        Ok(DiskReply::Done)
    }

    /// Executes one operation at once.
    pub fn execute(&mut self, action: DiskOp) -> Result<DiskReply, DiskError> {
        match action {
            DiskOp::CreateDir { path } => {
                let mut p = path.as_str();
                while !p.is_empty() {
                    self.dirs.insert(p.to_string());
                    p = parent(p);
                }
                Ok(DiskReply::Done)
            }
            DiskOp::ListDir { path } => {
                if !path.is_empty() && !self.dirs.contains(&path) {
                    return Err(DiskError::NotFound);
                }
                let mut out: BTreeMap<String, bool> = BTreeMap::new();
                for (_, name) in in_dir(self.dirs.range(prefix_of(&path)), &path) {
                    out.insert(name.to_string(), true);
                }
                for (_, name) in in_dir(self.files.range(prefix_of(&path)).map(|(k, _)| k), &path) {
                    out.insert(name.to_string(), false);
                }
                Ok(DiskReply::Listing(out.into_iter().map(|(name, is_dir)| DirEntry { name, is_dir }).collect()))
            }
            DiskOp::Open { file, path, create } => self.open(file, path, create),
            DiskOp::Write { file, position, data } => {
                let len: usize = data.iter().map(|b| b.len()).sum();
                if let Some(cap) = self.capacity_bytes {
                    if self.used_bytes() + len as u64 > cap {
                        return Err(DiskError::NoSpace);
                    }
                }
                let mut all = Vec::with_capacity(len);
                for b in &data {
                    all.extend_from_slice(b);
                }
                let f = self.file(file)?;
                let p = Pending::Write { position, data: all };
                apply(&mut f.current, &p);
                f.pending.push(p);
                Ok(DiskReply::Done)
            }
            DiskOp::Truncate { file, len } => {
                let f = self.file(file)?;
                let p = Pending::Truncate { len };
                apply(&mut f.current, &p);
                f.pending.push(p);
                Ok(DiskReply::Done)
            }
            DiskOp::Sync { file } => {
                let t = self.sync_begin(file)?;
                self.sync_finish(&t);
                Ok(DiskReply::Done)
            }
            DiskOp::Read { file, position, len } => {
                let f = self.file(file)?;
                let start = (position as usize).min(f.current.len());
                let end = (start + len).min(f.current.len());
                Ok(DiskReply::Data(Bytes::copy_from_slice(&f.current[start..end])))
            }
            DiskOp::Close { file } => {
                if let Some(ino) = self.handles.remove(&file) {
                    self.release(ino);
                }
                Ok(DiskReply::Done)
            }
            DiskOp::RemoveDirAll { path } => {
                let prefix = format!("{path}/");
                let gone: Vec<String> = self.files.keys().filter(|k| k.starts_with(&prefix)).cloned().collect();
                for k in gone {
                    self.unlink(&k);
                }
                self.dirs.retain(|d| d != &path && !d.starts_with(&prefix));
                Ok(DiskReply::Done)
            }
            DiskOp::DeleteFile { path } => {
                self.unlink(&path);
                Ok(DiskReply::Done)
            }
            DiskOp::Rename { from, to } => self.rename(&from, to),
            DiskOp::Space => {
                // A disk without a capacity fault is as large as a terabyte.
                let total = self.capacity_bytes.unwrap_or(1 << 40);
                Ok(DiskReply::Space { total, usable: total.saturating_sub(self.used_bytes()) })
            }
        }
    }

    /// Starts a sync: it will make durable the operations pending on the file now (and
    /// not necessarily those issued after). Returns what `sync_finish` needs.
    pub fn sync_begin(&mut self, file: FileId) -> Result<SyncTicket, DiskError> {
        let ino = *self.handles.get(&file).ok_or_else(|| DiskError::Io(format!("{file:?} not open")))?;
        let f = self.inodes.get(&ino).ok_or(DiskError::NotFound)?;
        Ok(SyncTicket { ino, pending: f.pending.len() })
    }

    /// Completes a sync begun with `sync_begin`: the first operations that were pending then
    /// become durable. A no-op if the file is gone, even if another file now has its path.
    pub fn sync_finish(&mut self, t: &SyncTicket) {
        let Some(f) = self.inodes.get_mut(&t.ino) else {
            return;
        };
        let n = t.pending.min(f.pending.len());
        for p in f.pending.drain(..n) {
            apply(&mut f.durable, &p);
        }
        if f.pending.is_empty() {
            debug_assert_eq!(f.durable, f.current);
        }
    }

    /// Total bytes held (for capacity faults and reports).
    pub fn bytes_used(&self) -> u64 {
        self.used_bytes()
    }

    /// Bytes of a file as a reader would see them now.
    pub fn read_file(&self, path: &str) -> Option<&[u8]> {
        self.files.get(path).and_then(|ino| self.inodes.get(ino)).map(|f| f.current.as_slice())
    }

    /// The files directly in `dir`, by name (sorted).
    pub fn list_files(&self, dir: &str) -> Vec<String> {
        in_dir(self.files.range(prefix_of(dir)).map(|(k, _)| k), dir).map(|(path, _)| path.clone()).collect()
    }

    /// A file's handle, for resolving zero-copy file ranges.
    pub fn read_range(&self, file: FileId, position: u64, len: usize) -> Option<Bytes> {
        let f = self.inodes.get(self.handles.get(&file)?)?;
        let start = usize::try_from(position).ok()?;
        f.current.get(start..start + len).map(Bytes::copy_from_slice)
    }

    /// Appends raw bytes to a file as if a write reached the disk and was synced (for tests
    /// that plant corruption).
    pub fn append_durable(&mut self, path: &str, bytes: &[u8]) {
        let ino = match self.files.get(path) {
            Some(ino) => *ino,
            None => {
                self.next_ino += 1;
                self.files.insert(path.to_string(), self.next_ino);
                self.next_ino
            }
        };
        let f = self.inodes.entry(ino).or_default();
        f.durable.extend_from_slice(bytes);
        f.current = f.durable.clone();
        f.pending.clear();
    }

    /// The process exits (a controlled stop): its handles are gone, and files whose names were
    /// gone with them; what it wrote stays in the page cache, neither lost nor made durable.
    pub fn process_exit(&mut self) {
        let open: Vec<FileId> = self.handles.keys().copied().collect();
        for file in open {
            if let Some(ino) = self.handles.remove(&file) {
                self.release(ino);
            }
        }
    }

    /// Power loss: handles are gone; each file keeps its durable bytes plus a random prefix of
    /// its pending operations, the last of them possibly torn at a sector boundary.
    pub fn crash(&mut self, rng: &mut impl Rng) -> CrashReport {
        self.handles.clear();
        let named: BTreeSet<u64> = self.files.values().copied().collect();
        self.inodes.retain(|ino, _| named.contains(ino));
        for f in self.inodes.values_mut() {
            f.open = 0;
        }
        let mut report = CrashReport::default();
        // In path order, as the random draws below have always been made.
        for ino in self.files.values() {
            let Some(f) = self.inodes.get_mut(ino) else { continue };
            if f.pending.is_empty() {
                continue;
            }
            let keep = rng.gen_range(0..=f.pending.len());
            if keep < f.pending.len() {
                report.files_with_lost_writes += 1;
            }
            let mut disk = std::mem::take(&mut f.durable);
            for p in &f.pending[..keep] {
                apply(&mut disk, p);
            }
            if let Some(Pending::Write { position, data }) = f.pending.get(keep) {
                if rng.gen_bool(0.5) && data.len() > SECTOR_BYTES {
                    let sectors = data.len() / SECTOR_BYTES;
                    let cut = rng.gen_range(1..=sectors) * SECTOR_BYTES;
                    apply(&mut disk, &Pending::Write { position: *position, data: data[..cut].to_vec() });
                    report.torn_writes += 1;
                }
            }
            f.durable = disk.clone();
            f.current = disk;
            f.pending.clear();
        }
        report
    }
}
