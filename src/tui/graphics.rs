//! Terminal graphics: which image protocol to use, and pictures encoded off the UI thread.
//!
//! **Choosing.** Before the studio takes the terminal it asks it, once, with ratatui-image's
//! query (kitty's graphics query, the primary device attributes for sixel, the cell size in
//! pixels, and a device status report that every terminal answers). The reply is read with
//! `poll(2)` and a deadline, so a terminal that never answers costs [`QUERY_TIMEOUT`] and leaves
//! no reader behind. [`decide`] turns the reply bytes and the environment into a [`Decision`];
//! it is a pure function so that canned replies test it. Inside tmux the query and the images
//! are wrapped for passthrough (`allow-passthrough` is switched on for the pane); where the
//! outer terminal does not answer through tmux, half-blocks are used.
//!
//! **Drawing.** [`Pictures`] draws a [`Picture`] into a buffer area. With half-blocks it draws
//! at once (downscaling is cheap and cached). With kitty, sixel or iTerm2 the first draw of a
//! picture at a size queues it for the encoding thread and draws half-blocks in its place;
//! once encoded, the protocol's cells are drawn from the cache. Only pictures drawn in a frame
//! are encoded (a queued one that is no longer shown is dropped), and because ratatui only
//! writes cells that changed, an unchanged image is never sent to the terminal again.
//!
//! Kitty images go through ratatui-image's unicode placeholders only where they work: kitty
//! 0.28 or newer (told by its XTVERSION answer) and inside tmux, which needs them. Elsewhere
//! (kitty 0.26 of Debian 12, Konsole, unknown kitty-protocol terminals) they are placed
//! directly at the cursor ([`kitty::Placement`]) and deleted when a frame no longer shows them.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use image::{DynamicImage, RgbImage};
use ratatui::buffer::Buffer;
use ratatui::layout::{Rect, Size};
use ratatui::widgets::Widget;
use ratatui_image::picker::cap_parser::{Parser, QueryStdioOptions, Response};
use ratatui_image::picker::{Picker, ProtocolType};
use ratatui_image::protocol::Protocol;
use ratatui_image::{FontSize, Resize};

use super::widgets::kitty;

use super::theme::ImageMode;
use super::widgets::halfblock;

/// How long the terminal gets to answer the capability query.
pub const QUERY_TIMEOUT: Duration = Duration::from_millis(400);
/// Encoded pictures kept; the least recently drawn go first.
const CACHE_CAPACITY: usize = 48;
/// The largest sixel image side drawn, in pixels (xterm's default `maxGraphicSize`).
const SIXEL_MAX_PIXELS: u16 = 1000;
/// The cell size assumed when the terminal does not say.
const DEFAULT_CELL: (u16, u16) = (10, 20);

/// What the user asked for: `--graphics` or `ui.graphics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Ask the terminal.
    Auto,
    /// Use this protocol whatever the terminal says.
    Force(ProtocolType),
}

impl Choice {
    /// Parses `auto`, `kitty`, `sixel`, `iterm2` or `halfblocks`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let proto = match text.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => return Ok(Self::Auto),
            "kitty" => ProtocolType::Kitty,
            "sixel" => ProtocolType::Sixel,
            "iterm2" => ProtocolType::Iterm2,
            "halfblocks" | "halfblock" => ProtocolType::Halfblocks,
            other => {
                return Err(format!(
                    "graphics `{other}`: expected auto, kitty, sixel, iterm2 or halfblocks"
                ))
            }
        };
        Ok(Self::Force(proto))
    }

    /// The flag's value when given, else the config key's.
    pub fn pick(flag: Option<&str>, config: &str) -> Result<Self, String> {
        Self::parse(flag.unwrap_or(config))
    }
}

/// What the terminal answered to the query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reply {
    /// Kitty's graphics query was answered `OK`.
    pub kitty: bool,
    /// The device attributes list sixel (4).
    pub sixel: bool,
    /// The cell size in pixels, `(width, height)`.
    pub cell: Option<(u16, u16)>,
    /// Device status reports seen (the end marker of each query).
    pub statuses: usize,
    /// The terminal's name and version from XTVERSION, such as `kitty(0.26.5)`.
    pub version: Option<String>,
}

/// Parses the bytes a terminal sent back; anything else in them is ignored.
pub fn parse_reply(bytes: &[u8]) -> Reply {
    let mut parser = Parser::new();
    let mut reply = Reply {
        version: xtversion(bytes),
        ..Reply::default()
    };
    for &b in bytes {
        for r in parser.push(char::from(b)) {
            match r {
                Response::Kitty => reply.kitty = true,
                Response::Sixel => reply.sixel = true,
                Response::CellSize(Some(c)) => reply.cell = Some(c),
                Response::Status => reply.statuses += 1,
                _ => {}
            }
        }
    }
    reply
}

/// The text of an XTVERSION answer (`DCS > | text ST`) among `bytes`.
fn xtversion(bytes: &[u8]) -> Option<String> {
    let start = bytes.windows(4).position(|w| w == b"\x1bP>|")? + 4;
    let len = bytes[start..].windows(2).position(|w| w == b"\x1b\\")?;
    let text = String::from_utf8_lossy(&bytes[start..start + len]);
    Some(text.chars().filter(|c| !c.is_control()).take(64).collect())
}

/// Whether a terminal that speaks kitty's protocol draws unicode placeholders: kitty from 0.28.
fn draws_placeholders(version: Option<&str>) -> bool {
    let Some(v) = version.and_then(|v| v.strip_prefix("kitty(")) else {
        return false;
    };
    let mut parts = v
        .trim_end_matches(')')
        .split('.')
        .map(|n| n.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= (0, 28),
        _ => false,
    }
}

/// The parts of the environment the choice depends on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TermEnv {
    /// `TERM`.
    pub term: String,
    /// `TERM_PROGRAM`.
    pub term_program: String,
    /// `LC_TERMINAL` (iTerm2 sets it, and it survives ssh).
    pub lc_terminal: String,
    /// `TMUX` is set.
    pub tmux_var: bool,
}

impl TermEnv {
    /// Reads the process environment.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).unwrap_or_default();
        Self {
            term: var("TERM"),
            term_program: var("TERM_PROGRAM"),
            lc_terminal: var("LC_TERMINAL"),
            tmux_var: std::env::var_os("TMUX").is_some(),
        }
    }

    /// Whether the studio runs inside tmux.
    pub fn in_tmux(&self) -> bool {
        self.tmux_var || self.term.starts_with("tmux") || self.term_program == "tmux"
    }

    /// Whether the terminal names itself as one with iTerm2 inline images.
    pub fn iterm2_like(&self) -> bool {
        let p = &self.term_program;
        ["iTerm", "WezTerm", "mintty", "vscode", "Tabby", "rio"]
            .iter()
            .any(|n| p.contains(n))
            || self.lc_terminal.contains("iTerm")
    }
}

/// The protocol chosen, with what it needs and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The protocol.
    pub protocol: ProtocolType,
    /// The cell size in pixels used to size images.
    pub cell: (u16, u16),
    /// Whether escape sequences are wrapped for tmux passthrough.
    pub tmux: bool,
    /// Kitty images placed at the cursor rather than through unicode placeholders.
    pub kitty_direct: bool,
    /// Why, in a few words (for the log).
    pub why: String,
}

impl Default for Decision {
    fn default() -> Self {
        Self::halfblocks("default")
    }
}

impl Decision {
    /// Half-blocks, for `why`.
    pub fn halfblocks(why: &str) -> Self {
        let tmux = false;
        Self {
            protocol: ProtocolType::Halfblocks,
            cell: DEFAULT_CELL,
            tmux,
            kitty_direct: false,
            why: why.into(),
        }
    }

    /// The name shown in the status bar: the protocol, and `+tmux` when passed through.
    pub fn label(&self) -> String {
        let name = protocol_name(self.protocol);
        if self.tmux && self.protocol != ProtocolType::Halfblocks {
            format!("{name}+tmux")
        } else {
            name.to_string()
        }
    }

    /// A ratatui-image picker that encodes for this decision.
    pub fn picker(&self) -> Picker {
        // `from_fontsize` is the one constructor that takes a known cell size without querying
        // again; it also reads tmux from the same variables as `TermEnv::in_tmux`.
        #[allow(deprecated)]
        let mut picker = Picker::from_fontsize(FontSize::new(self.cell.0, self.cell.1));
        picker.set_protocol_type(self.protocol);
        picker
    }
}

/// The lowercase name of a protocol, as `--graphics` spells it.
pub fn protocol_name(p: ProtocolType) -> &'static str {
    match p {
        ProtocolType::Halfblocks => "halfblocks",
        ProtocolType::Sixel => "sixel",
        ProtocolType::Kitty => "kitty",
        ProtocolType::Iterm2 => "iterm2",
    }
}

/// Chooses the protocol from the user's choice, the terminal's reply (`None`: it did not
/// answer in time, or there was no terminal to ask), the environment and the cell size the
/// kernel reports for the tty (`ioctl_cell`).
pub fn decide(
    choice: Choice,
    reply: Option<&Reply>,
    env: &TermEnv,
    ioctl_cell: Option<(u16, u16)>,
) -> Decision {
    let tmux = env.in_tmux();
    let cell = reply.and_then(|r| r.cell).or(ioctl_cell);
    let (protocol, why) = match choice {
        Choice::Force(p) => (p, "asked for".to_string()),
        Choice::Auto => match reply {
            Some(r) if r.kitty => (
                ProtocolType::Kitty,
                "the terminal answered kitty's query".into(),
            ),
            Some(r) if r.sixel => (
                ProtocolType::Sixel,
                "the device attributes list sixel".into(),
            ),
            _ if env.iterm2_like() => (
                ProtocolType::Iterm2,
                "TERM_PROGRAM has iTerm2 images".into(),
            ),
            None => (
                ProtocolType::Halfblocks,
                "the terminal did not answer".into(),
            ),
            Some(_) => (
                ProtocolType::Halfblocks,
                "no graphics protocol reported".into(),
            ),
        },
    };
    if protocol != ProtocolType::Halfblocks && cell.is_none() && choice == Choice::Auto {
        // Pixel protocols need the cell size to fit images into cells.
        return Decision::halfblocks("the terminal did not say its cell size");
    }
    // Inside tmux only placeholders survive tmux's redraws; elsewhere only kitty 0.28 and
    // newer draw them.
    let kitty_direct = protocol == ProtocolType::Kitty
        && !tmux
        && !draws_placeholders(reply.and_then(|r| r.version.as_deref()));
    Decision {
        protocol,
        cell: cell.unwrap_or(DEFAULT_CELL),
        tmux,
        kitty_direct,
        why,
    }
}

/// Somewhere the terminal's reply can be read from, with a wait.
pub trait ReplySource {
    /// Bytes that arrived within `wait`; empty when none did.
    fn read_within(&mut self, wait: Duration) -> std::io::Result<Vec<u8>>;
}

/// Reads replies until `statuses` device status reports have come or `timeout` has passed.
pub fn collect_reply(
    source: &mut dyn ReplySource,
    timeout: Duration,
    statuses: usize,
) -> Option<Reply> {
    let deadline = Instant::now() + timeout;
    let mut bytes = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match source.read_within(left) {
            Ok(chunk) => bytes.extend(chunk),
            Err(_) => break,
        }
        if parse_reply(&bytes).statuses >= statuses {
            break;
        }
    }
    let reply = parse_reply(&bytes);
    (reply.statuses > 0).then_some(reply)
}

/// Standard input of a terminal in raw mode, read with `poll(2)`.
struct Stdin;

impl ReplySource for Stdin {
    fn read_within(&mut self, wait: Duration) -> std::io::Result<Vec<u8>> {
        let mut fds = libc::pollfd {
            fd: libc::STDIN_FILENO,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = wait.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut fds, 1, ms) };
        if ready <= 0 {
            return Ok(Vec::new());
        }
        // Straight from the descriptor: a buffered reader would keep bytes crossterm then
        // never sees.
        let mut buf = [0u8; 256];
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(buf[..n as usize].to_vec())
    }
}

/// The cell size in pixels that the kernel reports for the terminal, when it knows.
fn ioctl_cell() -> Option<(u16, u16)> {
    let (cols, rows) = crossterm::terminal::size().ok()?;
    let px = crossterm::terminal::window_size().ok()?;
    if cols == 0 || rows == 0 || px.width == 0 || px.height == 0 {
        return None;
    }
    Some((px.width / cols, px.height / rows))
}

/// Decides the protocol for this process's terminal, asking it when `choice` needs to know
/// (auto) or to learn the cell size (a forced pixel protocol). Call before the studio takes
/// the terminal; it never prints anything the terminal would show.
pub fn detect(choice: Choice) -> Decision {
    use std::io::IsTerminal;

    let env = TermEnv::from_env();
    if choice == Choice::Force(ProtocolType::Halfblocks) {
        return Decision::halfblocks("asked for");
    }
    if !std::io::stdin().is_terminal() || !std::io::stdout().is_terminal() {
        return decide(choice, None, &env, None);
    }
    if env.in_tmux() {
        // Passthrough is off by default; without it tmux swallows the wrapped query.
        let _ = std::process::Command::new("tmux")
            .args(["set", "-p", "allow-passthrough", "on"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
    let reply = query(env.in_tmux());
    decide(choice, reply.as_ref(), &env, ioctl_cell())
}

/// Sends the capability query and reads the answer, in raw mode for the duration.
fn query(tmux: bool) -> Option<Reply> {
    let was_raw = crossterm::terminal::is_raw_mode_enabled().unwrap_or(false);
    if !was_raw && crossterm::terminal::enable_raw_mode().is_err() {
        return None;
    }
    let mut text = Parser::query(tmux, QueryStdioOptions::default());
    if !tmux {
        // XTVERSION first: its answer (kitty's version) comes before the status report that
        // ends the wait. Inside tmux it would name tmux, not the terminal.
        text.insert_str(0, "\x1b[>0q");
    }
    // Inside tmux also ask tmux itself, so that a reply comes even without passthrough.
    let statuses = if tmux {
        text.push_str("\x1b[5n");
        2
    } else {
        1
    };
    let mut out = std::io::stdout();
    let sent = out
        .write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .is_ok();
    let reply = if sent {
        collect_reply(&mut Stdin, QUERY_TIMEOUT, statuses)
    } else {
        None
    };
    if !was_raw {
        let _ = crossterm::terminal::disable_raw_mode();
    }
    reply
}

static NEXT_PICTURE: AtomicU64 = AtomicU64::new(1);

/// An image to draw, with an identity: a new picture is a new image, so the cache knows.
#[derive(Debug, Clone)]
pub struct Picture {
    id: u64,
    image: Arc<RgbImage>,
}

impl Picture {
    /// Wraps an image under a fresh identity.
    pub fn new(image: RgbImage) -> Self {
        Self {
            id: NEXT_PICTURE.fetch_add(1, Ordering::Relaxed),
            image: Arc::new(image),
        }
    }

    /// The pixels.
    pub fn image(&self) -> &RgbImage {
        &self.image
    }

    /// The identity.
    pub fn id(&self) -> u64 {
        self.id
    }
}

/// A picture at a size in cells.
type Key = (u64, u16, u16);

/// A picture encoded for the terminal.
enum Encoded {
    /// ratatui-image's encoding (sixel, iTerm2, kitty with placeholders).
    Protocol(Protocol),
    /// A kitty image placed at the cursor.
    Kitty(kitty::Placement),
}

impl Encoded {
    fn size(&self) -> Size {
        match self {
            Self::Protocol(p) => p.size(),
            Self::Kitty(k) => k.size(),
        }
    }

    fn render(&self, area: Rect, buf: &mut Buffer) {
        match self {
            Self::Protocol(p) => ratatui_image::Image::new(p).render(area, buf),
            Self::Kitty(k) => k.render(area, buf),
        }
    }
}

enum Slot {
    Pending,
    Ready(Box<Encoded>),
    Failed,
}

struct Job {
    key: Key,
    frame: u64,
    image: Arc<RgbImage>,
}

enum Done {
    Encoded(Key, Box<Encoded>),
    Failed(Key, String),
    Dropped(Key),
}

/// The pictures shown in the last frame, for the encoder to skip what is gone.
#[derive(Default)]
struct Shown {
    frame: u64,
    keys: HashSet<Key>,
}

/// Draws pictures with the chosen protocol, encoding on a worker thread and caching.
pub struct Pictures {
    decision: Decision,
    jobs: Option<Sender<Job>>,
    done: Option<Receiver<Done>>,
    shown: Arc<Mutex<Shown>>,
    frame: u64,
    frame_keys: HashSet<Key>,
    cache: HashMap<Key, (Slot, u64)>,
    scaled: HashMap<Key, (RgbImage, u64)>,
    /// Kitty images placed directly in this frame, and those still on screen from before.
    placed: HashSet<u32>,
    on_screen: HashSet<u32>,
    /// The last encoding error, for the status line.
    pub error: Option<String>,
}

impl Default for Pictures {
    fn default() -> Self {
        Self::new(Decision::default())
    }
}

impl Pictures {
    /// Pictures drawn as `decision` says; a worker thread starts for pixel protocols.
    pub fn new(decision: Decision) -> Self {
        let shown = Arc::new(Mutex::new(Shown::default()));
        let (jobs, done) = if decision.protocol == ProtocolType::Halfblocks {
            (None, None)
        } else {
            let (jtx, jrx) = mpsc::channel();
            let (dtx, drx) = mpsc::channel();
            let how = decision.clone();
            let shown = Arc::clone(&shown);
            std::thread::Builder::new()
                .name("encoder".into())
                .spawn(move || encode_loop(&how, &jrx, &dtx, &shown))
                .expect("spawning the encoder thread");
            (Some(jtx), Some(drx))
        };
        Self {
            decision,
            jobs,
            done,
            shown,
            frame: 0,
            frame_keys: HashSet::new(),
            cache: HashMap::new(),
            scaled: HashMap::new(),
            placed: HashSet::new(),
            on_screen: HashSet::new(),
            error: None,
        }
    }

    /// The decision in force.
    pub fn decision(&self) -> &Decision {
        &self.decision
    }

    /// Starts a frame: the pictures drawn in the previous one are what the encoder keeps.
    pub fn begin_frame(&mut self) {
        if let Ok(mut shown) = self.shown.lock() {
            shown.frame = self.frame;
            shown.keys = std::mem::take(&mut self.frame_keys);
        }
        self.frame += 1;
    }

    /// The escape sequences that delete the kitty images the last frame no longer showed;
    /// write them after the frame. Empty for every other protocol.
    pub fn take_deletions(&mut self) -> String {
        let placed = std::mem::take(&mut self.placed);
        let gone = self.on_screen.difference(&placed);
        let out = gone
            .map(|&id| kitty::delete(id, self.decision.tmux))
            .collect();
        self.on_screen = placed;
        out
    }

    /// Takes in finished encodings; true when one arrived (the screen should be redrawn).
    pub fn poll(&mut self) -> bool {
        let Some(done) = &self.done else { return false };
        let mut changed = false;
        for d in done.try_iter() {
            match d {
                Done::Encoded(key, p) => {
                    self.cache.insert(key, (Slot::Ready(p), self.frame));
                    changed = true;
                }
                Done::Failed(key, e) => {
                    tracing::warn!("image encoding failed: {e}");
                    self.error = Some(e);
                    self.cache.insert(key, (Slot::Failed, self.frame));
                    changed = true;
                }
                Done::Dropped(key) => {
                    self.cache.remove(&key);
                }
            }
        }
        evict(&mut self.cache, CACHE_CAPACITY, self.frame);
        evict(&mut self.scaled, CACHE_CAPACITY, self.frame);
        changed
    }

    /// Whether any picture waits for the encoder.
    pub fn pending(&self) -> bool {
        self.cache.values().any(|(s, _)| matches!(s, Slot::Pending))
    }

    /// Draws `picture` as large as fits `area`, keeping its aspect, centred.
    pub fn draw(&mut self, picture: &Picture, area: Rect, buf: &mut Buffer, mode: ImageMode) {
        if area.width == 0 || area.height == 0 {
            return;
        }
        if self.jobs.is_none() || mode == ImageMode::Shade {
            self.frame_keys
                .insert((picture.id, area.width, area.height));
            self.draw_halfblocks(picture, area, buf, mode);
            return;
        }
        let area = self.limit(area);
        let key = (picture.id, area.width, area.height);
        self.frame_keys.insert(key);
        let frame = self.frame;
        match self.cache.get_mut(&key) {
            Some((Slot::Ready(p), used)) => {
                *used = frame;
                let size = p.size();
                let (w, h) = (size.width.min(area.width), size.height.min(area.height));
                let at = Rect::new(
                    area.x + (area.width - w) / 2,
                    area.y + (area.height - h) / 2,
                    w,
                    h,
                );
                p.render(at, buf);
                if let Encoded::Kitty(k) = p.as_ref() {
                    self.placed.insert(k.id);
                }
                return;
            }
            Some((_, used)) => *used = frame,
            None => {
                let job = Job {
                    key,
                    frame,
                    image: Arc::clone(&picture.image),
                };
                if self.jobs.as_ref().is_some_and(|tx| tx.send(job).is_ok()) {
                    self.cache.insert(key, (Slot::Pending, frame));
                }
            }
        }
        self.draw_halfblocks(picture, area, buf, mode);
    }

    /// `area`, shrunk (centred) for sixel so that the image stays within
    /// [`SIXEL_MAX_PIXELS`]: xterm draws nothing at all for a larger one.
    fn limit(&self, area: Rect) -> Rect {
        if self.decision.protocol != ProtocolType::Sixel {
            return area;
        }
        let (cw, ch) = (self.decision.cell.0.max(1), self.decision.cell.1.max(1));
        let w = area.width.min(SIXEL_MAX_PIXELS / cw);
        let h = area.height.min(SIXEL_MAX_PIXELS / ch);
        Rect::new(
            area.x + (area.width - w) / 2,
            area.y + (area.height - h) / 2,
            w,
            h,
        )
    }

    fn draw_halfblocks(
        &mut self,
        picture: &Picture,
        area: Rect,
        buf: &mut Buffer,
        mode: ImageMode,
    ) {
        let key = (picture.id, area.width, area.height);
        let frame = self.frame;
        let img = picture.image();
        let (w, h) = halfblock::fit(
            img.dimensions(),
            (u32::from(area.width), u32::from(area.height) * 2),
        );
        if w == 0 || h == 0 {
            return;
        }
        let entry = self.scaled.entry(key).or_insert_with(|| {
            let filter = image::imageops::FilterType::Triangle;
            (image::imageops::resize(img, w, h, filter), frame)
        });
        entry.1 = frame;
        let x0 = area.x + (area.width - w as u16) / 2;
        let y0 = area.y + (area.height - h.div_ceil(2) as u16) / 2;
        halfblock::draw(&entry.0, x0, y0, buf, mode);
    }
}

/// Drops the least recently used entries beyond `capacity`, but none that frame `now` drew:
/// a grid larger than the cache must not evict (and re-encode) its own pictures every frame.
fn evict<V>(cache: &mut HashMap<Key, (V, u64)>, capacity: usize, now: u64) {
    if cache.len() <= capacity {
        return;
    }
    let mut ages: Vec<(u64, Key)> = cache
        .iter()
        .map(|(k, (_, used))| (*used, *k))
        .filter(|(used, _)| *used + 1 < now)
        .collect();
    ages.sort_unstable();
    let excess = cache.len() - capacity;
    for (_, k) in ages.iter().take(excess) {
        cache.remove(k);
    }
}

fn encode_loop(how: &Decision, jobs: &Receiver<Job>, done: &Sender<Done>, shown: &Mutex<Shown>) {
    let picker = how.picker();
    let mut next_kitty_id = 1u32;
    while let Ok(job) = jobs.recv() {
        let gone = shown
            .lock()
            .is_ok_and(|s| s.frame >= job.frame && !s.keys.contains(&job.key));
        let reply = if gone {
            Done::Dropped(job.key)
        } else {
            let (_, w, h) = job.key;
            let cells = Size::new(w, h);
            let encoded = if how.kitty_direct {
                // Ids are unique per encoding, so a deleted image never takes a live one along.
                next_kitty_id = next_kitty_id.wrapping_add(1).max(1);
                kitty::Placement::encode(&job.image, cells, how.cell, next_kitty_id, how.tmux)
                    .map(Encoded::Kitty)
            } else {
                encode(&picker, &job.image, cells).map(Encoded::Protocol)
            };
            match encoded {
                Ok(e) => Done::Encoded(job.key, Box::new(e)),
                Err(e) => Done::Failed(job.key, e),
            }
        };
        if done.send(reply).is_err() {
            return;
        }
    }
}

/// Encodes `image` scaled to fit `cells` with `picker`'s protocol.
pub fn encode(picker: &Picker, image: &RgbImage, cells: Size) -> Result<Protocol, String> {
    let dynamic = DynamicImage::ImageRgb8(image.clone());
    let resize = Resize::Scale(Some(image::imageops::FilterType::Triangle));
    picker
        .new_protocol(dynamic, cells, resize)
        .map_err(|e| e.to_string())
}

/// The escape sequences a protocol writes for `image` in an area of `cells`: the symbols of
/// the cells it sets, in order (for tests and measurements).
pub fn escape_output(decision: &Decision, image: &RgbImage, cells: Size) -> Result<String, String> {
    if decision.kitty_direct {
        let placement = kitty::Placement::encode(image, cells, decision.cell, 1, decision.tmux)?;
        return Ok(placement.sequence().to_string());
    }
    let protocol = encode(&decision.picker(), image, cells)?;
    let area = Rect::new(0, 0, cells.width, cells.height);
    let mut buf = Buffer::empty(area);
    ratatui_image::Image::new(&protocol).render(area, &mut buf);
    Ok(buf.content().iter().map(|c| c.symbol()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse() {
        assert_eq!(
            Choice::parse("Kitty"),
            Ok(Choice::Force(ProtocolType::Kitty))
        );
        assert_eq!(Choice::parse("auto"), Ok(Choice::Auto));
        assert!(Choice::parse("braille").is_err());
        assert_eq!(
            Choice::pick(Some("sixel"), "kitty"),
            Ok(Choice::Force(ProtocolType::Sixel))
        );
        assert_eq!(
            Choice::pick(None, "halfblocks"),
            Ok(Choice::Force(ProtocolType::Halfblocks))
        );
    }

    #[test]
    fn labels_say_tmux() {
        let mut d = Decision::halfblocks("x");
        assert_eq!(d.label(), "halfblocks");
        d.protocol = ProtocolType::Kitty;
        d.tmux = true;
        assert_eq!(d.label(), "kitty+tmux");
    }
}
