//! The real binary in tmux: the studio trains and answers keys, quits cleanly, and `watch`
//! follows a run whose writer is killed and resumed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_facestudio"))
}

fn have_tmux() -> bool {
    Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A small, fast configuration: 32 px synthetic faces, a 16-d latent, a step logged each time.
fn write_config(dir: &Path) {
    let text = r#"
[data]
synthetic_count = 384
cache_dir = ""

[model]
image_size = 32
widths = [16, 32, 64]
latent = 16

[train]
batch_size = 32
lr = 2e-3
kl_warmup_steps = 50
steps = 100000
log_every = 1
val_every = 20
sample_every = 20
checkpoint_every = 10
device = "cpu"
"#;
    std::fs::write(dir.join("facestudio.toml"), text).unwrap();
}

/// A tmux server of its own, killed when dropped with the trainers it left running.
struct Tmux {
    socket: String,
    dir: PathBuf,
}

impl Tmux {
    fn start(name: &str, dir: &Path, command: &str) -> Self {
        let socket = format!("fs-{name}-{}", std::process::id());
        let t = Self {
            socket,
            dir: dir.to_path_buf(),
        };
        // The shell prints a marker and stays, so the pane shows what the studio left behind.
        let script = format!(
            "cd '{}' && env -u NO_COLOR XDG_CACHE_HOME='{}/.cache' {command}; echo STUDIO-EXITED-$?; sleep 600",
            dir.display(),
            dir.display()
        );
        let ok = t
            .cmd(&[
                "new-session",
                "-d",
                "-x",
                "100",
                "-y",
                "30",
                "sh",
                "-c",
                &script,
            ])
            .status()
            .unwrap()
            .success();
        assert!(ok, "tmux did not start");
        t
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket, "-f", "/dev/null"]).args(args);
        c
    }

    fn capture(&self) -> String {
        let out = self.cmd(&["capture-pane", "-p"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        for k in keys {
            self.cmd(&["send-keys", k]).status().unwrap();
            // Apart, so that Esc followed by a key is not read as Alt+key.
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn alternate_on(&self) -> String {
        let out = self
            .cmd(&["display", "-p", "#{alternate_on}"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Waits until `pred` holds for the pane, returning that screen.
    fn wait_for(&self, what: &str, secs: u64, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let screen = self.capture();
            if pred(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]).status();
        // A detached trainer runs in a session of its own; a failed test must not leave it.
        let runs = std::fs::read_dir(self.dir.join("runs"))
            .into_iter()
            .flatten()
            .flatten();
        for run in runs {
            let text = std::fs::read_to_string(run.path().join("status.json")).unwrap_or_default();
            let pid = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["pid"].as_u64());
            if let Some(pid) = pid.filter(|&p| p > 1) {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
    }
}

/// The step in the status bar (`│ step N/M │`).
fn status_step(screen: &str) -> Option<u64> {
    let line = screen.lines().rev().find(|l| l.contains("│ step "))?;
    let rest = line.split("│ step ").nth(1)?;
    rest.split('/').next()?.trim().parse().ok()
}

fn status_state(dir: &Path, run: &str) -> String {
    let path = dir.join("runs").join(run).join("status.json");
    let text = std::fs::read_to_string(path).unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["state"].as_str().map(str::to_string))
        .unwrap_or_default()
}

#[test]
fn studio_trains_answers_keys_and_quits_cleanly() {
    if !have_tmux() {
        eprintln!("skipped: tmux is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path());
    let tmux = Tmux::start(
        "studio",
        dir.path(),
        &format!("'{}' --run e2e", bin().display()),
    );

    let first = tmux.wait_for("the dashboard with a step", 120, |s| {
        s.contains("2 Training") && s.contains("progress") && status_step(s).is_some_and(|n| n > 0)
    });
    let step1 = status_step(&first).unwrap();
    let later = tmux.wait_for("the step to rise", 60, |s| {
        status_step(s).is_some_and(|n| n > step1 + 2)
    });
    assert!(
        later.contains("hyperparameters") && later.contains("losses"),
        "{later}"
    );

    tmux.keys(&["3"]);
    tmux.wait_for("the gallery", 10, |s| {
        s.contains("samples · step") && s.contains("r new seeds")
    });
    tmux.keys(&["1"]);
    tmux.wait_for("the data set screen", 10, |s| {
        s.contains("data set") && s.contains("held-out share")
    });
    tmux.keys(&["2", "?"]);
    tmux.wait_for("the help", 10, |s| {
        s.contains("keys · Training") && s.contains("t / T")
    });
    tmux.keys(&["Escape"]);
    tmux.wait_for("the help to close", 10, |s| !s.contains("keys · Training"));

    tmux.keys(&["Space"]);
    tmux.wait_for("the paused state", 30, |s| s.contains("│ paused │"));
    assert_eq!(status_state(dir.path(), "e2e"), "paused");

    tmux.keys(&["q"]);
    tmux.wait_for("the quit dialog", 10, |s| {
        s.contains("Stop training (saves a checkpoint)")
    });
    tmux.keys(&["s"]);
    let end = tmux.wait_for("the studio to exit", 120, |s| s.contains("STUDIO-EXITED-0"));
    assert!(end.contains("training stopped at step"), "{end}");
    assert!(
        !end.contains("progress"),
        "the dashboard is still on screen:\n{end}"
    );
    assert_eq!(tmux.alternate_on(), "0");
    assert_eq!(status_state(dir.path(), "e2e"), "stopped");
    assert!(dir.path().join("runs/e2e/studio.log").is_file());
}

fn start_writer(dir: &Path, resume: bool) -> Child {
    let mut cmd = Command::new(bin());
    cmd.args(["train", "--headless", "--run", "r"])
        .current_dir(dir)
        .env("XDG_CACHE_HOME", dir.join(".cache"));
    if resume {
        cmd.arg("--resume");
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn wait_until(what: &str, secs: u64, pred: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !pred() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn watch_follows_a_writer_through_a_kill_and_a_resume() {
    if !have_tmux() {
        eprintln!("skipped: tmux is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path());
    let mut writer = start_writer(dir.path(), false);
    let run = dir.path().join("runs/r");
    wait_until("the run to log steps", 120, || {
        run.join("metrics.jsonl")
            .metadata()
            .is_ok_and(|m| m.len() > 0)
    });

    let tmux = Tmux::start(
        "watch",
        dir.path(),
        &format!("'{}' watch runs/r", bin().display()),
    );
    let first = tmux.wait_for("the watcher to show a running step", 60, |s| {
        s.contains("│ running │") && status_step(s).is_some_and(|n| n > 0)
    });
    let step1 = status_step(&first).unwrap();
    tmux.wait_for("the watcher's step to rise", 60, |s| {
        status_step(s).is_some_and(|n| n > step1)
    });

    // Kill the writer hard once it has a checkpoint to resume from.
    wait_until("a checkpoint", 120, || {
        std::fs::read_dir(run.join("checkpoints")).is_ok_and(|d| d.count() > 0)
    });
    writer.kill().unwrap();
    writer.wait().unwrap();
    let dead = tmux.wait_for("the watcher to notice the writer is gone", 30, |s| {
        s.contains("no trainer")
    });
    let step_dead = status_step(&dead).unwrap();

    let mut writer = start_writer(dir.path(), true);
    let resumed = tmux.wait_for("the watcher to follow the resumed writer", 120, |s| {
        s.contains("│ running │") && status_step(s).is_some_and(|n| n > step_dead)
    });
    let step2 = status_step(&resumed).unwrap();
    tmux.wait_for("the step to rise after the resume", 60, |s| {
        status_step(s).is_some_and(|n| n > step2)
    });

    // Leave the watcher; the writer keeps training.
    tmux.keys(&["q"]);
    tmux.wait_for("the quit dialog", 10, |s| s.contains("Detach"));
    tmux.keys(&["d"]);
    let end = tmux.wait_for("the watcher to exit", 30, |s| s.contains("STUDIO-EXITED-0"));
    assert!(
        end.contains("reattach with `facestudio watch runs/r`"),
        "{end}"
    );
    assert_eq!(tmux.alternate_on(), "0");
    assert!(
        writer.try_wait().unwrap().is_none(),
        "detaching the watcher stopped the writer"
    );
    // SAFETY: a signal to the writer this test started.
    unsafe { libc::kill(writer.id() as libc::pid_t, libc::SIGTERM) };
    writer.wait().unwrap();
}

#[test]
fn a_beta_edit_in_the_config_file_reaches_the_screen_and_the_metrics() {
    if !have_tmux() {
        eprintln!("skipped: tmux is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path());
    let tmux = Tmux::start(
        "beta",
        dir.path(),
        &format!("'{}' --run beta", bin().display()),
    );
    tmux.wait_for("training past the KL warm-up", 180, |s| {
        status_step(s).is_some_and(|n| n > 55)
    });

    // As a user would from another shell: change beta in the config file in use.
    let saved = Instant::now();
    let status = Command::new("sed")
        .args([
            "-i",
            "s/^kl_warmup_steps = 50$/kl_warmup_steps = 50\\nbeta = 0.25/",
            "facestudio.toml",
        ])
        .current_dir(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    assert!(std::fs::read_to_string(dir.path().join("facestudio.toml"))
        .unwrap()
        .contains("beta = 0.25"));

    let metrics = dir.path().join("runs/beta/metrics.jsonl");
    wait_until("the new beta in metrics.jsonl", 60, || {
        std::fs::read_to_string(&metrics)
            .unwrap_or_default()
            .contains(r#""key":"train.beta","value":"0.25""#)
    });
    eprintln!(
        "beta took effect {:.2} s after the save",
        saved.elapsed().as_secs_f64()
    );
    let screen = tmux.wait_for("the new beta on screen", 30, |s| {
        let beta_shown = s.lines().any(|l| {
            l.split("beta")
                .skip(1)
                .any(|r| r.trim_start().starts_with("0.25"))
        });
        s.contains("picked up by the") && beta_shown
    });
    assert!(screen.contains("train.beta"), "{screen}");

    let text = std::fs::read_to_string(&metrics).unwrap();
    let from: u64 = text
        .lines()
        .find(|l| l.contains(r#""key":"train.beta""#))
        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .and_then(|v| v["step"].as_u64())
        .expect("a setting record with its step");
    let betas: Vec<(u64, f64)> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("beta").is_some())
        .map(|v| (v["step"].as_u64().unwrap(), v["beta"].as_f64().unwrap()))
        .collect();
    assert!(
        betas.iter().any(|&(step, _)| step >= from),
        "no step logged after the change"
    );
    for (step, beta) in betas {
        let want = if step >= from {
            0.25
        } else if step >= 50 {
            1.0
        } else {
            beta
        };
        assert!(
            (beta - want).abs() < 1e-9,
            "step {step}: beta {beta}, expected {want}"
        );
    }
    tmux.keys(&["q", "s"]);
    tmux.wait_for("the studio to exit", 120, |s| s.contains("STUDIO-EXITED-0"));
}

/// The window size tmux reports for the pane.
fn pane_size(tmux: &Tmux) -> String {
    let out = tmux
        .cmd(&["display", "-p", "#{pane_width}x#{pane_height}"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn resize_storms_and_a_20x5_window_leave_the_studio_working() {
    if !have_tmux() {
        eprintln!("skipped: tmux is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path());
    let cmd = format!("'{}' --run storm", bin().display());
    let tmux = Tmux::start("storm", dir.path(), &cmd);
    tmux.wait_for("the dashboard", 120, |s| {
        s.contains("progress") && status_step(s).is_some()
    });

    // A storm: sizes from tiny to large, a few milliseconds apart, as a window manager sends
    // them while a window is dragged.
    let sizes = [
        (20, 5),
        (200, 60),
        (81, 23),
        (30, 8),
        (160, 48),
        (79, 24),
        (20, 5),
    ];
    for i in 0..70 {
        let (w, h) = sizes[i % sizes.len()];
        tmux.cmd(&["resize-window", "-x", &w.to_string(), "-y", &h.to_string()])
            .status()
            .unwrap();
        std::thread::sleep(Duration::from_millis(15));
    }
    tmux.cmd(&["resize-window", "-x", "20", "-y", "5"])
        .status()
        .unwrap();
    assert_eq!(pane_size(&tmux), "20x5");
    let tiny = tmux.wait_for("a compact view at 20x5", 10, |s| {
        s.lines().any(|l| l.contains("step"))
    });
    assert!(!tiny.contains("STUDIO-EXITED"), "{tiny}");

    tmux.cmd(&["resize-window", "-x", "100", "-y", "30"])
        .status()
        .unwrap();
    let back = tmux.wait_for("the full dashboard again", 10, |s| {
        s.contains("hyperparameters") && s.contains("losses") && status_step(s).is_some()
    });
    let step = status_step(&back).unwrap();
    tmux.wait_for("training to go on", 60, |s| {
        status_step(s).is_some_and(|n| n > step)
    });
    tmux.keys(&["?"]);
    tmux.wait_for("the help", 10, |s| s.contains("keys · Training"));
    tmux.keys(&["Escape", "q"]);
    tmux.wait_for("the quit dialog", 10, |s| s.contains("Stop training"));
    tmux.keys(&["s"]);
    tmux.wait_for("the studio to exit", 120, |s| s.contains("STUDIO-EXITED-0"));
    assert_eq!(tmux.alternate_on(), "0");
}

#[test]
fn a_dumb_terminal_gets_headless_training_and_a_reason() {
    if !have_tmux() {
        eprintln!("skipped: tmux is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path());
    let cmd = format!("TERM=dumb '{}' --run dumb --steps 3", bin().display());
    let tmux = Tmux::start("dumb", dir.path(), &cmd);
    let end = tmux.wait_for("the headless run to end", 120, |s| {
        s.contains("STUDIO-EXITED-")
    });
    assert!(end.contains("STUDIO-EXITED-0"), "{end}");
    assert!(
        end.contains("TERM=dumb") && end.contains("headless"),
        "{end}"
    );
    assert!(end.contains("finished at step 3"), "{end}");
    assert_eq!(tmux.alternate_on(), "0");

    let cmd = format!("TERM=dumb '{}' watch runs/dumb", bin().display());
    let tmux = Tmux::start("dumbwatch", dir.path(), &cmd);
    let end = tmux.wait_for("watch to refuse", 30, |s| s.contains("STUDIO-EXITED-"));
    assert!(
        !end.contains("STUDIO-EXITED-0"),
        "watch drew on a dumb terminal:\n{end}"
    );
    assert!(end.contains("TERM=dumb"), "{end}");
}
