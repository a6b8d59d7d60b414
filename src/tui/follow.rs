//! Following a run directory that another process writes: the studio's only source of truth.
//!
//! A [`RunFollower`] reads what changed since its last look (new lines of `metrics.jsonl` and
//! `train.log`, a rewritten `status.json`, a new sample grid, the run's `config.toml`) into a
//! [`RunData`]. notify wakes it when files change; a slow fallback look every two seconds picks
//! up a run directory that appears later or a watcher that was lost, without busy polling.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};

use crate::config::Config;
use crate::control::{self, Status};
use crate::run::{self, Record, RunDir, SettingRecord, StepRecord, ValRecord};

/// Log lines kept for the log panel.
pub const LOG_CAPACITY: usize = 1000;
/// How often files are looked at when notify has said nothing.
const FALLBACK: Duration = Duration::from_secs(2);

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Routine.
    Info,
    /// Worth a look.
    Warn,
    /// Something failed.
    Error,
}

/// One line of the run's log, as shown in the log panel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// `HH:MM:SS`, or empty when unknown.
    pub time: String,
    /// Its severity.
    pub level: LogLevel,
    /// The message.
    pub text: String,
}

/// Everything the studio knows about a run.
#[derive(Debug, Clone, Default)]
pub struct RunData {
    /// The run's name.
    pub name: String,
    /// The run directory.
    pub root: PathBuf,
    /// Logged training steps, in step order.
    pub steps: Vec<StepRecord>,
    /// Validation passes, in step order.
    pub vals: Vec<ValRecord>,
    /// Live setting changes, in step order.
    pub settings: Vec<SettingRecord>,
    /// The trainer's last status, when there is one.
    pub status: Option<Status>,
    /// Recent log lines, oldest first.
    pub log: VecDeque<LogLine>,
    /// The newest sample grid: its step and file.
    pub sample: Option<(u64, PathBuf)>,
    /// The run's configuration, when it could be read.
    pub config: Option<Config>,
    /// Unreadable data files the trainer skipped, counted from the log.
    pub bad_files: usize,
    /// Whether the trainer process is alive (same host).
    pub alive: bool,
    /// The last validation step announced in the log, so a re-read does not repeat it.
    pub val_logged: u64,
    /// Why the run's config file could not be read at its last change, until it reads again.
    pub config_error: Option<String>,
}

impl RunData {
    /// An empty run named after its directory.
    pub fn new(root: &Path) -> Self {
        let run = RunDir::new(root);
        Self {
            name: run.name(),
            root: root.to_path_buf(),
            ..Default::default()
        }
    }

    /// The last logged step record.
    pub fn last_step(&self) -> Option<&StepRecord> {
        self.steps.last()
    }

    /// The current step: the status's when newer than the metrics.
    pub fn step(&self) -> u64 {
        let logged = self.last_step().map_or(0, |r| r.step);
        self.status.as_ref().map_or(logged, |s| s.step.max(logged))
    }

    /// The run's total steps, from the status or the configuration.
    pub fn total_steps(&self) -> u64 {
        match &self.status {
            Some(s) if s.total_steps > 0 => s.total_steps,
            _ => self.config.as_ref().map_or(0, |c| c.train.steps),
        }
    }

    /// The trainer's state in words: its status, or `detached`/`no trainer` when it is gone.
    pub fn state(&self) -> String {
        match &self.status {
            None => "waiting".into(),
            Some(s)
                if !self.alive
                    && !matches!(s.state.as_str(), "finished" | "stopped" | "failed") =>
            {
                "no trainer".into()
            }
            Some(s) => s.state.clone(),
        }
    }

    /// Appends one metrics record.
    pub fn push_record(&mut self, record: Record) {
        match record {
            Record::Train(r) => self.steps.push(r),
            Record::Val(r) => {
                if r.step > self.val_logged {
                    self.val_logged = r.step;
                    let text = format!(
                        "validation at step {}: -ELBO {:.2} (recon {:.2}, KL {:.2})",
                        r.step, r.total, r.recon, r.kl
                    );
                    self.push_log(LogLine {
                        time: String::new(),
                        level: LogLevel::Info,
                        text,
                    });
                }
                self.vals.push(r);
            }
            Record::Setting(r) => self.settings.push(r),
        }
    }

    /// Appends a log line, dropping the oldest beyond [`LOG_CAPACITY`].
    pub fn push_log(&mut self, line: LogLine) {
        if line.text.starts_with("skipped ") {
            self.bad_files += 1;
        }
        self.log.push_back(line);
        while self.log.len() > LOG_CAPACITY {
            self.log.pop_front();
        }
    }
}

/// Reads a run directory incrementally as it changes.
pub struct RunFollower {
    run: RunDir,
    metrics_offset: u64,
    metrics_inode: Option<u64>,
    log_offset: u64,
    config_stamp: Option<std::time::SystemTime>,
    watcher: Option<RecommendedWatcher>,
    watching_samples: bool,
    events: Receiver<()>,
    events_tx: mpsc::Sender<()>,
    last_look: Option<Instant>,
}

impl RunFollower {
    /// A follower of `root`; nothing is read until [`RunFollower::poll`].
    pub fn new(root: &Path) -> Self {
        let (events_tx, events) = mpsc::channel();
        Self {
            run: RunDir::new(root),
            metrics_offset: 0,
            metrics_inode: None,
            log_offset: 0,
            config_stamp: None,
            watcher: None,
            watching_samples: false,
            events,
            events_tx,
            last_look: None,
        }
    }

    /// The run directory followed.
    pub fn run(&self) -> &RunDir {
        &self.run
    }

    /// Reads what changed when notify said so or the fallback interval passed; true when
    /// `data` changed.
    pub fn poll(&mut self, data: &mut RunData) -> bool {
        let woken = self.events.try_iter().count() > 0;
        let due = self.last_look.is_none_or(|t| t.elapsed() >= FALLBACK);
        if !woken && !due {
            return false;
        }
        self.last_look = Some(Instant::now());
        self.ensure_watcher();
        self.read_all(data)
    }

    /// Reads everything new now, whatever notify said.
    pub fn read_all(&mut self, data: &mut RunData) -> bool {
        let mut changed = self.read_metrics(data);
        changed |= self.read_status(data);
        changed |= self.read_log(data);
        changed |= self.read_samples(data);
        changed |= self.read_config(data);
        changed
    }

    fn ensure_watcher(&mut self) {
        if self.watcher.is_none() && self.run.root.is_dir() {
            let tx = self.events_tx.clone();
            let handler = move |res: notify::Result<notify::Event>| {
                if res.is_ok() {
                    let _ = tx.send(());
                }
            };
            match notify::recommended_watcher(handler) {
                Ok(mut w) => match w.watch(&self.run.root, RecursiveMode::NonRecursive) {
                    Ok(()) => self.watcher = Some(w),
                    Err(e) => tracing::warn!("cannot watch {}: {e}", self.run.root.display()),
                },
                Err(e) => tracing::warn!("no file watcher: {e}"),
            }
        }
        let samples = self.run.samples();
        if !self.watching_samples && samples.is_dir() {
            if let Some(w) = &mut self.watcher {
                self.watching_samples = w.watch(&samples, RecursiveMode::NonRecursive).is_ok();
            }
        }
    }

    fn read_metrics(&mut self, data: &mut RunData) -> bool {
        use std::os::unix::fs::MetadataExt;

        let path = self.run.metrics();
        let Ok(meta) = std::fs::metadata(&path) else {
            return false;
        };
        // A resume rewrites the file (a new file renamed over the old one, usually shorter):
        // what was read before may be wrong, so start again.
        let rewritten =
            self.metrics_inode.is_some_and(|i| i != meta.ino()) || meta.len() < self.metrics_offset;
        self.metrics_inode = Some(meta.ino());
        if rewritten {
            self.metrics_offset = 0;
            data.steps.clear();
            data.vals.clear();
            data.settings.clear();
        }
        let Ok((lines, offset)) = run::read_new_lines(&path, self.metrics_offset) else {
            return rewritten;
        };
        let changed = !lines.is_empty() || rewritten;
        for line in lines {
            if let Ok(record) = serde_json::from_str::<Record>(&line) {
                data.push_record(record);
            }
        }
        self.metrics_offset = offset;
        changed
    }

    fn read_status(&mut self, data: &mut RunData) -> bool {
        let status = control::read_status(&self.run);
        let alive = status.as_ref().is_some_and(Status::trainer_alive);
        let changed = status != data.status || alive != data.alive;
        if status.is_some() || data.status.is_none() {
            data.status = status;
        }
        data.alive = alive;
        changed
    }

    fn read_log(&mut self, data: &mut RunData) -> bool {
        let Ok((lines, offset)) = run::read_new_lines(&self.run.log(), self.log_offset) else {
            return false;
        };
        self.log_offset = offset;
        let mut changed = false;
        for line in lines {
            // Validation lines come from metrics.jsonl, with more detail; not twice.
            if let Some(parsed) =
                parse_log_line(&line).filter(|l| !l.text.starts_with("validation at step "))
            {
                data.push_log(parsed);
                changed = true;
            }
        }
        changed
    }

    fn read_samples(&mut self, data: &mut RunData) -> bool {
        let newest = self.run.sample_files().pop();
        if newest != data.sample {
            data.sample = newest;
            return true;
        }
        false
    }

    fn read_config(&mut self, data: &mut RunData) -> bool {
        let path = self.run.config();
        let stamp = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        if stamp.is_none() || stamp == self.config_stamp {
            return false;
        }
        self.config_stamp = stamp;
        match Config::load(&path) {
            Ok(config) => {
                data.config = Some(config);
                data.config_error = None;
                true
            }
            Err(e) => {
                tracing::warn!("{e}");
                data.config_error = Some(e.to_string());
                true
            }
        }
    }
}

/// Parses a `tracing` line (`2026-01-02T03:04:05.678Z  INFO target: message`); lines below
/// INFO and continuation lines are skipped.
pub fn parse_log_line(line: &str) -> Option<LogLine> {
    let mut words = line.split_whitespace();
    let stamp = words.next()?;
    let level = match words.next()? {
        "INFO" => LogLevel::Info,
        "WARN" => LogLevel::Warn,
        "ERROR" => LogLevel::Error,
        _ => return None,
    };
    let time = stamp
        .split_once('T')
        .map_or("", |(_, t)| t)
        .get(..8)
        .unwrap_or("")
        .to_string();
    let rest = line.split_once(level_word(level))?.1.trim_start();
    // Drop the `target:` prefix (a module path ending in a colon).
    let text = match rest.split_once(": ") {
        Some((target, msg)) if !target.contains(' ') => msg,
        _ => rest,
    };
    Some(LogLine {
        time,
        level,
        text: sanitize(text),
    })
}

fn level_word(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Info => "INFO",
        LogLevel::Warn => "WARN",
        LogLevel::Error => "ERROR",
    }
}

/// Replaces control characters so that text from files can never drive the terminal.
pub fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_parse() {
        let l = parse_log_line(
            "2026-01-02T03:04:05.678901Z  INFO facestudio::train: checkpoint at step 10: x",
        )
        .unwrap();
        assert_eq!((l.time.as_str(), l.level), ("03:04:05", LogLevel::Info));
        assert_eq!(l.text, "checkpoint at step 10: x");
        let w = parse_log_line("2026-01-02T03:04:05Z  WARN facestudio::run: taking over\x1b[2J")
            .unwrap();
        assert_eq!(w.level, LogLevel::Warn);
        assert!(!w.text.contains('\x1b'));
        assert!(parse_log_line("2026-01-02T03:04:05Z DEBUG x: y").is_none());
        assert!(parse_log_line("").is_none());
    }

    #[test]
    fn follower_reads_appends_and_restarts_after_a_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let rec = |step| {
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
            serde_json::to_string(&Record::Train(r)).unwrap() + "\n"
        };
        std::fs::write(run.metrics(), (1..=5).map(rec).collect::<String>()).unwrap();
        let mut f = RunFollower::new(dir.path());
        let mut data = RunData::new(dir.path());
        assert!(f.read_all(&mut data));
        assert_eq!(data.steps.len(), 5);
        std::fs::write(run.metrics(), (1..=3).map(rec).collect::<String>()).unwrap();
        assert!(f.read_all(&mut data));
        assert_eq!(
            data.steps.iter().map(|r| r.step).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
    }
}
