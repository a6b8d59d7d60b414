//! Live settings: edits to a run's config file tune a headless training while it runs.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use facestudio::run::{read_metrics, Record, RunDir};

fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A trainer process, killed when dropped so that a failed test leaves nothing running.
struct Trainer(Child);

impl Drop for Trainer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_trainer(dir: &Path, steps: u64) -> Trainer {
    Command::new(common::bin())
        .args([
            "train",
            "--headless",
            "--run",
            "r",
            "--steps",
            &steps.to_string(),
        ])
        .current_dir(dir)
        .env("XDG_CACHE_HOME", dir.join(".cache"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Trainer)
        .unwrap()
}

fn last_step(run: &RunDir) -> u64 {
    let (records, _) = read_metrics(&run.metrics()).unwrap_or_default();
    records
        .iter()
        .filter(|r| matches!(r, Record::Train(_)))
        .map(Record::step)
        .max()
        .unwrap_or(0)
}

fn set(run: &RunDir, key: &str, value: toml_edit::Item) {
    // As an editor would: read, change one line, write in place.
    let text = std::fs::read_to_string(run.config()).unwrap();
    let mut doc: toml_edit::DocumentMut = text.parse().unwrap();
    let (t, k) = key.split_once('.').unwrap();
    doc[t][k] = value;
    std::fs::write(run.config(), doc.to_string()).unwrap();
}

#[test]
fn a_live_learning_rate_edit_applies_and_a_bad_one_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    common::write_small_config(dir.path(), 100_000);
    let mut child = spawn_trainer(dir.path(), 100_000);
    let run = RunDir::new(dir.path().join("runs/r"));
    wait_for("training to start", 120, || {
        (last_step(&run) >= 3).then_some(())
    });

    set(&run, "train.lr", toml_edit::value(0.0005));
    let applied_at = wait_for("the new learning rate", 60, || {
        let (records, _) = read_metrics(&run.metrics()).ok()?;
        records.iter().find_map(|r| match r {
            Record::Setting(s) if s.key == "train.lr" && s.value == "0.0005" => Some(s.step),
            _ => None,
        })
    });
    wait_for("steps after the change", 60, || {
        (last_step(&run) >= applied_at + 3).then_some(())
    });
    let (records, _) = read_metrics(&run.metrics()).unwrap();
    for r in &records {
        if let Record::Train(t) = r {
            if t.step >= applied_at + 5 {
                assert_eq!(t.lr, 0.0005, "step {}", t.step);
            }
            if t.step < applied_at {
                assert_eq!(t.lr, 0.002, "step {}", t.step);
            }
        }
    }

    // An invalid value is rejected; training carries on with the old settings.
    set(&run, "train.lr", toml_edit::value(-1.0));
    let before = last_step(&run);
    wait_for("training to carry on", 60, || {
        (last_step(&run) >= before + 3).then_some(())
    });
    let log = std::fs::read_to_string(run.log()).unwrap();
    assert!(
        log.contains("train.lr") && log.contains("config.toml"),
        "the rejection names key and file:\n{log}"
    );
    let (records, _) = read_metrics(&run.metrics()).unwrap();
    assert!(!records
        .iter()
        .any(|r| matches!(r, Record::Setting(s) if s.value == "-1.0")));

    // A restart setting is reported as pending, not applied.
    set(&run, "train.lr", toml_edit::value(0.0005));
    set(&run, "model.latent", toml_edit::value(32));
    wait_for("the pending notice", 60, || {
        let log = std::fs::read_to_string(run.log()).ok()?;
        log.contains("model.latent = 32 needs a new run")
            .then_some(())
    });

    assert_eq!(facestudio::control::send(&run, "stop").unwrap(), "ok stop");
    let status = child.0.wait().unwrap();
    assert!(status.success());
    let (records, torn) = read_metrics(&run.metrics()).unwrap();
    assert_eq!(torn, 0);
    assert!(!records
        .iter()
        .any(|r| matches!(r, Record::Setting(s) if s.key == "model.latent")));
}
