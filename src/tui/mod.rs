//! The studio: a ratatui terminal UI over a run directory.
//!
//! The studio never trains in its own process. `facestudio` starts a headless trainer as a
//! child process in a session of its own (so it outlives the studio when detached) and then
//! follows the run directory exactly as `facestudio watch` does: `metrics.jsonl`,
//! `status.json`, `train.log`, `samples/` and `config.toml`, woken by notify. Commands go to the
//! trainer over the run's control socket. So one code path serves a training started here, a
//! headless run on another terminal, a detached run and a finished one.

pub mod app;
pub mod follow;
pub mod graphics;
mod live;
pub mod screens;
pub mod series;
pub mod terminal;
pub mod theme;
pub mod widgets;

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crossterm::event::{self, Event};

use crate::cli::TrainArgs;
use crate::config::Config;
use crate::run::RunDir;
use app::{Action, App, Screen, Tone};
use follow::{LogLevel, LogLine, RunData, RunFollower};
use terminal::{Term, TerminalGuard};
use theme::Theme;

/// How long a stopping trainer gets to save and finish before the studio leaves it.
const STOP_TIMEOUT: Duration = Duration::from_secs(120);

/// What the studio shows.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Start a training (a headless trainer process) and watch it.
    Train {
        /// The training options.
        args: TrainArgs,
    },
    /// Attach to a run directory that another process writes.
    Watch {
        /// The run directory.
        run: PathBuf,
    },
    /// Browse a finished model's faces.
    Gallery {
        /// A checkpoint, run directory or models/ name.
        model: String,
        /// A second model for the versus view.
        versus: Option<String>,
    },
}

/// How the studio starts.
#[derive(Debug, Clone)]
pub struct StudioOptions {
    /// What to show.
    pub mode: Mode,
    /// `--theme`.
    pub theme: Option<String>,
    /// `--graphics`.
    pub graphics: Option<String>,
}

/// How the event loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    /// The user quit; no trainer is left behind by this choice.
    Quit,
    /// The user detached; a trainer may carry on.
    Detached,
    /// The trainer was stopped and has finished.
    Stopped,
    /// A signal ended the studio.
    Signal(i32),
}

/// Everything the event loop works with.
struct Session {
    app: App,
    follower: Option<RunFollower>,
    child: Option<Child>,
    fps: f64,
    watch: Watched,
}

/// Files the studio itself watches: the config file it was started with and the themes.
#[derive(Default)]
struct Watched {
    /// The user's config file and the settings last read from it.
    config: Option<(PathBuf, Config)>,
    /// Settled changes to that file.
    config_rx: Option<crate::reload::FileWatcher>,
    /// Settled changes in `themes/`.
    themes_rx: Option<crate::reload::FileWatcher>,
}

impl Watched {
    /// Watches `config` (when there is a file) and the `themes/` folder (when there is one).
    fn new(config: Option<(PathBuf, Config)>) -> Self {
        let config_rx = config
            .as_ref()
            .and_then(|(p, _)| crate::reload::FileWatcher::new(&[p.clone()]).ok());
        let themes = Path::new("themes");
        let themes_rx = themes
            .is_dir()
            .then(|| crate::reload::FileWatcher::folder(themes, "toml").ok())
            .flatten();
        Self {
            config,
            config_rx,
            themes_rx,
        }
    }
}

/// Runs the studio until the user quits.
pub fn run(opts: StudioOptions) -> Result<()> {
    if let Some(why) = terminal::unfit_reason() {
        anyhow::bail!("the studio cannot be drawn here: {why}");
    }
    let (mut session, log) = prepare(&opts)?;
    choose_graphics(&mut session.app, opts.graphics.as_deref())?;
    let result = {
        let mut guard = TerminalGuard::enter(log.clone()).context("taking over the terminal")?;
        event_loop(&mut guard.terminal, &mut session)
    };
    // The guard is dropped: the terminal is back, so it is safe to print.
    match result {
        Ok(exit) => {
            farewell(exit, &mut session);
            Ok(())
        }
        Err(e) => Err(e.context(format!("log: {}", log.display()))),
    }
}

/// Picks the image protocol (`--graphics`, else `ui.graphics`, else asking the terminal),
/// before the terminal is taken over so the query's answer is not read as keys.
fn choose_graphics(app: &mut App, flag: Option<&str>) -> Result<()> {
    let config = app
        .data
        .config
        .as_ref()
        .map_or("auto".to_string(), |c| c.ui.graphics.clone());
    let choice = graphics::Choice::pick(flag, &config).map_err(anyhow::Error::msg)?;
    let decision = graphics::detect(choice);
    tracing::info!(
        "graphics: {} ({}; cell {:?})",
        decision.label(),
        decision.why,
        decision.cell
    );
    app.graphics = decision.label();
    app.pictures = graphics::Pictures::new(decision);
    Ok(())
}

/// Everything that can fail before the terminal is taken over, so errors print plainly.
fn prepare(opts: &StudioOptions) -> Result<(Session, PathBuf)> {
    match &opts.mode {
        Mode::Train { args } => {
            let (config, config_path) = crate::cli::effective_config(args)?;
            let run = crate::cli::run_dir(args.run.as_deref(), args.resume)?;
            let theme = Theme::choose(opts.theme.as_deref(), &config.ui.theme)?;
            let log = run.root.join("studio.log");
            crate::cli::log_to_file(&log)?;
            let child = spawn_trainer(args, &run)?;
            tracing::info!(
                pid = child.id(),
                "started a headless trainer for {}",
                run.root.display()
            );
            let mut data = RunData::new(&run.root);
            data.config = Some(config.clone());
            let mut app = App::new(data, theme, config.ui.smoothing);
            app.gallery.follow_run(&run.root);
            let follower = Some(RunFollower::new(&run.root));
            let watch = Watched::new(config_path.map(|p| (p, config.clone())));
            Ok((
                Session {
                    app,
                    follower,
                    child: Some(child),
                    fps: config.ui.fps,
                    watch,
                },
                log,
            ))
        }
        Mode::Watch { run } => {
            let config = Config::load(&RunDir::new(run).config()).ok();
            let ui = config.as_ref().map(|c| c.ui.clone()).unwrap_or_default();
            let theme = Theme::choose(opts.theme.as_deref(), &ui.theme)?;
            let log = run.join("studio.log");
            crate::cli::log_to_file(&log)?;
            tracing::info!("watching {}", run.display());
            let mut data = RunData::new(run);
            data.config = config;
            let mut app = App::new(data, theme, ui.smoothing);
            app.gallery.follow_run(run);
            let follower = Some(RunFollower::new(run));
            Ok((
                Session {
                    app,
                    follower,
                    child: None,
                    fps: ui.fps,
                    watch: Watched::new(None),
                },
                log,
            ))
        }
        Mode::Gallery { model, versus } => {
            prepare_gallery(model, versus.as_deref(), opts.theme.as_deref())
        }
    }
}

/// A studio over a finished model: its sample grid decoded here, its run followed if it has one.
fn prepare_gallery(
    spec: &str,
    versus: Option<&str>,
    theme: Option<&str>,
) -> Result<(Session, PathBuf)> {
    let loaded = crate::checkpoint::load_model(spec, &candle_core::Device::Cpu)
        .map_err(anyhow::Error::new)?;
    // Checked now, so that a wrong second model is a plain error before the screen is taken.
    let versus = match versus {
        Some(v) => Some(
            crate::checkpoint::load_model(v, &candle_core::Device::Cpu)
                .map_err(anyhow::Error::new)?
                .path,
        ),
        None => None,
    };
    let config = loaded.meta.config.clone();
    let theme = Theme::choose(theme, &config.ui.theme)?;
    let m = &loaded.model;
    let seed = config.train.seed;
    let zs = crate::train::sample_latents(seed, crate::train::SAMPLE_COUNT, m.config.latent);
    let pixels = crate::model::decode_to_u8(m, &zs)?;
    let s = m.shape;
    let cols = crate::imageio::grid_columns(crate::train::SAMPLE_COUNT);
    let grid = crate::imageio::grid(&pixels, s.channels, s.height, s.width, cols);

    let run_root = loaded
        .path
        .parent()
        .and_then(Path::parent)
        .filter(|p| crate::control::is_run_dir(p));
    let log = std::env::temp_dir().join("facestudio-studio.log");
    crate::cli::log_to_file(&log)?;
    let mut data = match run_root {
        Some(root) => RunData::new(root),
        None => RunData {
            name: spec.to_string(),
            ..Default::default()
        },
    };
    data.config = Some(config.clone());
    let mut app = App::new(data, theme, config.ui.smoothing);
    app.controls = false;
    app.screen = Screen::Gallery;
    app.sample = widgets::halfblock::SampleView::from_image(grid);
    app.gallery.caption = Some(format!("model {spec} · step {}", loaded.meta.step));
    app.gallery.open_model(&loaded.path);
    if let Some(other) = versus {
        app.gallery.versus = Some(other);
        app.gallery.view = screens::gallery::View::Versus;
    }
    let follower = run_root.map(RunFollower::new);
    Ok((
        Session {
            app,
            follower,
            child: None,
            fps: config.ui.fps,
            watch: Watched::new(None),
        },
        log,
    ))
}

/// Starts `facestudio train --headless` for `run` in a session of its own, its output
/// appended to `headless.out` in the run.
fn spawn_trainer(args: &TrainArgs, run: &RunDir) -> Result<Child> {
    std::fs::create_dir_all(&run.root)
        .with_context(|| format!("creating {}", run.root.display()))?;
    let out_path = run.root.join("headless.out");
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&out_path)
        .with_context(|| format!("opening {}", out_path.display()))?;
    let exe = std::env::current_exe().context("finding the facestudio executable")?;
    let mut cmd = Command::new(exe);
    cmd.args(["train", "--headless", "--run"]).arg(&run.root);
    if let Some(c) = &args.config {
        cmd.arg("--config").arg(c);
    }
    if let Some(d) = &args.data {
        cmd.args(["--data", d]);
    }
    if let Some(d) = &args.device {
        cmd.args(["--device", d]);
    }
    if let Some(n) = args.steps {
        cmd.args(["--steps", &n.to_string()]);
    }
    if args.resume {
        cmd.arg("--resume");
    }
    // The studio's user decides what happens after a divergence; a detached run that nobody
    // answers rolls back by itself after a while.
    cmd.args(["--ask-on-divergence", &DIVERGENCE_WAIT_S.to_string()]);
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    // SAFETY: setsid is async-signal-safe; it detaches the trainer from the studio's terminal
    // and process group, so a hang-up or Ctrl-C there does not reach it.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn().context("starting the headless trainer")
}

/// Seconds the studio's trainer waits for `r` after a divergence before rolling back itself.
const DIVERGENCE_WAIT_S: u64 = 600;

fn event_loop(term: &mut Term, s: &mut Session) -> Result<Exit> {
    let frame = Duration::from_secs_f64(1.0 / s.fps.clamp(0.5, 60.0));
    let mut next_tick = Instant::now();
    let mut last_draw: Option<Instant> = None;
    loop {
        if let Some(sig) = terminal::pending_signal() {
            tracing::info!("signal {sig}: leaving");
            return Ok(Exit::Signal(sig));
        }
        if Instant::now() >= next_tick {
            next_tick = Instant::now() + frame;
            if let Some(exit) = tick(s) {
                return Ok(exit);
            }
            if s.app.dirty || last_draw.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                draw(term, &mut s.app)?;
                last_draw = Some(Instant::now());
            }
        }
        let timeout = next_tick.saturating_duration_since(Instant::now());
        if !event::poll(timeout)? {
            continue;
        }
        // Answer every waiting event, then draw at once: keys never wait for the next frame.
        loop {
            let action = match event::read()? {
                Event::Key(key) => s.app.on_key(key),
                Event::Mouse(m) => s.app.on_mouse(m),
                Event::Resize(..) => {
                    s.app.dirty = true;
                    Action::None
                }
                _ => Action::None,
            };
            if let Some(exit) = perform(term, s, action)? {
                return Ok(exit);
            }
            if !event::poll(Duration::ZERO)? {
                break;
            }
        }
        if s.app.dirty {
            draw(term, &mut s.app)?;
            last_draw = Some(Instant::now());
        }
    }
}

fn draw(term: &mut Term, app: &mut App) -> Result<()> {
    term.draw(|f| {
        let area = f.area();
        app.render(area, f.buffer_mut());
    })?;
    let deletions = app.pictures.take_deletions();
    if !deletions.is_empty() {
        use std::io::Write;
        let out = term.backend_mut();
        out.write_all(deletions.as_bytes())?;
        out.flush()?;
    }
    app.dirty = false;
    tracing::trace!("frame drawn");
    Ok(())
}

/// One frame's housekeeping: new files, the trainer process, a pending stop.
fn tick(s: &mut Session) -> Option<Exit> {
    if let Some(f) = &mut s.follower {
        if f.poll(&mut s.app.data) {
            s.app.sync_sample();
            s.app.dirty = true;
            live::after_poll(&mut s.app);
        }
    }
    live::watch_files(&mut s.app, &mut s.watch);
    let app = &mut s.app;
    if app.gallery.poll(&app.data) | app.datasets.poll(&app.data) | app.pictures.poll() {
        app.dirty = true;
    }
    if let Some(child) = &mut s.child {
        if let Ok(Some(status)) = child.try_wait() {
            s.child = None;
            on_trainer_exit(&mut s.app, status);
        }
    }
    let started = s.app.stopping?;
    let ended = s.child.is_none() && !s.app.data.alive;
    if ended {
        return Some(Exit::Stopped);
    }
    if started.elapsed() > STOP_TIMEOUT {
        tracing::warn!("the trainer did not stop within {STOP_TIMEOUT:?}; leaving it");
        return Some(Exit::Detached);
    }
    None
}

/// Reports a trainer process that ended, with the last line it printed when it failed.
fn on_trainer_exit(app: &mut App, status: std::process::ExitStatus) {
    tracing::info!("the trainer exited: {status}");
    app.data.alive = false;
    if status.success() {
        app.say("the trainer has ended", Tone::Info);
        return;
    }
    let out = std::fs::read_to_string(app.data.root.join("headless.out")).unwrap_or_default();
    let last = out
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no output");
    let text = follow::sanitize(last);
    app.data.push_log(LogLine {
        time: String::new(),
        level: LogLevel::Error,
        text: text.clone(),
    });
    app.say(
        format!("the trainer failed ({status}): {text}"),
        Tone::Error,
    );
}

/// Carries out what a key asked for; `Some` ends the loop.
fn perform(term: &mut Term, s: &mut Session, action: Action) -> Result<Option<Exit>> {
    let run = RunDir::new(&s.app.data.root);
    match action {
        Action::None => {}
        Action::Redraw => {
            term.clear()?;
            s.app.dirty = true;
        }
        Action::Quit => return Ok(Some(Exit::Quit)),
        Action::Detach => return Ok(Some(Exit::Detached)),
        Action::Send(cmd) => {
            match crate::control::send(&run, &cmd) {
                Ok(reply) => s.app.say(reply, Tone::Info),
                Err(e) => s.app.say(format!("`{cmd}` failed: {e}"), Tone::Error),
            }
            tracing::info!("sent `{cmd}`");
        }
        Action::Stop => stop(s, &run),
        Action::Edit(edit) => live::write_edit(&mut s.app, &run, &edit),
    }
    Ok(None)
}

/// Asks the trainer to stop (over the socket; a SIGTERM to our own child as a fallback).
fn stop(s: &mut Session, run: &RunDir) {
    let sent = match crate::control::send(run, "stop") {
        Ok(_) => true,
        Err(e) => match &s.child {
            Some(child) => {
                tracing::warn!("stop over the socket failed ({e}); sending SIGTERM");
                // SAFETY: kill only sends a signal to our own child process.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) == 0 }
            }
            None => {
                s.app.say(format!("stop failed: {e}"), Tone::Error);
                false
            }
        },
    };
    if sent {
        s.app.stopping = Some(Instant::now());
        s.app.say(
            "stopping: the trainer saves a checkpoint, then ends…",
            Tone::Info,
        );
    }
}

/// What to tell the user once the terminal is back.
fn farewell(exit: Exit, s: &mut Session) {
    let root = s.app.data.root.display().to_string();
    if let Some(child) = &mut s.child {
        if exit == Exit::Stopped {
            let _ = child.wait();
        }
    }
    let alive = s.app.trainer_live()
        || s.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
    match exit {
        Exit::Stopped => {
            println!(
                "training stopped at step {}; run directory {root}; continue with \
                 `facestudio train --run {root} --resume`",
                s.app.data.step()
            );
        }
        Exit::Quit | Exit::Detached | Exit::Signal(_) if alive && s.app.controls => {
            let pid = s.app.data.status.as_ref().map_or(0, |st| st.pid);
            println!(
                "training continues in the background (process {pid}); reattach with \
                 `facestudio watch {root}`; log: {root}/train.log"
            );
        }
        _ => {}
    }
}
