//! The command line as a user runs it.

mod common;

use common::{facestudio, write_small_config};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn train_then_sample_writes_a_grid_of_the_right_size() {
    let dir = tempfile::tempdir().unwrap();
    write_small_config(dir.path(), 20);
    let out = facestudio(
        dir.path(),
        &["train", "--headless", "--run", "demo", "--steps", "20"],
    );
    assert!(out.status.success(), "train failed: {}", stderr(&out));
    assert!(
        stdout(&out).contains("finished at step 20"),
        "{}",
        stdout(&out)
    );
    let run = dir.path().join("runs/demo");
    for f in [
        "config.toml",
        "metrics.jsonl",
        "train.log",
        "checkpoints/step-00000020.json",
    ] {
        assert!(run.join(f).is_file(), "missing {f}");
    }
    assert!(run.join("samples/step-00000020.png").is_file());

    let out = facestudio(
        dir.path(),
        &[
            "sample",
            "--model",
            "runs/demo",
            "--count",
            "10",
            "--out",
            "grid.png",
        ],
    );
    assert!(out.status.success(), "sample failed: {}", stderr(&out));
    let img = image::open(dir.path().join("grid.png")).unwrap();
    // 10 faces of 32 px in 4 columns and 3 rows, 2 px gaps around and between.
    assert_eq!((img.width(), img.height()), (4 * 34 + 2, 3 * 34 + 2));

    let out = facestudio(
        dir.path(),
        &[
            "interpolate",
            "--model",
            "runs/demo",
            "--from",
            "1",
            "--to",
            "2",
            "--steps",
            "5",
            "--slerp",
            "--out",
            "s.png",
        ],
    );
    assert!(out.status.success(), "interpolate failed: {}", stderr(&out));
    let img = image::open(dir.path().join("s.png")).unwrap();
    assert_eq!((img.width(), img.height()), (5 * 34 + 2, 34 + 2));

    let out = facestudio(
        dir.path(),
        &[
            "reconstruct",
            "--model",
            "runs/demo",
            "runs/demo/samples/step-00000020.png",
            "--out",
            "r.png",
        ],
    );
    assert!(out.status.success(), "reconstruct failed: {}", stderr(&out));
    let img = image::open(dir.path().join("r.png")).unwrap();
    assert_eq!((img.width(), img.height()), (2 * 34 + 2, 34 + 2));
}

#[test]
fn resume_from_the_command_line_continues_the_step_count() {
    let dir = tempfile::tempdir().unwrap();
    write_small_config(dir.path(), 10);
    let out = facestudio(
        dir.path(),
        &["train", "--headless", "--run", "r", "--steps", "10"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let again = facestudio(
        dir.path(),
        &["train", "--headless", "--run", "r", "--steps", "10"],
    );
    assert!(
        !again.status.success(),
        "a second fresh start into a used run must be refused"
    );
    assert!(stderr(&again).contains("--resume"), "{}", stderr(&again));
    let out = facestudio(
        dir.path(),
        &[
            "train",
            "--headless",
            "--run",
            "r",
            "--resume",
            "--steps",
            "15",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("from step 10"), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("finished at step 15"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn config_errors_name_the_file_the_line_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &str, &str); 5] = [
        ("[model]\nlatent = 0\n", "model.latent", ":2"),
        ("[train]\nbatch_size = 8\nlr = -0.5\n", "train.lr", ":3"),
        ("[model]\nimage_size = 48\n", "model.image_size", ":2"),
        (
            "[data]\nsource = \"/no/such/folder\"\n",
            "data.source",
            ":2",
        ),
        ("[train]\n\nlearning_rate = 0.1\n", "learning_rate", ":3"),
    ];
    for (text, key, line) in cases {
        std::fs::write(dir.path().join("bad.toml"), text).unwrap();
        let out = facestudio(
            dir.path(),
            &[
                "train",
                "--headless",
                "--config",
                "bad.toml",
                "--steps",
                "1",
            ],
        );
        assert!(!out.status.success(), "{text} was accepted");
        let err = stderr(&out);
        assert!(err.contains("bad.toml"), "{err}");
        assert!(err.contains(key), "{key} missing from: {err}");
        assert!(err.contains(line), "line {line} missing from: {err}");
    }
}

#[test]
fn the_default_config_is_commented_and_parses() {
    let dir = tempfile::tempdir().unwrap();
    let out = facestudio(dir.path(), &["config", "--default"]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.lines().filter(|l| l.starts_with('#')).count() > 20);
    std::fs::write(dir.path().join("f.toml"), &text).unwrap();
    let out = facestudio(dir.path(), &["config", "--check", "f.toml"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn dataset_scan_reports_counts_sizes_and_unreadable_files() {
    let dir = tempfile::tempdir().unwrap();
    let faces = dir.path().join("faces");
    std::fs::create_dir_all(&faces).unwrap();
    for i in 0..3 {
        image::RgbImage::new(20 + i, 30)
            .save(faces.join(format!("{i}.png")))
            .unwrap();
    }
    std::fs::write(faces.join("broken.jpg"), b"this is text").unwrap();
    let out = facestudio(dir.path(), &["dataset", "scan", "faces"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("3 readable images"), "{text}");
    assert!(text.contains("20x30: 1"), "{text}");
    assert!(text.contains("broken.jpg"), "{text}");
    assert!(text.contains("unreadable: 1"), "{text}");
}

#[test]
fn every_subcommand_has_help() {
    let dir = tempfile::tempdir().unwrap();
    for sub in [
        "train",
        "sample",
        "interpolate",
        "reconstruct",
        "dataset",
        "config",
    ] {
        let out = facestudio(dir.path(), &[sub, "--help"]);
        assert!(out.status.success(), "{sub} --help");
        assert!(stdout(&out).contains("Usage"), "{sub}");
    }
}

#[test]
fn a_missing_model_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = facestudio(
        dir.path(),
        &["sample", "--model", "nowhere", "--out", "x.png"],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("nowhere"), "{}", stderr(&out));
}
