//! Executes core's disk operations on real files under the data directory. Everything but
//! `Sync` runs inline on the core thread, in order (page-cache writes are cheap); syncs run on
//! a dedicated thread and complete as inputs, so the core keeps accepting writes while the
//! disk flushes (group commit).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use sluice_core::{DirEntry, DiskError, DiskOp, DiskReply, FileId, OpId};

pub struct Disk {
    root: PathBuf,
    files: HashMap<FileId, Arc<File>>,
    sync_tx: std::sync::mpsc::Sender<(OpId, Arc<File>)>,
}

/// What happened to an operation: done now, or handed to the sync thread.
pub enum Outcome {
    Done(Result<DiskReply, DiskError>),
    Pending,
}

fn map_err(e: io::Error) -> DiskError {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => DiskError::NoSpace,
        _ if e.kind() == io::ErrorKind::NotFound => DiskError::NotFound,
        _ => DiskError::Io(e.to_string()),
    }
}

/// Writes `chunks` back to back at `position` with as few `pwritev(2)` calls as the kernel
/// allows: one call where a loop of `pwrite`s would make one per chunk (a leader's batch is
/// two chunks, its patched prefix and the producer's bytes), and no partial page that the
/// next call fills again.
fn write_all_vectored_at(file: &File, chunks: &[Bytes], mut position: u64) -> io::Result<()> {
    const MAX_SLICES: usize = 1024; // IOV_MAX on Linux
    let (mut first, mut skip) = (0, 0); // the first chunk not fully written, and its bytes written
    loop {
        while first < chunks.len() && chunks[first].len() == skip {
            (first, skip) = (first + 1, 0); // written, or empty
        }
        if first == chunks.len() {
            return Ok(());
        }
        let end = chunks.len().min(first + MAX_SLICES);
        let slices: Vec<io::IoSlice<'_>> = std::iter::once(&chunks[first][skip..])
            .chain(chunks[first + 1..end].iter().map(|c| &c[..]))
            .map(io::IoSlice::new)
            .collect();
        let mut n = match rustix::io::pwritev(file, &slices, position) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "pwritev wrote nothing")),
            Ok(n) => n,
            Err(e) if e == rustix::io::Errno::INTR => continue,
            Err(e) => return Err(e.into()),
        };
        position += n as u64;
        while n > 0 {
            let take = n.min(chunks[first].len() - skip);
            (skip, n) = (skip + take, n - take);
            if skip == chunks[first].len() {
                (first, skip) = (first + 1, 0);
            }
        }
    }
}

/// fsync a directory so a created, renamed or removed entry in it is durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Disk {
    /// `on_synced` is called on the sync thread after each sync, with its result.
    pub fn new(
        root: PathBuf,
        on_synced: impl Fn(OpId, Result<DiskReply, DiskError>) + Send + 'static,
    ) -> io::Result<Disk> {
        fs::create_dir_all(&root)?;
        let (sync_tx, sync_rx) = std::sync::mpsc::channel::<(OpId, Arc<File>)>();
        std::thread::Builder::new().name("sluice-sync".into()).spawn(move || {
            while let Ok((op, file)) = sync_rx.recv() {
                let r = file.sync_data().map(|_| DiskReply::Done).map_err(map_err);
                on_synced(op, r);
            }
        })?;
        Ok(Disk { root, files: HashMap::new(), sync_tx })
    }

    /// The open handle of a file, for sendfile.
    pub fn file(&self, id: FileId) -> Option<Arc<File>> {
        self.files.get(&id).cloned()
    }

    fn path(&self, rel: &str) -> Result<PathBuf, DiskError> {
        // Core builds these paths itself, but a path must never leave the data directory.
        if rel.split('/').any(|c| c == "..") || rel.starts_with('/') {
            return Err(DiskError::Io(format!("path {rel:?} escapes the data directory")));
        }
        Ok(if rel.is_empty() { self.root.clone() } else { self.root.join(rel) })
    }

    fn handle(&self, id: FileId) -> Result<&Arc<File>, DiskError> {
        self.files.get(&id).ok_or_else(|| DiskError::Io(format!("file {id:?} is not open")))
    }

    pub fn execute(&mut self, op: OpId, action: DiskOp) -> Outcome {
        let r = match action {
            DiskOp::Sync { file } => match self.handle(file) {
                Ok(f) => {
                    let f = f.clone();
                    if self.sync_tx.send((op, f)).is_ok() {
                        return Outcome::Pending;
                    }
                    Err(DiskError::Io("sync thread is gone".into()))
                }
                Err(e) => Err(e),
            },
            other => self.execute_inline(other),
        };
        Outcome::Done(r)
    }

    fn execute_inline(&mut self, action: DiskOp) -> Result<DiskReply, DiskError> {
        match action {
            DiskOp::CreateDir { path } => {
                let p = self.path(&path)?;
                let existed = p.is_dir();
                fs::create_dir_all(&p).map_err(map_err)?;
                if !existed {
                    sync_dir(p.parent().unwrap_or(&self.root)).map_err(map_err)?;
                }
                Ok(DiskReply::Done)
            }
            DiskOp::ListDir { path } => {
                let p = self.path(&path)?;
                let mut entries = Vec::new();
                for e in fs::read_dir(&p).map_err(map_err)? {
                    let e = e.map_err(map_err)?;
                    let Ok(name) = e.file_name().into_string() else {
                        continue;
                    };
                    let is_dir = e.file_type().map_err(map_err)?.is_dir();
                    entries.push(DirEntry { name, is_dir });
                }
                entries.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(DiskReply::Listing(entries))
            }
            DiskOp::Open { file, path, create } => {
                let p = self.path(&path)?;
                let existed = p.exists();
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(create)
                    .truncate(false)
                    .open(&p)
                    .map_err(map_err)?;
                if create && !existed {
                    sync_dir(p.parent().unwrap_or(&self.root)).map_err(map_err)?;
                }
                let len = f.metadata().map_err(map_err)?.len();
                self.files.insert(file, Arc::new(f));
                Ok(DiskReply::Opened { len })
            }
            DiskOp::Write { file, position, data } => {
                write_all_vectored_at(self.handle(file)?, &data, position).map_err(map_err)?;
                Ok(DiskReply::Done)
            }
            DiskOp::Sync { file } => {
                self.handle(file)?.sync_data().map_err(map_err)?;
                Ok(DiskReply::Done)
            }
            DiskOp::Truncate { file, len } => {
                self.handle(file)?.set_len(len).map_err(map_err)?;
                Ok(DiskReply::Done)
            }
            DiskOp::Read { file, position, len } => {
                let f = self.handle(file)?;
                let mut buf = BytesMut::zeroed(len);
                let mut got = 0;
                while got < len {
                    match f.read_at(&mut buf[got..], position + got as u64) {
                        Ok(0) => break,
                        Ok(n) => got += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(map_err(e)),
                    }
                }
                buf.truncate(got);
                Ok(DiskReply::Data(Bytes::from(buf)))
            }
            DiskOp::Close { file } => {
                self.files.remove(&file);
                Ok(DiskReply::Done)
            }
            DiskOp::RemoveDirAll { path } => {
                let p = self.path(&path)?;
                match fs::remove_dir_all(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(map_err(e)),
                }
                sync_dir(p.parent().unwrap_or(&self.root)).map_err(map_err)?;
                Ok(DiskReply::Done)
            }
            DiskOp::DeleteFile { path } => {
                let p = self.path(&path)?;
                match fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(DiskReply::Done),
                    Err(e) => return Err(map_err(e)),
                }
                sync_dir(p.parent().unwrap_or(&self.root)).map_err(map_err)?;
                Ok(DiskReply::Done)
            }
            DiskOp::Rename { from, to } => {
                let (from, to) = (self.path(&from)?, self.path(&to)?);
                fs::rename(&from, &to).map_err(map_err)?;
                sync_dir(to.parent().unwrap_or(&self.root)).map_err(map_err)?;
                Ok(DiskReply::Done)
            }
            DiskOp::Space => {
                let st = rustix::fs::statvfs(&self.root).map_err(|e| DiskError::Io(e.to_string()))?;
                // Blocks free to an unprivileged process (f_bavail), as `df` shows them.
                let total = st.f_blocks.saturating_mul(st.f_frsize);
                let usable = st.f_bavail.saturating_mul(st.f_frsize);
                Ok(DiskReply::Space { total, usable })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectored_writes_put_every_chunk_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let file =
            OpenOptions::new().read(true).write(true).create(true).truncate(true).open(dir.path().join("f")).unwrap();
        // Empty chunks among full ones, and more chunks than one pwritev takes.
        let mut chunks = vec![Bytes::new(), Bytes::from_static(b"ab"), Bytes::new()];
        chunks.extend((0..3000u32).map(|i| Bytes::from(i.to_be_bytes().to_vec())));
        chunks.push(Bytes::new());
        write_all_vectored_at(&file, &chunks, 5).unwrap();
        write_all_vectored_at(&file, &[Bytes::new()], 0).unwrap();
        let want: Vec<u8> = chunks.iter().flat_map(|c| c.to_vec()).collect();
        let mut got = vec![0u8; 5 + want.len()];
        file.read_exact_at(&mut got, 0).unwrap();
        assert_eq!(&got[..5], &[0; 5], "nothing written before the position");
        assert_eq!(&got[5..], &want[..]);
        assert_eq!(file.metadata().unwrap().len(), (5 + want.len()) as u64);
    }
}
