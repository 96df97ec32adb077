//! Where Raft snapshots live on disk: `<data-dir>/member/snap/`, one
//! complete file per snapshot named `<term>-<index>.snap` (16 hex digits
//! each, as etcd names its snap files, so names sort in log order), plus
//! `*.snap.tmp` files being written or received. A file is complete only
//! once renamed from its temporary name after an fsync; older complete
//! files are removed after that, and temporary leftovers of a crash at
//! start-up.
//!
//! [`RaftSnapshotFile`] is openraft's `SnapshotData`: an open file that the
//! leader reads in chunks and a follower writes chunks into.

use std::fs::{self, File};
use std::io::{self, SeekFrom};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

use crate::raft::types::LogId;

const SUFFIX: &str = ".snap";
const TEMP_SUFFIX: &str = ".snap.tmp";

/// The member's snapshot directory.
#[derive(Debug, Clone)]
pub struct SnapDir {
    dir: PathBuf,
}

fn io_context(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

impl SnapDir {
    /// Creates `dir` if needed and removes temporary files a crash left.
    /// Call once at start-up, before anything writes snapshots.
    pub fn open(dir: PathBuf) -> io::Result<Self> {
        fs::create_dir_all(&dir).map_err(|e| io_context(&dir, e))?;
        let snap = SnapDir { dir };
        for entry in fs::read_dir(&snap.dir).map_err(|e| io_context(&snap.dir, e))? {
            let path = entry?.path();
            if is_named(&path, TEMP_SUFFIX) {
                fs::remove_file(&path).map_err(|e| io_context(&path, e))?;
            }
        }
        Ok(snap)
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// A fresh temporary file (read and write), removed when the returned
    /// guard is dropped unless it was published.
    pub fn create_temp(&self) -> io::Result<(File, TempPath)> {
        let path = self
            .dir
            .join(format!("{:016x}{TEMP_SUFFIX}", rand::random::<u64>()));
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io_context(&path, e))?;
        Ok((file, TempPath(Some(path))))
    }

    /// Makes a fully written and fsynced temporary file the snapshot at
    /// `last_log_id`, then removes every older complete snapshot. Files
    /// already open (a leader sending an older one) stay readable.
    pub fn publish(&self, mut temp: TempPath, last_log_id: Option<LogId>) -> io::Result<PathBuf> {
        let Some(from) = temp.0.take() else {
            return Err(io::Error::other("snapshot temp file already published"));
        };
        let name = file_name(last_log_id);
        let to = self.dir.join(&name);
        fs::rename(&from, &to).map_err(|e| io_context(&to, e))?;
        // The rename is durable only once the directory is.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_context(&self.dir, e))?;
        for old in self.complete()? {
            if old
                .file_name()
                .is_some_and(|n| *n.to_string_lossy() < *name)
            {
                // Best effort: a file left here is removed by the next publish.
                if let Err(e) = fs::remove_file(&old) {
                    tracing::warn!(path = %old.display(), error = %e, "removing an old snapshot");
                }
            }
        }
        Ok(to)
    }

    /// Complete snapshot files, oldest first.
    fn complete(&self) -> io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(|e| io_context(&self.dir, e))? {
            let path = entry?.path();
            if is_named(&path, SUFFIX) {
                out.push(path);
            }
        }
        out.sort();
        Ok(out)
    }

    /// The newest complete snapshot, opened (a file opened here stays
    /// readable even if a newer publish removes its name).
    pub fn open_newest(&self) -> io::Result<Option<(File, PathBuf)>> {
        // A publish may remove the newest name between listing and
        // opening; the list after it has a newer one.
        for _ in 0..3 {
            let Some(path) = self.complete()?.pop() else {
                return Ok(None);
            };
            match File::open(&path) {
                Ok(file) => return Ok(Some((file, path))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_context(&path, e)),
            }
        }
        Err(io::Error::other(format!(
            "{}: snapshots keep disappearing",
            self.dir.display()
        )))
    }
}

fn is_named(path: &Path, suffix: &str) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().ends_with(suffix))
}

/// `<term>-<index>.snap` with 16 hex digits each (`0…0-0…0` when nothing
/// was applied).
pub fn file_name(last_log_id: Option<LogId>) -> String {
    let (term, index) = last_log_id.map_or((0, 0), |id| (id.leader_id.term, id.index));
    format!("{term:016x}-{index:016x}{SUFFIX}")
}

/// A temporary snapshot file's path, removed on drop unless published.
#[derive(Debug)]
pub struct TempPath(Option<PathBuf>);

impl TempPath {
    pub fn path(&self) -> Option<&Path> {
        self.0.as_deref()
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if let Some(path) = self.0.take()
            && let Err(e) = fs::remove_file(&path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "removing a snapshot temp file");
        }
    }
}

/// openraft's `SnapshotData`: a snapshot file, complete (to read and send)
/// or temporary (being received; removed if dropped before installing).
pub struct RaftSnapshotFile {
    file: tokio::fs::File,
    temp: Option<TempPath>,
}

impl RaftSnapshotFile {
    /// A complete snapshot file, positioned at its start.
    pub fn complete(file: File) -> Self {
        RaftSnapshotFile {
            file: tokio::fs::File::from_std(file),
            temp: None,
        }
    }

    /// A temporary file being received.
    pub fn temp(file: File, temp: TempPath) -> Self {
        RaftSnapshotFile {
            file: tokio::fs::File::from_std(file),
            temp: Some(temp),
        }
    }

    /// The file, after every write in flight finished, rewound to its
    /// start, and its temporary path if it has one.
    pub async fn into_std(self) -> io::Result<(File, Option<TempPath>)> {
        let RaftSnapshotFile { mut file, temp } = self;
        tokio::io::AsyncWriteExt::flush(&mut file).await?;
        let mut file = file.into_std().await;
        io::Seek::seek(&mut file, SeekFrom::Start(0))?;
        Ok((file, temp))
    }
}

impl AsyncRead for RaftSnapshotFile {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().file).poll_read(cx, buf)
    }
}

impl AsyncWrite for RaftSnapshotFile {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().file).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().file).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().file).poll_shutdown(cx)
    }
}

impl AsyncSeek for RaftSnapshotFile {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        Pin::new(&mut self.get_mut().file).start_seek(position)
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Pin::new(&mut self.get_mut().file).poll_complete(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_id(term: u64, index: u64) -> Option<LogId> {
        Some(openraft::LogId::new(
            openraft::CommittedLeaderId::new(term, 1),
            index,
        ))
    }

    #[test]
    fn names_sort_in_log_order() {
        let mut names = vec![
            file_name(log_id(2, 0x10)),
            file_name(log_id(1, 0x200)),
            file_name(None),
            file_name(log_id(2, 0x9)),
        ];
        names.sort();
        assert_eq!(
            names,
            vec![
                file_name(None),
                file_name(log_id(1, 0x200)),
                file_name(log_id(2, 0x9)),
                file_name(log_id(2, 0x10)),
            ]
        );
        assert_eq!(
            file_name(log_id(1, 255)),
            "0000000000000001-00000000000000ff.snap"
        );
    }

    #[test]
    fn publish_keeps_only_the_newest_and_drop_removes_temps() {
        let dir = tempfile::tempdir().unwrap();
        let snap = SnapDir::open(dir.path().join("snap")).unwrap();
        assert!(snap.open_newest().unwrap().is_none());
        let (_, a) = snap.create_temp().unwrap();
        let (_, b) = snap.create_temp().unwrap();
        let (_, abandoned) = snap.create_temp().unwrap();
        let abandoned_path = abandoned.path().unwrap().to_path_buf();
        drop(abandoned);
        assert!(!abandoned_path.exists());
        snap.publish(a, log_id(1, 5)).unwrap();
        let newest = snap.publish(b, log_id(1, 9)).unwrap();
        assert_eq!(snap.complete().unwrap(), vec![newest.clone()]);
        assert_eq!(snap.open_newest().unwrap().unwrap().1, newest);
        // A leftover temp file from a crash goes at the next start-up.
        let (_, leftover) = snap.create_temp().unwrap();
        let leftover_path = leftover.path().unwrap().to_path_buf();
        std::mem::forget(leftover);
        SnapDir::open(dir.path().join("snap")).unwrap();
        assert!(!leftover_path.exists());
        assert!(newest.exists());
    }
}
