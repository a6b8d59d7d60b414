//! The command line: argument parsing and the commands that are not the studio.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::{Args, Parser, Subcommand};

use crate::checkpoint;
use crate::config::{self, Config};
use crate::data::{self, catalog, folder};
use crate::imageio;
use crate::model::{self, Vae};
use crate::run::RunDir;
use crate::train::{self, Command, Event, Level, TrainState};

/// facestudio: a terminal studio for variational autoencoders that dream up faces.
#[derive(Debug, Parser)]
#[command(name = "facestudio", version, about, long_about = None)]
pub struct Cli {
    /// What to do; with none, the studio opens and trains.
    #[command(subcommand)]
    pub command: Option<Cmd>,
    /// Settings for the studio started with no subcommand.
    #[command(flatten)]
    pub train: TrainArgs,
    /// Colour theme: a name in `themes/` (dark, light, mono) or a file.
    #[arg(long, global = true)]
    pub theme: Option<String>,
    /// Image protocol: auto, kitty, sixel, iterm2 or halfblocks.
    #[arg(long, global = true)]
    pub graphics: Option<String>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Train a model into a run directory.
    Train(TrainCmd),
    /// Decode random latents into a grid of faces.
    Sample(SampleArgs),
    /// Decode the path between two faces (seeds or image files).
    Interpolate(InterpolateArgs),
    /// Show images beside the model's reconstructions.
    Reconstruct(ReconstructArgs),
    /// Inspect data sets.
    #[command(subcommand)]
    Dataset(DatasetCmd),
    /// Print or check configuration files.
    Config(ConfigArgs),
    /// Score a model on a data set: reconstruction, KL, negative ELBO and the IWAE bound.
    Eval(EvalArgs),
    /// Attach the studio to a run that another process writes (or wrote).
    Watch {
        /// The run directory, or a name under runs/.
        run: String,
    },
    /// Browse the faces of a finished model in the studio's gallery.
    Gallery {
        /// A checkpoint file, a run directory or a name in models/.
        #[arg(long, short = 'm')]
        model: String,
        /// A second model to set beside the first in the `versus` view (say, an autoencoder
        /// beside a VAE): the same random latents decoded by each.
        #[arg(long)]
        versus: Option<String>,
    },
}

/// Options shared by `train` and the studio.
#[derive(Debug, Args, Clone, Default)]
pub struct TrainArgs {
    /// Configuration file (default: ./facestudio.toml when present).
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Run name under runs/, or a path to a run directory.
    #[arg(long)]
    pub run: Option<String>,
    /// Continue the run from its newest checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Train until this many steps in total.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Data set: a name in datasets/ or a path (overrides data.source).
    #[arg(long)]
    pub data: Option<String>,
    /// Device: auto, cpu, cuda, cuda:N or metal (overrides train.device).
    #[arg(long)]
    pub device: Option<String>,
    /// After a divergence, wait this many seconds for a decision (a studio's `r`) before
    /// rolling back unattended; without it a headless run rolls back at once. The studio
    /// passes it to the trainer it starts.
    #[arg(long, hide = true, value_name = "SECONDS")]
    pub ask_on_divergence: Option<u64>,
}

/// `facestudio train`.
#[derive(Debug, Args)]
pub struct TrainCmd {
    #[command(flatten)]
    /// Training options.
    pub train: TrainArgs,
    /// Train without the studio (always the case for now on a non-terminal).
    #[arg(long)]
    pub headless: bool,
}

/// `facestudio sample`.
#[derive(Debug, Args)]
pub struct SampleArgs {
    /// A checkpoint file, a run directory (its newest checkpoint) or a name in models/.
    #[arg(long, short = 'm')]
    pub model: String,
    /// Faces in the grid.
    #[arg(long, short = 'n', default_value_t = 64)]
    pub count: usize,
    /// Seed of the latents (default: the run's seed, giving the faces of its sample grid).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Output PNG.
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// Also show the picture in the terminal.
    #[arg(long)]
    pub print: bool,
    /// Device to decode on.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// `facestudio interpolate`.
#[derive(Debug, Args)]
pub struct InterpolateArgs {
    /// A checkpoint file, a run directory or a name in models/.
    #[arg(long, short = 'm')]
    pub model: String,
    /// Start: a seed (a whole number) or an image file encoded through the model.
    #[arg(long)]
    pub from: String,
    /// End: a seed or an image file.
    #[arg(long)]
    pub to: String,
    /// Faces in the strip, ends included.
    #[arg(long, default_value_t = 8)]
    pub steps: usize,
    /// Spherical interpolation (follows the shell where Gaussian latents live).
    #[arg(long)]
    pub slerp: bool,
    /// Output PNG.
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// Also show the picture in the terminal.
    #[arg(long)]
    pub print: bool,
    /// Device to run on.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// `facestudio reconstruct`.
#[derive(Debug, Args)]
pub struct ReconstructArgs {
    /// A checkpoint file, a run directory or a name in models/.
    #[arg(long, short = 'm')]
    pub model: String,
    /// Images to reconstruct.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Output PNG: one row per image, the original then the reconstruction.
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// Also show the picture in the terminal.
    #[arg(long)]
    pub print: bool,
    /// Device to run on.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// `facestudio eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A checkpoint file, a run directory or a name in models/.
    #[arg(long, short = 'm')]
    pub model: String,
    /// Data set: a name in datasets/, a folder or an .npy file (default: the model's own).
    #[arg(long)]
    pub data: Option<String>,
    /// Draws per image for the importance-weighted bound (0: ELBO only).
    #[arg(long, short = 'k', default_value_t = 0)]
    pub samples: usize,
    /// Score only the model's held-out split (when the data is the model's own).
    #[arg(long)]
    pub held_out: bool,
    /// Score at most this many images.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Also write the figures as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Device to run on.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// `facestudio dataset ...`.
#[derive(Debug, Subcommand)]
pub enum DatasetCmd {
    /// Count the images of a folder, NPY file or named data set; list unreadable files.
    Scan {
        /// A folder, an .npy file, or a name in datasets/.
        path: String,
        /// Read only image headers (fast; does not catch truncated files).
        #[arg(long)]
        quick: bool,
    },
    /// List the named data sets and whether their images are present.
    List,
}

/// `facestudio config`.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Print a fully commented default configuration.
    #[arg(long)]
    pub default: bool,
    /// Check a configuration file and print the effective settings.
    #[arg(long, value_name = "FILE")]
    pub check: Option<PathBuf>,
}

/// Set by SIGINT/SIGTERM; the headless driver turns it into a clean stop.
static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    SIGNALLED.store(true, Ordering::SeqCst);
}

/// Routes SIGINT and SIGTERM to [`SIGNALLED`] instead of killing the process.
pub fn install_signal_handlers() {
    let handler: extern "C" fn(libc::c_int) = on_signal;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
}

/// Whether Ctrl-C or SIGTERM arrived.
pub fn signalled() -> bool {
    SIGNALLED.load(Ordering::SeqCst)
}

/// Loads the configuration with the command line's overrides, validated.
pub fn effective_config(args: &TrainArgs) -> Result<(Config, Option<PathBuf>)> {
    settings_from(
        args,
        Config::load_or_default(args.config.as_deref()).map_err(anyhow::Error::new)?,
    )
}

/// The settings for training `run`: when resuming without `--config`, the run's own
/// `config.toml` (it holds every live edit made while the run trained), else as
/// [`effective_config`]; command-line flags apply on top either way.
pub fn run_config(args: &TrainArgs, run: &RunDir) -> Result<(Config, Option<PathBuf>)> {
    if args.resume && args.config.is_none() && run.config().is_file() {
        let path = run.config();
        let config = Config::load(&path).map_err(anyhow::Error::new)?;
        return settings_from(args, (config, Some(path)));
    }
    effective_config(args)
}

fn settings_from(
    args: &TrainArgs,
    loaded: (Config, Option<PathBuf>),
) -> Result<(Config, Option<PathBuf>)> {
    let (mut config, path) = loaded;
    if let Some(data) = &args.data {
        config.data.source = data.clone();
    }
    if let Some(device) = &args.device {
        config.train.device = device.clone();
    }
    if let Some(steps) = args.steps {
        config.train.steps = steps;
    }
    if let Err((key, msg)) = config.validate() {
        let origin = match (&args.data, &args.device, &args.steps, key.as_str()) {
            (Some(_), _, _, "data.source") => "--data".to_string(),
            (_, Some(_), _, "train.device") => "--device".to_string(),
            (_, _, Some(_), "train.steps") => "--steps".to_string(),
            _ => path
                .as_ref()
                .map_or("default settings".to_string(), |p| p.display().to_string()),
        };
        bail!("{origin}: {key}: {msg}");
    }
    Ok((config, path))
}

/// The run directory named by `--run` (a name under runs/ or a path); a new timestamped one
/// by default, or the newest run when resuming.
pub fn run_dir(run: Option<&str>, resume: bool) -> Result<RunDir> {
    if let Some(r) = run {
        let p = Path::new(r);
        let root = if p.components().count() > 1 || p.is_absolute() {
            p.to_path_buf()
        } else {
            Path::new("runs").join(r)
        };
        return Ok(RunDir::new(root));
    }
    if resume {
        let newest = std::fs::read_dir("runs")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join("checkpoints").is_dir())
            .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok());
        return match newest {
            Some(e) => Ok(RunDir::new(e.path())),
            None => bail!("--resume: no run with checkpoints under runs/; name one with --run"),
        };
    }
    Ok(RunDir::new(Path::new("runs").join(timestamp_name())))
}

/// `run-YYYYMMDD-HHMMSS` in UTC.
pub fn timestamp_name() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "run-{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Sends tracing output to the run's `train.log` (never to the terminal).
pub fn log_to_file(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .try_init();
    Ok(())
}

/// Runs the parsed command line.
pub fn main_with(cli: Cli) -> Result<()> {
    match cli.command {
        None => studio_or_headless(cli.train, cli.theme, cli.graphics),
        Some(Cmd::Train(t)) if t.headless => headless(&t.train),
        Some(Cmd::Train(t)) => studio_or_headless(t.train, cli.theme, cli.graphics),
        Some(Cmd::Sample(a)) => sample(&a),
        Some(Cmd::Interpolate(a)) => interpolate(&a),
        Some(Cmd::Reconstruct(a)) => reconstruct(&a),
        Some(Cmd::Dataset(DatasetCmd::Scan { path, quick })) => scan(&path, quick),
        Some(Cmd::Dataset(DatasetCmd::List)) => list_datasets(),
        Some(Cmd::Config(a)) => config_cmd(&a),
        Some(Cmd::Eval(a)) => eval(&a),
        Some(Cmd::Watch { run }) => {
            let dir = run_dir(Some(&run), false)?;
            if !crate::control::is_run_dir(&dir.root) && !dir.root.exists() {
                bail!(
                    "{}: not a run directory (no metrics.jsonl, config.toml or status.json)",
                    dir.root.display()
                );
            }
            crate::tui::run(crate::tui::StudioOptions {
                mode: crate::tui::Mode::Watch { run: dir.root },
                theme: cli.theme,
                graphics: cli.graphics,
            })
        }
        Some(Cmd::Gallery { model, versus }) => crate::tui::run(crate::tui::StudioOptions {
            mode: crate::tui::Mode::Gallery { model, versus },
            theme: cli.theme,
            graphics: cli.graphics,
        }),
    }
}

/// Opens the studio on a terminal; elsewhere says so and trains headless.
fn studio_or_headless(
    args: TrainArgs,
    theme: Option<String>,
    graphics: Option<String>,
) -> Result<()> {
    if let Some(why) = crate::tui::terminal::unfit_reason() {
        eprintln!(
            "facestudio: {why}, so the studio cannot be drawn; training headless \
             (use `facestudio train --headless` to say so, or `facestudio watch` from a terminal)"
        );
        return headless(&args);
    }
    // Validate before the studio takes the screen, so errors print plainly.
    effective_config(&args)?;
    crate::tui::run(crate::tui::StudioOptions {
        mode: crate::tui::Mode::Train { args },
        theme,
        graphics,
    })
}

fn config_cmd(a: &ConfigArgs) -> Result<()> {
    if let Some(path) = &a.check {
        let config = Config::load(path).map_err(anyhow::Error::new)?;
        if let Err((key, msg)) = config.validate() {
            let line = std::fs::read_to_string(path)
                .ok()
                .and_then(|t| config::find_key_line(&t, &key));
            let at = line.map_or(String::new(), |l| format!(":{l}"));
            bail!("{}{at}: {key}: {msg}", path.display());
        }
        print!("{}", config.to_toml());
        return Ok(());
    }
    if a.default {
        print!("{}", config::default_commented());
        return Ok(());
    }
    bail!("say what to do: --default prints a commented default file, --check FILE checks one")
}

/// Trains with no UI: a live progress line on a terminal, plain lines otherwise.
pub fn headless(args: &TrainArgs) -> Result<()> {
    let run = run_dir(args.run.as_deref(), args.resume)?;
    let (config, _) = run_config(args, &run)?;
    log_to_file(&run.log())?;
    install_signal_handlers();
    let (ev_tx, ev_rx) = mpsc::channel();
    let (cmd_tx, cmd_rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let opts = train::Options {
        config,
        run: run.clone(),
        resume: args.resume,
    };
    let stop_flag = stop.clone();
    let worker = std::thread::Builder::new()
        .name("trainer".into())
        .spawn(move || train::run(opts, ev_tx, cmd_rx, stop_flag))
        .context("starting the trainer thread")?;
    let (reload_tx, reload_rx) = mpsc::channel();
    let _server = match crate::control::Server::start(&run, cmd_tx.clone(), reload_tx) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("no control socket in {}: {e}", run.root.display());
            None
        }
    };
    // Edits to the run's config file tune the running training.
    let config_watch = match crate::reload::FileWatcher::new(&[run.config()]) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!("not watching {}: {e}", run.config().display());
            None
        }
    };
    let tty = std::io::stdout().is_terminal();
    let mut driver = Driver::new(run.clone(), cmd_tx, tty);
    driver.ask_for = args.ask_on_divergence.map(Duration::from_secs);
    loop {
        if signalled() && !driver.stop_sent {
            driver.stop_sent = true;
            driver
                .progress
                .line("interrupted: saving a checkpoint and stopping");
            let _ = driver.commands.send(Command::Stop);
        }
        let edited = config_watch
            .as_ref()
            .is_some_and(|w| w.rx.try_iter().count() > 0);
        if reload_rx.try_recv().is_ok() || edited {
            driver.reload();
        }
        if driver.retry_at.is_some_and(|t| Instant::now() >= t) {
            driver.retry_at = None;
            let _ = driver.commands.send(Command::Resume);
        }
        if driver.rollback_at.is_some_and(|t| Instant::now() >= t) {
            driver.rollback_at = None;
            driver
                .progress
                .line("no decision came: rolling back with a tenth of the learning rate");
            let _ = driver.commands.send(Command::Rollback { lr_factor: 0.1 });
        }
        match ev_rx.recv_timeout(Duration::from_millis(100)) {
            Ok(e) => driver.on_event(e),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let result = worker
        .join()
        .map_err(|_| anyhow::anyhow!("the trainer thread panicked; see {}", run.log().display()))?;
    if let Err(e) = &result {
        driver.status.state = "failed".into();
        driver.status.detail = e.to_string();
        driver.write_status();
    }
    result.map(|_| ()).map_err(anyhow::Error::new)
}

/// Turns trainer events into progress output, `status.json` updates and automatic recovery.
struct Driver {
    run: RunDir,
    commands: mpsc::Sender<Command>,
    progress: Progress,
    status: crate::control::Status,
    rollbacks: u32,
    retry_at: Option<Instant>,
    /// How long to wait for a decision after a divergence; `None` rolls back at once.
    ask_for: Option<Duration>,
    /// When an unanswered divergence is rolled back.
    rollback_at: Option<Instant>,
    stop_sent: bool,
}

impl Driver {
    fn new(run: RunDir, commands: mpsc::Sender<Command>, tty: bool) -> Self {
        let status = crate::control::Status {
            pid: std::process::id(),
            state: "loading".into(),
            ..Default::default()
        };
        let driver = Self {
            run,
            commands,
            progress: Progress::new(tty),
            status,
            rollbacks: 0,
            retry_at: None,
            ask_for: None,
            rollback_at: None,
            stop_sent: false,
        };
        driver.write_status();
        driver
    }

    fn write_status(&self) {
        if let Err(e) = crate::control::write_status(&self.run, &self.status) {
            tracing::warn!("cannot write status.json: {e}");
        }
    }

    /// Re-reads the run's `config.toml` and applies its live settings.
    fn reload(&mut self) {
        let path = self.run.config();
        match Config::load(&path) {
            Ok(config) => {
                tracing::info!("reloading {}", path.display());
                let _ = self.commands.send(Command::Apply(Box::new(config)));
            }
            Err(e) => {
                tracing::error!("rejected {e}");
                self.progress.line(&format!("rejected new settings: {e}"));
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Started(s) => {
                self.progress.total = s.config.train.steps;
                self.status.total_steps = s.config.train.steps;
                self.status.step = s.step;
                self.status.device = s.device.clone();
                self.status.dataset = s.dataset.clone();
                self.status.train_images = s.train_images;
                self.status.val_images = s.val_images;
                self.status.parameters = s.parameters;
                self.write_status();
                self.progress.line(&format!(
                    "{} on {}: {} ({} training, {} held out{}), {} parameters, from step {}",
                    s.run_dir.display(),
                    s.device,
                    s.dataset,
                    s.train_images,
                    s.val_images,
                    if s.bad_files > 0 {
                        format!(", {} unreadable skipped", s.bad_files)
                    } else {
                        String::new()
                    },
                    s.parameters,
                    s.step
                ));
            }
            Event::Step(r) => {
                self.status.step = r.step;
                self.write_status();
                self.progress.step(&r);
            }
            Event::Val(v) => self.progress.line(&format!(
                "validation at step {}: -ELBO {:.2} (recon {:.2}, KL {:.2}) nats/image",
                v.step, v.total, v.recon, v.kl
            )),
            Event::Checkpoint { step, path } => {
                self.progress
                    .line(&format!("checkpoint at step {step}: {}", path.display()));
            }
            Event::Setting(r) => {
                self.status.total_steps = if r.key == "train.steps" {
                    r.value.parse().unwrap_or(self.status.total_steps)
                } else {
                    self.status.total_steps
                };
                self.progress.total = self.status.total_steps;
                self.write_status();
                self.progress
                    .line(&format!("{} = {} from step {}", r.key, r.value, r.step));
            }
            Event::Log(level, msg) if level != Level::Info => self.progress.line(&msg),
            Event::Log(..) | Event::Sample { .. } => {}
            Event::State(state) => self.on_state(state),
            Event::Finished(s) => {
                self.status.step = s.step;
                self.status.state = if s.completed { "finished" } else { "stopped" }.into();
                self.write_status();
                self.progress.finish();
                let last = s
                    .last
                    .as_ref()
                    .map_or(String::new(), |r| format!(", last loss {:.2}", r.total));
                println!(
                    "{} at step {} ({:.1} images/s{last}); run directory {}",
                    if s.completed { "finished" } else { "stopped" },
                    s.step,
                    s.images_per_second,
                    self.run.root.display()
                );
            }
        }
    }

    fn on_state(&mut self, state: TrainState) {
        self.status.detail.clear();
        self.status.state = match &state {
            TrainState::Loading => "loading",
            TrainState::Running => "running",
            TrainState::Paused => "paused",
            TrainState::Diverged { .. } => "diverged",
            TrainState::WriteFailed { .. } => "write-failed",
            TrainState::Finished => "finished",
        }
        .into();
        if !matches!(state, TrainState::Diverged { .. }) {
            self.rollback_at = None;
        }
        match state {
            TrainState::Diverged { what, .. } => {
                self.status.detail = what;
                self.rollbacks += 1;
                if self.rollbacks > 3 {
                    self.progress
                        .line("diverged again after 3 rollbacks: stopping");
                    let _ = self.commands.send(Command::Stop);
                } else if let Some(wait) = self.ask_for {
                    self.progress.line(&format!(
                        "paused: waiting {} s for a decision (r in the studio rolls back to the \
                         last good checkpoint with a tenth of the learning rate)",
                        wait.as_secs()
                    ));
                    self.rollback_at = Some(Instant::now() + wait);
                } else {
                    let what = "rolling back to the last good checkpoint with a tenth of the \
                                learning rate";
                    self.progress.line(what);
                    let _ = self.commands.send(Command::Rollback { lr_factor: 0.1 });
                }
            }
            TrainState::WriteFailed { what } => {
                self.progress
                    .line(&format!("write failed ({what}); retrying in 30 s"));
                self.status.detail = what;
                self.retry_at = Some(Instant::now() + Duration::from_secs(30));
            }
            _ => {}
        }
        self.write_status();
    }
}

/// The headless progress display.
struct Progress {
    tty: bool,
    total: u64,
    drawn: bool,
    last_plain: Option<Instant>,
}

impl Progress {
    fn new(tty: bool) -> Self {
        Self {
            tty,
            total: 0,
            drawn: false,
            last_plain: None,
        }
    }

    fn line(&mut self, msg: &str) {
        let mut out = std::io::stdout().lock();
        if self.drawn {
            let _ = write!(out, "\r\x1b[2K");
            self.drawn = false;
        }
        let _ = writeln!(out, "{msg}");
    }

    fn step(&mut self, r: &crate::run::StepRecord) {
        let remaining = self.total.saturating_sub(r.step) as f64;
        let per_step = if r.step > 0 {
            r.time / r.step as f64
        } else {
            0.0
        };
        let eta = format_duration(remaining * per_step);
        let text = format!(
            "step {}/{} epoch {:.2} loss {:.2} (recon {:.2}, KL {:.2}) {:.0} img/s ETA {eta}",
            r.step, self.total, r.epoch, r.total, r.recon, r.kl, r.ips
        );
        if self.tty {
            let width = 24;
            let done = ((r.step as f64 / self.total.max(1) as f64) * width as f64) as usize;
            let bar: String = (0..width)
                .map(|i| if i < done { '#' } else { '.' })
                .collect();
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "\r\x1b[2K[{bar}] {text}");
            let _ = out.flush();
            self.drawn = true;
        } else if self
            .last_plain
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(2))
            || r.step == self.total
        {
            self.last_plain = Some(Instant::now());
            println!("{text}");
        }
    }

    fn finish(&mut self) {
        if self.drawn {
            println!();
            self.drawn = false;
        }
    }
}

/// `1h02m`, `3m12s` or `45s`.
pub fn format_duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

fn open_model(spec: &str, device: &str) -> Result<(checkpoint::Loaded, Device)> {
    let choice =
        crate::device::DeviceChoice::parse(device).map_err(|e| anyhow::anyhow!("--device: {e}"))?;
    let device = choice.open()?;
    let loaded = checkpoint::load_model(spec, &device).map_err(anyhow::Error::new)?;
    Ok((loaded, device))
}

fn save_and_print(img: &image::RgbImage, out: &Path, print: bool) -> Result<()> {
    imageio::save_png(img, out).with_context(|| format!("writing {}", out.display()))?;
    println!("wrote {} ({}x{})", out.display(), img.width(), img.height());
    if print {
        print_image(img)?;
    }
    Ok(())
}

/// Shows an image in the terminal through viuer (kitty, iTerm2, sixel or half-blocks).
pub fn print_image(img: &image::RgbImage) -> Result<()> {
    let cols = terminal_columns().min(100).max(8);
    let conf = viuer::Config {
        width: Some(cols as u32),
        absolute_offset: false,
        ..Default::default()
    };
    viuer::print(&image::DynamicImage::ImageRgb8(img.clone()), &conf)
        .context("printing the image")?;
    Ok(())
}

fn terminal_columns() -> u16 {
    crossterm::terminal::size().map(|(c, _)| c).unwrap_or(80)
}

fn sample(a: &SampleArgs) -> Result<()> {
    if a.count == 0 || a.count > 4096 {
        bail!("--count must be 1 to 4096, got {}", a.count);
    }
    let (loaded, _) = open_model(&a.model, &a.device)?;
    let m = &loaded.model;
    let seed = a.seed.unwrap_or(loaded.meta.config.train.seed);
    let zs = train::sample_latents(seed, a.count, m.config.latent);
    let pixels = model::decode_to_u8(m, &zs)?;
    let s = m.shape;
    let img = imageio::grid(
        &pixels,
        s.channels,
        s.height,
        s.width,
        imageio::grid_columns(a.count),
    );
    save_and_print(&img, &a.out, a.print)
}

/// A latent for `spec`: a seed (whole number) gives a prior draw, a file is encoded (its mean).
pub fn latent_for(spec: &str, m: &Vae, crop: config::Crop) -> Result<Vec<f32>> {
    if let Ok(seed) = spec.parse::<u64>() {
        return Ok(train::sample_latents(seed, 1, m.config.latent));
    }
    let path = Path::new(spec);
    if !path.exists() {
        bail!("`{spec}` is neither a seed (a whole number) nor an existing image file");
    }
    let img = folder::decode(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let xs = image_tensor(&img, m, crop)?;
    let mu: Vec<f32> = m.encode(&xs)?.mu.flatten_all()?.to_vec1()?;
    Ok(mu)
}

fn image_tensor(img: &image::DynamicImage, m: &Vae, crop: config::Crop) -> Result<Tensor> {
    let s = m.shape;
    let chw = folder::prepare(img, crop, (s.height, s.width), s.channels);
    let xs: Vec<f32> = chw.iter().map(|&v| f32::from(v) / 255.0).collect();
    Ok(Tensor::from_vec(
        xs,
        (1, s.channels, s.height, s.width),
        m.device(),
    )?)
}

/// Points from `a` to `b` inclusive, on a line or on the great circle between them.
pub fn interpolate_latents(a: &[f32], b: &[f32], steps: usize, slerp: bool) -> Vec<f32> {
    let steps = steps.max(2);
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let omega = (dot / (na * nb).max(1e-12)).clamp(-1.0, 1.0).acos();
    let mut out = Vec::with_capacity(steps * a.len());
    for k in 0..steps {
        let t = k as f64 / (steps - 1) as f64;
        let (wa, wb) = if slerp && omega.sin().abs() > 1e-6 {
            (
                ((1.0 - t) * omega).sin() / omega.sin(),
                (t * omega).sin() / omega.sin(),
            )
        } else {
            (1.0 - t, t)
        };
        out.extend(
            a.iter()
                .zip(b)
                .map(|(x, y)| (wa * f64::from(*x) + wb * f64::from(*y)) as f32),
        );
    }
    out
}

fn interpolate(a: &InterpolateArgs) -> Result<()> {
    if a.steps < 2 || a.steps > 256 {
        bail!("--steps must be 2 to 256, got {}", a.steps);
    }
    let (loaded, _) = open_model(&a.model, &a.device)?;
    let m = &loaded.model;
    let crop = loaded.meta.config.data.crop;
    let za = latent_for(&a.from, m, crop).with_context(|| "--from")?;
    let zb = latent_for(&a.to, m, crop).with_context(|| "--to")?;
    let zs = interpolate_latents(&za, &zb, a.steps, a.slerp);
    let pixels = model::decode_to_u8(m, &zs)?;
    let s = m.shape;
    let img = imageio::grid(&pixels, s.channels, s.height, s.width, a.steps);
    save_and_print(&img, &a.out, a.print)
}

fn reconstruct(a: &ReconstructArgs) -> Result<()> {
    let (loaded, _) = open_model(&a.model, &a.device)?;
    let m = &loaded.model;
    let crop = loaded.meta.config.data.crop;
    let s = m.shape;
    let mut pixels = Vec::new();
    for path in &a.images {
        let img = folder::decode(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let xs = image_tensor(&img, m, crop)?;
        pixels.extend(folder::prepare(&img, crop, (s.height, s.width), s.channels));
        let mu = m.encode(&xs)?.mu;
        let z: Vec<f32> = mu.flatten_all()?.to_vec1()?;
        pixels.extend(model::decode_to_u8(m, &z)?);
    }
    let img = imageio::grid(&pixels, s.channels, s.height, s.width, 2);
    save_and_print(&img, &a.out, a.print)
}

fn scan(spec: &str, quick: bool) -> Result<()> {
    let source = catalog::resolve(spec).map_err(anyhow::Error::new)?;
    match source.kind {
        catalog::SourceKind::Synthetic => {
            println!(
                "synthetic faces: generated from a seed, any count (data.synthetic_count), \
                 3 channels"
            );
            Ok(())
        }
        catalog::SourceKind::Npy(path) => {
            let im = data::npy::read(&path).map_err(anyhow::Error::new)?;
            println!(
                "{}: {} images, {}x{} pixels, {} channel(s)",
                path.display(),
                im.count,
                im.width,
                im.height,
                im.channels
            );
            Ok(())
        }
        catalog::SourceKind::Folder(path) => {
            let report = data::scan::scan_folder(&path, quick).map_err(anyhow::Error::new)?;
            print!("{}", report.render(&path));
            if report.readable == 0 {
                bail!("{}: no readable images", path.display());
            }
            Ok(())
        }
    }
}

fn list_datasets() -> Result<()> {
    for d in catalog::descriptions() {
        let status = match catalog::resolve(&d.name) {
            Ok(s) => match s.kind {
                catalog::SourceKind::Synthetic => "built in".to_string(),
                catalog::SourceKind::Folder(p) | catalog::SourceKind::Npy(p) => {
                    format!("found at {}", p.display())
                }
            },
            Err(_) => format!(
                "missing: {}",
                d.get.as_deref().unwrap_or("see its description")
            ),
        };
        println!("{:<10} {}\n           {status}", d.name, d.title);
    }
    Ok(())
}

fn eval(a: &EvalArgs) -> Result<()> {
    if a.samples > 10_000 {
        bail!("--samples must be at most 10000, got {}", a.samples);
    }
    let (loaded, _) = open_model(&a.model, &a.device)?;
    let mut config = loaded.meta.config.clone();
    let own = a.data.is_none() || a.data.as_deref() == Some(config.data.source.as_str());
    if let Some(d) = &a.data {
        config.data.source = d.clone();
    }
    let data = data::load(&config).map_err(anyhow::Error::new)?;
    let shape = loaded.model.shape;
    if (data.channels, data.height, data.width) != (shape.channels, shape.height, shape.width) {
        bail!(
            "the data gives {}x{}x{} images, the model takes {shape:?}",
            data.channels,
            data.height,
            data.width
        );
    }
    let mut ids: Vec<usize> = if a.held_out {
        if !own {
            bail!(
                "--held-out needs the model's own data set ({})",
                loaded.meta.config.data.source
            );
        }
        data::batcher::split(data.len(), config.data.val_fraction, config.train.seed).val
    } else {
        (0..data.len()).collect()
    };
    if let Some(limit) = a.limit {
        ids.truncate(limit);
    }
    if ids.is_empty() {
        bail!("no images to score");
    }
    let report = crate::eval::evaluate(&loaded.model, &data, &ids, a.samples, 0)?;
    print!("{}", report.table());
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&report)?;
        crate::run::atomic_write(path, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
