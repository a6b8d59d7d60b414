//! How a studio talks to a trainer running in another process: `status.json` in the run
//! directory says what the trainer is doing, and a Unix socket `control.sock` takes commands.
//!
//! The protocol is one line each way: a command (`pause`, `resume`, `save`, `stop`,
//! `rollback FACTOR`, `reload`) and a reply starting with `ok` or `error`. A studio attached
//! with `facestudio watch` over SSH controls a headless run exactly as the one that started it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::run::{atomic_write, RunDir};
use crate::train::Command;

/// What a trainer process reports about itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The trainer's process id.
    pub pid: u32,
    /// `loading`, `running`, `paused`, `diverged`, `write-failed`, `finished`, `stopped` or
    /// `failed`.
    pub state: String,
    /// Why it is in that state, when it is not obvious.
    pub detail: String,
    /// The last step trained.
    pub step: u64,
    /// Steps the run trains for.
    pub total_steps: u64,
    /// The device, in words.
    pub device: String,
    /// The data set.
    pub dataset: String,
    /// Training images.
    pub train_images: usize,
    /// Held-out images.
    pub val_images: usize,
    /// Trainable parameters.
    pub parameters: usize,
    /// Seconds since the Unix epoch when this was written.
    pub updated: f64,
}

impl Status {
    /// Whether the writer is still alive (same host only).
    pub fn trainer_alive(&self) -> bool {
        if self.pid == 0 || matches!(self.state.as_str(), "finished" | "stopped" | "failed") {
            return false;
        }
        // SAFETY: signal 0 only checks that the process exists.
        let r = unsafe { libc::kill(self.pid as libc::pid_t, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }
}

/// `status.json` of a run.
pub fn status_path(run: &RunDir) -> PathBuf {
    run.root.join("status.json")
}

/// `control.sock` of a run.
pub fn socket_path(run: &RunDir) -> PathBuf {
    run.root.join("control.sock")
}

/// Seconds since the Unix epoch.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Writes the status atomically; on a full disk, over the old file in place.
///
/// The status is what tells a watcher that the disk is full, so it must get through when a
/// new file cannot be made: the old file's blocks are reused, padded with spaces (which JSON
/// readers skip) so the file never needs to grow or shrink.
pub fn write_status(run: &RunDir, status: &Status) -> std::io::Result<()> {
    let mut s = status.clone();
    s.updated = now();
    let bytes = serde_json::to_vec_pretty(&s).expect("status serialises");
    let path = status_path(run);
    match atomic_write(&path, &bytes) {
        Ok(()) => Ok(()),
        Err(e) => overwrite_in_place(&path, &bytes).map_err(|_| e),
    }
}

fn overwrite_in_place(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    let old_len = f.metadata()?.len() as usize;
    if bytes.len() > old_len.max(4096) {
        return Err(std::io::Error::other(
            "the status does not fit in the old file",
        ));
    }
    let mut padded = bytes.to_vec();
    padded.resize(old_len.max(bytes.len()), b' ');
    f.seek(SeekFrom::Start(0))?;
    f.write_all(&padded)?;
    f.sync_data()
}

/// Reads the status; `None` when there is none or it cannot be parsed.
pub fn read_status(run: &RunDir) -> Option<Status> {
    let bytes = std::fs::read(status_path(run)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Parses one command line.
pub fn parse_command(line: &str) -> Result<Command, String> {
    let mut words = line.split_whitespace();
    let cmd = words.next().unwrap_or("");
    match cmd {
        "pause" => Ok(Command::Pause),
        "resume" => Ok(Command::Resume),
        "save" => Ok(Command::SaveNow),
        "stop" => Ok(Command::Stop),
        "rollback" => {
            let factor = words.next().unwrap_or("0.1");
            match factor.parse::<f64>() {
                Ok(f) if f > 0.0 && f <= 1.0 => Ok(Command::Rollback { lr_factor: f }),
                _ => Err(format!("rollback needs a factor in (0, 1], got `{factor}`")),
            }
        }
        other => Err(format!(
            "unknown command `{other}` (pause, resume, save, stop, rollback F, reload)"
        )),
    }
}

/// Listens on the run's socket and forwards commands to the trainer; `reload` lines go to
/// `reload` instead (the driver re-reads the run's config file).
pub struct Server {
    path: PathBuf,
}

impl Server {
    /// Starts listening; a stale socket file from a dead trainer is replaced.
    pub fn start(
        run: &RunDir,
        commands: Sender<Command>,
        reload: Sender<()>,
    ) -> std::io::Result<Self> {
        let path = socket_path(run);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    let _ = serve(stream, &commands, &reload);
                }
            })?;
        Ok(Self { path })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(
    stream: UnixStream,
    commands: &Sender<Command>,
    reload: &Sender<()>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let reply = if line.trim() == "reload" {
        match reload.send(()) {
            Ok(()) => "ok reload".to_string(),
            Err(_) => "error the trainer has ended".to_string(),
        }
    } else {
        match parse_command(&line) {
            Ok(cmd) => match commands.send(cmd) {
                Ok(()) => format!("ok {}", line.trim()),
                Err(_) => "error the trainer has ended".to_string(),
            },
            Err(e) => format!("error {e}"),
        }
    };
    let mut stream = stream;
    writeln!(stream, "{reply}")
}

/// Sends one command to the trainer of `run` and returns its reply.
pub fn send(run: &RunDir, command: &str) -> Result<String, String> {
    let path = socket_path(run);
    let mut stream = UnixStream::connect(&path)
        .map_err(|e| format!("{}: no trainer is listening ({e})", path.display()))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    writeln!(stream, "{command}").map_err(|e| format!("{}: {e}", path.display()))?;
    let mut reply = String::new();
    BufReader::new(stream)
        .read_line(&mut reply)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let reply = reply.trim().to_string();
    match reply.strip_prefix("error ") {
        Some(e) => Err(e.to_string()),
        None => Ok(reply),
    }
}

/// Whether `path` is a run directory (has a config or metrics file).
pub fn is_run_dir(path: &Path) -> bool {
    path.join("metrics.jsonl").exists()
        || path.join("config.toml").exists()
        || path.join("status.json").exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_and_bad_ones_are_named() {
        assert!(matches!(parse_command("pause\n"), Ok(Command::Pause)));
        let rollback = parse_command("rollback 0.5");
        assert!(matches!(rollback, Ok(Command::Rollback { lr_factor }) if lr_factor == 0.5));
        assert!(parse_command("rollback 3").unwrap_err().contains("`3`"));
        assert!(parse_command("explode").unwrap_err().contains("`explode`"));
    }

    #[test]
    fn commands_travel_over_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let (tx, rx) = std::sync::mpsc::channel();
        let (rtx, rrx) = std::sync::mpsc::channel();
        let _server = Server::start(&run, tx, rtx).unwrap();
        assert_eq!(send(&run, "save").unwrap(), "ok save");
        assert!(matches!(
            rx.recv_timeout(Duration::from_secs(2)),
            Ok(Command::SaveNow)
        ));
        assert_eq!(send(&run, "reload").unwrap(), "ok reload");
        assert!(rrx.recv_timeout(Duration::from_secs(2)).is_ok());
        assert!(send(&run, "nonsense").unwrap_err().contains("nonsense"));
    }

    #[test]
    fn status_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let s = Status {
            pid: std::process::id(),
            state: "running".into(),
            step: 5,
            ..Default::default()
        };
        write_status(&run, &s).unwrap();
        let back = read_status(&run).unwrap();
        assert_eq!(back.step, 5);
        assert!(back.trainer_alive());
    }
}
