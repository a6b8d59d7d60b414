//! The training loop. It runs on a thread of its own, reports typed [`Event`]s and obeys
//! [`Command`]s, and knows nothing of terminals: the headless driver and the studio both drive
//! it the same way.
//!
//! Everything random in a run is keyed by the run seed and the step (batch order, flips,
//! reparameterisation noise), so a resumed run trains exactly as one that never stopped.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};

use crate::checkpoint::{self, AdamMeta, Meta, Snapshot};
use crate::config::{Config, Effect, LrSchedule};
use crate::data::batcher::{self, EpochSettings, Position, Prefetcher};
use crate::data::{self, Dataset};
use crate::imageio;
use crate::model::{self, ImageShape, Vae};
use crate::optim::Adam;
use crate::rng::Rng;
use crate::run::{
    self, MetricsWriter, Record, RunDir, RunLock, SettingRecord, StepRecord, ValRecord,
};

/// Faces in the fixed sample grid.
pub const SAMPLE_COUNT: usize = 64;
/// Most validation images scored per pass.
const VAL_LIMIT: usize = 1024;

/// What the trainer reports.
#[derive(Debug, Clone)]
pub enum Event {
    /// Setup is done and training is about to begin.
    Started(Box<Started>),
    /// A logged step.
    Step(StepRecord),
    /// A validation pass.
    Val(ValRecord),
    /// A sample grid was written.
    Sample {
        /// Its step.
        step: u64,
        /// The PNG.
        path: PathBuf,
    },
    /// A checkpoint was written.
    Checkpoint {
        /// Its step.
        step: u64,
        /// Its metadata file.
        path: PathBuf,
    },
    /// The trainer's state changed.
    State(TrainState),
    /// A setting took effect (or was refused).
    Setting(SettingRecord),
    /// A line for the run's log panel.
    Log(Level, String),
    /// Training ended.
    Finished(Summary),
}

/// Severity of a [`Event::Log`] line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Routine.
    Info,
    /// Worth a look.
    Warn,
    /// Something failed.
    Error,
}

/// What is known once setup is done.
#[derive(Debug, Clone)]
pub struct Started {
    /// The run's name.
    pub run: String,
    /// The run directory.
    pub run_dir: PathBuf,
    /// The device, in words.
    pub device: String,
    /// The step training starts from (non-zero when resumed).
    pub step: u64,
    /// The effective configuration.
    pub config: Config,
    /// Data set name.
    pub dataset: String,
    /// Training images.
    pub train_images: usize,
    /// Held-out images.
    pub val_images: usize,
    /// Unreadable files skipped.
    pub bad_files: usize,
    /// Trainable parameters.
    pub parameters: usize,
    /// Seconds trained before this start.
    pub train_seconds: f64,
}

/// The trainer's state.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainState {
    /// Loading data and building the model.
    Loading,
    /// Training.
    Running,
    /// Paused by the user.
    Paused,
    /// Paused because the loss is not finite at `step`.
    Diverged {
        /// The step that diverged.
        step: u64,
        /// What happened.
        what: String,
    },
    /// Paused because a file could not be written.
    WriteFailed {
        /// What failed.
        what: String,
    },
    /// Done.
    Finished,
}

/// What the UI (or the headless driver) asks of the trainer.
#[derive(Debug, Clone)]
pub enum Command {
    /// Stop stepping until resumed.
    Pause,
    /// Carry on (also retries a failed write).
    Resume,
    /// Write a checkpoint now.
    SaveNow,
    /// Save a checkpoint and end.
    Stop,
    /// Apply the live settings of a new configuration.
    Apply(Box<Config>),
    /// After divergence: reload the last good checkpoint and scale the learning rate.
    Rollback {
        /// Multiplies the learning rate.
        lr_factor: f64,
    },
}

/// How a training ended.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The last step trained.
    pub step: u64,
    /// Steps trained in this session.
    pub steps_this_session: u64,
    /// Whether all configured steps are done.
    pub completed: bool,
    /// Mean training images per second in this session.
    pub images_per_second: f64,
    /// Share of step time spent waiting for batches.
    pub data_wait_fraction: f64,
    /// The last logged figures.
    pub last: Option<StepRecord>,
}

/// How to start a training.
#[derive(Debug, Clone)]
pub struct Options {
    /// The configuration (ignored for the model when resuming: the checkpoint's is used).
    pub config: Config,
    /// The run directory.
    pub run: RunDir,
    /// Continue from the newest checkpoint.
    pub resume: bool,
}

/// Why training could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Data problems.
    #[error(transparent)]
    Data(#[from] data::DataError),
    /// Run directory problems.
    #[error(transparent)]
    Run(#[from] run::RunError),
    /// Checkpoint problems.
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    /// Tensor problems.
    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),
    /// Anything else, in words.
    #[error("{0}")]
    Other(String),
}

/// The learning rate at `step` of `total`.
pub fn lr_at(lr: f64, schedule: LrSchedule, step: u64, total: u64) -> f64 {
    match schedule {
        LrSchedule::Constant => lr,
        LrSchedule::Cosine => {
            let t = (step as f64 / total.max(1) as f64).min(1.0);
            lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()))
        }
    }
}

/// The KL weight at `step`, ramped linearly over `warmup` steps.
pub fn beta_at(beta: f64, warmup: u64, step: u64) -> f64 {
    if warmup == 0 {
        beta
    } else {
        beta * ((step + 1) as f64 / warmup as f64).min(1.0)
    }
}

/// The fixed latents of a run's sample grid, the same for every step and resume.
pub fn sample_latents(seed: u64, count: usize, latent: usize) -> Vec<f32> {
    Rng::keyed(seed, "sample-latents", 0).normals(count * latent)
}

/// Trains until done, stopped, or `stop` is raised (Ctrl-C); events go to `events`.
pub fn run(
    opts: Options,
    events: Sender<Event>,
    commands: Receiver<Command>,
    stop: Arc<AtomicBool>,
) -> Result<Summary, TrainError> {
    // Every log line the trainer emits also goes to the run's train.log, once.
    let emit = |e: Event| {
        if let Event::Log(level, msg) = &e {
            match level {
                Level::Info => tracing::info!("{msg}"),
                Level::Warn => tracing::warn!("{msg}"),
                Level::Error => tracing::error!("{msg}"),
            }
        }
        let _ = events.send(e);
    };
    emit(Event::State(TrainState::Loading));
    let mut trainer = Trainer::setup(opts, &emit)?;
    let result = trainer.train(&emit, &commands, &stop);
    if let Err(e) = &result {
        emit(Event::Log(Level::Error, format!("training failed: {e}")));
    }
    result
}

struct Window {
    steps: u64,
    images: u64,
    total: f64,
    recon: f64,
    kl: f64,
    since: Instant,
}

impl Window {
    fn new() -> Self {
        Self {
            steps: 0,
            images: 0,
            total: 0.0,
            recon: 0.0,
            kl: 0.0,
            since: Instant::now(),
        }
    }
}

struct Trainer {
    config: Config,
    run: RunDir,
    _lock: RunLock,
    device: Device,
    data: Arc<Dataset>,
    train_ids: Arc<Vec<usize>>,
    val_ids: Vec<usize>,
    model: Vae,
    adam: Adam,
    settings: Arc<EpochSettings>,
    prefetch: Option<Prefetcher>,
    metrics: MetricsWriter,
    step: u64,
    position: Position,
    epoch: f64,
    train_seconds: f64,
    latents: Vec<f32>,
    last_checkpoint: Instant,
    /// The step from which the newest live learning-rate change applied: checkpoints after it
    /// may already carry the damage of a rate that turned out too high.
    lr_changed_at: Option<u64>,
    last_record: Option<StepRecord>,
    state: TrainState,
}

impl Trainer {
    fn setup(opts: Options, emit: &dyn Fn(Event)) -> Result<Self, TrainError> {
        let run = opts.run;
        run.create().map_err(|e| run::RunError::Io {
            path: run.root.clone(),
            source: e,
        })?;
        let lock = RunLock::acquire(&run)?;
        let resume_from = if opts.resume {
            checkpoint::list(&run.checkpoints()).pop()
        } else {
            None
        };
        if opts.resume && resume_from.is_none() {
            emit(Event::Log(
                Level::Warn,
                "no checkpoint to resume from; starting fresh".into(),
            ));
        }
        if !opts.resume && !checkpoint::list(&run.checkpoints()).is_empty() {
            return Err(TrainError::Other(format!(
                "{} already holds checkpoints; pass --resume to continue it or choose another \
                 --run",
                run.root.display()
            )));
        }
        let mut config = opts.config;
        let choice =
            crate::device::DeviceChoice::parse(&config.train.device).map_err(TrainError::Other)?;
        let device = choice
            .open()
            .map_err(|e| TrainError::Other(format!("{e:#}")))?;
        let loaded = match load_newest_good(&run, resume_from.is_some(), &device, emit) {
            Some(loaded) => {
                // The model and data of a run are fixed; its live settings continue from the file.
                let live_train = config.train.clone();
                let live_ui = config.ui.clone();
                config = loaded.meta.config.clone();
                config.train.steps = live_train.steps;
                config.ui = live_ui;
                Some(loaded)
            }
            None => None,
        };
        let on = crate::device::describe(&device);
        emit(Event::Log(
            Level::Info,
            format!("loading data `{}` for {on}", config.data.source),
        ));
        let data = data::load(&config)?;
        for bad in data.bad_files.iter().take(20) {
            emit(Event::Log(
                Level::Warn,
                format!("skipped {}: {}", bad.path.display(), bad.reason),
            ));
        }
        let split = batcher::split(data.len(), config.data.val_fraction, config.train.seed);
        if split.train.is_empty() {
            return Err(TrainError::Other(
                "no training images left after the validation split".into(),
            ));
        }
        let shape = ImageShape {
            channels: data.channels,
            height: data.height,
            width: data.width,
        };
        let (model, varmap, adam, step, position, train_seconds) = match loaded {
            Some(loaded) => {
                if loaded.meta.shape != shape {
                    return Err(TrainError::Other(format!(
                        "the data now gives {shape:?} images but the checkpoint was trained on \
                         {:?}",
                        loaded.meta.shape
                    )));
                }
                let moments = checkpoint::load_moments(&loaded, &device)?;
                let mut adam = Adam::new(model::named_vars(&loaded.varmap), config.train.lr)?;
                adam.restore(loaded.meta.adam, &moments)?;
                let m = &loaded.meta;
                let cut = run::truncate_metrics(&run.metrics(), m.step)?;
                emit(Event::Log(
                    Level::Info,
                    format!("resumed from step {} ({cut} metric records kept)", m.step),
                ));
                (
                    loaded.model,
                    loaded.varmap,
                    adam,
                    m.step,
                    m.position,
                    m.train_seconds,
                )
            }
            None => {
                if opts.resume {
                    // A fresh start keeps nothing of an earlier attempt's metrics.
                    run::truncate_metrics(&run.metrics(), 0)?;
                }
                let (model, varmap) =
                    model::init(&config.model, shape, config.train.seed, &device)?;
                let adam = Adam::new(model::named_vars(&varmap), config.train.lr)?;
                // A fresh run starts a fresh metrics file.
                run::atomic_write(&run.metrics(), b"").map_err(|e| run::RunError::Io {
                    path: run.metrics(),
                    source: e,
                })?;
                (model, varmap, adam, 0, Position::default(), 0.0)
            }
        };
        drop(varmap);
        write_config(&run, &config)?;
        let metrics = MetricsWriter::open(&run.metrics())?;
        let settings = Arc::new(EpochSettings::new(
            config.train.batch_size,
            config.data.flip,
        ));
        let data = Arc::new(data);
        let train_ids = Arc::new(split.train);
        let batches = batcher::batches_per_epoch(train_ids.len(), config.train.batch_size) as f64;
        let epoch = position.epoch as f64 + position.batch as f64 / batches;
        let latents = sample_latents(config.train.seed, SAMPLE_COUNT, config.model.latent);
        let parameters = adam.vars().iter().map(|(_, v)| v.elem_count()).sum();
        emit(Event::Started(Box::new(Started {
            run: run.name(),
            run_dir: run.root.clone(),
            device: crate::device::describe(&device),
            step,
            config: config.clone(),
            dataset: data.name.clone(),
            train_images: train_ids.len(),
            val_images: split.val.len(),
            bad_files: data.bad_files.len(),
            parameters,
            train_seconds,
        })));
        Ok(Self {
            config,
            run,
            _lock: lock,
            device,
            data,
            train_ids,
            val_ids: split.val,
            model,
            adam,
            settings,
            prefetch: None,
            metrics,
            step,
            position,
            epoch,
            train_seconds,
            latents,
            last_checkpoint: Instant::now(),
            lr_changed_at: None,
            last_record: None,
            state: TrainState::Loading,
        })
    }

    fn set_state(&mut self, state: TrainState, emit: &dyn Fn(Event)) {
        if self.state != state {
            self.state = state.clone();
            emit(Event::State(state));
        }
    }

    fn start_prefetch(&mut self) {
        self.prefetch = None;
        self.prefetch = Some(Prefetcher::start(
            self.data.clone(),
            self.train_ids.clone(),
            self.settings.clone(),
            self.config.train.seed,
            self.position,
            4,
        ));
    }

    fn train(
        &mut self,
        emit: &dyn Fn(Event),
        commands: &Receiver<Command>,
        stop: &AtomicBool,
    ) -> Result<Summary, TrainError> {
        self.start_prefetch();
        self.set_state(TrainState::Running, emit);
        let session_start = Instant::now();
        let first_step = self.step;
        let mut window = Window::new();
        let mut wait = Duration::ZERO;
        let mut busy = Duration::ZERO;
        let mut stopping = false;
        loop {
            // Commands: non-blocking while running, blocking while paused.
            loop {
                let paused = self.state != TrainState::Running;
                let cmd = if paused && !stopping {
                    match commands.recv_timeout(Duration::from_millis(100)) {
                        Ok(c) => Some(c),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => Some(Command::Stop),
                    }
                } else {
                    commands.try_recv().ok()
                };
                match cmd {
                    Some(c) => stopping |= self.handle(c, emit)?,
                    None if paused && !stopping && !stop.load(Ordering::Relaxed) => continue,
                    None => break,
                }
            }
            if stopping || stop.load(Ordering::Relaxed) {
                self.finish_checkpoint(emit);
                break;
            }
            if self.step >= self.config.train.steps {
                self.sample(emit);
                self.finish_checkpoint(emit);
                self.set_state(TrainState::Finished, emit);
                break;
            }
            let t0 = Instant::now();
            let batch = self.prefetch.as_ref().expect("prefetch started").next();
            let waited = t0.elapsed();
            wait += waited;
            let n = batch.len;
            let s = self.model.shape;
            let xs = Tensor::from_vec(batch.xs, (n, s.channels, s.height, s.width), &self.device)?;
            let t = &self.config.train;
            let beta = beta_at(t.beta, t.kl_warmup_steps, self.step);
            self.adam.lr = lr_at(t.lr, t.lr_schedule, self.step, t.steps);
            let mut noise = Rng::keyed(t.seed, "noise", self.step);
            let forward = self.model.forward_train(&xs, beta, &mut noise)?;
            let losses = &forward.losses;
            let total = losses.total.to_scalar::<f32>()? as f64;
            let recon = losses.recon.to_scalar::<f32>()? as f64;
            let kl = losses.kl.to_scalar::<f32>()? as f64;
            if !total.is_finite() {
                let what = format!(
                    "loss is {total} at step {} (recon {recon}, KL {kl}, lr {:.3e})",
                    self.step + 1,
                    self.adam.lr
                );
                self.diverged(what, emit);
                continue;
            }
            let grads = self.model.backward(forward)?;
            let info = self.adam.step(&grads, t.grad_clip)?;
            if !info.grad_norm.is_finite() {
                // The update already happened with a non-finite gradient: the weights are
                // poisoned, so only a rollback can help.
                let what = format!(
                    "gradient norm is {} at step {}",
                    info.grad_norm,
                    self.step + 1
                );
                self.diverged(what, emit);
                continue;
            }
            self.step += 1;
            self.position = batch.position;
            self.position.batch += 1;
            if self.position.batch >= batch.batches_in_epoch {
                self.position = Position {
                    epoch: self.position.epoch + 1,
                    batch: 0,
                };
            }
            self.epoch = batch.position.epoch as f64
                + (batch.position.batch + 1) as f64 / batch.batches_in_epoch as f64;
            let step_time = t0.elapsed();
            busy += step_time;
            self.train_seconds += step_time.as_secs_f64();
            window.steps += 1;
            window.images += n as u64;
            window.total += total;
            window.recon += recon;
            window.kl += kl;
            self.after_step(&mut window, beta, emit);
        }
        let secs = session_start.elapsed().as_secs_f64().max(1e-9);
        let steps = self.step - first_step;
        let images = steps as f64 * self.config.train.batch_size as f64;
        self.prefetch = None;
        let summary = Summary {
            step: self.step,
            steps_this_session: steps,
            completed: self.step >= self.config.train.steps,
            images_per_second: images / secs,
            data_wait_fraction: if busy.is_zero() {
                0.0
            } else {
                wait.as_secs_f64() / busy.as_secs_f64()
            },
            last: self.last_record.clone(),
        };
        tracing::info!(
            "finished at step {} ({:.1} images/s, data wait {:.2}%)",
            summary.step,
            summary.images_per_second,
            summary.data_wait_fraction * 100.0
        );
        emit(Event::Finished(summary.clone()));
        Ok(summary)
    }

    fn after_step(&mut self, window: &mut Window, beta: f64, emit: &dyn Fn(Event)) {
        let t = self.config.train.clone();
        if self.step % t.log_every == 0 || self.step == t.steps {
            let k = window.steps.max(1) as f64;
            let rec = StepRecord {
                step: self.step,
                epoch: self.epoch,
                time: self.train_seconds,
                total: window.total / k,
                recon: window.recon / k,
                kl: window.kl / k,
                beta,
                lr: self.adam.lr,
                ips: window.images as f64 / window.since.elapsed().as_secs_f64().max(1e-9),
            };
            self.record(Record::Train(rec.clone()), emit);
            self.last_record = Some(rec.clone());
            emit(Event::Step(rec));
            *window = Window::new();
        }
        if self.step % t.val_every == 0 && !self.val_ids.is_empty() {
            match self.validate() {
                Ok(rec) => {
                    self.record(Record::Val(rec.clone()), emit);
                    emit(Event::Log(
                        Level::Info,
                        format!("validation at step {}: -ELBO {:.2}", rec.step, rec.total),
                    ));
                    emit(Event::Val(rec));
                }
                Err(e) => emit(Event::Log(Level::Error, format!("validation failed: {e}"))),
            }
        }
        if self.step % t.sample_every == 0 {
            self.sample(emit);
        }
        let by_time = t.checkpoint_minutes > 0.0
            && self.last_checkpoint.elapsed().as_secs_f64() >= t.checkpoint_minutes * 60.0;
        if self.step % t.checkpoint_every == 0 || by_time {
            self.checkpoint(emit);
        }
    }

    fn record(&mut self, record: Record, emit: &dyn Fn(Event)) {
        if let Err(e) = self.metrics.append(&record) {
            emit(Event::Log(Level::Error, format!("{e}")));
        }
    }

    /// Handles one command; returns true when training should end.
    fn handle(&mut self, cmd: Command, emit: &dyn Fn(Event)) -> Result<bool, TrainError> {
        match cmd {
            Command::Pause => {
                if self.state == TrainState::Running {
                    self.set_state(TrainState::Paused, emit);
                    emit(Event::Log(
                        Level::Info,
                        format!("paused at step {}", self.step),
                    ));
                }
            }
            Command::Resume => match self.state.clone() {
                TrainState::Paused => {
                    self.set_state(TrainState::Running, emit);
                    emit(Event::Log(
                        Level::Info,
                        format!("resumed at step {}", self.step),
                    ));
                }
                TrainState::WriteFailed { .. } => {
                    self.set_state(TrainState::Running, emit);
                    self.checkpoint(emit);
                }
                _ => {}
            },
            Command::SaveNow => self.checkpoint(emit),
            Command::Stop => return Ok(true),
            Command::Apply(config) => self.apply(*config, emit),
            Command::Rollback { lr_factor } => self.rollback(lr_factor, emit)?,
        }
        Ok(false)
    }

    fn diverged(&mut self, what: String, emit: &dyn Fn(Event)) {
        emit(Event::Log(
            Level::Error,
            format!(
                "diverged: {what}; roll back to the last checkpoint with a lower learning rate"
            ),
        ));
        self.set_state(
            TrainState::Diverged {
                step: self.step + 1,
                what,
            },
            emit,
        );
    }

    fn rollback(&mut self, lr_factor: f64, emit: &dyn Fn(Event)) -> Result<(), TrainError> {
        let new_lr = (self.config.train.lr * lr_factor).max(1e-12);
        let all = checkpoint::list(&self.run.checkpoints());
        let before_change = self
            .lr_changed_at
            .and_then(|at| all.iter().rev().find(|e| e.step < at).cloned());
        let last = before_change.or_else(|| all.last().cloned());
        self.lr_changed_at = None;
        match last {
            Some(entry) => {
                let loaded = checkpoint::load(&entry.meta, &self.device)?;
                let moments = checkpoint::load_moments(&loaded, &self.device)?;
                for ((_, var), (_, new)) in self
                    .adam
                    .vars()
                    .iter()
                    .zip(model::named_vars(&loaded.varmap))
                {
                    var.set(new.as_tensor())?;
                }
                self.adam.restore(loaded.meta.adam, &moments)?;
                self.step = loaded.meta.step;
                self.position = loaded.meta.position;
                self.epoch = loaded.meta.epoch;
                self.train_seconds = loaded.meta.train_seconds;
            }
            None => {
                let (fresh, varmap) = model::init(
                    &self.config.model,
                    self.model.shape,
                    self.config.train.seed,
                    &self.device,
                )?;
                for ((_, var), (_, new)) in self.adam.vars().iter().zip(model::named_vars(&varmap))
                {
                    var.set(new.as_tensor())?;
                }
                drop(fresh);
                let lr = self.adam.lr;
                self.adam = Adam::new(self.adam.vars().to_vec(), lr)?;
                self.step = 0;
                self.position = Position::default();
                self.epoch = 0.0;
                self.train_seconds = 0.0;
            }
        }
        run::truncate_metrics(&self.run.metrics(), self.step)?;
        self.metrics = MetricsWriter::open(&self.run.metrics())?;
        let mut new_config = self.config.clone();
        new_config.train.lr = new_lr;
        self.apply(new_config, emit);
        // The run's config file tells the truth about the run: record the new rate there too.
        let path = self.run.config();
        if let Err(e) = crate::config::edit_file(&path, "train.lr", toml_edit::value(new_lr)) {
            emit(Event::Log(Level::Error, format!("{}: {e}", path.display())));
        }
        self.start_prefetch();
        emit(Event::Log(
            Level::Warn,
            format!(
                "rolled back to step {} with learning rate {new_lr:.3e}",
                self.step
            ),
        ));
        self.set_state(TrainState::Running, emit);
        Ok(())
    }

    /// Applies the live and next-epoch settings of `new`; restart settings are reported only.
    fn apply(&mut self, new: Config, emit: &dyn Fn(Event)) {
        if let Err((key, msg)) = new.validate() {
            emit(Event::Log(
                Level::Error,
                format!("rejected new settings: {key}: {msg}"),
            ));
            return;
        }
        let changes = self.config.changes(&new);
        let mut applied = false;
        for change in changes {
            match change.effect {
                Effect::Restart => {
                    emit(Event::Log(
                        Level::Warn,
                        format!(
                            "{} = {} needs a new run (pending; the run keeps {})",
                            change.key, change.new, change.old
                        ),
                    ));
                    continue;
                }
                Effect::NextEpoch => {
                    if change.key == "train.batch_size" {
                        self.settings
                            .batch_size
                            .store(new.train.batch_size, Ordering::Relaxed);
                        self.config.train.batch_size = new.train.batch_size;
                    } else {
                        self.settings.flip.store(new.data.flip, Ordering::Relaxed);
                        self.config.data.flip = new.data.flip;
                    }
                }
                Effect::Live => {}
            }
            let rec = SettingRecord {
                step: self.step + 1,
                key: change.key.clone(),
                value: change.new.clone(),
            };
            if change.key == "train.lr" {
                self.lr_changed_at = Some(rec.step);
            }
            tracing::info!("{} = {} from step {}", rec.key, rec.value, rec.step);
            self.record(Record::Setting(rec.clone()), emit);
            emit(Event::Setting(rec));
            applied = true;
        }
        let (model, data) = (self.config.model.clone(), self.config.data.clone());
        let (batch, flip) = (self.config.train.batch_size, self.config.data.flip);
        self.config.train = new.train;
        self.config.ui = new.ui;
        self.config.train.batch_size = batch;
        self.config.data = data;
        self.config.data.flip = flip;
        self.config.model = model;
        if !applied {
            emit(Event::Log(
                Level::Info,
                "settings reloaded: nothing changed".into(),
            ));
        }
    }

    fn validate(&self) -> Result<ValRecord, TrainError> {
        let ids: Vec<usize> = self.val_ids.iter().copied().take(VAL_LIMIT).collect();
        let s = self.model.shape;
        let (mut recon, mut kl) = (0.0f64, 0.0f64);
        for (i, chunk) in ids.chunks(128).enumerate() {
            let xs = batcher::to_f32(&self.data, chunk, &[]);
            let xs = Tensor::from_vec(
                xs,
                (chunk.len(), s.channels, s.height, s.width),
                &self.device,
            )?;
            let mut noise = Rng::keyed(self.config.train.seed, "val-noise", i as u64);
            let enc = self.model.encode(&xs)?;
            let z = self.model.reparameterize(&enc, &mut noise)?;
            let dec = self.model.decode_params(&z)?;
            recon += self
                .model
                .recon_nll(&dec, &xs)?
                .sum_all()?
                .to_scalar::<f32>()? as f64;
            kl += self.model.kl(&enc)?.sum_all()?.to_scalar::<f32>()? as f64;
        }
        let n = ids.len().max(1) as f64;
        let (recon, kl) = (recon / n, kl / n);
        Ok(ValRecord {
            step: self.step,
            epoch: self.epoch,
            time: self.train_seconds,
            total: recon + kl,
            recon,
            kl,
        })
    }

    fn sample(&self, emit: &dyn Fn(Event)) {
        let result = (|| -> Result<PathBuf, TrainError> {
            let pixels = model::decode_to_u8(&self.model, &self.latents)?;
            let s = self.model.shape;
            let cols = imageio::grid_columns(SAMPLE_COUNT);
            let img = imageio::grid(&pixels, s.channels, s.height, s.width, cols);
            let path = self.run.sample_path(self.step);
            imageio::save_png(&img, &path)
                .map_err(|e| TrainError::Other(format!("{}: {e}", path.display())))?;
            Ok(path)
        })();
        match result {
            Ok(path) => emit(Event::Sample {
                step: self.step,
                path,
            }),
            Err(e) => {
                emit(Event::Log(Level::Error, format!("sample grid: {e}")));
            }
        }
    }

    fn snapshot_meta(&self) -> Meta {
        Meta {
            format: checkpoint::FORMAT,
            step: self.step,
            position: self.position,
            epoch: self.epoch,
            train_seconds: self.train_seconds,
            config: self.config.clone(),
            shape: self.model.shape,
            adam: AdamMeta { ..self.adam.meta },
            weights: String::new(),
            optimizer: String::new(),
        }
    }

    fn checkpoint(&mut self, emit: &dyn Fn(Event)) {
        self.last_checkpoint = Instant::now();
        if matches!(self.state, TrainState::Diverged { .. }) {
            emit(Event::Log(
                Level::Warn,
                "not saving a diverged model".into(),
            ));
            return;
        }
        let weights: Vec<(String, Tensor)> = self
            .adam
            .vars()
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect();
        let moments = self.adam.moments();
        let snapshot = Snapshot {
            weights: &weights,
            moments: &moments,
            meta: self.snapshot_meta(),
        };
        match checkpoint::save(&self.run, snapshot, self.config.train.keep_checkpoints) {
            Ok(path) => {
                emit(Event::Log(
                    Level::Info,
                    format!("checkpoint at step {}: {}", self.step, path.display()),
                ));
                emit(Event::Checkpoint {
                    step: self.step,
                    path,
                });
            }
            Err(e) => {
                emit(Event::Log(
                    Level::Error,
                    format!("checkpoint failed: {e}; training paused, resume to retry"),
                ));
                self.set_state(
                    TrainState::WriteFailed {
                        what: e.to_string(),
                    },
                    emit,
                );
            }
        }
    }

    /// The checkpoint taken when training ends, unless the last one is of this very step.
    fn finish_checkpoint(&mut self, emit: &dyn Fn(Event)) {
        let latest = checkpoint::list(&self.run.checkpoints())
            .pop()
            .map(|e| e.step);
        if latest != Some(self.step) && self.step > 0 {
            self.checkpoint(emit);
        }
    }
}

/// Loads the newest checkpoint of `run` that reads back whole, falling back to older ones (a
/// file damaged on disk costs the steps since the one before it, not the run); `None` when
/// `wanted` is false or none loads.
fn load_newest_good(
    run: &RunDir,
    wanted: bool,
    device: &Device,
    emit: &dyn Fn(Event),
) -> Option<checkpoint::Loaded> {
    if !wanted {
        return None;
    }
    for entry in checkpoint::list(&run.checkpoints()).iter().rev() {
        match checkpoint::load(&entry.meta, device)
            .and_then(|l| checkpoint::load_moments(&l, device).map(|_| l))
        {
            Ok(loaded) => return Some(loaded),
            Err(e) => emit(Event::Log(
                Level::Warn,
                format!(
                    "cannot resume from {}: {e}; trying an older checkpoint",
                    entry.meta.display()
                ),
            )),
        }
    }
    emit(Event::Log(
        Level::Warn,
        "no checkpoint loads; starting fresh".into(),
    ));
    None
}

/// Writes the run's effective `config.toml` atomically.
pub fn write_config(run: &RunDir, config: &Config) -> Result<(), run::RunError> {
    let text = format!(
        "# The effective configuration of this run. Edit the live settings here while it trains\n\
         # (`facestudio config --default` says which are live); the trainer picks them up.\n{}",
        config.to_toml()
    );
    run::atomic_write(&run.config(), text.as_bytes()).map_err(|e| run::RunError::Io {
        path: run.config(),
        source: e,
    })
}
