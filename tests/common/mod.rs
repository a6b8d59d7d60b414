//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc};

use facestudio::config::Config;
use facestudio::run::RunDir;
use facestudio::train::{self, Event, Summary};

/// A small, fast configuration on the synthetic faces: 32 px, three halvings, 16-d latent.
pub fn small_config() -> Config {
    let mut c = Config::default();
    c.data.synthetic_count = 384;
    c.data.cache_dir = String::new();
    c.model.image_size = 32;
    c.model.widths = vec![16, 32, 64];
    c.model.latent = 16;
    c.train.batch_size = 32;
    c.train.lr = 2e-3;
    c.train.kl_warmup_steps = 50;
    c.train.steps = 40;
    c.train.log_every = 1;
    c.train.val_every = 20;
    c.train.sample_every = 20;
    c.train.checkpoint_every = 10;
    c.train.device = "cpu".into();
    c
}

/// Trains to completion on this thread, collecting every event.
pub fn train_collect(config: Config, run: &Path, resume: bool) -> (Summary, Vec<Event>) {
    let (tx, rx) = mpsc::channel();
    let (_cmd_tx, cmd_rx) = mpsc::channel();
    let opts = train::Options {
        config,
        run: RunDir::new(run),
        resume,
    };
    let summary =
        train::run(opts, tx, cmd_rx, Arc::new(AtomicBool::new(false))).expect("training runs");
    (summary, rx.try_iter().collect())
}

/// The built `facestudio` binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_facestudio"))
}

/// Runs the binary in `dir` with `args`.
pub fn facestudio(dir: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .current_dir(dir)
        .env("XDG_CACHE_HOME", dir.join(".cache"))
        .env_remove("FACESTUDIO_DATA")
        .output()
        .expect("the binary runs")
}

/// The shared data sets folder, when present beside the repository.
pub fn shared_datasets() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets");
    p.is_dir().then_some(p)
}

/// Writes a small config file for CLI tests.
pub fn write_small_config(dir: &Path, steps: u64) -> PathBuf {
    let mut c = small_config();
    c.train.steps = steps;
    c.train.log_every = 5;
    let path = dir.join("facestudio.toml");
    std::fs::write(&path, c.to_toml()).unwrap();
    path
}
