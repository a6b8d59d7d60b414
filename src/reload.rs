//! Watching files for edits: one reload per save, whatever way the editor saves.
//!
//! Editors save by writing in place, by writing a temporary file and renaming it over the
//! original, or by deleting and recreating it, often with several events per save. Watching
//! the file's folder (not the file itself) survives all of these; events for a file are
//! collected until it has been quiet for a short while, and a reload is reported only when the
//! file exists and its content differs from the last one reported.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};

/// How long a file must be quiet before it counts as saved.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// A file that changed and settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    /// The watched path, as given.
    pub path: PathBuf,
}

/// Watches a set of files and sends one [`Changed`] per completed save.
pub struct FileWatcher {
    _watcher: notify::RecommendedWatcher,
    /// Settled changes.
    pub rx: Receiver<Changed>,
}

/// A cheap content fingerprint (FNV-1a), to drop events that did not change the content.
fn fingerprint(path: &Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    let mut h = 0xcbf2_9ce4_8422_2325_u64;
    for b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    Some(h)
}

fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    }
}

impl FileWatcher {
    /// Watches `files` (which need not exist yet, but their folders must).
    pub fn new(files: &[PathBuf]) -> notify::Result<Self> {
        let (raw_tx, raw_rx) = mpsc::channel::<notify::Result<notify::Event>>();
        let mut watcher = notify::recommended_watcher(move |e| {
            let _ = raw_tx.send(e);
        })?;
        let mut targets: HashMap<PathBuf, PathBuf> = HashMap::new();
        let mut dirs: Vec<PathBuf> = Vec::new();
        for f in files {
            let abs = absolute(f);
            let dir = abs
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("/"));
            if !dirs.contains(&dir) {
                watcher.watch(&dir, RecursiveMode::NonRecursive)?;
                dirs.push(dir);
            }
            targets.insert(abs, f.clone());
        }
        // Fingerprints are taken now, not on the thread, so a save made right after this call
        // returns is never mistaken for the starting content.
        let last_seen = targets
            .keys()
            .map(|p| (p.clone(), fingerprint(p)))
            .collect();
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("file-watch".into())
            .spawn(move || debounce(raw_rx, targets, last_seen, tx))
            .map_err(|e| notify::Error::generic(&e.to_string()))?;
        Ok(Self {
            _watcher: watcher,
            rx,
        })
    }

    /// Watches every file directly inside `dir` (a themes folder, say).
    pub fn folder(dir: &Path, extension: &str) -> notify::Result<Self> {
        let files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| notify::Error::io(e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == extension))
            .collect();
        let mut all = files;
        // Keep the folder itself watched even when it holds no matching file yet.
        all.push(dir.join(format!(".facestudio-watch.{extension}")));
        Self::new(&all)
    }
}

fn debounce(
    raw: Receiver<notify::Result<notify::Event>>,
    targets: HashMap<PathBuf, PathBuf>,
    mut last_seen: HashMap<PathBuf, Option<u64>>,
    tx: Sender<Changed>,
) {
    let mut pending: HashMap<PathBuf, Instant> = HashMap::new();
    loop {
        let timeout = pending
            .values()
            .map(|t| (*t + DEBOUNCE).saturating_duration_since(Instant::now()))
            .min();
        let event = match timeout {
            Some(t) => raw.recv_timeout(t),
            None => raw.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match event {
            Ok(Ok(e)) => {
                for p in e.paths {
                    if targets.contains_key(&p) {
                        pending.insert(p, Instant::now());
                    }
                }
            }
            Ok(Err(_)) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        let settled: Vec<PathBuf> = pending
            .iter()
            .filter(|(_, t)| now >= **t + DEBOUNCE)
            .map(|(p, _)| p.clone())
            .collect();
        for p in settled {
            pending.remove(&p);
            let fp = fingerprint(&p);
            // A deleted file is part of a save in progress (delete and recreate): wait for it.
            if fp.is_none() || last_seen.get(&p) == Some(&fp) {
                continue;
            }
            last_seen.insert(p.clone(), fp);
            if tx
                .send(Changed {
                    path: targets[&p].clone(),
                })
                .is_err()
            {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Long enough that a late second reload is caught even on a loaded machine.
    const QUIET: Duration = Duration::from_secs(2);

    fn expect_one(w: &FileWatcher) {
        let first = w.rx.recv_timeout(Duration::from_secs(5));
        assert!(first.is_ok(), "no reload");
        let second = w.rx.recv_timeout(QUIET);
        assert!(second.is_err(), "more than one reload: {second:?}");
    }

    #[test]
    fn each_save_style_gives_exactly_one_reload() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("facestudio.toml");
        std::fs::write(&file, "a = 1\n").unwrap();
        let w = FileWatcher::new(&[file.clone()]).unwrap();

        // In place.
        std::fs::write(&file, "a = 2\n").unwrap();
        expect_one(&w);

        // Temporary file renamed over the original.
        let tmp = dir.path().join(".facestudio.toml.swp");
        std::fs::write(&tmp, "a = 3\n").unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        expect_one(&w);

        // Deleted and recreated.
        std::fs::remove_file(&file).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&file, "a = 4\n").unwrap();
        expect_one(&w);

        // A burst of partial writes.
        for i in 0..10 {
            std::fs::write(&file, format!("a = 5{i}\n")).unwrap();
            std::thread::sleep(Duration::from_millis(10));
        }
        expect_one(&w);

        // Touching without a change is not a reload.
        std::fs::write(&file, "a = 59\n").unwrap();
        assert!(w.rx.recv_timeout(QUIET).is_err());
    }

    #[test]
    fn other_files_in_the_folder_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "x").unwrap();
        let w = FileWatcher::new(&[file]).unwrap();
        std::fs::write(dir.path().join("other.toml"), "y").unwrap();
        assert!(w.rx.recv_timeout(DEBOUNCE * 4).is_err());
    }
}
