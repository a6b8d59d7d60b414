//! The studio's state and its answers to keys and clicks. No terminal here: keys go in,
//! [`Action`]s come out, and [`App::render`] draws into any ratatui buffer.

use std::time::Instant;

use crossterm::event::{
    KeyCode, KeyEvent, KeyEventKind, KeyModifiers, MouseButton, MouseEvent, MouseEventKind,
};
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph, Widget, Wrap};

use super::follow::RunData;
use super::graphics::Pictures;
use super::screens::datasets::{self, DatasetsScreen};
use super::screens::gallery::{self, GalleryScreen};
use super::screens::hyper::Edit;
use super::screens::training::{self, TrainingScreen};
use super::screens::{contains, key, KeyHelp};
use super::theme::Theme;
use super::widgets::halfblock::SampleView;

/// The smallest size the full layout is drawn at.
pub const MIN_SIZE: (u16, u16) = (80, 24);

/// The keys every screen answers.
pub const GLOBAL_KEYS: [KeyHelp; 9] = [
    key("1 2 3", "Datasets / Training / Gallery"),
    key("Tab / S-Tab", "next / previous screen"),
    key("space", "pause / resume training"),
    key("s", "save a checkpoint now"),
    key("?", "show / hide this help"),
    key("Esc", "close the help or dialog"),
    key("Ctrl-L", "redraw the screen"),
    key("q / Ctrl-C", "quit (asks: stop training or detach)"),
    key("click", "switch tab"),
];

/// A screen of the studio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    /// The data set.
    Datasets,
    /// The training dashboard.
    Training,
    /// The sample gallery.
    Gallery,
}

impl Screen {
    /// All screens, in tab order.
    pub const ALL: [Screen; 3] = [Screen::Datasets, Screen::Training, Screen::Gallery];

    /// Its tab title.
    pub fn title(self) -> &'static str {
        match self {
            Screen::Datasets => "Datasets",
            Screen::Training => "Training",
            Screen::Gallery => "Gallery",
        }
    }

    fn cycle(self, forward: bool) -> Screen {
        let i = Self::ALL.iter().position(|s| *s == self).unwrap_or(0);
        Self::ALL[if forward { (i + 1) % 3 } else { (i + 2) % 3 }]
    }
}

/// What the user asked to leave with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Stop the training (the trainer saves a checkpoint) and quit.
    Stop,
    /// Quit and leave the training running headless.
    Detach,
    /// Stay.
    Cancel,
}

impl Choice {
    /// The dialog's choices, in order.
    pub const ALL: [Choice; 3] = [Choice::Stop, Choice::Detach, Choice::Cancel];

    fn label(self) -> &'static str {
        match self {
            Choice::Stop => "[s] Stop training (saves a checkpoint)",
            Choice::Detach => "[d] Detach (training continues headless)",
            Choice::Cancel => "[c] Cancel",
        }
    }
}

/// An overlay drawn over the screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlay {
    /// The key help of the current screen.
    Help,
    /// Stop, detach or cancel; `selected` indexes [`Choice::ALL`].
    Confirm {
        /// The highlighted choice.
        selected: usize,
    },
}

/// What the event loop must do after a key or click.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Nothing beyond redrawing.
    None,
    /// Send a command to the trainer over its control socket.
    Send(String),
    /// Clear the terminal and draw everything again.
    Redraw,
    /// Quit; no trainer is left behind.
    Quit,
    /// Quit and leave the trainer running.
    Detach,
    /// Stop the trainer, wait for it to finish, then quit.
    Stop,
    /// Write a setting to the run's config file (the trainer picks it up from there).
    Edit(Edit),
}

/// How serious a status-line message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    /// Routine.
    Info,
    /// Something failed.
    Error,
}

/// The studio's state.
pub struct App {
    /// What is known about the run.
    pub data: RunData,
    /// The visible screen.
    pub screen: Screen,
    /// The overlay, if any.
    pub overlay: Option<Overlay>,
    /// The data set screen.
    pub datasets: DatasetsScreen,
    /// The training dashboard.
    pub training: TrainingScreen,
    /// The gallery.
    pub gallery: GalleryScreen,
    /// The newest sample grid, decoded.
    pub sample: SampleView,
    /// The styles.
    pub theme: Theme,
    /// The image protocol in use, for the status bar.
    pub graphics: String,
    /// Pictures drawn with that protocol, encoded off the UI thread.
    pub pictures: Pictures,
    /// The last message for the status line, with its tone.
    pub message: Option<(String, Tone)>,
    /// Whether this studio may control a trainer (not for a finished model's gallery).
    pub controls: bool,
    /// Set while waiting for a stopped trainer to finish.
    pub stopping: Option<Instant>,
    /// Whether something changed since the last draw.
    pub dirty: bool,
    /// A setting this studio wrote, until the trainer reports it in force: key, value, when.
    pub awaiting: Option<(String, f64, Instant)>,
    /// The UI settings last taken from the run's config, to notice when they change.
    pub ui_seen: Option<crate::config::UiConfig>,
    tabs: Vec<(Screen, Rect)>,
}

impl App {
    /// A studio over `data`, on the training screen.
    pub fn new(data: RunData, theme: Theme, smoothing: f64) -> Self {
        Self {
            data,
            screen: Screen::Training,
            overlay: None,
            datasets: DatasetsScreen::default(),
            training: TrainingScreen::new(smoothing),
            gallery: GalleryScreen::default(),
            sample: SampleView::default(),
            theme,
            graphics: "halfblocks".into(),
            pictures: Pictures::default(),
            message: None,
            controls: true,
            stopping: None,
            dirty: true,
            awaiting: None,
            ui_seen: None,
            tabs: Vec::new(),
        }
    }

    /// Whether a live trainer is attached (so that quitting asks first).
    pub fn trainer_live(&self) -> bool {
        self.controls && self.data.alive
    }

    /// Sets the status-line message.
    pub fn say(&mut self, text: impl Into<String>, tone: Tone) {
        self.message = Some((text.into(), tone));
        self.dirty = true;
    }

    /// Takes in a new sample file, decoding it once.
    pub fn sync_sample(&mut self) {
        if self.gallery.caption.is_none() {
            let path = self.data.sample.as_ref().map(|(_, p)| p.clone());
            self.sample.set_path(path.as_deref());
        }
    }

    /// The keys the help shows for the current screen: its own, then the global ones.
    pub fn help_keys(&self) -> Vec<KeyHelp> {
        let own: &[KeyHelp] = match self.screen {
            Screen::Datasets => &datasets::KEYS,
            Screen::Training => &training::KEYS,
            Screen::Gallery => &gallery::KEYS,
        };
        own.iter().chain(GLOBAL_KEYS.iter()).copied().collect()
    }

    /// Answers a key.
    pub fn on_key(&mut self, key: KeyEvent) -> Action {
        if key.kind == KeyEventKind::Release {
            return Action::None;
        }
        self.dirty = true;
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && key.code == KeyCode::Char('l') {
            return Action::Redraw;
        }
        match self.overlay {
            Some(Overlay::Confirm { selected }) => return self.on_confirm_key(key, selected),
            Some(Overlay::Help) => {
                if matches!(key.code, KeyCode::Esc | KeyCode::Char('?' | 'q')) {
                    self.overlay = None;
                }
                return Action::None;
            }
            None => {}
        }
        if self.screen == Screen::Training && self.training.captures_keys(&key) && !ctrl {
            self.training.on_key(key, &self.data);
            return self.take_edit();
        }
        if self.screen == Screen::Datasets && self.datasets.captures_keys() && !ctrl {
            return self.on_browser_key(key);
        }
        if (ctrl && key.code == KeyCode::Char('c')) || key.code == KeyCode::Char('q') {
            return self.quit();
        }
        if !ctrl && !is_global(key.code) {
            let handled = match self.screen {
                Screen::Gallery => self.gallery.on_key(key, &self.data.root),
                Screen::Datasets => self.datasets.on_key(key),
                Screen::Training => gallery::Handled::No,
            };
            match handled {
                gallery::Handled::No => {}
                gallery::Handled::Yes => return Action::None,
                gallery::Handled::Say(text, error) => {
                    self.say(text, if error { Tone::Error } else { Tone::Info });
                    return Action::None;
                }
            }
        }
        match key.code {
            KeyCode::Char('1') => self.screen = Screen::Datasets,
            KeyCode::Char('2') => self.screen = Screen::Training,
            KeyCode::Char('3') => self.screen = Screen::Gallery,
            KeyCode::Tab => self.screen = self.screen.cycle(true),
            KeyCode::BackTab => self.screen = self.screen.cycle(false),
            KeyCode::Char('?') => self.overlay = Some(Overlay::Help),
            KeyCode::Esc => self.message = None,
            KeyCode::Char(' ') => return self.command(self.pause_command()),
            KeyCode::Char('s') => return self.command("save"),
            KeyCode::Char('r') if self.screen == Screen::Training => {
                return self.command("rollback 0.1")
            }
            _ if self.screen == Screen::Training => {
                self.training.on_key(key, &self.data);
                return self.take_edit();
            }
            _ => {}
        }
        Action::None
    }

    /// Hands a key to the data set browser and shows what it says.
    fn on_browser_key(&mut self, key: KeyEvent) -> Action {
        if let gallery::Handled::Say(text, error) = self.datasets.on_key(key) {
            self.say(text, if error { Tone::Error } else { Tone::Info });
        }
        Action::None
    }

    /// The edit the training screen finished, if any, as an action; only for a live studio.
    fn take_edit(&mut self) -> Action {
        match self.training.edit.take() {
            Some(_) if !self.controls => {
                self.say(
                    "this studio shows a finished model; there is no run to tune",
                    Tone::Error,
                );
                Action::None
            }
            Some(edit) => Action::Edit(edit),
            None => Action::None,
        }
    }

    /// `pause`, or `resume` when the trainer is paused or stopped by a problem.
    pub fn pause_command(&self) -> &'static str {
        let state = self.data.status.as_ref().map_or("", |s| s.state.as_str());
        if matches!(state, "paused" | "diverged" | "write-failed") {
            "resume"
        } else {
            "pause"
        }
    }

    fn command(&mut self, cmd: &str) -> Action {
        if !self.trainer_live() {
            let state = self.data.state();
            self.say(
                format!("no trainer is running ({state}); `{cmd}` not sent"),
                Tone::Error,
            );
            return Action::None;
        }
        Action::Send(cmd.to_string())
    }

    fn quit(&mut self) -> Action {
        if self.stopping.is_some() {
            // A second quit while stopping leaves the trainer to finish on its own.
            return Action::Detach;
        }
        if self.trainer_live() {
            self.overlay = Some(Overlay::Confirm { selected: 1 });
            return Action::None;
        }
        Action::Quit
    }

    fn on_confirm_key(&mut self, key: KeyEvent, selected: usize) -> Action {
        let n = Choice::ALL.len();
        let choice = match key.code {
            KeyCode::Char('s') => Choice::Stop,
            KeyCode::Char('d') => Choice::Detach,
            KeyCode::Char('c') | KeyCode::Esc => Choice::Cancel,
            KeyCode::Up | KeyCode::Char('k') | KeyCode::BackTab => {
                self.overlay = Some(Overlay::Confirm {
                    selected: (selected + n - 1) % n,
                });
                return Action::None;
            }
            KeyCode::Down | KeyCode::Char('j') | KeyCode::Tab => {
                self.overlay = Some(Overlay::Confirm {
                    selected: (selected + 1) % n,
                });
                return Action::None;
            }
            KeyCode::Enter => Choice::ALL[selected.min(n - 1)],
            _ => return Action::None,
        };
        self.choose(choice)
    }

    /// Carries out a choice of the quit dialog.
    pub fn choose(&mut self, choice: Choice) -> Action {
        self.overlay = None;
        match choice {
            Choice::Stop => Action::Stop,
            Choice::Detach => Action::Detach,
            Choice::Cancel => Action::None,
        }
    }

    /// Answers a mouse event: a click on a tab switches to it, on a panel focuses it.
    pub fn on_mouse(&mut self, ev: MouseEvent) -> Action {
        if ev.kind != MouseEventKind::Down(MouseButton::Left) || self.overlay.is_some() {
            return Action::None;
        }
        if let Some((screen, _)) = self
            .tabs
            .iter()
            .find(|(_, r)| contains(*r, ev.column, ev.row))
        {
            self.screen = *screen;
            self.dirty = true;
        } else if self.screen == Screen::Training && self.training.click(ev.column, ev.row) {
            self.dirty = true;
        }
        Action::None
    }

    /// Draws the whole studio into `buf`.
    pub fn render(&mut self, area: Rect, buf: &mut Buffer) {
        Block::default().style(self.theme.text).render(area, buf);
        if area.width < MIN_SIZE.0 || area.height < MIN_SIZE.1 {
            self.tabs.clear();
            self.render_compact(area, buf);
            return;
        }
        let [tabs, body, status] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Fill(1),
            Constraint::Length(1),
        ])
        .areas(area);

        self.render_tabs(tabs, buf);
        self.pictures.begin_frame();
        match self.screen {
            Screen::Datasets => {
                self.datasets
                    .render(body, buf, &self.data, &self.theme, &mut self.pictures)
            }
            Screen::Training => {
                let (t, p, s) = (&self.theme, &mut self.pictures, &mut self.sample);
                self.training.render(body, buf, &self.data, t, s, p);
            }
            Screen::Gallery => {
                let (t, p, s) = (&self.theme, &mut self.pictures, &mut self.sample);
                self.gallery.render(body, buf, &self.data, t, p, s);
            }
        }
        self.render_status(status, buf);
        match self.overlay {
            Some(Overlay::Help) => self.render_help(body, buf),
            Some(Overlay::Confirm { selected }) => self.render_confirm(body, buf, selected),
            None => {}
        }
    }

    fn render_tabs(&mut self, area: Rect, buf: &mut Buffer) {
        let t = &self.theme;
        self.tabs.clear();
        let mut spans = Vec::new();
        let mut x = area.x;
        for (i, screen) in Screen::ALL.iter().enumerate() {
            let label = format!(" {} {} ", i + 1, screen.title());
            let w = label.chars().count() as u16;
            self.tabs.push((*screen, Rect::new(x, area.y, w, 1)));
            let style = if *screen == self.screen {
                t.tab_active
            } else {
                t.tab
            };
            spans.push(Span::styled(label, style));
            spans.push(Span::raw(" "));
            x += w + 1;
        }
        Paragraph::new(Line::from(spans))
            .style(t.text)
            .render(area, buf);
        let brand = Line::from(Span::styled("facestudio ", t.dim)).right_aligned();
        if area.width > x - area.x + 12 {
            brand.render(area, buf);
        }
    }

    /// The status bar's segments: run, device, step, state, graphics.
    pub fn status_text(&self) -> String {
        let d = &self.data;
        if !self.controls && d.status.is_none() {
            // A finished model with no run behind it: nothing trains, so say what is shown.
            let step = self.gallery.model.as_ref().map_or(0, |m| m.step);
            return format!(
                " {} │ cpu │ model at step {step} │ no training │ {} ",
                d.name, self.graphics
            );
        }
        let device = d
            .status
            .as_ref()
            .map(|s| s.device.as_str())
            .filter(|s| !s.is_empty())
            .unwrap_or("–");
        let state = if self.stopping.is_some() {
            "stopping".to_string()
        } else {
            d.state()
        };
        format!(
            " {} │ {device} │ step {}/{} │ {state} │ {} ",
            d.name,
            d.step(),
            d.total_steps(),
            self.graphics
        )
    }

    fn render_status(&self, area: Rect, buf: &mut Buffer) {
        let t = &self.theme;
        let mut spans = vec![Span::styled(self.status_text(), t.status)];
        if let Some((msg, tone)) = &self.message {
            let style = if *tone == Tone::Error {
                t.error
            } else {
                t.info
            };
            spans.push(Span::styled(format!(" {msg} "), style));
        }
        Paragraph::new(Line::from(spans))
            .style(t.status)
            .render(area, buf);
        let hint = Line::from(Span::styled(" ? help ", t.status_key)).right_aligned();
        if self.message.is_none() && area.width as usize > self.status_text().chars().count() + 10 {
            hint.render(area, buf);
        }
    }

    fn render_compact(&self, area: Rect, buf: &mut Buffer) {
        let t = &self.theme;
        let lines = vec![
            Line::from(Span::styled(self.status_text().trim().to_string(), t.text)),
            Line::from(Span::styled(
                format!("enlarge the window (needs {}x{})", MIN_SIZE.0, MIN_SIZE.1),
                t.warn,
            )),
            Line::from(Span::styled("q quits", t.dim)),
        ];
        Paragraph::new(lines)
            .wrap(Wrap { trim: true })
            .render(area, buf);
    }

    fn render_help(&self, body: Rect, buf: &mut Buffer) {
        let t = &self.theme;
        let keys = self.help_keys();
        let width = keys
            .iter()
            .map(|k| k.what.chars().count() + 13)
            .max()
            .unwrap_or(20);
        let area = centered(body, width as u16 + 2, keys.len() as u16 + 3);
        Clear.render(area, buf);
        let block = super::screens::panel(format!("keys · {}", self.screen.title()), true, t)
            .style(t.overlay);
        let inner = block.inner(area);
        block.render(area, buf);

        let mut lines: Vec<Line> = keys
            .iter()
            .map(|k| {
                Line::from(vec![
                    Span::styled(format!("{:<12} ", k.keys), t.title),
                    Span::styled(k.what, t.text),
                ])
            })
            .collect();
        lines.push(Line::from(Span::styled("Esc or ? closes", t.dim)));
        Paragraph::new(lines).style(t.overlay).render(inner, buf);
    }

    fn render_confirm(&self, body: Rect, buf: &mut Buffer, selected: usize) {
        let t = &self.theme;
        let area = centered(body, 58, 9);
        Clear.render(area, buf);
        let block = super::screens::panel("quit?", true, t).style(t.overlay);
        let inner = block.inner(area);
        block.render(area, buf);

        let mut lines = vec![Line::from(Span::styled(
            "Training is running. What should happen to it?",
            t.text,
        ))];
        lines.push(Line::default());
        for (i, c) in Choice::ALL.iter().enumerate() {
            let style = if i == selected { t.selection } else { t.text };
            lines.push(Line::from(Span::styled(format!(" {} ", c.label()), style)));
        }
        lines.push(Line::from(Span::styled(
            format!(
                "Detached: reattach with `facestudio watch {}`",
                self.data.root.display()
            ),
            t.dim,
        )));
        Paragraph::new(lines).style(t.overlay).render(inner, buf);
    }
}

/// Keys the studio answers on every screen, which screens leave alone.
fn is_global(code: KeyCode) -> bool {
    matches!(
        code,
        KeyCode::Char('1' | '2' | '3' | '?' | ' ' | 's' | 'q') | KeyCode::Tab | KeyCode::BackTab
    )
}

/// A `w`×`h` rectangle centred in `area`, shrunk to fit.
pub fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let (w, h) = (w.min(area.width), h.min(area.height));
    Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    )
}
