//! The data set screen: what the run trains on, in figures, and a browser of its images.
//!
//! The browser lists a data set's files (read once on a worker thread, the list drawn row by
//! row for only the rows on screen, so hundreds of thousands of entries scroll without a pause),
//! previews the selected image (decoded on the worker, newest request first), shows a page of
//! thumbnails, filters by name and excludes images from training through the folder's
//! [`EXCLUDE_FILE`] list. Statistics (sizes, channels, the mean face, per-channel mean and
//! spread, unreadable files) are computed on a thread of their own and fill in as they come.
//! File names are untrusted: every name is escaped before it is drawn.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;

use crossterm::event::{KeyCode, KeyEvent};
use image::RgbImage;
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Widget, Wrap};

use super::gallery::Handled;
use super::{field, key, KeyHelp};
use crate::data::catalog::{self, SourceKind};
use crate::data::folder::{self, EXCLUDE_FILE};
use crate::data::{synthetic, BadFile};
use crate::tui::follow::RunData;
use crate::tui::graphics::{Picture, Pictures};
use crate::tui::theme::Theme;

/// The keys of the data set screen.
pub const KEYS: [KeyHelp; 7] = [
    key("↓ ↑ j k ← →", "select a file (← → in the thumbnail grid)"),
    key("PgDn / PgUp", "next / previous page"),
    key("g / G", "first / last file"),
    key("t", "thumbnail grid, or file list with preview"),
    key("/", "filter by name (Enter keeps it, Esc clears it)"),
    key("x", "exclude the file from training, or take it back"),
    key("R", "read the data set again"),
];

/// Side of the thumbnails and of the mean face, in pixels.
const THUMB: u32 = 64;
/// Images between progress reports of the statistics.
const STATS_CHUNK: usize = 256;

/// Shows a file name harmlessly: control characters, escape sequences and bidirectional
/// overrides become visible escapes (`\x1b`, `\u{202e}`), never terminal input.
pub fn escape_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        let bidi = matches!(
            c,
            '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        );
        if c.is_control() && (c as u32) < 0x100 {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else if c.is_control() || bidi {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// Where the images come from.
#[derive(Debug, Clone)]
pub enum Origin {
    /// A folder of image files.
    Folder(PathBuf),
    /// The embedded generator: `count` faces of the set `seed` at `size` pixels.
    Synthetic {
        /// The set's seed.
        seed: u64,
        /// Faces.
        count: usize,
        /// Side in pixels.
        size: u32,
    },
    /// An NPY file of images.
    Npy(PathBuf),
}

/// Per-channel figures and the mean face.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Images read so far.
    pub done: usize,
    /// Images to read.
    pub total: usize,
    /// Images per `(width, height)`, most common first.
    pub sizes: Vec<((u32, u32), usize)>,
    /// Images per channel layout.
    pub channels: Vec<(String, usize)>,
    /// Mean of each of R, G, B over every pixel, 0-255.
    pub mean: [f64; 3],
    /// Standard deviation of each of R, G, B.
    pub std: [f64; 3],
    /// The mean face at [`THUMB`] pixels.
    pub mean_face: Option<RgbImage>,
    /// Files that could not be read, with the reasons.
    pub bad: Vec<BadFile>,
}

enum Job {
    Preview { index: usize },
    Thumbs { start: usize, indices: Vec<usize> },
}

enum Done {
    Listed {
        names: Vec<String>,
        bad: Vec<BadFile>,
    },
    Failed(String),
    Preview {
        index: usize,
        image: Result<RgbImage, String>,
    },
    Thumbs {
        start: usize,
        images: Vec<Option<RgbImage>>,
    },
    Stats(Box<Stats>),
}

/// Reads images of one origin on a worker thread.
struct Browser {
    jobs: Sender<Job>,
    done: Receiver<Done>,
}

impl Browser {
    fn spawn(origin: Origin) -> Self {
        let (jobs, jrx) = mpsc::channel();
        let (dtx, done) = mpsc::channel();
        std::thread::Builder::new()
            .name("browser".into())
            .spawn(move || browse(origin, &jrx, &dtx))
            .expect("spawning the browser thread");
        Self { jobs, done }
    }
}

/// What a listed data set needs to read image `i`.
#[derive(Clone)]
enum Reader {
    Folder(PathBuf, Arc<Vec<PathBuf>>),
    Synthetic { seed: u64, size: u32 },
    Npy(Arc<crate::data::npy::NpyImages>),
}

impl Reader {
    fn read(&self, i: usize) -> Result<RgbImage, String> {
        match self {
            Self::Folder(root, rels) => {
                let rel = rels.get(i).ok_or("no such file")?;
                folder::decode(&root.join(rel)).map(|img| img.to_rgb8())
            }
            Self::Synthetic { seed, size } => {
                let hwc =
                    synthetic::render(&synthetic::FaceParams::from_seed(*seed, i as u64), *size);
                RgbImage::from_raw(*size, *size, hwc).ok_or_else(|| "bad synthetic image".into())
            }
            Self::Npy(im) => {
                let n = im.channels * im.height * im.width;
                let chw = im.pixels.get(i * n..(i + 1) * n).ok_or("no such image")?;
                Ok(crate::data::chw_to_rgb(
                    chw,
                    im.channels,
                    im.height,
                    im.width,
                ))
            }
        }
    }
}

fn browse(origin: Origin, jobs: &Receiver<Job>, done: &Sender<Done>) {
    let (reader, names, bad) = match list(&origin) {
        Ok(listed) => listed,
        Err(e) => {
            let _ = done.send(Done::Failed(e));
            return;
        }
    };
    let count = names.len();
    if done
        .send(Done::Listed {
            names,
            bad: bad.clone(),
        })
        .is_err()
    {
        return;
    }
    let stats_reader = reader.clone();
    let stats_done = done.clone();
    std::thread::Builder::new()
        .name("browser-stats".into())
        .spawn(move || compute_stats(&stats_reader, count, bad, &stats_done))
        .expect("spawning the statistics thread");
    while let Ok(first) = jobs.recv() {
        let mut queue = vec![first];
        queue.extend(jobs.try_iter());
        // Only the newest preview and the newest page are still wanted.
        let preview = queue.iter().rposition(|j| matches!(j, Job::Preview { .. }));
        let thumbs = queue.iter().rposition(|j| matches!(j, Job::Thumbs { .. }));
        for (i, job) in queue.into_iter().enumerate() {
            let reply = match job {
                Job::Preview { index } if Some(i) == preview => Done::Preview {
                    index,
                    image: reader.read(index),
                },
                Job::Thumbs { start, indices } if Some(i) == thumbs => {
                    let images = indices
                        .iter()
                        .map(|k| reader.read(*k).ok().map(|im| thumb(&im)))
                        .collect();
                    Done::Thumbs { start, images }
                }
                _ => continue,
            };
            if done.send(reply).is_err() {
                return;
            }
        }
    }
}

type Listed = (Reader, Vec<String>, Vec<BadFile>);

fn list(origin: &Origin) -> Result<Listed, String> {
    match origin {
        Origin::Folder(root) => {
            let (entries, bad) = folder::scan_all(root).map_err(|e| e.to_string())?;
            let names = entries
                .iter()
                .map(|e| e.rel.to_string_lossy().into_owned())
                .collect();
            let rels = entries.into_iter().map(|e| e.rel).collect();
            Ok((Reader::Folder(root.clone(), Arc::new(rels)), names, bad))
        }
        Origin::Synthetic { seed, count, size } => {
            let names = (0..*count).map(|i| format!("synthetic #{i}")).collect();
            Ok((
                Reader::Synthetic {
                    seed: *seed,
                    size: *size,
                },
                names,
                Vec::new(),
            ))
        }
        Origin::Npy(path) => {
            let im = crate::data::npy::read(path).map_err(|e| e.to_string())?;
            let names = (0..im.count).map(|i| format!("#{i}")).collect();
            Ok((Reader::Npy(Arc::new(im)), names, Vec::new()))
        }
    }
}

fn thumb(img: &RgbImage) -> RgbImage {
    image::imageops::resize(img, THUMB, THUMB, image::imageops::FilterType::Triangle)
}

/// Sums over images, merged chunk by chunk.
#[derive(Default)]
struct Sums {
    face: Vec<u64>,
    sum: [f64; 3],
    sq: [f64; 3],
    pixels: f64,
    sizes: std::collections::BTreeMap<(u32, u32), usize>,
    read: usize,
}

fn compute_stats(reader: &Reader, count: usize, mut bad: Vec<BadFile>, done: &Sender<Done>) {
    use rayon::prelude::*;

    let mut sums = Sums {
        face: vec![0; (THUMB * THUMB * 3) as usize],
        ..Default::default()
    };
    let channels = match reader {
        Reader::Npy(im) if im.channels == 1 => "gray",
        _ => "rgb",
    };
    let label = |i: usize| match reader {
        Reader::Folder(root, rels) => root.join(&rels[i]),
        _ => PathBuf::from(format!("#{i}")),
    };
    for start in (0..count).step_by(STATS_CHUNK) {
        let end = (start + STATS_CHUNK).min(count);
        let results: Vec<(usize, Result<RgbImage, String>)> = (start..end)
            .into_par_iter()
            .map(|i| (i, reader.read(i)))
            .collect();
        for (i, r) in results {
            match r {
                Ok(img) => add(&mut sums, &img),
                Err(reason) => bad.push(BadFile {
                    path: label(i),
                    reason,
                }),
            }
        }
        let stats = summarise(&sums, end, count, channels, &bad);
        if done.send(Done::Stats(Box::new(stats))).is_err() {
            return;
        }
    }
    if count == 0 {
        let _ = done.send(Done::Stats(Box::new(summarise(
            &sums, 0, 0, channels, &bad,
        ))));
    }
}

fn add(sums: &mut Sums, img: &RgbImage) {
    *sums.sizes.entry(img.dimensions()).or_default() += 1;
    sums.read += 1;
    let small = thumb(img);
    for (acc, v) in sums.face.iter_mut().zip(small.as_raw()) {
        *acc += u64::from(*v);
    }
    for p in small.pixels() {
        for c in 0..3 {
            let v = f64::from(p[c]);
            sums.sum[c] += v;
            sums.sq[c] += v * v;
        }
    }
    sums.pixels += f64::from(THUMB * THUMB);
}

fn summarise(sums: &Sums, done: usize, total: usize, channels: &str, bad: &[BadFile]) -> Stats {
    let n = sums.pixels.max(1.0);
    let mean = sums.sum.map(|s| s / n);
    let std = [0, 1, 2].map(|c| (sums.sq[c] / n - mean[c] * mean[c]).max(0.0).sqrt());
    let mean_face = (sums.read > 0).then(|| {
        let raw = sums
            .face
            .iter()
            .map(|v| (*v / sums.read as u64) as u8)
            .collect();
        RgbImage::from_raw(THUMB, THUMB, raw).unwrap_or_default()
    });
    let mut sizes: Vec<((u32, u32), usize)> = sums.sizes.iter().map(|(k, v)| (*k, *v)).collect();
    sizes.sort_by(|a, b| b.1.cmp(&a.1));
    let channels = vec![(channels.to_string(), sums.read)];
    Stats {
        done,
        total,
        sizes,
        channels,
        mean,
        std,
        mean_face,
        bad: bad.to_vec(),
    }
}

/// Where the browser stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listing {
    /// No data set known yet.
    Idle,
    /// The worker is listing.
    Loading,
    /// Listed.
    Ready,
    /// The data set could not be listed.
    Failed(String),
}

/// State of the data set screen.
pub struct DatasetsScreen {
    /// The `data.source` browsed.
    pub source: Option<String>,
    /// Where the images come from.
    pub origin: Option<Origin>,
    /// Where the listing stands.
    pub listing: Listing,
    /// Every file (or generated image) name, raw.
    pub names: Vec<String>,
    /// Indices into `names` that pass the filter.
    pub visible: Vec<usize>,
    /// The selection, an index into `visible`.
    pub selected: usize,
    /// The first row shown.
    pub offset: usize,
    /// Whether the thumbnail grid is shown instead of the list and preview.
    pub thumbs: bool,
    /// The name filter.
    pub filter: String,
    /// Whether keys go to the filter.
    pub typing: bool,
    /// Paths (relative to the folder) excluded from training.
    pub excluded: BTreeSet<PathBuf>,
    /// The statistics so far.
    pub stats: Option<Stats>,
    /// Files the listing could not use.
    pub bad: Vec<BadFile>,
    /// Images decoded for display so far (previews and thumbnails), for tests.
    pub decoded: usize,
    browser: Option<Browser>,
    preview: Option<(usize, Result<Picture, String>)>,
    asked_preview: Option<usize>,
    page: Option<(usize, Picture)>,
    asked_page: Option<usize>,
    mean_face: Option<Picture>,
    rows: usize,
    grid: (usize, usize),
}

impl Default for DatasetsScreen {
    fn default() -> Self {
        Self {
            source: None,
            origin: None,
            listing: Listing::Idle,
            names: Vec::new(),
            visible: Vec::new(),
            selected: 0,
            offset: 0,
            thumbs: false,
            filter: String::new(),
            typing: false,
            excluded: BTreeSet::new(),
            stats: None,
            bad: Vec::new(),
            decoded: 0,
            browser: None,
            preview: None,
            asked_preview: None,
            page: None,
            asked_page: None,
            mean_face: None,
            rows: 10,
            grid: (4, 2),
        }
    }
}

impl DatasetsScreen {
    /// Starts browsing `origin` (listing on a worker).
    pub fn open(&mut self, origin: Origin) {
        let source = self.source.take();
        *self = Self {
            source,
            ..Self::default()
        };
        if let Origin::Folder(root) = &origin {
            self.excluded = folder::read_excluded(root);
        }
        self.browser = Some(Browser::spawn(origin.clone()));
        self.origin = Some(origin);
        self.listing = Listing::Loading;
    }

    /// Takes in names already listed, without a worker (for tests and callers that list).
    pub fn set_names(&mut self, names: Vec<String>) {
        self.names = names;
        self.listing = Listing::Ready;
        self.refilter();
    }

    /// Resolves `data.source` of the run's configuration into an origin.
    pub fn origin_of(config: &crate::config::Config) -> Result<Origin, String> {
        let source = catalog::resolve(&config.data.source).map_err(|e| e.to_string())?;
        Ok(match source.kind {
            SourceKind::Folder(p) => Origin::Folder(p),
            SourceKind::Npy(p) => Origin::Npy(p),
            SourceKind::Synthetic => Origin::Synthetic {
                seed: config.train.seed,
                count: config.data.synthetic_count,
                size: config.model.image_size as u32,
            },
        })
    }

    /// Opens the run's data set the first time it is known. Call once per frame.
    pub fn poll(&mut self, data: &RunData) -> bool {
        if self.source.is_none() {
            if let Some(config) = &data.config {
                self.source = Some(config.data.source.clone());
                match Self::origin_of(config) {
                    Ok(origin) => self.open(origin),
                    Err(e) => self.listing = Listing::Failed(e),
                }
                return true;
            }
        }
        self.receive()
    }

    /// Takes in the worker's answers; true when something changed.
    pub fn receive(&mut self) -> bool {
        let Some(b) = &self.browser else { return false };
        let answers: Vec<Done> = b.done.try_iter().collect();
        let changed = !answers.is_empty();
        for d in answers {
            match d {
                Done::Listed { names, bad } => {
                    self.bad = bad;
                    self.set_names(names);
                }
                Done::Failed(e) => self.listing = Listing::Failed(e),
                Done::Preview { index, image } => {
                    self.decoded += 1;
                    self.preview = Some((index, image.map(Picture::new)));
                }
                Done::Thumbs { start, images } => {
                    self.decoded += images.len();
                    self.page = Some((start, Picture::new(thumb_page(&images, self.grid.0))));
                }
                Done::Stats(s) => {
                    self.mean_face = s.mean_face.clone().map(Picture::new);
                    self.stats = Some(*s);
                }
            }
        }
        changed
    }

    /// Whether keys should reach the filter rather than the studio.
    pub fn captures_keys(&self) -> bool {
        self.typing
    }

    fn refilter(&mut self) {
        let needle = self.filter.to_lowercase();
        self.visible = if needle.is_empty() {
            (0..self.names.len()).collect()
        } else {
            (0..self.names.len())
                .filter(|i| self.names[*i].to_lowercase().contains(&needle))
                .collect()
        };
        self.selected = self.selected.min(self.visible.len().saturating_sub(1));
        self.offset = self.offset.min(self.selected);
    }

    /// The selected entry, an index into `names`.
    pub fn current(&self) -> Option<usize> {
        self.visible.get(self.selected).copied()
    }

    /// Answers a key, with a message for the status line when there is one.
    pub fn on_key(&mut self, key: KeyEvent) -> Handled {
        if self.typing {
            return self.on_filter_key(key);
        }
        let n = self.visible.len();
        let last = n.saturating_sub(1);
        let page = if self.thumbs {
            self.grid.0 * self.grid.1
        } else {
            self.rows
        }
        .max(1);
        let step = if self.thumbs { self.grid.0.max(1) } else { 1 };
        match key.code {
            KeyCode::Down | KeyCode::Char('j') => self.selected = (self.selected + step).min(last),
            KeyCode::Up | KeyCode::Char('k') => self.selected = self.selected.saturating_sub(step),
            KeyCode::Right | KeyCode::Char('l') if self.thumbs => {
                self.selected = (self.selected + 1).min(last)
            }
            KeyCode::Left | KeyCode::Char('h') if self.thumbs => {
                self.selected = self.selected.saturating_sub(1)
            }
            KeyCode::PageDown => self.selected = (self.selected + page).min(last),
            KeyCode::PageUp => self.selected = self.selected.saturating_sub(page),
            KeyCode::Char('g') | KeyCode::Home => self.selected = 0,
            KeyCode::Char('G') | KeyCode::End => self.selected = last,
            KeyCode::Char('t') => self.thumbs = !self.thumbs,
            KeyCode::Char('/') => self.typing = true,
            KeyCode::Char('x') => {
                let (text, error) = self.toggle_exclude();
                return Handled::Say(text, error);
            }
            KeyCode::Char('R') => {
                if let Some(o) = self.origin.clone() {
                    self.open(o);
                }
                return Handled::Say("reading the data set again".into(), false);
            }
            _ => return Handled::No,
        }
        Handled::Yes
    }

    fn on_filter_key(&mut self, key: KeyEvent) -> Handled {
        match key.code {
            KeyCode::Enter => self.typing = false,
            KeyCode::Esc => {
                self.typing = false;
                self.filter.clear();
            }
            KeyCode::Backspace => {
                self.filter.pop();
            }
            KeyCode::Char(c) if !c.is_control() => self.filter.push(c),
            _ => return Handled::Yes,
        }
        self.refilter();
        Handled::Yes
    }

    fn toggle_exclude(&mut self) -> (String, bool) {
        let Some(Origin::Folder(root)) = &self.origin else {
            return ("only files of an image folder can be excluded".into(), true);
        };
        let Some(i) = self.current() else {
            return ("no file selected".into(), true);
        };
        let rel = PathBuf::from(&self.names[i]);
        let now_excluded = !self.excluded.remove(&rel);
        if now_excluded {
            self.excluded.insert(rel.clone());
        }
        let list = root.join(EXCLUDE_FILE);
        match folder::write_excluded(root, &self.excluded) {
            Ok(()) => {
                let what = if now_excluded {
                    "excluded from"
                } else {
                    "back in"
                };
                let name = escape_name(&self.names[i]);
                (
                    format!(
                        "{name} {what} training (list: {})",
                        escape_name(&list.to_string_lossy())
                    ),
                    false,
                )
            }
            Err(e) => (format!("cannot write {}: {e}", list.display()), true),
        }
    }

    /// Draws the screen into `area`.
    pub fn render(
        &mut self,
        area: Rect,
        buf: &mut Buffer,
        data: &RunData,
        theme: &Theme,
        pictures: &mut Pictures,
    ) {
        let [top, bottom] =
            Layout::vertical([Constraint::Length(11), Constraint::Fill(1)]).areas(area);
        let [summary, stats] =
            Layout::horizontal([Constraint::Percentage(50), Constraint::Fill(1)]).areas(top);
        let summary_block = super::panel("data set", false, theme);
        let summary_inner = summary_block.inner(summary);
        summary_block.render(summary, buf);
        let stats_block = super::panel("statistics", false, theme);
        let stats_inner = stats_block.inner(stats);
        stats_block.render(stats, buf);

        Paragraph::new(summary_lines(data, theme)).render(summary_inner, buf);
        self.render_stats(stats_inner, buf, theme, pictures);
        if self.thumbs {
            self.render_thumbs(bottom, buf, theme, pictures);
        } else {
            let [list, preview] =
                Layout::horizontal([Constraint::Percentage(40), Constraint::Fill(1)]).areas(bottom);
            self.render_list(list, buf, theme);
            self.render_preview(preview, buf, theme, pictures);
        }
    }

    fn list_title(&self) -> String {
        let count = match &self.listing {
            Listing::Ready if self.filter.is_empty() => format!("{} files", self.names.len()),
            Listing::Ready => format!("{} of {} files", self.visible.len(), self.names.len()),
            Listing::Loading => "listing…".into(),
            Listing::Idle => "no data set".into(),
            Listing::Failed(_) => "cannot list".into(),
        };
        let filter = if self.typing || !self.filter.is_empty() {
            format!(
                " · /{}{}",
                escape_name(&self.filter),
                if self.typing { "▏" } else { "" }
            )
        } else {
            String::new()
        };
        format!("files · {count}{filter}")
    }

    fn render_list(&mut self, area: Rect, buf: &mut Buffer, theme: &Theme) {
        let block = super::panel(self.list_title(), self.typing, theme);
        let inner = block.inner(area);
        block.render(area, buf);

        self.rows = (inner.height as usize).max(1);
        if let Some(text) = self.listing_note() {
            Paragraph::new(Span::styled(text, theme.dim))
                .wrap(Wrap { trim: true })
                .render(inner, buf);
            return;
        }
        self.scroll_to_selection();
        let end = (self.offset + self.rows).min(self.visible.len());
        // Only the rows on screen are formatted: the list may hold millions of names.
        let lines: Vec<Line> = (self.offset..end)
            .map(|row| {
                let i = self.visible[row];
                let mark = if self.excluded.contains(Path::new(&self.names[i])) {
                    "✗ "
                } else {
                    "  "
                };
                let style = if row == self.selected {
                    theme.selection
                } else {
                    theme.text
                };
                Line::from(Span::styled(
                    format!("{mark}{}", escape_name(&self.names[i])),
                    style,
                ))
            })
            .collect();
        Paragraph::new(lines).render(inner, buf);
    }

    fn listing_note(&self) -> Option<String> {
        match &self.listing {
            Listing::Idle => {
                Some("the data set appears once the run's configuration is known".into())
            }
            Listing::Loading => Some("listing the data set…".into()),
            Listing::Failed(e) => Some(escape_name(e)),
            Listing::Ready if self.visible.is_empty() => Some("no file matches".into()),
            Listing::Ready => None,
        }
    }

    fn scroll_to_selection(&mut self) {
        if self.selected < self.offset {
            self.offset = self.selected;
        } else if self.selected >= self.offset + self.rows {
            self.offset = self.selected + 1 - self.rows;
        }
    }

    fn render_preview(
        &mut self,
        area: Rect,
        buf: &mut Buffer,
        theme: &Theme,
        pictures: &mut Pictures,
    ) {
        let current = self.current();
        let name = current.map_or(String::new(), |i| escape_name(&self.names[i]));
        let block = super::panel(format!("preview · {name}"), false, theme);
        let inner = block.inner(area);
        block.render(area, buf);

        let Some(index) = current else { return };
        if self.asked_preview != Some(index) {
            if let Some(b) = &self.browser {
                let _ = b.jobs.send(Job::Preview { index });
            }
            self.asked_preview = Some(index);
        }
        match &self.preview {
            Some((i, Ok(p))) if *i == index => pictures.draw(p, inner, buf, theme.image),
            Some((i, Err(e))) if *i == index => {
                Paragraph::new(Span::styled(escape_name(e), theme.error))
                    .wrap(Wrap { trim: true })
                    .render(inner, buf);
            }
            _ => Paragraph::new(Span::styled("decoding…", theme.dim)).render(inner, buf),
        }
    }

    fn render_thumbs(
        &mut self,
        area: Rect,
        buf: &mut Buffer,
        theme: &Theme,
        pictures: &mut Pictures,
    ) {
        let block = super::panel(format!("{} · thumbnails", self.list_title()), false, theme);
        let inner = block.inner(area);
        block.render(area, buf);

        let cols = (inner.width / 12).max(1) as usize;
        let rows = (inner.height / 6).max(1) as usize;
        self.grid = (cols, rows);
        let per_page = cols * rows;
        let start = self.selected / per_page * per_page;
        if self.asked_page != Some(start) {
            let indices: Vec<usize> = self
                .visible
                .iter()
                .skip(start)
                .take(per_page)
                .copied()
                .collect();
            if let Some(b) = &self.browser {
                let _ = b.jobs.send(Job::Thumbs { start, indices });
            }
            self.asked_page = Some(start);
        }
        match &self.page {
            Some((s, p)) if *s == start => pictures.draw(p, inner, buf, theme.image),
            _ => Paragraph::new(Span::styled("decoding thumbnails…", theme.dim)).render(inner, buf),
        }
    }

    fn render_stats(
        &mut self,
        area: Rect,
        buf: &mut Buffer,
        theme: &Theme,
        pictures: &mut Pictures,
    ) {
        let [face, text] = Layout::horizontal([
            Constraint::Length(area.height.min(10) * 2),
            Constraint::Fill(1),
        ])
        .areas(area);
        let Some(s) = &self.stats else {
            Paragraph::new(Span::styled(
                "reading every image for the statistics…",
                theme.dim,
            ))
            .render(area, buf);
            return;
        };
        let progress = if s.done < s.total {
            format!(" ({} of {} read)", s.done, s.total)
        } else {
            String::new()
        };
        let sizes: Vec<String> = s
            .sizes
            .iter()
            .take(3)
            .map(|((w, h), n)| format!("{w}×{h}: {n}"))
            .collect();
        let more = if s.sizes.len() > 3 {
            format!(" +{} more", s.sizes.len() - 3)
        } else {
            String::new()
        };
        let chans: Vec<String> = s
            .channels
            .iter()
            .map(|(c, n)| format!("{c}: {n}"))
            .collect();
        let f = |v: [f64; 3]| format!("{:.1} {:.1} {:.1}", v[0], v[1], v[2]);
        let mut lines = vec![
            field("images  ", format!("{}{progress}", s.total), theme),
            field("sizes   ", format!("{}{more}", sizes.join(", ")), theme),
            field("channels", chans.join(", "), theme),
            field("mean RGB", f(s.mean), theme),
            field("std RGB ", f(s.std), theme),
            field("excluded", self.excluded.len().to_string(), theme),
            field("unreadable", (s.bad.len()).to_string(), theme),
        ];
        for b in s.bad.iter().take(area.height.saturating_sub(7) as usize) {
            let name = b
                .path
                .file_name()
                .map_or(String::new(), |n| n.to_string_lossy().into_owned());
            lines.push(Line::from(Span::styled(
                format!("  {}: {}", escape_name(&name), escape_name(&b.reason)),
                theme.warn,
            )));
        }
        Paragraph::new(lines).render(text, buf);
        if let Some(p) = &self.mean_face {
            pictures.draw(p, face, buf, theme.image);
        }
    }
}

/// A page of thumbnails in `cols` columns; unreadable ones are left dark.
fn thumb_page(images: &[Option<RgbImage>], cols: usize) -> RgbImage {
    let tiles: Vec<crate::gallery::Tile> = images
        .iter()
        .map(|im| crate::gallery::Tile {
            image: im.clone().unwrap_or_else(|| RgbImage::new(THUMB, THUMB)),
            label: String::new(),
        })
        .collect();
    super::gallery::compose(&tiles, cols, usize::MAX, image::Rgb([0, 0, 0]))
}

fn summary_lines<'a>(data: &RunData, theme: &Theme) -> Vec<Line<'a>> {
    let status = data.status.as_ref();
    let config = data.config.as_ref();
    let name = status
        .filter(|s| !s.dataset.is_empty())
        .map(|s| s.dataset.clone())
        .or(config.map(|c| c.data.source.clone()))
        .unwrap_or_else(|| "unknown yet".into());
    let count = |n: Option<usize>| n.map_or("–".to_string(), |n| n.to_string());
    let train = status.map(|s| s.train_images).filter(|n| *n > 0);
    let val = status.map(|s| s.val_images).filter(|_| train.is_some());
    let total = train.zip(val).map(|(t, v)| t + v);
    let mut lines = vec![
        field("data set       ", escape_name(&name), theme),
        field("images         ", count(total), theme),
        field("  training     ", count(train), theme),
        field("  held out     ", count(val), theme),
        field(
            "unreadable     ",
            format!("{} (from the run's log)", data.bad_files),
            theme,
        ),
    ];
    if let Some(c) = config {
        let size = format!(
            "{0}×{0} px, {1} channel(s)",
            c.model.image_size, c.model.channels
        );
        lines.push(field("prepared as    ", size, theme));
        lines.push(field(
            "crop           ",
            format!("{:?}", c.data.crop).to_lowercase(),
            theme,
        ));
        lines.push(field(
            "flip           ",
            if c.data.flip { "yes" } else { "no" }.to_string(),
            theme,
        ));
        lines.push(field(
            "held-out share ",
            format!("{:.1}%", c.data.val_fraction * 100.0),
            theme,
        ));
    }
    lines
}
