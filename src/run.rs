//! The run directory: `config.toml`, `metrics.jsonl`, `samples/`, `checkpoints/`, `train.log`
//! and the lock that keeps two trainers out of one run.
//!
//! Files that matter are written atomically (a temporary file, fsync, rename), so a crash at
//! any moment leaves either the old file or the new one, never a torn one. Metric lines are
//! appended whole; a torn last line left by a crash is ignored on read and cut on resume.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Writes `bytes` to `path` atomically: a sibling temporary file, fsync, then rename.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temp_sibling(path);
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Make the rename itself durable; failure here only weakens durability.
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A temporary path beside `path`, unique to this process and call.
pub fn temp_sibling(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

/// The files of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    /// The run's folder, `runs/<name>`.
    pub root: PathBuf,
}

impl RunDir {
    /// A run directory at `root` (not created yet).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Creates the folders of the run.
    pub fn create(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(self.samples())?;
        std::fs::create_dir_all(self.checkpoints())
    }

    /// The run's name (its folder name).
    pub fn name(&self) -> String {
        self.root
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// `config.toml`: the effective configuration.
    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }

    /// `metrics.jsonl`.
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }

    /// `samples/`.
    pub fn samples(&self) -> PathBuf {
        self.root.join("samples")
    }

    /// `checkpoints/`.
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    /// `train.log`.
    pub fn log(&self) -> PathBuf {
        self.root.join("train.log")
    }

    /// `lock`.
    pub fn lock_path(&self) -> PathBuf {
        self.root.join("lock")
    }

    /// The sample grid of `step`.
    pub fn sample_path(&self, step: u64) -> PathBuf {
        self.samples().join(format!("step-{step:08}.png"))
    }

    /// Sample grids on disk, `(step, path)` in step order.
    pub fn sample_files(&self) -> Vec<(u64, PathBuf)> {
        let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(self.samples())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let step = name
                    .strip_prefix("step-")?
                    .strip_suffix(".png")?
                    .parse()
                    .ok()?;
                Some((step, e.path()))
            })
            .collect();
        out.sort();
        out
    }
}

/// An error from the run directory, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Another live process holds the lock.
    #[error(
        "{path}: run is in use by process {pid} on {host}; stop it first or pick another --run"
    )]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// The holder's process id.
        pid: u32,
        /// The holder's host name.
        host: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// The lock of a run directory, released when dropped.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

fn process_alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks whether the process exists; it sends nothing.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

impl RunLock {
    /// Takes the lock of `run`, taking over a stale one left by a dead process on this host.
    pub fn acquire(run: &RunDir) -> Result<Self, RunError> {
        let path = run.lock_path();
        let me = format!("{} {}\n", std::process::id(), host_name());
        for _ in 0..3 {
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    f.write_all(me.as_bytes()).map_err(|e| RunError::Io {
                        path: path.clone(),
                        source: e,
                    })?;
                    return Ok(Self { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    let mut parts = text.split_whitespace();
                    let pid: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
                    let host = parts.next().unwrap_or("").to_string();
                    let stale = pid == 0 || (host == host_name() && !process_alive(pid));
                    if !stale {
                        return Err(RunError::Locked { path, pid, host });
                    }
                    tracing::warn!(path = %path.display(), pid, "taking over a stale lock");
                    // Rename first so that two processes taking over at once cannot both win.
                    let grave = temp_sibling(&path);
                    if std::fs::rename(&path, &grave).is_ok() {
                        let _ = std::fs::remove_file(grave);
                    }
                }
                Err(e) => return Err(RunError::Io { path, source: e }),
            }
        }
        Err(RunError::Io {
            path,
            source: std::io::Error::other("lock keeps changing hands"),
        })
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One training step's figures, as logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Steps done, from 1.
    pub step: u64,
    /// Epochs done, fractional.
    pub epoch: f64,
    /// Seconds of training in the run, over all resumes.
    pub time: f64,
    /// Total loss per image.
    pub total: f64,
    /// Reconstruction loss per image.
    pub recon: f64,
    /// KL per image.
    pub kl: f64,
    /// KL weight in force.
    pub beta: f64,
    /// Learning rate in force.
    pub lr: f64,
    /// Training images per second.
    pub ips: f64,
}

/// A validation pass's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValRecord {
    /// The step it ran after.
    pub step: u64,
    /// Epochs done, fractional.
    pub epoch: f64,
    /// Seconds of training in the run.
    pub time: f64,
    /// Negative ELBO per image (recon + KL, beta 1).
    pub total: f64,
    /// Reconstruction loss per image.
    pub recon: f64,
    /// KL per image.
    pub kl: f64,
}

/// A setting changed while the run trained, effective from `step`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettingRecord {
    /// The first step trained with the new value.
    pub step: u64,
    /// The dotted key.
    pub key: String,
    /// The new value, as TOML text.
    pub value: String,
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Record {
    /// A training step.
    Train(StepRecord),
    /// A validation pass.
    Val(ValRecord),
    /// A live setting change.
    Setting(SettingRecord),
}

impl Record {
    /// The step of the record.
    pub fn step(&self) -> u64 {
        match self {
            Self::Train(r) => r.step,
            Self::Val(r) => r.step,
            Self::Setting(r) => r.step,
        }
    }
}

/// Appends whole lines to `metrics.jsonl`.
#[derive(Debug)]
pub struct MetricsWriter {
    file: File,
    path: PathBuf,
}

impl MetricsWriter {
    /// Opens the file for appending, creating it.
    pub fn open(path: &Path) -> Result<Self, RunError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| RunError::Io {
                path: path.to_path_buf(),
                source: e,
            })?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Appends one record as a single write, so a crash cannot interleave two lines.
    pub fn append(&mut self, record: &Record) -> Result<(), RunError> {
        let mut line = serde_json::to_string(record).expect("records serialise");
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(|e| RunError::Io {
                path: self.path.clone(),
                source: e,
            })
    }
}

/// Parses metric lines; torn or foreign lines are skipped and counted.
pub fn parse_metrics(text: &str) -> (Vec<Record>, usize) {
    let mut records = Vec::new();
    let mut skipped = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<Record>(line) {
            Ok(r) => records.push(r),
            Err(_) => skipped += 1,
        }
    }
    (records, skipped)
}

/// Reads `metrics.jsonl`; a missing file is empty.
pub fn read_metrics(path: &Path) -> Result<(Vec<Record>, usize), RunError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(parse_metrics(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((vec![], 0)),
        Err(e) => Err(RunError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

/// Keeps only the records up to `step` (and drops torn lines), rewriting the file atomically.
/// Used on resume, so that steps trained after the checkpoint are not counted twice.
pub fn truncate_metrics(path: &Path, step: u64) -> Result<usize, RunError> {
    let (records, _) = read_metrics(path)?;
    let kept: Vec<&Record> = records.iter().filter(|r| r.step() <= step).collect();
    let mut text = String::new();
    for r in &kept {
        text.push_str(&serde_json::to_string(r).expect("records serialise"));
        text.push('\n');
    }
    atomic_write(path, text.as_bytes()).map_err(|e| RunError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    Ok(kept.len())
}

/// Reads lines appended to a file since `offset`, for followers; returns complete lines only
/// and the offset after the last one.
pub fn read_new_lines(path: &Path, offset: u64) -> std::io::Result<(Vec<String>, u64)> {
    use std::io::{Seek, SeekFrom};
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    // A shorter file means it was rewritten (a resume truncates it): start again.
    let start = if len < offset { 0 } else { offset };
    f.seek(SeekFrom::Start(start))?;
    let mut reader = BufReader::new(f);
    let mut lines = Vec::new();
    let mut pos = start;
    let mut buf = String::new();
    loop {
        buf.clear();
        let n = reader.read_line(&mut buf)?;
        if n == 0 || !buf.ends_with('\n') {
            break;
        }
        pos += n as u64;
        lines.push(buf.trim_end().to_string());
    }
    Ok((lines, pos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("fs-run-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn lock_refuses_a_second_holder_and_takes_over_stale_ones() {
        let run = RunDir::new(tmpdir("lock"));
        let lock = RunLock::acquire(&run).unwrap();
        let e = RunLock::acquire(&run).unwrap_err().to_string();
        assert!(e.contains("in use by process"), "{e}");
        drop(lock);
        // A lock left by a process that no longer exists.
        std::fs::write(
            run.lock_path(),
            format!("{} {}\n", u32::MAX / 2, host_name()),
        )
        .unwrap();
        assert!(RunLock::acquire(&run).is_ok());
    }

    #[test]
    fn torn_last_line_is_skipped_and_truncation_cuts_later_steps() {
        let d = tmpdir("metrics");
        let p = d.join("metrics.jsonl");
        let mut w = MetricsWriter::open(&p).unwrap();
        for step in 1..=5 {
            let r = StepRecord {
                step,
                epoch: 0.0,
                time: 0.0,
                total: 1.0,
                recon: 1.0,
                kl: 0.0,
                beta: 1.0,
                lr: 0.1,
                ips: 1.0,
            };
            w.append(&Record::Train(r)).unwrap();
        }
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"{\"kind\":\"tra")
            .unwrap();
        let (recs, skipped) = read_metrics(&p).unwrap();
        assert_eq!((recs.len(), skipped), (5, 1));
        assert_eq!(truncate_metrics(&p, 3).unwrap(), 3);
        let (recs, skipped) = read_metrics(&p).unwrap();
        assert_eq!((recs.last().unwrap().step(), skipped), (3, 0));
    }

    #[test]
    fn follower_reads_only_complete_lines() {
        let d = tmpdir("follow");
        let p = d.join("m");
        std::fs::write(&p, "a\nb\nc").unwrap();
        let (lines, off) = read_new_lines(&p, 0).unwrap();
        assert_eq!((lines, off), (vec!["a".to_string(), "b".to_string()], 4));
        std::fs::write(&p, "a\nb\nc\n").unwrap();
        assert_eq!(read_new_lines(&p, off).unwrap().0, vec!["c".to_string()]);
    }
}
