//! The run configuration: one TOML file with `[data]`, `[model]`, `[train]` and `[ui]` sections.
//!
//! Every field has a default, so an empty file (or none at all) is a valid configuration.
//! Parsing rejects unknown keys and validation rejects values the engine cannot use; both
//! errors name the file, the key and the line.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The default configuration file name, looked up in the working directory.
pub const DEFAULT_FILE: &str = "facestudio.toml";

/// An error in a configuration file, with enough context to find and fix it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct ConfigError {
    /// The file the text came from (or `<default>` for built-in text).
    pub file: PathBuf,
    /// The dotted key, such as `model.latent`, when one is known.
    pub key: Option<String>,
    /// The 1-based line, when one is known.
    pub line: Option<usize>,
    /// What is wrong, in words.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The whole configuration of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the faces come from and how they are prepared.
    pub data: DataConfig,
    /// The network.
    pub model: ModelConfig,
    /// The optimisation and the run's schedule of logs, samples and checkpoints.
    pub train: TrainConfig,
    /// The studio's look and behaviour.
    pub ui: UiConfig,
}

/// How images are cropped before resizing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Crop {
    /// CelebA's aligned photos: a square around the face, centred a little above the middle.
    Celeba,
    /// The largest centred square.
    Center,
    /// No crop: the image is squeezed to the target size.
    None,
}

/// `[data]`: the data set and its preprocessing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// `synthetic`, a name from `datasets/`, a folder of images, or an `.npy` file.
    pub source: String,
    /// How many faces the synthetic generator makes.
    pub synthetic_count: usize,
    /// The crop applied to folder images before resizing.
    pub crop: Crop,
    /// Flip half of the training images horizontally, chosen afresh each epoch.
    pub flip: bool,
    /// Share of the images held out for validation, chosen stably from the seed.
    pub val_fraction: f64,
    /// Where decoded images are cached; empty means the user cache folder.
    pub cache_dir: String,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            source: "synthetic".into(),
            synthetic_count: 10_000,
            crop: Crop::Celeba,
            flip: true,
            val_fraction: 0.05,
            cache_dir: String::new(),
        }
    }
}

/// Variational autoencoder or plain autoencoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Noise on the latent and a KL term: can generate new faces.
    Vae,
    /// No noise, no KL: reconstructs, but random latents decode to mush.
    Ae,
}

/// The network family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Strided convolutions down, upsampling convolutions up.
    Conv,
    /// One hidden layer each way, as in the original VAE paper.
    Mlp,
}

/// How the decoder doubles the resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Upsample {
    /// Transposed convolution, kernel 4, stride 2.
    Transpose,
    /// Nearest-neighbour upsampling followed by a 3x3 convolution.
    Nearest,
}

/// The likelihood of the decoder, which sets the reconstruction loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReconLoss {
    /// Bernoulli likelihood: binary cross-entropy on pixels in [0, 1].
    Bce,
    /// Gaussian likelihood with a fixed spread (`model.gaussian_sigma`): scaled squared error.
    Mse,
    /// Gaussian likelihood with a learned per-pixel variance (the paper's Frey Face decoder).
    Gaussian,
}

/// `[model]`: the network and its loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// `vae` or `ae`.
    pub kind: ModelKind,
    /// `conv` or `mlp`.
    pub arch: Arch,
    /// Side of the square images the model sees: 32, 64 or 128 (conv).
    pub image_size: usize,
    /// 1 for grayscale, 3 for RGB.
    pub channels: usize,
    /// Size of the latent vector.
    pub latent: usize,
    /// Encoder channel widths, one per halving of the resolution (conv).
    pub widths: Vec<usize>,
    /// Hidden units of the MLP.
    pub hidden: usize,
    /// `transpose` or `nearest`.
    pub upsample: Upsample,
    /// `bce`, `mse` or `gaussian`.
    pub recon_loss: ReconLoss,
    /// Standard deviation of the fixed-variance Gaussian decoder (`mse`).
    pub gaussian_sigma: f64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            kind: ModelKind::Vae,
            arch: Arch::Conv,
            image_size: 64,
            channels: 3,
            latent: 128,
            widths: vec![32, 64, 128, 256],
            hidden: 200,
            upsample: Upsample::Transpose,
            recon_loss: ReconLoss::Bce,
            gaussian_sigma: 0.1,
        }
    }
}

/// How the learning rate moves over the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// The same rate throughout.
    Constant,
    /// Cosine decay to a tenth of the rate at the last step.
    Cosine,
}

/// `[train]`: optimisation and the run's schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Images per step.
    pub batch_size: usize,
    /// Adam's learning rate.
    pub lr: f64,
    /// `constant` or `cosine`.
    pub lr_schedule: LrSchedule,
    /// Weight of the KL term.
    pub beta: f64,
    /// Steps over which beta rises linearly from 0; 0 turns the warm-up off.
    pub kl_warmup_steps: u64,
    /// Total steps of the run.
    pub steps: u64,
    /// Seed of everything random: weights, shuffles, noise, sample latents.
    pub seed: u64,
    /// Clip the global gradient norm to this; 0 turns clipping off.
    pub grad_clip: f64,
    /// Steps between metric lines.
    pub log_every: u64,
    /// Steps between sample grids.
    pub sample_every: u64,
    /// Steps between checkpoints.
    pub checkpoint_every: u64,
    /// Minutes of wall time between checkpoints, whatever the step count; 0 turns it off.
    pub checkpoint_minutes: f64,
    /// Checkpoints kept on disk (the newest ones).
    pub keep_checkpoints: usize,
    /// Steps between validation passes.
    pub val_every: u64,
    /// `auto`, `cpu`, `cuda`, `cuda:N` or `metal`.
    pub device: String,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            batch_size: 64,
            lr: 1e-3,
            lr_schedule: LrSchedule::Constant,
            beta: 1.0,
            kl_warmup_steps: 500,
            steps: 5_000,
            seed: 0,
            grad_clip: 0.0,
            log_every: 10,
            sample_every: 100,
            checkpoint_every: 500,
            checkpoint_minutes: 5.0,
            keep_checkpoints: 3,
            val_every: 250,
            device: "auto".into(),
        }
    }
}

/// `[ui]`: the studio.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UiConfig {
    /// A theme name from `themes/` (`dark`, `light`, `mono`).
    pub theme: String,
    /// Frames per second of the studio.
    pub fps: f64,
    /// Exponential moving average weight of the loss chart, 0 (raw) to 0.99.
    pub smoothing: f64,
    /// `auto`, `kitty`, `sixel`, `iterm2` or `halfblocks`.
    pub graphics: String,
}

impl Default for UiConfig {
    fn default() -> Self {
        Self {
            theme: "dark".into(),
            fps: 10.0,
            smoothing: 0.6,
            graphics: "auto".into(),
        }
    }
}

impl Config {
    /// Parses and validates TOML text; `file` is only used in error messages.
    pub fn from_toml(text: &str, file: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| parse_error(&e, text, file))?;
        config.validate().map_err(|(key, message)| ConfigError {
            file: file.to_path_buf(),
            line: find_key_line(text, &key),
            key: Some(key),
            message,
        })?;
        Ok(config)
    }

    /// Reads a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            key: None,
            line: None,
            message: format!("cannot read: {e}"),
        })?;
        Self::from_toml(&text, path)
    }

    /// Reads `path` if given, else `facestudio.toml` when it exists, else the defaults.
    pub fn load_or_default(path: Option<&Path>) -> Result<(Self, Option<PathBuf>), ConfigError> {
        match path {
            Some(p) => Ok((Self::load(p)?, Some(p.to_path_buf()))),
            None if Path::new(DEFAULT_FILE).exists() => {
                let p = PathBuf::from(DEFAULT_FILE);
                Ok((Self::load(&p)?, Some(p)))
            }
            None => Ok((Self::default(), None)),
        }
    }

    /// The configuration as TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a Config always serialises")
    }

    /// Checks every value the engine depends on; the error is `(dotted key, message)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let m = &self.model;
        let fail = |key: &str, msg: String| Err((key.to_string(), msg));
        if m.latent == 0 || m.latent > 4096 {
            return fail(
                "model.latent",
                format!("must be between 1 and 4096, got {}", m.latent),
            );
        }
        if m.channels != 1 && m.channels != 3 {
            return fail(
                "model.channels",
                format!("must be 1 or 3, got {}", m.channels),
            );
        }
        if m.arch == Arch::Conv {
            if ![32, 64, 128].contains(&m.image_size) {
                let msg = format!(
                    "must be 32, 64 or 128 for a conv model, got {}",
                    m.image_size
                );
                return fail("model.image_size", msg);
            }
            let halvings = m.widths.len() as u32;
            if halvings == 0 || m.image_size >> halvings < 2 || m.widths.contains(&0) {
                let msg = format!(
                    "needs 1 to {} non-zero widths for {}px images, got {:?}",
                    m.image_size.trailing_zeros() - 1,
                    m.image_size,
                    m.widths
                );
                return fail("model.widths", msg);
            }
        } else if m.image_size < 4 || m.image_size > 512 {
            return fail(
                "model.image_size",
                format!("must be 4 to 512, got {}", m.image_size),
            );
        }
        if m.hidden == 0 {
            return fail("model.hidden", "must be at least 1".into());
        }
        if !(m.gaussian_sigma > 0.0 && m.gaussian_sigma.is_finite()) {
            return fail(
                "model.gaussian_sigma",
                format!("must be > 0, got {}", m.gaussian_sigma),
            );
        }
        if m.recon_loss == ReconLoss::Gaussian && m.arch != Arch::Mlp {
            return fail(
                "model.recon_loss",
                "`gaussian` needs `model.arch = \"mlp\"`".into(),
            );
        }
        self.validate_train()?;
        self.validate_data_and_ui()
    }

    fn validate_train(&self) -> Result<(), (String, String)> {
        let t = &self.train;
        let fail = |key: &str, msg: String| Err((key.to_string(), msg));
        if t.batch_size == 0 || t.batch_size > 65_536 {
            return fail(
                "train.batch_size",
                format!("must be 1 to 65536, got {}", t.batch_size),
            );
        }
        if !(t.lr > 0.0 && t.lr < 10.0) {
            return fail("train.lr", format!("must be > 0 and < 10, got {}", t.lr));
        }
        if !(t.beta >= 0.0 && t.beta.is_finite()) {
            return fail("train.beta", format!("must be >= 0, got {}", t.beta));
        }
        if t.steps == 0 {
            return fail("train.steps", "must be at least 1".into());
        }
        if !(t.grad_clip >= 0.0 && t.grad_clip.is_finite()) {
            return fail(
                "train.grad_clip",
                format!("must be >= 0, got {}", t.grad_clip),
            );
        }
        for (key, v) in [
            ("train.log_every", t.log_every),
            ("train.sample_every", t.sample_every),
            ("train.checkpoint_every", t.checkpoint_every),
            ("train.val_every", t.val_every),
        ] {
            if v == 0 {
                return fail(key, "must be at least 1".into());
            }
        }
        if !(t.checkpoint_minutes >= 0.0 && t.checkpoint_minutes.is_finite()) {
            let msg = format!("must be >= 0, got {}", t.checkpoint_minutes);
            return fail("train.checkpoint_minutes", msg);
        }
        if t.keep_checkpoints == 0 {
            return fail("train.keep_checkpoints", "must be at least 1".into());
        }
        if let Err(msg) = crate::device::DeviceChoice::parse(&t.device) {
            return fail("train.device", msg);
        }
        Ok(())
    }

    fn validate_data_and_ui(&self) -> Result<(), (String, String)> {
        let d = &self.data;
        let u = &self.ui;
        let fail = |key: &str, msg: String| Err((key.to_string(), msg));
        if !(0.0..0.9).contains(&d.val_fraction) {
            return fail(
                "data.val_fraction",
                format!("must be in [0, 0.9), got {}", d.val_fraction),
            );
        }
        if d.synthetic_count < 2 || d.synthetic_count > 1_000_000 {
            let msg = format!("must be 2 to 1000000, got {}", d.synthetic_count);
            return fail("data.synthetic_count", msg);
        }
        if let Err(msg) = crate::data::catalog::check_source(&d.source) {
            return fail("data.source", msg);
        }
        if !(u.fps > 0.0 && u.fps <= 60.0) {
            return fail("ui.fps", format!("must be > 0 and <= 60, got {}", u.fps));
        }
        if !(0.0..1.0).contains(&u.smoothing) {
            return fail(
                "ui.smoothing",
                format!("must be in [0, 1), got {}", u.smoothing),
            );
        }
        let protocols = ["auto", "kitty", "sixel", "iterm2", "halfblocks"];
        if !protocols.contains(&u.graphics.as_str()) {
            let msg = format!(
                "must be one of {}, got `{}`",
                protocols.join(", "),
                u.graphics
            );
            return fail("ui.graphics", msg);
        }
        if u.theme.is_empty() {
            return fail("ui.theme", "must name a theme".into());
        }
        Ok(())
    }
}

/// When a changed setting takes effect in a running training.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// At the next step.
    Live,
    /// At the start of the next epoch.
    NextEpoch,
    /// Only in a new run.
    Restart,
}

/// How a dotted key takes effect when changed during training.
pub fn effect_of(key: &str) -> Effect {
    const LIVE: [&str; 12] = [
        "train.lr",
        "train.lr_schedule",
        "train.beta",
        "train.kl_warmup_steps",
        "train.grad_clip",
        "train.log_every",
        "train.sample_every",
        "train.checkpoint_every",
        "train.checkpoint_minutes",
        "train.keep_checkpoints",
        "train.val_every",
        "train.steps",
    ];
    if key.starts_with("ui.") || LIVE.contains(&key) {
        Effect::Live
    } else if key == "train.batch_size" || key == "data.flip" {
        Effect::NextEpoch
    } else {
        Effect::Restart
    }
}

/// One setting that differs between two configurations.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The dotted key.
    pub key: String,
    /// The old value, as TOML text.
    pub old: String,
    /// The new value, as TOML text.
    pub new: String,
    /// When it can take effect.
    pub effect: Effect,
}

impl Config {
    /// The settings that differ from `self` in `new`, in key order.
    pub fn changes(&self, new: &Config) -> Vec<Change> {
        let a = flatten(&toml::Value::try_from(self).expect("a Config serialises"));
        let b = flatten(&toml::Value::try_from(new).expect("a Config serialises"));
        let mut out = Vec::new();
        for (key, new_value) in &b {
            let old_value = a
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            if &old_value != new_value {
                out.push(Change {
                    key: key.clone(),
                    old: old_value,
                    new: new_value.clone(),
                    effect: effect_of(key),
                });
            }
        }
        out
    }
}

fn flatten(value: &toml::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let toml::Value::Table(sections) = value {
        for (section, table) in sections {
            if let toml::Value::Table(keys) = table {
                for (key, v) in keys {
                    out.push((format!("{section}.{key}"), v.to_string()));
                }
            }
        }
    }
    out.sort();
    out
}

/// Sets one dotted key in a TOML file, keeping its comments and layout, atomically.
///
/// The file is read afresh just before the write, so an edit made meanwhile in an editor is
/// kept; the result is validated before it replaces the file.
pub fn edit_file(path: &Path, key: &str, value: toml_edit::Item) -> Result<(), ConfigError> {
    edit_file_checked(path, key, value, |_| Ok(()))
}

/// Like [`edit_file`], but first asks `check` about the file as it is now, so that a value
/// changed in an editor since the caller last read it is not silently overwritten: `check`
/// returns the reason to refuse.
pub fn edit_file_checked(
    path: &Path,
    key: &str,
    value: toml_edit::Item,
    check: impl Fn(&Config) -> Result<(), String>,
) -> Result<(), ConfigError> {
    let err = |message: String| ConfigError {
        file: path.to_path_buf(),
        key: Some(key.to_string()),
        line: None,
        message,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(err(format!("cannot read: {e}"))),
    };
    let now = Config::from_toml(&text, path)?;
    check(&now).map_err(err)?;
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e| err(format!("cannot parse: {e}")))?;
    let (table, leaf) = key
        .split_once('.')
        .ok_or_else(|| err("expected a `section.key`".into()))?;
    if !doc.contains_key(table) {
        doc[table] = toml_edit::table();
    }
    let mut value = value;
    // Keep the comment that trails the old value on its line, and its spacing.
    if let (Some(old), Some(new)) = (doc[table][leaf].as_value(), value.as_value_mut()) {
        *new.decor_mut() = old.decor().clone();
    }
    doc[table][leaf] = value;
    let new_text = doc.to_string();
    Config::from_toml(&new_text, path)?;
    crate::run::atomic_write(path, new_text.as_bytes())
        .map_err(|e| err(format!("cannot write: {e}")))
}

fn parse_error(e: &toml::de::Error, text: &str, file: &Path) -> ConfigError {
    let line = e.span().map(|span| line_of_offset(text, span.start));
    let message = e.message().trim().to_string();
    let key = e.span().and_then(|span| key_at(text, span.start));
    ConfigError {
        file: file.to_path_buf(),
        key,
        line,
        message,
    }
}

fn line_of_offset(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The dotted key of the `key = value` line around `offset`, for parse errors.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let line_no = line_of_offset(text, offset);
    let mut table = String::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if let Some(name) = table_header(trimmed) {
            table = name;
        }
        if i + 1 == line_no {
            let (key, _) = trimmed.split_once('=')?;
            let key = key.trim().trim_matches('"');
            return Some(if table.is_empty() {
                key.to_string()
            } else {
                format!("{table}.{key}")
            });
        }
    }
    None
}

fn table_header(trimmed: &str) -> Option<String> {
    let inner = trimmed.strip_prefix('[')?.split(']').next()?;
    Some(inner.trim().to_string())
}

/// The line that sets the dotted `key`, found by a scan of the table headers.
pub fn find_key_line(text: &str, key: &str) -> Option<usize> {
    let (table, leaf) = key.rsplit_once('.').unwrap_or(("", key));
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if let Some(name) = table_header(trimmed) {
            current = name;
            continue;
        }
        let Some((k, _)) = trimmed.split_once('=') else {
            continue;
        };
        let k = k.trim().trim_matches('"');
        if (current == table && k == leaf) || (current.is_empty() && k == key) {
            return Some(i + 1);
        }
    }
    None
}

/// A fully commented default configuration file.
pub fn default_commented() -> String {
    include_str!("default_config.toml").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> ConfigError {
        Config::from_toml(text, Path::new("f.toml")).unwrap_err()
    }

    #[test]
    fn empty_file_is_the_default() {
        let c = Config::from_toml("", Path::new("x")).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn commented_default_parses_to_the_default() {
        let c = Config::from_toml(&default_commented(), Path::new("x")).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = err("[model]\nlatent = 16\nlatnet = 3\n");
        assert_eq!(e.line, Some(3));
        assert_eq!(e.key.as_deref(), Some("model.latnet"));
        assert!(e.to_string().contains("f.toml:3"), "{e}");
    }

    #[test]
    fn bad_values_name_key_and_line() {
        let e = err("[train]\nbatch_size = 8\n\n[model]\nlatent = 0\n");
        assert_eq!((e.key.as_deref(), e.line), (Some("model.latent"), Some(5)));
        let e = err("[train]\nlr = -0.1\n");
        assert_eq!((e.key.as_deref(), e.line), (Some("train.lr"), Some(2)));
        let e = err("[model]\nimage_size = 48\n");
        assert_eq!(
            (e.key.as_deref(), e.line),
            (Some("model.image_size"), Some(2))
        );
    }

    #[test]
    fn wrong_type_names_key_and_line() {
        let e = err("[train]\n\nsteps = \"many\"\n");
        assert_eq!((e.key.as_deref(), e.line), (Some("train.steps"), Some(3)));
    }

    #[test]
    fn missing_dataset_path_is_rejected() {
        let e = err("[data]\nsource = \"/no/such/folder/anywhere\"\n");
        assert_eq!((e.key.as_deref(), e.line), (Some("data.source"), Some(2)));
        assert!(e.message.contains("/no/such/folder"), "{}", e.message);
    }

    #[test]
    fn round_trips_through_toml() {
        let mut c = Config::default();
        c.model.latent = 7;
        c.train.lr = 3e-4;
        assert_eq!(Config::from_toml(&c.to_toml(), Path::new("x")).unwrap(), c);
    }
}
