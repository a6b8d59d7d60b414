//! Faults caused for real: a trainer killed at random moments, a diverging learning rate, a
//! full disk, damaged checkpoints and hostile image files, and parsers fed mutated input.
//!
//! `FACESTUDIO_LONG_TESTS=1` makes the kill test and the parser properties run longer.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use candle_core::Device;
use facestudio::checkpoint;
use facestudio::config::Config;
use facestudio::rng::Rng;
use facestudio::run::{read_metrics, Record, RunDir};

fn long() -> bool {
    std::env::var_os("FACESTUDIO_LONG_TESTS").is_some_and(|v| v == "1")
}

/// A trainer process, killed when dropped so that a failed test leaves nothing running.
struct Trainer(Child);

impl Drop for Trainer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A small run that writes often: a checkpoint every 5 steps, a sample grid every 3.
fn write_config(dir: &Path, extra: &str) {
    let mut c = common::small_config();
    c.train.steps = 100_000;
    c.train.log_every = 1;
    c.train.checkpoint_every = 5;
    c.train.sample_every = 3;
    c.train.val_every = 7;
    c.train.keep_checkpoints = 2;
    std::fs::write(
        dir.join("facestudio.toml"),
        format!("{}\n{extra}", c.to_toml()),
    )
    .unwrap();
}

fn spawn(dir: &Path, args: &[&str]) -> Trainer {
    let child = Command::new(common::bin())
        .args(args)
        .current_dir(dir)
        .env("XDG_CACHE_HOME", dir.join(".cache"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Trainer(child)
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn train_steps(run: &RunDir) -> Vec<u64> {
    let (records, _) = read_metrics(&run.metrics()).unwrap_or_default();
    records
        .iter()
        .filter(|r| matches!(r, Record::Train(_)))
        .map(Record::step)
        .collect()
}

/// Every checkpoint in the run loads and holds only finite weights.
fn assert_checkpoints_whole(run: &RunDir) {
    for entry in checkpoint::list(&run.checkpoints()) {
        let loaded = checkpoint::load(&entry.meta, &Device::Cpu)
            .unwrap_or_else(|e| panic!("{} does not load: {e}", entry.meta.display()));
        checkpoint::load_moments(&loaded, &Device::Cpu).unwrap();
        for (name, var) in facestudio::model::named_vars(&loaded.varmap) {
            let values: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            assert!(
                values.iter().all(|v| v.is_finite()),
                "{}: `{name}` is not finite",
                entry.meta.display()
            );
        }
    }
}

#[test]
fn killed_at_random_moments_a_run_resumes_without_losing_or_repeating_anything() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), "");
    let run = RunDir::new(dir.path().join("runs/k"));
    let kills = if long() { 100 } else { 20 };
    let mut rng = Rng::new(2024);
    let mut resumed_from = Vec::new();
    for i in 0..kills {
        let mut t = spawn(
            dir.path(),
            &["train", "--headless", "--run", "runs/k", "--resume"],
        );
        // From half a second (still loading) to three (mid-training, checkpointing, sampling).
        let wait = 0.5 + 2.5 * rng.uniform();
        std::thread::sleep(Duration::from_secs_f64(wait));
        // SAFETY: a signal to the child this test started.
        unsafe { libc::kill(t.0.id() as libc::pid_t, libc::SIGKILL) };
        t.0.wait().unwrap();

        let (records, torn) = read_metrics(&run.metrics()).unwrap_or_default();
        assert!(torn <= 1, "kill {i}: {torn} torn lines");
        let steps: Vec<u64> = records
            .iter()
            .filter(|r| matches!(r, Record::Train(_)))
            .map(Record::step)
            .collect();
        assert!(
            steps.windows(2).all(|w| w[1] == w[0] + 1),
            "kill {i}: steps not consecutive: {steps:?}"
        );
        if let Some(newest) = checkpoint::list(&run.checkpoints()).pop() {
            let loaded = checkpoint::load(&newest.meta, &Device::Cpu)
                .unwrap_or_else(|e| panic!("kill {i}: the newest checkpoint does not load: {e}"));
            resumed_from.push(loaded.meta.step);
        }
    }
    assert!(
        resumed_from.iter().any(|&s| s > 0),
        "no kill came after a checkpoint"
    );

    // A last resume runs to a definite end.
    let last = checkpoint::list(&run.checkpoints())
        .pop()
        .map_or(0, |e| e.step);
    let end = last + 12;
    let status = Command::new(common::bin())
        .args([
            "train",
            "--headless",
            "--run",
            "runs/k",
            "--resume",
            "--steps",
            &end.to_string(),
        ])
        .current_dir(dir.path())
        .env("XDG_CACHE_HOME", dir.path().join(".cache"))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let (records, torn) = read_metrics(&run.metrics()).unwrap();
    assert_eq!(torn, 0, "a torn line survived the resume");
    let steps = train_steps(&run);
    let gaps = steps.windows(2).filter(|w| w[1] != w[0] + 1).count();
    assert_eq!(
        (steps.first(), steps.last(), steps.len(), gaps),
        (Some(&1), Some(&end), end as usize, 0)
    );
    let vals: Vec<u64> = records
        .iter()
        .filter(|r| matches!(r, Record::Val(_)))
        .map(Record::step)
        .collect();
    assert!(
        vals.windows(2).all(|w| w[1] > w[0]),
        "validation passes repeat: {vals:?}"
    );
    assert_checkpoints_whole(&run);
    eprintln!(
        "{kills} kills; resumed from checkpoints at steps {resumed_from:?}; ended at step {end}"
    );
}

#[test]
fn a_diverging_learning_rate_is_caught_and_no_bad_checkpoint_is_written() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), "");
    let run = RunDir::new(dir.path().join("runs/d"));
    let mut t = spawn(dir.path(), &["train", "--headless", "--run", "runs/d"]);
    wait_for("a first checkpoint", 120, || {
        !checkpoint::list(&run.checkpoints()).is_empty()
    });

    // Blow the loss up: Adam moves every weight by about the learning rate per step.
    let text = std::fs::read_to_string(run.config()).unwrap();
    let mut doc: toml_edit::DocumentMut = text.parse().unwrap();
    doc["train"]["lr"] = toml_edit::value(9.9);
    std::fs::write(run.config(), doc.to_string()).unwrap();

    // Each divergence rolls back with a tenth of the rate; after three it stops.
    let end = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = t.0.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= end {
            let log = std::fs::read_to_string(run.log()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "the trainer neither recovered nor stopped; train.log ends:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "the trainer failed instead of stopping cleanly: {status}"
    );
    let log = std::fs::read_to_string(run.log()).unwrap();
    assert!(
        log.contains("diverged"),
        "the divergence is not in the log:\n{log}"
    );
    assert!(
        log.contains("rolled back to step"),
        "no rollback in the log:\n{log}"
    );
    assert_checkpoints_whole(&run);
    let (records, _) = read_metrics(&run.metrics()).unwrap();
    for r in &records {
        if let Record::Train(s) = r {
            assert!(
                s.total.is_finite(),
                "step {} logged a non-finite loss",
                s.step
            );
        }
    }
}

#[test]
fn with_someone_to_ask_a_divergence_pauses_until_the_rollback_is_chosen() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), "");
    let run = RunDir::new(dir.path().join("runs/a"));
    // As the studio starts its trainer: a divergence waits for the user's decision.
    let args = [
        "train",
        "--headless",
        "--run",
        "runs/a",
        "--ask-on-divergence",
        "600",
    ];
    let mut t = spawn(dir.path(), &args);
    wait_for("a first checkpoint", 120, || {
        !checkpoint::list(&run.checkpoints()).is_empty()
    });
    let text = std::fs::read_to_string(run.config()).unwrap();
    let mut doc: toml_edit::DocumentMut = text.parse().unwrap();
    doc["train"]["lr"] = toml_edit::value(9.9);
    std::fs::write(run.config(), doc.to_string()).unwrap();

    wait_for("the divergence", 120, || {
        status_field(&run, "state") == "diverged"
    });
    let detail = status_field(&run, "detail");
    assert!(!detail.is_empty(), "the status does not say what diverged");
    let checkpoints = checkpoint::list(&run.checkpoints()).len();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(status_field(&run, "state"), "diverged", "it did not wait");
    assert!(t.0.try_wait().unwrap().is_none(), "the trainer exited");
    assert_eq!(checkpoint::list(&run.checkpoints()).len(), checkpoints);

    // The user's `r`, as the studio sends it.
    let reply = facestudio::control::send(&run, "rollback 0.1").unwrap();
    assert!(reply.starts_with("ok"), "{reply}");
    // A tenth of 9.9 may diverge again; the rollback itself is what the user asked for.
    wait_for("the rollback", 60, || {
        std::fs::read_to_string(run.log()).is_ok_and(|l| l.contains("rolled back to step"))
    });
    assert_checkpoints_whole(&run);
    let _ = facestudio::control::send(&run, "stop");
    let status = t.0.wait().unwrap();
    assert!(status.success(), "{status}");
}

/// Mounts a tmpfs of `mb` megabytes at `dir`; false when this machine does not allow it.
fn mount_tmpfs(dir: &Path, mb: u32) -> bool {
    Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
        .arg(dir)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn status_field(run: &RunDir, key: &str) -> String {
    let text = std::fs::read_to_string(run.root.join("status.json")).unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v[key].as_str().map(str::to_string))
        .unwrap_or_default()
}

#[test]
fn a_full_disk_pauses_training_keeps_the_last_checkpoint_and_training_carries_on_after() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    std::fs::create_dir(&disk).unwrap();
    if !mount_tmpfs(&disk, 8) {
        eprintln!("skipped: this machine does not allow mounting a tmpfs");
        return;
    }
    let _unmount = Unmount(disk.clone());
    write_config(dir.path(), "");
    let run = RunDir::new(disk.join("r"));
    let mut t = spawn(
        dir.path(),
        &["train", "--headless", "--run", run.root.to_str().unwrap()],
    );
    wait_for("a first checkpoint", 120, || {
        !checkpoint::list(&run.checkpoints()).is_empty()
    });

    // Fill what is left of the disk.
    let filler = disk.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let block = vec![0u8; 64 * 1024];
    while std::io::Write::write_all(&mut f, &block).is_ok() {}
    drop(f);
    wait_for("the write failure", 60, || {
        status_field(&run, "state") == "write-failed"
    });
    let detail = status_field(&run, "detail");
    assert!(
        detail.contains(&run.root.display().to_string()),
        "the error does not name the path: {detail}"
    );
    assert!(
        t.0.try_wait().unwrap().is_none(),
        "the trainer died on a full disk"
    );
    let kept = checkpoint::list(&run.checkpoints())
        .pop()
        .expect("the previous checkpoint is still there");
    checkpoint::load(&kept.meta, &Device::Cpu).expect("the previous checkpoint is intact");

    // Free the space and resume; training goes on and checkpoints again.
    std::fs::remove_file(&filler).unwrap();
    let reply = facestudio::control::send(&run, "resume").unwrap();
    assert!(reply.starts_with("ok"), "{reply}");
    wait_for("training to carry on", 60, || {
        status_field(&run, "state") == "running"
    });
    let before = kept.step;
    wait_for("a newer checkpoint", 60, || {
        checkpoint::list(&run.checkpoints())
            .last()
            .is_some_and(|e| e.step > before)
    });
    assert_checkpoints_whole(&run);
    assert_eq!(facestudio::control::send(&run, "stop").unwrap(), "ok stop");
    assert!(t.0.wait().unwrap().success());
}

/// Trains a tiny model into `dir/runs/<name>` and returns its newest checkpoint's metadata.
fn tiny_model(dir: &Path, name: &str, latent: usize) -> PathBuf {
    let mut c = common::small_config();
    c.model.latent = latent;
    c.train.steps = 3;
    c.train.checkpoint_every = 3;
    let run = dir.join("runs").join(name);
    common::train_collect(c, &run, false);
    checkpoint::list(&run.join("checkpoints"))
        .pop()
        .unwrap()
        .meta
}

fn sample_fails_naming(dir: &Path, model: &Path, names: &str) {
    let out = common::facestudio(
        dir,
        &[
            "sample",
            "--model",
            model.to_str().unwrap(),
            "--out",
            "x.png",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "sampling from a bad checkpoint succeeded"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains(names),
        "the error does not name `{names}`: {err}"
    );
}

#[test]
fn damaged_and_foreign_checkpoints_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let a = tiny_model(dir.path(), "a", 16);
    let b = tiny_model(dir.path(), "b", 8);
    let weights = |meta: &Path| meta.with_extension("safetensors");

    // Truncated weights.
    let bytes = std::fs::read(weights(&a)).unwrap();
    std::fs::write(weights(&a), &bytes[..bytes.len() / 2]).unwrap();
    sample_fails_naming(dir.path(), &a, "step-00000003.safetensors");

    // Another model's weights: the shapes do not fit.
    std::fs::copy(weights(&b), weights(&a)).unwrap();
    sample_fails_naming(dir.path(), &a, "shape");

    // Metadata that is not JSON, and metadata that is far too large.
    std::fs::write(&a, b"{ not json").unwrap();
    sample_fails_naming(dir.path(), &a, "step-00000003.json");
    let huge = vec![b' '; 17 * 1024 * 1024];
    std::fs::write(&a, huge).unwrap();
    sample_fails_naming(dir.path(), &a, "step-00000003.json");
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A PNG whose header claims 100,000 x 100,000 pixels: a decompression bomb.
fn bomb_png() -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        png.extend_from_slice(&body);
        png.extend_from_slice(&crc32(&body).to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(b"IEND", &[]);
    png
}

#[test]
fn hostile_image_files_are_listed_with_reasons_and_never_crash() {
    let dir = tempfile::tempdir().unwrap();
    let faces = dir.path().join("faces");
    std::fs::create_dir(&faces).unwrap();
    for i in 0..3u8 {
        let img = image::RgbImage::from_pixel(48, 48, image::Rgb([40 * i, 90, 200]));
        img.save(faces.join(format!("good{i}.png"))).unwrap();
    }
    std::fs::write(faces.join("empty.jpg"), b"").unwrap();
    std::fs::write(
        faces.join("notes.jpg"),
        b"this is a text file, not a JPEG\n",
    )
    .unwrap();
    std::fs::write(faces.join("bomb.png"), bomb_png()).unwrap();

    let started = Instant::now();
    let out = common::facestudio(dir.path(), &["dataset", "scan", faces.to_str().unwrap()]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("panicked"), "{text}");
    for name in ["empty.jpg", "notes.jpg", "bomb.png"] {
        assert!(text.contains(name), "{name} is not listed:\n{text}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the scan took {:?}",
        started.elapsed()
    );

    let model = tiny_model(dir.path(), "m", 16);
    let bomb = faces.join("bomb.png");
    let out = common::facestudio(
        dir.path(),
        &[
            "reconstruct",
            "--model",
            model.to_str().unwrap(),
            bomb.to_str().unwrap(),
            "--out",
            "p.png",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && !err.contains("panicked"), "{err}");
    assert!(
        err.contains("bomb.png"),
        "the error does not name the file: {err}"
    );
}

/// Seeded mutations of valid input: flipped bytes, cuts, insertions and repeats.
fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    let edits = 1 + (rng.uniform() * 4.0) as usize;
    for _ in 0..edits {
        let at = (rng.uniform() * out.len().max(1) as f64) as usize;
        match (rng.uniform() * 4.0) as u32 {
            0 if !out.is_empty() => {
                let i = at.min(out.len() - 1);
                out[i] = (rng.uniform() * 256.0) as u8;
            }
            1 => out.truncate(at),
            2 => {
                let b = [b'"', b'[', b'=', b'\n', b'9', b'-', 0xff, b'{', b'}', b','];
                out.insert(
                    at.min(out.len()),
                    b[(rng.uniform() * b.len() as f64) as usize],
                );
            }
            _ => {
                let end = (at + 16).min(out.len());
                let piece = out[at.min(end)..end].to_vec();
                out.splice(at.min(out.len())..at.min(out.len()), piece);
            }
        }
    }
    out
}

#[test]
fn parsers_survive_mutated_input_and_name_the_file() {
    let rounds = if long() { 20_000 } else { 2_000 };
    let mut rng = Rng::new(7);
    let dir = tempfile::tempdir().unwrap();

    let config_text = facestudio::config::default_commented();
    let config_path = Path::new("facestudio.toml");
    for _ in 0..rounds {
        let bytes = mutate(&mut rng, config_text.as_bytes());
        let text = String::from_utf8_lossy(&bytes);
        if let Err(e) = Config::from_toml(&text, config_path) {
            assert!(e.to_string().contains("facestudio.toml"), "{e}");
        }
    }

    let npy = dir.path().join("faces.npy");
    facestudio::data::npy::write_u8(&npy, &[7u8; 2 * 4 * 3], 2, 4, 3, 1).unwrap();
    let npy_bytes = std::fs::read(&npy).unwrap();
    let mutated = dir.path().join("m.npy");
    for _ in 0..rounds {
        std::fs::write(&mutated, mutate(&mut rng, &npy_bytes)).unwrap();
        if let Err(e) = facestudio::data::npy::read(&mutated) {
            assert!(e.to_string().contains("m.npy"), "{e}");
        }
    }

    let meta = tiny_model(dir.path(), "p", 16);
    let meta_bytes = std::fs::read(&meta).unwrap();
    for _ in 0..rounds {
        if let Err(e) = checkpoint::parse_meta(&mutate(&mut rng, &meta_bytes), &meta) {
            assert!(e.to_string().contains("step-00000003.json"), "{e}");
        }
    }

    let metrics = std::fs::read(RunDir::new(dir.path().join("runs/p")).metrics()).unwrap();
    for _ in 0..rounds {
        let bytes = mutate(&mut rng, &metrics);
        let (records, _) = facestudio::run::parse_metrics(&String::from_utf8_lossy(&bytes));
        assert!(records.len() <= metrics.iter().filter(|&&b| b == b'\n').count() + 8);
    }
}

#[test]
fn the_studio_without_a_terminal_says_so_instead_of_drawing() {
    let dir = tempfile::tempdir().unwrap();
    common::write_small_config(dir.path(), 3);
    let out = Command::new(common::bin())
        .args(["--run", "plain"])
        .current_dir(dir.path())
        .env("XDG_CACHE_HOME", dir.path().join(".cache"))
        .env("TERM", "dumb")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a terminal") && err.contains("train --headless"),
        "{err}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains('\x1b'),
        "escape sequences went to a non-terminal: {stdout:?}"
    );
}

/// The inputs `cargo fuzz` kept for `target` (its corpus and any crash it found).
fn fuzz_inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut inputs = Vec::new();
    for kind in ["corpus", "artifacts"] {
        let dir = fuzz.join(kind).join(target);
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            inputs.push((entry.path(), std::fs::read(entry.path()).unwrap()));
        }
    }
    inputs
}

#[test]
fn every_input_the_fuzzers_kept_is_handled() {
    let dir = tempfile::tempdir().unwrap();
    let mut total = 0;

    for (file, bytes) in fuzz_inputs("config") {
        if let Ok(text) = std::str::from_utf8(&bytes) {
            if let Err(e) = Config::from_toml(text, Path::new("fuzz.toml")) {
                assert!(
                    e.to_string().contains("fuzz.toml"),
                    "{}: {e}",
                    file.display()
                );
            }
        }
        total += 1;
    }
    let npy = dir.path().join("fuzz.npy");
    for (file, bytes) in fuzz_inputs("npy") {
        std::fs::write(&npy, &bytes).unwrap();
        match facestudio::data::npy::read(&npy) {
            Ok(images) => assert!(images.pixels.len() <= bytes.len(), "{}", file.display()),
            Err(e) => assert!(
                e.to_string().contains("fuzz.npy"),
                "{}: {e}",
                file.display()
            ),
        }
        total += 1;
    }
    let meta = Path::new("step-00000001.json");
    for (file, bytes) in fuzz_inputs("checkpoint_meta") {
        if let Err(e) = checkpoint::parse_meta(&bytes, meta) {
            let text = e.to_string();
            assert!(
                text.contains("step-00000001.json"),
                "{}: {text}",
                file.display()
            );
        }
        total += 1;
    }
    for (file, bytes) in fuzz_inputs("metrics") {
        let text = String::from_utf8_lossy(&bytes);
        let (records, _) = facestudio::run::parse_metrics(&text);
        assert!(records.len() <= text.lines().count(), "{}", file.display());
        total += 1;
    }
    assert!(total >= 4, "the fuzzers' corpus is missing: {total} inputs");
}
