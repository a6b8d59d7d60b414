//! Checkpoints: weights and optimiser moments as safetensors, plus JSON metadata.
//!
//! A checkpoint of step N is three files in `checkpoints/`:
//! - `step-0000000N.safetensors`: the model's weights, keyed by their `VarBuilder` names;
//! - `step-0000000N.optim.safetensors`: Adam's first and second moments (`m.<name>`, `v.<name>`);
//! - `step-0000000N.json`: [`Meta`], written last, so a checkpoint exists only once all of it
//!   is on disk. Each file is written atomically, so a crash never leaves a torn one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::data::batcher::Position;
use crate::model::{self, ImageShape, Vae};
use crate::run::{atomic_write, RunDir};

/// Version of the metadata layout.
pub const FORMAT: u32 = 1;
/// Largest metadata file read, so that a wrong file cannot exhaust memory.
const MAX_META_BYTES: u64 = 16 * 1024 * 1024;

/// Why a checkpoint could not be saved or loaded.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file is not a valid checkpoint.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Nothing to load.
    #[error("{path}: no checkpoint found (train first, or name a checkpoint file)")]
    Missing {
        /// Where it looked.
        path: PathBuf,
    },
    /// A tensor operation failed.
    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),
}

impl CheckpointError {
    fn invalid(path: &Path, message: impl Into<String>) -> Self {
        Self::Invalid {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

/// Adam's scalar state.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamMeta {
    /// Updates applied so far (for bias correction).
    pub t: u64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator guard.
    pub eps: f64,
}

/// The metadata of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    /// Layout version, [`FORMAT`].
    pub format: u32,
    /// Steps trained.
    pub step: u64,
    /// Where the data stream continues.
    pub position: Position,
    /// Fractional epochs done.
    pub epoch: f64,
    /// Seconds of training so far, over all resumes.
    pub train_seconds: f64,
    /// The run's effective configuration (live settings as they were at `step`).
    pub config: Config,
    /// The image shape of the model.
    pub shape: ImageShape,
    /// Optimiser state.
    pub adam: AdamMeta,
    /// Name of the weights file, beside this one.
    pub weights: String,
    /// Name of the optimiser file, beside this one.
    pub optimizer: String,
}

/// A checkpoint on disk, by its metadata path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The step.
    pub step: u64,
    /// `step-N.json`.
    pub meta: PathBuf,
}

/// Base name of the files of step `step`.
pub fn stem(step: u64) -> String {
    format!("step-{step:08}")
}

/// Checkpoints in `dir`, oldest first (by step).
pub fn list(dir: &Path) -> Vec<Entry> {
    let mut out: Vec<Entry> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name
                .strip_prefix("step-")?
                .strip_suffix(".json")?
                .parse()
                .ok()?;
            Some(Entry {
                step,
                meta: e.path(),
            })
        })
        .collect();
    out.sort_by_key(|e| e.step);
    out
}

fn tensor_bytes(t: &Tensor) -> candle_core::Result<Vec<u8>> {
    let values: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    Ok(values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

/// Serialises named tensors to safetensors bytes (f32, sorted by name).
pub fn to_safetensors(tensors: &[(String, Tensor)]) -> Result<Vec<u8>, CheckpointError> {
    let mut owned = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        owned.push((name.clone(), t.dims().to_vec(), tensor_bytes(t)?));
    }
    let views: Vec<(String, TensorView<'_>)> = owned
        .iter()
        .map(|(name, shape, bytes)| {
            let view = TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .expect("shape matches bytes");
            (name.clone(), view)
        })
        .collect();
    safetensors::serialize(views, None)
        .map_err(|e| CheckpointError::invalid(Path::new("<memory>"), format!("serialising: {e}")))
}

/// Reads every tensor of a safetensors file as f32 on `device`.
pub fn read_safetensors(
    path: &Path,
    device: &Device,
) -> Result<HashMap<String, Tensor>, CheckpointError> {
    let bytes = std::fs::read(path).map_err(|e| CheckpointError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| {
        CheckpointError::invalid(path, format!("not a valid safetensors file ({e})"))
    })?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(CheckpointError::invalid(
                path,
                format!("tensor `{name}` is {:?}, expected F32", view.dtype()),
            ));
        }
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.insert(name, Tensor::from_vec(values, view.shape(), device)?);
    }
    Ok(out)
}

/// What a saved checkpoint needs from the trainer.
pub struct Snapshot<'a> {
    /// Model weights, by name.
    pub weights: &'a [(String, Tensor)],
    /// Adam's moments `(name, m, v)`.
    pub moments: &'a [(String, Tensor, Tensor)],
    /// Metadata (its file names are filled in by [`save`]).
    pub meta: Meta,
}

/// Writes a checkpoint into the run's `checkpoints/` and keeps only the newest `keep`.
/// Refuses weights that are not finite, so a diverged model never overwrites a good one.
pub fn save(run: &RunDir, snapshot: Snapshot<'_>, keep: usize) -> Result<PathBuf, CheckpointError> {
    let dir = run.checkpoints();
    std::fs::create_dir_all(&dir).map_err(|e| CheckpointError::Io {
        path: dir.clone(),
        source: e,
    })?;
    let stem = stem(snapshot.meta.step);
    for (name, t) in snapshot.weights {
        let finite = t
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .all(|v| v.is_finite());
        if !finite {
            return Err(CheckpointError::invalid(
                &dir,
                format!(
                    "weight `{name}` is not finite; not saving step {}",
                    snapshot.meta.step
                ),
            ));
        }
    }
    let weights_path = dir.join(format!("{stem}.safetensors"));
    let optim_path = dir.join(format!("{stem}.optim.safetensors"));
    let meta_path = dir.join(format!("{stem}.json"));

    let bytes = to_safetensors(snapshot.weights)?;
    atomic_write(&weights_path, &bytes).map_err(|e| CheckpointError::Io {
        path: weights_path.clone(),
        source: e,
    })?;
    let mut moments = Vec::with_capacity(snapshot.moments.len() * 2);
    for (name, m, v) in snapshot.moments {
        moments.push((format!("m.{name}"), m.clone()));
        moments.push((format!("v.{name}"), v.clone()));
    }
    let bytes = to_safetensors(&moments)?;
    atomic_write(&optim_path, &bytes).map_err(|e| CheckpointError::Io {
        path: optim_path.clone(),
        source: e,
    })?;

    let mut meta = snapshot.meta;
    meta.weights = format!("{stem}.safetensors");
    meta.optimizer = format!("{stem}.optim.safetensors");
    let json = serde_json::to_vec_pretty(&meta).expect("metadata serialises");
    atomic_write(&meta_path, &json).map_err(|e| CheckpointError::Io {
        path: meta_path.clone(),
        source: e,
    })?;
    prune(&dir, keep);
    Ok(meta_path)
}

/// Deletes all but the newest `keep` checkpoints (metadata first, so none is ever half there).
fn prune(dir: &Path, keep: usize) {
    let all = list(dir);
    if all.len() <= keep.max(1) {
        return;
    }
    for old in &all[..all.len() - keep.max(1)] {
        let _ = std::fs::remove_file(&old.meta);
        let stem = stem(old.step);
        let _ = std::fs::remove_file(dir.join(format!("{stem}.safetensors")));
        let _ = std::fs::remove_file(dir.join(format!("{stem}.optim.safetensors")));
    }
}

/// Reads and checks a metadata file.
pub fn read_meta(path: &Path) -> Result<Meta, CheckpointError> {
    let len = std::fs::metadata(path)
        .map_err(|e| CheckpointError::Io {
            path: path.to_path_buf(),
            source: e,
        })?
        .len();
    if len > MAX_META_BYTES {
        return Err(CheckpointError::invalid(
            path,
            format!("{len} bytes is too large for checkpoint metadata"),
        ));
    }
    let text = std::fs::read(path).map_err(|e| CheckpointError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    parse_meta(&text, path)
}

/// Parses metadata bytes; `path` names the file in errors.
pub fn parse_meta(bytes: &[u8], path: &Path) -> Result<Meta, CheckpointError> {
    let meta: Meta = serde_json::from_slice(bytes)
        .map_err(|e| CheckpointError::invalid(path, format!("not checkpoint metadata ({e})")))?;
    if meta.format != FORMAT {
        return Err(CheckpointError::invalid(
            path,
            format!(
                "metadata format {} (this build reads {FORMAT})",
                meta.format
            ),
        ));
    }
    if let Err((key, msg)) = meta.config.validate() {
        if !key.starts_with("data.") {
            return Err(CheckpointError::invalid(
                path,
                format!("stored config: {key}: {msg}"),
            ));
        }
    }
    let s = meta.shape;
    if s.channels != meta.config.model.channels
        || s.height == 0
        || s.width == 0
        || s.numel() > 4096 * 4096 * 4
    {
        return Err(CheckpointError::invalid(
            path,
            format!("image shape {s:?} does not fit its model config"),
        ));
    }
    for name in [&meta.weights, &meta.optimizer] {
        if name.contains('/') || name.contains('\\') || name.contains("..") {
            return Err(CheckpointError::invalid(
                path,
                format!("file name `{name}` must be a plain name"),
            ));
        }
    }
    Ok(meta)
}

/// A model loaded from a checkpoint.
pub struct Loaded {
    /// The model.
    pub model: Vae,
    /// Its variables, for training on.
    pub varmap: candle_nn::VarMap,
    /// The metadata.
    pub meta: Meta,
    /// The metadata file.
    pub path: PathBuf,
}

/// Finds the metadata file meant by `spec`: a `.json` or `.safetensors` file of a checkpoint,
/// a run directory (its newest checkpoint), a `checkpoints/` folder, or a name in `models/`.
pub fn resolve(spec: &str) -> Result<PathBuf, CheckpointError> {
    let direct = PathBuf::from(spec);
    let candidates = [direct.clone(), Path::new("models").join(spec)];
    for p in &candidates {
        if p.is_file() {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.ends_with(".json") {
                return Ok(p.clone());
            }
            if let Some(stem) = name
                .strip_suffix(".optim.safetensors")
                .or_else(|| name.strip_suffix(".safetensors"))
            {
                return Ok(p.with_file_name(format!("{stem}.json")));
            }
            return Err(CheckpointError::invalid(
                p,
                "expected a checkpoint's .json or .safetensors file",
            ));
        }
        if p.is_dir() {
            for dir in [p.join("checkpoints"), p.clone()] {
                if let Some(last) = list(&dir).pop() {
                    return Ok(last.meta);
                }
            }
            return Err(CheckpointError::Missing { path: p.clone() });
        }
    }
    Err(CheckpointError::Missing { path: direct })
}

/// Loads a model (and its metadata) from what [`resolve`] finds for `spec`.
pub fn load_model(spec: &str, device: &Device) -> Result<Loaded, CheckpointError> {
    load(&resolve(spec)?, device)
}

/// Loads the checkpoint whose metadata is at `meta_path`.
pub fn load(meta_path: &Path, device: &Device) -> Result<Loaded, CheckpointError> {
    let meta = read_meta(meta_path)?;
    let dir = meta_path.parent().unwrap_or(Path::new("."));
    let weights_path = dir.join(&meta.weights);
    let (model, varmap) = model::init(
        &meta.config.model,
        meta.shape,
        meta.config.train.seed,
        device,
    )?;
    let tensors = read_safetensors(&weights_path, device)?;
    assign(&varmap, &tensors, &weights_path, "")?;
    Ok(Loaded {
        model,
        varmap,
        meta,
        path: meta_path.to_path_buf(),
    })
}

/// Reads the optimiser moments of a checkpoint, as `(m, v)` by weight name.
pub fn load_moments(
    loaded: &Loaded,
    device: &Device,
) -> Result<HashMap<String, (Tensor, Tensor)>, CheckpointError> {
    let dir = loaded.path.parent().unwrap_or(Path::new("."));
    let path = dir.join(&loaded.meta.optimizer);
    let tensors = read_safetensors(&path, device)?;
    let mut out = HashMap::new();
    for (name, var) in model::named_vars(&loaded.varmap) {
        let m = tensors.get(&format!("m.{name}"));
        let v = tensors.get(&format!("v.{name}"));
        let (Some(m), Some(v)) = (m, v) else {
            return Err(CheckpointError::invalid(
                &path,
                format!("missing moments of `{name}`"),
            ));
        };
        if m.dims() != var.dims() || v.dims() != var.dims() {
            return Err(CheckpointError::invalid(
                &path,
                format!("moments of `{name}` have the wrong shape"),
            ));
        }
        out.insert(name, (m.clone(), v.clone()));
    }
    Ok(out)
}

/// Sets every variable from `tensors`, checking names and shapes both ways.
fn assign(
    varmap: &candle_nn::VarMap,
    tensors: &HashMap<String, Tensor>,
    path: &Path,
    prefix: &str,
) -> Result<(), CheckpointError> {
    let vars = model::named_vars(varmap);
    for (name, var) in &vars {
        let key = format!("{prefix}{name}");
        let Some(t) = tensors.get(&key) else {
            return Err(CheckpointError::invalid(
                path,
                format!("tensor `{key}` is missing: the checkpoint is of another model"),
            ));
        };
        if t.dims() != var.dims() {
            return Err(CheckpointError::invalid(
                path,
                format!(
                    "tensor `{key}` has shape {:?}, the model expects {:?}",
                    t.dims(),
                    var.dims()
                ),
            ));
        }
        var.set(t)?;
    }
    if tensors.len() != vars.len() {
        let known: std::collections::HashSet<&String> = vars.iter().map(|(n, _)| n).collect();
        let extra = tensors
            .keys()
            .find(|k| !known.contains(k))
            .cloned()
            .unwrap_or_default();
        return Err(CheckpointError::invalid(
            path,
            format!("unexpected tensor `{extra}`: the checkpoint is of another model"),
        ));
    }
    Ok(())
}
