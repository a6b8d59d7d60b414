//! The gallery screen: faces from fixed latent seeds, and views that explain the model.
//!
//! The faces come from a [`crate::gallery::Worker`] that owns the model; this screen only
//! decides what to ask for (from the view, the selection and how many faces fit) and lays the
//! tiles it gets back into one picture. When it follows a run, the newest checkpoint is loaded
//! whenever one appears, so the same seeds sharpen as training goes on; before the first
//! checkpoint the run's newest sample grid is shown.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent};
use image::{Rgb, RgbImage};
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Color;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Widget};

use super::{key, KeyHelp};
use crate::gallery::{Endpoint, Job, Reply, Request, Tile, Worker};
use crate::latent::Blend;
use crate::model::ImageShape;
use crate::tui::follow::{sanitize, RunData};
use crate::tui::graphics::{Picture, Pictures};
use crate::tui::theme::Theme;
use crate::tui::widgets::halfblock::SampleView;

/// The keys of the gallery screen.
pub const KEYS: [KeyHelp; 10] = [
    key("← ↓ ↑ → h j k l", "pick a face"),
    key("Enter / Esc", "show the face large / back to the grid"),
    key("v / V", "next / previous view"),
    key("r", "new seeds (new faces, new training images)"),
    key("p / P", "save the face / the whole grid as PNG"),
    key("a / b", "interpolate from / to the selected face"),
    key("e", "interpolate between two training images"),
    key("m", "linear or spherical interpolation"),
    key("+ / -", "more / fewer faces in a strip"),
    key("[ / ]", "latent walk: previous / next dimension"),
];

/// Smallest face, in cells across, when the grid decides how many faces fit.
const MIN_TILE_CELLS: u16 = 14;
/// Pixels between tiles of the composed picture.
const GAP: u32 = 2;
/// The selection frame when the theme's selection style has no RGB colour (mono).
const HIGHLIGHT_DEFAULT: Rgb<u8> = Rgb([255, 255, 255]);
/// How often the run's checkpoints folder is looked at.
const CHECKPOINT_LOOK: Duration = Duration::from_secs(1);

/// What the gallery shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// Faces from seeds (the latent plane for a 2-d model).
    Samples,
    /// Training images beside the model's reconstructions.
    Reconstructions,
    /// The strip between two faces.
    Interpolation,
    /// One face along one latent dimension.
    Walk,
    /// One face across the run's checkpoints.
    TimeLapse,
    /// Faces beside their nearest training images.
    Novelty,
    /// The same seeds decoded by this model and another (`gallery --versus`).
    Versus,
}

impl View {
    /// Every view, in the order `v` cycles them.
    pub const ALL: [View; 7] = [
        Self::Samples,
        Self::Reconstructions,
        Self::Interpolation,
        Self::Walk,
        Self::TimeLapse,
        Self::Novelty,
        Self::Versus,
    ];

    /// Its name.
    pub fn title(self) -> &'static str {
        match self {
            Self::Samples => "samples",
            Self::Reconstructions => "reconstructions",
            Self::Interpolation => "interpolation",
            Self::Walk => "latent walk",
            Self::TimeLapse => "time-lapse",
            Self::Novelty => "novelty check",
            Self::Versus => "versus",
        }
    }

    /// The next (or previous) view; `versus` only when there is a model to compare with.
    fn cycle(self, forward: bool, versus: bool) -> Self {
        let views: Vec<View> = Self::ALL
            .into_iter()
            .filter(|v| versus || *v != Self::Versus)
            .collect();
        let i = views.iter().position(|v| *v == self).unwrap_or(0);
        let n = views.len();
        views[if forward {
            (i + 1) % n
        } else {
            (i + n - 1) % n
        }]
    }

    /// Whether tiles come in pairs (an image and its counterpart).
    fn pairs(self) -> bool {
        matches!(self, Self::Reconstructions | Self::Novelty | Self::Versus)
    }
}

/// The model the worker holds.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// Its checkpoint metadata file.
    pub path: PathBuf,
    /// Its step.
    pub step: u64,
    /// Its latent size.
    pub latent: usize,
    /// Its image shape.
    pub shape: ImageShape,
}

/// What a key did, for the studio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// Not a gallery key: the studio's global keys get it.
    No,
    /// Done.
    Yes,
    /// Done, with a message for the status line (`true`: an error).
    Say(String, bool),
}

/// The tiles of the newest reply, composed.
struct Frame {
    job: Job,
    tiles: Vec<Tile>,
    cols: usize,
    picture: Picture,
    selected: usize,
}

/// State of the gallery screen.
pub struct GalleryScreen {
    /// A caption that replaces the run's sample step (a finished model's description).
    pub caption: Option<String>,
    /// The view shown.
    pub view: View,
    /// The selected face (index into the samples grid).
    pub selected: usize,
    /// Whether the selected face is shown large.
    pub enlarged: bool,
    /// The first seed of the grid; face `i` has seed `base_seed + i`.
    pub base_seed: u64,
    /// Interpolation end points.
    pub ends: [Endpoint; 2],
    /// Linear or spherical interpolation.
    pub blend: Blend,
    /// Faces in a strip (interpolation, walk).
    pub steps: usize,
    /// The latent dimension walked.
    pub dim: usize,
    /// The model loaded, once the worker says so.
    pub model: Option<ModelInfo>,
    /// The last error from the worker.
    pub error: Option<String>,
    /// Another model's checkpoint to set beside this one in the versus view.
    pub versus: Option<PathBuf>,
    worker: Option<Worker>,
    checkpoints: Option<PathBuf>,
    last_look: Option<Instant>,
    requested_model: Option<PathBuf>,
    grid: (usize, usize),
    next_id: u64,
    sent: Option<(u64, Job)>,
    frame: Option<Frame>,
    enlarged_picture: Option<(usize, u64, Picture)>,
    sample_grid: Option<(PathBuf, Picture)>,
    highlight: Rgb<u8>,
}

impl Default for GalleryScreen {
    fn default() -> Self {
        Self {
            caption: None,
            view: View::Samples,
            selected: 0,
            enlarged: false,
            base_seed: 1,
            ends: [Endpoint::Seed(1), Endpoint::Seed(2)],
            blend: Blend::Spherical,
            steps: 8,
            dim: 0,
            model: None,
            error: None,
            versus: None,
            worker: None,
            checkpoints: None,
            last_look: None,
            requested_model: None,
            grid: (4, 2),
            next_id: 1,
            sent: None,
            frame: None,
            enlarged_picture: None,
            sample_grid: None,
            highlight: HIGHLIGHT_DEFAULT,
        }
    }
}

impl GalleryScreen {
    /// Shows the model whose checkpoint metadata is at `meta`, and offers the checkpoints
    /// beside it for the time-lapse.
    pub fn open_model(&mut self, meta: &Path) {
        self.checkpoints = meta.parent().map(Path::to_path_buf);
        self.load(meta);
    }

    /// Follows a run: its newest checkpoint is loaded whenever a new one appears.
    pub fn follow_run(&mut self, root: &Path) {
        self.checkpoints = Some(crate::run::RunDir::new(root).checkpoints());
    }

    fn load(&mut self, meta: &Path) {
        let worker = self.worker.get_or_insert_with(Worker::spawn);
        worker.send(Request::Load(meta.to_path_buf()));
        self.requested_model = Some(meta.to_path_buf());
        // A new model: the same view is asked for again.
        self.sent = None;
    }

    fn checkpoint_list(&self) -> Vec<crate::checkpoint::Entry> {
        self.checkpoints
            .as_deref()
            .map(crate::checkpoint::list)
            .unwrap_or_default()
    }

    /// Takes in the worker's replies, loads a new checkpoint and asks for the view when it
    /// changed; true when something to draw changed. Call once per frame.
    pub fn poll(&mut self, data: &RunData) -> bool {
        let mut changed = self.look_for_checkpoint();
        while let Some(reply) = self.worker.as_ref().and_then(Worker::try_recv) {
            changed = true;
            self.take(reply);
        }
        if let Some((_, path)) = &data.sample {
            if self.sample_grid.as_ref().is_none_or(|(p, _)| p != path) {
                if let Ok(img) = image::open(path) {
                    self.sample_grid = Some((path.clone(), Picture::new(img.to_rgb8())));
                    changed = true;
                }
            }
        }
        self.request(data);
        changed
    }

    fn look_for_checkpoint(&mut self) -> bool {
        if self.checkpoints.is_none()
            || self
                .last_look
                .is_some_and(|t| t.elapsed() < CHECKPOINT_LOOK)
        {
            return false;
        }
        self.last_look = Some(Instant::now());
        let Some(newest) = self.checkpoint_list().pop() else {
            return false;
        };
        if self.requested_model.as_ref() == Some(&newest.meta) {
            return false;
        }
        tracing::info!("gallery: loading checkpoint {}", newest.meta.display());
        self.load(&newest.meta);
        true
    }

    fn take(&mut self, reply: Reply) {
        match reply {
            Reply::Loaded {
                path,
                step,
                latent,
                shape,
            } => {
                self.error = None;
                self.dim = self.dim.min(latent.saturating_sub(1));
                self.model = Some(ModelInfo {
                    path,
                    step,
                    latent,
                    shape,
                });
            }
            Reply::Frame { id, tiles } => {
                let Some((sent_id, job)) = &self.sent else {
                    return;
                };
                if *sent_id != id {
                    return;
                }
                self.error = None;
                let job = job.clone();
                self.compose(job, tiles);
            }
            Reply::Failed { error, .. } => {
                tracing::warn!("gallery: {error}");
                self.error = Some(error);
            }
        }
    }

    /// The job the current view, selection and layout ask for; `None` without a model.
    pub fn wanted(&self) -> Option<Job> {
        let model = self.model.as_ref()?;
        let (cols, rows) = self.grid;
        let count = (cols * rows).max(1);
        let seed = self.face_seed(self.selected);
        let job = match self.view {
            View::Samples if model.latent == 2 => Job::Plane { cols, rows },
            View::Samples => Job::Samples {
                seeds: (0..count).map(|i| self.face_seed(i)).collect(),
            },
            View::Reconstructions => {
                let pairs = (count / 2).max(1);
                let start = (self.base_seed as usize).wrapping_mul(7919) % 100_003;
                Job::Recon {
                    indices: (0..pairs).map(|k| start + k * 13).collect(),
                }
            }
            View::Interpolation => Job::Interp {
                a: self.ends[0],
                b: self.ends[1],
                steps: self.steps,
                blend: self.blend,
            },
            View::Walk => Job::Walk {
                seed,
                dim: self.dim,
                steps: self.steps,
            },
            View::TimeLapse => {
                let checkpoints: Vec<PathBuf> =
                    self.checkpoint_list().into_iter().map(|e| e.meta).collect();
                Job::TimeLapse { seed, checkpoints }
            }
            View::Novelty => {
                let pairs = (count / 2).clamp(1, 8);
                Job::Novelty {
                    seeds: (0..pairs)
                        .map(|k| self.face_seed(self.selected + k))
                        .collect(),
                }
            }
            View::Versus => Job::Versus {
                seeds: (0..(count / 2).max(1)).map(|k| self.face_seed(k)).collect(),
                other: self.versus.clone()?,
            },
        };
        Some(job)
    }

    /// The time-lapse from the run's sample grids, for a run with no checkpoint yet.
    fn wanted_without_model(&self, data: &RunData) -> Option<Job> {
        if self.view != View::TimeLapse {
            return None;
        }
        let files = crate::run::RunDir::new(&data.root).sample_files();
        (!files.is_empty()).then_some(Job::SampleLapse {
            index: self.selected,
            files,
        })
    }

    fn request(&mut self, data: &RunData) {
        let Some(job) = self.wanted().or_else(|| self.wanted_without_model(data)) else {
            return;
        };
        if self.sent.as_ref().is_some_and(|(_, j)| *j == job) {
            return;
        }
        let worker = self.worker.get_or_insert_with(Worker::spawn);
        let id = self.next_id;
        self.next_id += 1;
        worker.send(Request::Render {
            id,
            job: job.clone(),
        });
        self.sent = Some((id, job));
    }

    /// The seed of face `i` of the grid.
    pub fn face_seed(&self, i: usize) -> u64 {
        self.base_seed.wrapping_add(i as u64)
    }

    /// Whether a frame has arrived.
    pub fn has_frame(&self) -> bool {
        self.frame.is_some()
    }

    /// Whether the frame shown is the one the view, selection and layout ask for.
    pub fn is_current(&self) -> bool {
        let wanted = self.wanted();
        self.frame
            .as_ref()
            .is_some_and(|f| wanted.is_some_and(|w| w == f.job))
    }

    /// The captions of the tiles shown.
    pub fn labels(&self) -> Vec<String> {
        self.frame
            .as_ref()
            .map(|f| f.tiles.iter().map(|t| sanitize(&t.label)).collect())
            .unwrap_or_default()
    }

    fn compose(&mut self, job: Job, tiles: Vec<Tile>) {
        let cols = match (&job, self.view) {
            (Job::Samples { .. } | Job::Plane { .. }, _) => self.grid.0,
            (_, v) if v.pairs() => self.grid.0.max(2) & !1,
            _ => strip_columns(tiles.len(), self.grid.0 * self.grid.1.max(1)),
        };
        let selected = if matches!(job, Job::Samples { .. } | Job::Plane { .. }) {
            self.selected
        } else {
            usize::MAX
        };
        let picture = Picture::new(compose(&tiles, cols.max(1), selected, self.highlight));
        self.frame = Some(Frame {
            job,
            tiles,
            cols: cols.max(1),
            picture,
            selected,
        });
        self.enlarged_picture = None;
    }

    /// Answers a key; `root` is where PNGs are saved (the run directory, else the current one).
    pub fn on_key(&mut self, key: KeyEvent, root: &Path) -> Handled {
        let (cols, rows) = self.grid;
        let count = (cols * rows).max(1);
        match key.code {
            KeyCode::Left | KeyCode::Char('h') => self.selected = self.selected.saturating_sub(1),
            KeyCode::Right | KeyCode::Char('l') => {
                self.selected = (self.selected + 1).min(count - 1)
            }
            KeyCode::Up | KeyCode::Char('k') => {
                self.selected = self.selected.saturating_sub(cols.max(1))
            }
            KeyCode::Down | KeyCode::Char('j') => {
                if self.selected + cols < count {
                    self.selected += cols;
                }
            }
            KeyCode::Enter => self.enlarged = true,
            KeyCode::Esc if self.enlarged => self.enlarged = false,
            KeyCode::Char('v') => self.set_view(self.view.cycle(true, self.versus.is_some())),
            KeyCode::Char('V') => self.set_view(self.view.cycle(false, self.versus.is_some())),
            KeyCode::Char('r') => {
                self.base_seed = fresh_seed(self.base_seed);
                return Handled::Say(format!("new seeds from {}", self.base_seed), false);
            }
            KeyCode::Char('a') => return self.mark(0),
            KeyCode::Char('b') => return self.mark(1),
            KeyCode::Char('e') => {
                let i = self.base_seed as usize % 100_003;
                self.ends = [Endpoint::Image(i), Endpoint::Image(i + 1)];
                self.view = View::Interpolation;
                return Handled::Say(
                    format!("interpolating between training images {i} and {}", i + 1),
                    false,
                );
            }
            KeyCode::Char('m') => self.blend = self.blend.toggled(),
            KeyCode::Char('+') | KeyCode::Char('=') => self.steps = (self.steps + 1).min(32),
            KeyCode::Char('-') => self.steps = self.steps.saturating_sub(1).max(2),
            KeyCode::Char('[') => self.dim = self.dim.saturating_sub(1),
            KeyCode::Char(']') => {
                let latent = self.model.as_ref().map_or(1, |m| m.latent);
                self.dim = (self.dim + 1).min(latent.saturating_sub(1));
            }
            KeyCode::Char('p') => return self.save_face(root),
            KeyCode::Char('P') => return self.save_grid(root),
            _ => return Handled::No,
        }
        if self.view == View::Samples {
            self.refresh_selection();
        }
        Handled::Yes
    }

    fn set_view(&mut self, view: View) {
        self.view = view;
        self.enlarged = false;
    }

    fn mark(&mut self, end: usize) -> Handled {
        let seed = self.face_seed(self.selected);
        self.ends[end] = Endpoint::Seed(seed);
        let which = if end == 0 { "start" } else { "end" };
        Handled::Say(
            format!("interpolation {which}: seed {seed} (v to the interpolation view)"),
            false,
        )
    }

    /// Redraws the selection frame into the picture without asking the worker again.
    fn refresh_selection(&mut self) {
        let highlight = self.highlight;
        let Some(f) = &mut self.frame else { return };
        if f.selected == usize::MAX || f.selected == self.selected {
            return;
        }
        f.selected = self.selected;
        f.picture = Picture::new(compose(&f.tiles, f.cols, f.selected, highlight));
    }

    fn selected_tile(&self) -> Option<&Tile> {
        let f = self.frame.as_ref()?;
        let i = if f.selected == usize::MAX {
            0
        } else {
            f.selected
        };
        f.tiles.get(i)
    }

    fn save_face(&self, root: &Path) -> Handled {
        let Some(tile) = self.selected_tile() else {
            return Handled::Say("no face to save yet".into(), true);
        };
        let name = format!("face-seed-{}.png", self.face_seed(self.selected));
        save(&tile.image, &gallery_dir(root).join(name))
    }

    fn save_grid(&self, root: &Path) -> Handled {
        let Some(f) = &self.frame else {
            return Handled::Say("no grid to save yet".into(), true);
        };
        let name = format!(
            "{}-seed-{}.png",
            self.view.title().replace(' ', "-"),
            self.base_seed
        );
        save(f.picture.image(), &gallery_dir(root).join(name))
    }

    /// Draws the screen into `area`.
    pub fn render(
        &mut self,
        area: Rect,
        buf: &mut Buffer,
        data: &RunData,
        theme: &Theme,
        pictures: &mut Pictures,
        sample: &mut SampleView,
    ) {
        self.highlight = theme_rgb(theme);
        let block = super::panel(self.title(data), false, theme);
        let inner = block.inner(area);
        block.render(area, buf);
        let [image, hint] =
            Layout::vertical([Constraint::Fill(1), Constraint::Length(1)]).areas(inner);

        self.grid = grid_for(
            image,
            pictures.decision().cell,
            self.model.as_ref().map(|m| m.shape),
        );
        if self.view == View::Samples {
            let (cols, rows) = self.grid;
            self.selected = self.selected.min((cols * rows).max(1) - 1);
        }
        self.render_image(image, buf, data, theme, pictures, sample);
        Paragraph::new(Line::from(Span::styled(self.hint(), theme.dim))).render(hint, buf);
    }

    fn render_image(
        &mut self,
        area: Rect,
        buf: &mut Buffer,
        data: &RunData,
        theme: &Theme,
        pictures: &mut Pictures,
        sample: &mut SampleView,
    ) {
        if let Some(e) = &self.error {
            let [msg, rest] =
                Layout::vertical([Constraint::Length(1), Constraint::Fill(1)]).areas(area);
            Paragraph::new(Span::styled(sanitize(e), theme.error)).render(msg, buf);
            return self.render_image_inner(rest, buf, data, theme, pictures, sample);
        }
        self.render_image_inner(area, buf, data, theme, pictures, sample);
    }

    fn render_image_inner(
        &mut self,
        area: Rect,
        buf: &mut Buffer,
        data: &RunData,
        theme: &Theme,
        pictures: &mut Pictures,
        sample: &mut SampleView,
    ) {
        if self.enlarged {
            if let Some(p) = self.enlarged() {
                pictures.draw(&p, area, buf, theme.image);
                return;
            }
        }
        let current = self
            .frame
            .as_ref()
            .filter(|f| self.wanted().is_none_or(|w| same_kind(&w, &f.job)));
        if let Some(f) = current {
            pictures.draw(&f.picture, area, buf, theme.image);
        } else if self.model.is_none() && self.view == View::Samples && self.sample_grid.is_some() {
            if let Some((_, p)) = &self.sample_grid {
                pictures.draw(p, area, buf, theme.image);
            }
        } else if self.model.is_none() && self.view == View::Samples && sample.has_image() {
            sample.render(area, buf, theme.image);
        } else {
            let text = self.waiting_text(data);
            Paragraph::new(Span::styled(text, theme.dim)).render(area, buf);
        }
    }

    fn enlarged(&mut self) -> Option<Picture> {
        let id = self.frame.as_ref()?.picture.id();
        if let Some((sel, fid, p)) = &self.enlarged_picture {
            if *sel == self.selected && *fid == id {
                return Some(p.clone());
            }
        }
        let tile = self.selected_tile()?.image.clone();
        let p = Picture::new(tile);
        self.enlarged_picture = Some((self.selected, id, p.clone()));
        Some(p)
    }

    fn waiting_text(&self, data: &RunData) -> String {
        match (&self.model, self.requested_model.is_some()) {
            (Some(_), _) => format!("decoding the {}…", self.view.title()),
            (None, true) => "loading the model…".into(),
            (None, false) if self.view == View::TimeLapse && data.sample.is_some() => {
                "cutting the sample grids…".into()
            }
            (None, false) => {
                "no sample grid yet: the trainer writes one every train.sample_every steps, \
                 and faces appear here from the first checkpoint"
                    .into()
            }
        }
    }

    fn title(&self, data: &RunData) -> String {
        let source = match (&self.caption, &self.model, &data.sample) {
            (Some(c), _, _) => c.clone(),
            (None, Some(m), _) => format!("step {}", m.step),
            (None, None, Some((step, _))) => format!("step {step}"),
            (None, None, None) => "no model yet".into(),
        };
        let detail = match self.view {
            View::Samples if self.enlarged => {
                format!("face · seed {}", self.face_seed(self.selected))
            }
            View::Samples if self.model.as_ref().is_some_and(|m| m.latent == 2) => {
                "latent plane".into()
            }
            View::Samples if self.model.is_none() => "the run's sample grid (fixed latents)".into(),
            View::Samples => format!("seeds {}…", self.base_seed),
            View::Interpolation => {
                format!(
                    "{} → {} · {} · {} steps",
                    end_name(self.ends[0]),
                    end_name(self.ends[1]),
                    self.blend.name(),
                    self.steps
                )
            }
            View::Walk => format!(
                "seed {} · z{} from -3 to +3",
                self.face_seed(self.selected),
                self.dim
            ),
            View::TimeLapse => format!("seed {}", self.face_seed(self.selected)),
            View::Reconstructions => "data | model".into(),
            View::Novelty => "face | nearest training image (pixel L2)".into(),
            View::Versus => {
                let other = self.versus.as_deref().map_or("—".into(), short_model_name);
                format!("this model | {other}, same seeds from N(0, I)")
            }
        };
        format!("{} · {} · {detail}", self.view.title(), source)
    }

    fn hint(&self) -> String {
        let labels = self.labels();
        match self.view {
            View::Samples => {
                "v views · Enter enlarge · r new seeds · p/P save · a/b interpolation ends"
                    .to_string()
            }
            View::TimeLapse | View::Novelty | View::Reconstructions | View::Versus
                if !labels.is_empty() =>
            {
                let shown: Vec<&str> = labels.iter().map(String::as_str).collect();
                shown.join(" · ")
            }
            _ => format!(
                "v views · m {} · +/- {} steps · [ ] dimension {}",
                self.blend.name(),
                self.steps,
                self.dim
            ),
        }
    }
}

/// Whether two jobs are of the same view (so an older frame of it may stand in).
fn same_kind(a: &Job, b: &Job) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

fn end_name(e: Endpoint) -> String {
    match e {
        Endpoint::Seed(s) => format!("seed {s}"),
        Endpoint::Image(i) => format!("image {i}"),
    }
}

fn fresh_seed(old: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut rng = crate::rng::Rng::keyed(old ^ nanos as u64, "gallery-seeds", 0);
    rng.next_u64() % 1_000_000
}

/// Columns and rows of faces that fit `area`, tiles at least [`MIN_TILE_CELLS`] across.
pub fn grid_for(area: Rect, cell: (u16, u16), shape: Option<ImageShape>) -> (usize, usize) {
    let (w, h) = shape.map_or((1.0, 1.0), |s| (s.width as f64, s.height as f64));
    // A cell is about twice as tall as wide; a tile of MIN cells across is this many rows.
    let aspect = f64::from(cell.1.max(1)) / f64::from(cell.0.max(1));
    let tile_rows = (f64::from(MIN_TILE_CELLS) * h / w / aspect).max(1.0);
    let cols = (area.width / MIN_TILE_CELLS).max(1) as usize;
    let rows = ((f64::from(area.height) / tile_rows).floor() as usize).max(1);
    (cols, rows)
}

/// Columns for a strip of `n` tiles: one row when it fits, else near-square.
fn strip_columns(n: usize, room: usize) -> usize {
    if n <= room.max(1) {
        n.max(1)
    } else {
        crate::imageio::grid_columns(n)
    }
}

/// Lays `tiles` out in `cols` columns with a gap, framing tile `selected` in `highlight`.
pub fn compose(tiles: &[Tile], cols: usize, selected: usize, highlight: Rgb<u8>) -> RgbImage {
    let (tw, th) = tiles.iter().fold((1, 1), |(w, h), t| {
        (t.image.width().max(w), t.image.height().max(h))
    });
    let rows = tiles.len().div_ceil(cols.max(1)).max(1) as u32;
    let cols = cols.max(1) as u32;
    let (w, h) = (cols * (tw + GAP) + GAP, rows * (th + GAP) + GAP);
    let mut out = RgbImage::from_pixel(w, h, Rgb([0, 0, 0]));
    for (i, t) in tiles.iter().enumerate() {
        let (c, r) = (i as u32 % cols, i as u32 / cols);
        let (x, y) = (GAP + c * (tw + GAP), GAP + r * (th + GAP));
        image::imageops::replace(&mut out, &t.image, i64::from(x), i64::from(y));
        if i == selected {
            frame(
                &mut out,
                x - GAP,
                y - GAP,
                tw + 2 * GAP,
                th + 2 * GAP,
                highlight,
            );
        }
    }
    out
}

fn frame(img: &mut RgbImage, x: u32, y: u32, w: u32, h: u32, colour: Rgb<u8>) {
    for dx in 0..w {
        for dy in 0..GAP {
            img.put_pixel(x + dx, y + dy, colour);
            img.put_pixel(x + dx, y + h - 1 - dy, colour);
        }
    }
    for dy in 0..h {
        for dx in 0..GAP {
            img.put_pixel(x + dx, y + dy, colour);
            img.put_pixel(x + w - 1 - dx, y + dy, colour);
        }
    }
}

/// The theme's selection colour as a pixel (its background, else its foreground).
fn theme_rgb(theme: &Theme) -> Rgb<u8> {
    let s = theme.selection;
    match (s.bg, s.fg) {
        (Some(Color::Rgb(r, g, b)), _) | (_, Some(Color::Rgb(r, g, b))) => Rgb([r, g, b]),
        _ => HIGHLIGHT_DEFAULT,
    }
}

fn gallery_dir(root: &Path) -> PathBuf {
    if root.as_os_str().is_empty() || !root.is_dir() {
        PathBuf::from("gallery")
    } else {
        root.join("gallery")
    }
}

fn save(img: &RgbImage, path: &Path) -> Handled {
    match crate::imageio::save_png(img, path) {
        Ok(()) => Handled::Say(format!("saved {}", path.display()), false),
        Err(e) => Handled::Say(format!("cannot save {}: {e}", path.display()), true),
    }
}

/// A checkpoint's run and step, for a caption (`runs/ae/checkpoints/step-00000800.json` gives
/// `ae/step-00000800`).
fn short_model_name(meta: &Path) -> String {
    let step = meta.file_stem().map(|s| s.to_string_lossy().into_owned());
    let run = meta
        .parent()
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .map(|s| s.to_string_lossy().into_owned());
    match (run, step) {
        (Some(r), Some(s)) => sanitize(&format!("{r}/{s}")),
        (None, Some(s)) => sanitize(&s),
        _ => "the other model".into(),
    }
}
