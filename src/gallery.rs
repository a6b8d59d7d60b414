//! The gallery's engine: a worker thread that owns a model and turns latent recipes into faces.
//!
//! The studio sends a [`Request`] (load a checkpoint, render a [`Job`]) and later receives a
//! [`Reply`] with the faces as RGB tiles; nothing here knows about the terminal. Only the newest
//! render request waiting in the queue is worked on, so a user who presses keys faster than the
//! model decodes never waits for views already left behind.
//!
//! Decoding runs on the CPU: a gallery decodes tens of faces at a time, which a small model does
//! in milliseconds, and the trainer keeps the accelerator.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;

use candle_core::{Device, Tensor};
use image::RgbImage;

use crate::checkpoint::{self, Loaded};
use crate::data::{chw_to_rgb, Dataset};
use crate::latent::{self, Blend};
use crate::model::{self, ImageShape};

/// Most checkpoints one time-lapse decodes (evenly spread over the run).
pub const TIME_LAPSE_MAX: usize = 16;

/// One end of an interpolation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// The face of a gallery seed.
    Seed(u64),
    /// A training image, encoded through the model (its posterior mean).
    Image(usize),
}

/// A view to render.
#[derive(Debug, Clone, PartialEq)]
pub enum Job {
    /// One face per seed.
    Samples {
        /// The seeds, one per face.
        seeds: Vec<u64>,
    },
    /// A 2-d model's latent plane, `cols * rows` faces over `[-2, 2]^2`.
    Plane {
        /// Columns.
        cols: usize,
        /// Rows.
        rows: usize,
    },
    /// Training images and the model's reconstructions, in pairs.
    Recon {
        /// Indices into the data set (wrapped to its size).
        indices: Vec<usize>,
    },
    /// The strip between two faces.
    Interp {
        /// The first face.
        a: Endpoint,
        /// The last face.
        b: Endpoint,
        /// Faces in the strip, end points included.
        steps: usize,
        /// Linear or spherical.
        blend: Blend,
    },
    /// One face along one latent dimension.
    Walk {
        /// The face's seed.
        seed: u64,
        /// The dimension swept.
        dim: usize,
        /// Faces in the strip.
        steps: usize,
    },
    /// One seed decoded by each checkpoint.
    TimeLapse {
        /// The face's seed.
        seed: u64,
        /// Checkpoint metadata files, oldest first.
        checkpoints: Vec<PathBuf>,
    },
    /// One tile cut from each of the run's sample grids (before any checkpoint exists).
    SampleLapse {
        /// Which tile of the grids.
        index: usize,
        /// `(step, file)` of each grid, oldest first.
        files: Vec<(u64, PathBuf)>,
    },
    /// Generated faces, each beside its nearest training image.
    Novelty {
        /// The seeds.
        seeds: Vec<u64>,
    },
    /// The same seeds decoded by this model and by another (an autoencoder against a VAE).
    Versus {
        /// The seeds.
        seeds: Vec<u64>,
        /// The other model's checkpoint metadata file.
        other: PathBuf,
    },
}

/// What the studio asks of the worker.
#[derive(Debug, Clone)]
pub enum Request {
    /// Load the checkpoint whose metadata is at this path.
    Load(PathBuf),
    /// Render a job; the reply carries `id`.
    Render {
        /// Chosen by the caller to match the reply.
        id: u64,
        /// What to render.
        job: Job,
    },
}

/// One face of a reply, with a caption.
#[derive(Debug, Clone)]
pub struct Tile {
    /// The pixels.
    pub image: RgbImage,
    /// A short caption (seed, step, distance).
    pub label: String,
}

/// What the worker answers.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A checkpoint was loaded.
    Loaded {
        /// Its metadata file.
        path: PathBuf,
        /// Its step.
        step: u64,
        /// The latent size.
        latent: usize,
        /// The image shape.
        shape: ImageShape,
    },
    /// A job's faces.
    Frame {
        /// The request's id.
        id: u64,
        /// The faces, in order.
        tiles: Vec<Tile>,
    },
    /// A request failed; `id` is `None` for a load.
    Failed {
        /// The render request's id.
        id: Option<u64>,
        /// What went wrong, for the status line.
        error: String,
    },
}

/// The handle of a gallery worker thread; the thread ends when the handle is dropped.
pub struct Worker {
    tx: Sender<Request>,
    rx: Receiver<Reply>,
}

impl Worker {
    /// Starts a worker with no model.
    pub fn spawn() -> Self {
        let (tx, requests) = mpsc::channel();
        let (replies, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("gallery".into())
            .spawn(move || serve(&requests, &replies))
            .expect("spawning the gallery thread");
        Self { tx, rx }
    }

    /// Queues a request.
    pub fn send(&self, request: Request) {
        let _ = self.tx.send(request);
    }

    /// A reply, if one is waiting.
    pub fn try_recv(&self) -> Option<Reply> {
        self.rx.try_recv().ok()
    }

    /// Waits up to `timeout` for a reply.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Reply> {
        match self.rx.recv_timeout(timeout) {
            Ok(r) => Some(r),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => None,
        }
    }
}

fn serve(requests: &Receiver<Request>, replies: &Sender<Reply>) {
    let mut engine = Engine::default();
    while let Ok(first) = requests.recv() {
        let mut batch = vec![first];
        batch.extend(requests.try_iter());
        // Loads all count (the last wins anyway); of the renders only the newest is wanted.
        let last_render = batch
            .iter()
            .rposition(|r| matches!(r, Request::Render { .. }));
        for (i, request) in batch.into_iter().enumerate() {
            let reply = match request {
                Request::Load(path) => engine.load(&path),
                Request::Render { id, job } if Some(i) == last_render => engine.render(id, &job),
                Request::Render { .. } => continue,
            };
            if replies.send(reply).is_err() {
                return;
            }
        }
    }
}

/// The worker's state: the model and, once needed, its training data.
#[derive(Default)]
struct Engine {
    model: Option<Loaded>,
    data: Option<Result<Arc<Dataset>, String>>,
    /// The model of the versus view, kept while it is the same file.
    other: Option<(PathBuf, Loaded)>,
}

impl Engine {
    fn load(&mut self, path: &Path) -> Reply {
        match checkpoint::load(path, &Device::Cpu) {
            Ok(loaded) => {
                let m = &loaded.model;
                let reply = Reply::Loaded {
                    path: path.to_path_buf(),
                    step: loaded.meta.step,
                    latent: m.config.latent,
                    shape: m.shape,
                };
                let same_data = self.model.as_ref().is_some_and(|old| {
                    old.meta.config.data == loaded.meta.config.data && old.model.shape == m.shape
                });
                if !same_data {
                    self.data = None;
                }
                self.model = Some(loaded);
                reply
            }
            Err(e) => Reply::Failed {
                id: None,
                error: format!("cannot load the model: {e}"),
            },
        }
    }

    fn render(&mut self, id: u64, job: &Job) -> Reply {
        match self.tiles(job) {
            Ok(tiles) => Reply::Frame { id, tiles },
            Err(error) => Reply::Failed {
                id: Some(id),
                error,
            },
        }
    }

    fn tiles(&mut self, job: &Job) -> Result<Vec<Tile>, String> {
        if let Job::SampleLapse { index, files } = job {
            return sample_lapse(*index, files);
        }
        let loaded = self.model.as_ref().ok_or("no model loaded yet")?;
        let m = &loaded.model;
        let d = m.config.latent;
        match job {
            Job::Samples { seeds } => {
                let zs: Vec<f32> = seeds
                    .iter()
                    .flat_map(|s| latent::seed_latent(*s, d))
                    .collect();
                let labels = seeds.iter().map(|s| format!("seed {s}")).collect();
                decode_tiles(loaded, &zs, labels)
            }
            Job::Plane { cols, rows } => {
                if d != 2 {
                    return Err(format!(
                        "the latent plane needs a 2-d latent; this one has {d}"
                    ));
                }
                let zs = latent::plane(*cols, *rows, 2.0);
                let labels = zs
                    .chunks(2)
                    .map(|z| format!("z ({:.1}, {:.1})", z[0], z[1]))
                    .collect();
                decode_tiles(loaded, &zs, labels)
            }
            Job::Walk { seed, dim, steps } => {
                let z = latent::seed_latent(*seed, d);
                let zs = latent::walk(&z, (*dim).min(d.saturating_sub(1)), *steps, 3.0);
                let labels = zs
                    .chunks(d)
                    .map(|z| format!("z{dim} = {:+.1}", z[*dim % d]))
                    .collect();
                decode_tiles(loaded, &zs, labels)
            }
            Job::TimeLapse { seed, checkpoints } => time_lapse(*seed, checkpoints),
            Job::Recon { indices } => self.recon(indices),
            Job::Interp { a, b, steps, blend } => self.interp(*a, *b, *steps, *blend),
            Job::Novelty { seeds } => self.novelty(seeds),
            Job::Versus { seeds, other } => self.versus(seeds, other),
            Job::SampleLapse { .. } => unreachable!("answered above"),
        }
    }

    fn dataset(&mut self) -> Result<Arc<Dataset>, String> {
        let loaded = self.model.as_ref().ok_or("no model loaded yet")?;
        let config = &loaded.meta.config;
        let shape = loaded.model.shape;
        let result = self.data.get_or_insert_with(|| {
            let ds = crate::data::load(config).map_err(|e| format!("the training data: {e}"))?;
            if (ds.channels, ds.height, ds.width) != (shape.channels, shape.height, shape.width) {
                return Err("the training data does not match the model's image shape".to_string());
            }
            Ok(Arc::new(ds))
        });
        result.clone()
    }

    fn recon(&mut self, indices: &[usize]) -> Result<Vec<Tile>, String> {
        let ds = self.dataset()?;
        let loaded = self.model.as_ref().ok_or("no model loaded yet")?;
        let picked: Vec<usize> = indices.iter().map(|i| i % ds.len()).collect();
        let zs = encode(loaded, &ds, &picked)?;
        let decoded = model::decode_to_u8(&loaded.model, &zs).map_err(|e| e.to_string())?;
        let s = loaded.model.shape;
        let mut tiles = Vec::with_capacity(2 * picked.len());
        for (k, i) in picked.iter().enumerate() {
            tiles.push(Tile {
                image: ds.rgb_image(*i),
                label: short(&ds.labels[*i]),
            });
            let chw = &decoded[k * s.numel()..(k + 1) * s.numel()];
            tiles.push(Tile {
                image: chw_to_rgb(chw, s.channels, s.height, s.width),
                label: "model".into(),
            });
        }
        Ok(tiles)
    }

    fn interp(
        &mut self,
        a: Endpoint,
        b: Endpoint,
        steps: usize,
        blend: Blend,
    ) -> Result<Vec<Tile>, String> {
        let za = self.endpoint(a)?;
        let zb = self.endpoint(b)?;
        let loaded = self.model.as_ref().ok_or("no model loaded yet")?;
        let zs = latent::interpolate(&za, &zb, steps, blend);
        let n = steps.max(2);
        let labels = (0..n)
            .map(|i| format!("t = {:.2}", i as f32 / (n - 1) as f32))
            .collect();
        decode_tiles(loaded, &zs, labels)
    }

    fn endpoint(&mut self, e: Endpoint) -> Result<Vec<f32>, String> {
        match e {
            Endpoint::Seed(s) => {
                let loaded = self.model.as_ref().ok_or("no model loaded yet")?;
                Ok(latent::seed_latent(s, loaded.model.config.latent))
            }
            Endpoint::Image(i) => {
                let ds = self.dataset()?;
                let loaded = self.model.as_ref().ok_or("no model loaded yet")?;
                encode(loaded, &ds, &[i % ds.len()])
            }
        }
    }

    fn versus(&mut self, seeds: &[u64], other: &Path) -> Result<Vec<Tile>, String> {
        if self.other.as_ref().is_none_or(|(p, _)| p != other) {
            let loaded = checkpoint::load(other, &Device::Cpu)
                .map_err(|e| format!("cannot load the model to compare with: {e}"))?;
            self.other = Some((other.to_path_buf(), loaded));
        }
        let (_, b) = self.other.as_ref().expect("loaded above");
        let a = self.model.as_ref().ok_or("no model loaded yet")?;
        let mut columns = Vec::with_capacity(2);
        for loaded in [a, b] {
            // Each model draws its latents from the prior it was meant for: N(0, I).
            let d = loaded.model.config.latent;
            let zs: Vec<f32> = seeds
                .iter()
                .flat_map(|s| latent::seed_latent(*s, d))
                .collect();
            let kind = format!("{:?}", loaded.model.config.kind).to_lowercase();
            let labels = seeds.iter().map(|s| format!("{kind} · seed {s}")).collect();
            columns.push(decode_tiles(loaded, &zs, labels)?);
        }
        let (mut left, mut right) = (columns.remove(0).into_iter(), columns.remove(0).into_iter());
        let mut tiles = Vec::with_capacity(2 * seeds.len());
        while let (Some(l), Some(r)) = (left.next(), right.next()) {
            tiles.push(l);
            tiles.push(r);
        }
        Ok(tiles)
    }

    fn novelty(&mut self, seeds: &[u64]) -> Result<Vec<Tile>, String> {
        let ds = self.dataset()?;
        let loaded = self.model.as_ref().ok_or("no model loaded yet")?;
        let d = loaded.model.config.latent;
        let zs: Vec<f32> = seeds
            .iter()
            .flat_map(|s| latent::seed_latent(*s, d))
            .collect();
        let decoded = model::decode_to_u8(&loaded.model, &zs).map_err(|e| e.to_string())?;
        let s = loaded.model.shape;
        let n = s.numel();
        let mut tiles = Vec::with_capacity(2 * seeds.len());
        for (k, seed) in seeds.iter().enumerate() {
            let face = &decoded[k * n..(k + 1) * n];
            let (i, dist) =
                latent::nearest(face, &ds.pixels).ok_or("the training data is empty")?;
            let rms = (dist as f64 / n as f64).sqrt();
            let image = chw_to_rgb(face, s.channels, s.height, s.width);
            tiles.push(Tile {
                image,
                label: format!("seed {seed}"),
            });
            tiles.push(Tile {
                image: ds.rgb_image(i),
                label: format!("{} · rms {rms:.1}", short(&ds.labels[i])),
            });
        }
        Ok(tiles)
    }
}

/// Posterior means of data set images `indices`, flat.
fn encode(loaded: &Loaded, ds: &Dataset, indices: &[usize]) -> Result<Vec<f32>, String> {
    let s = loaded.model.shape;
    let mut xs = Vec::with_capacity(indices.len() * s.numel());
    for i in indices {
        xs.extend(ds.image(*i).iter().map(|v| f32::from(*v) / 255.0));
    }
    let shape = (indices.len(), s.channels, s.height, s.width);
    let t = Tensor::from_vec(xs, shape, &Device::Cpu).map_err(|e| e.to_string())?;
    let enc = loaded.model.encode(&t).map_err(|e| e.to_string())?;
    enc.mu
        .flatten_all()
        .and_then(|m| m.to_vec1())
        .map_err(|e| e.to_string())
}

fn decode_tiles(loaded: &Loaded, zs: &[f32], labels: Vec<String>) -> Result<Vec<Tile>, String> {
    let m = &loaded.model;
    let pixels = model::decode_to_u8(m, zs).map_err(|e| format!("decoding: {e}"))?;
    let s = m.shape;
    let tiles = pixels
        .chunks_exact(s.numel().max(1))
        .zip(labels)
        .map(|(chw, label)| Tile {
            image: chw_to_rgb(chw, s.channels, s.height, s.width),
            label,
        })
        .collect();
    Ok(tiles)
}

/// Picks at most `max` items spread evenly, always keeping the first and the last.
pub fn spread<T: Clone>(items: &[T], max: usize) -> Vec<T> {
    if items.len() <= max || max < 2 {
        return items.iter().take(max).cloned().collect();
    }
    (0..max)
        .map(|k| items[k * (items.len() - 1) / (max - 1)].clone())
        .collect()
}

fn time_lapse(seed: u64, checkpoints: &[PathBuf]) -> Result<Vec<Tile>, String> {
    if checkpoints.is_empty() {
        return Err("the run has no checkpoints yet".into());
    }
    let mut tiles = Vec::new();
    for path in spread(checkpoints, TIME_LAPSE_MAX) {
        let loaded = checkpoint::load(&path, &Device::Cpu).map_err(|e| e.to_string())?;
        let z = latent::seed_latent(seed, loaded.model.config.latent);
        let mut t = decode_tiles(&loaded, &z, vec![format!("step {}", loaded.meta.step)])?;
        tiles.append(&mut t);
    }
    Ok(tiles)
}

fn sample_lapse(index: usize, files: &[(u64, PathBuf)]) -> Result<Vec<Tile>, String> {
    if files.is_empty() {
        return Err("the run has no sample grids yet".into());
    }
    let mut tiles = Vec::new();
    for (step, path) in spread(files, TIME_LAPSE_MAX) {
        let grid = image::open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .to_rgb8();
        if let Some(image) = grid_tile(&grid, crate::train::SAMPLE_COUNT, index) {
            tiles.push(Tile {
                image,
                label: format!("step {step}"),
            });
        }
    }
    Ok(tiles)
}

/// Tile `index` of a square-tiled grid of `count` images written by [`crate::imageio::grid`].
pub fn grid_tile(grid: &RgbImage, count: usize, index: usize) -> Option<RgbImage> {
    let cols = crate::imageio::grid_columns(count) as u32;
    let rows = count.div_ceil(cols as usize) as u32;
    let gap = crate::imageio::GAP;
    let tile_w = (grid.width().checked_sub(gap)? / cols).checked_sub(gap)?;
    let tile_h = (grid.height().checked_sub(gap)? / rows).checked_sub(gap)?;
    let i = (index % count) as u32;
    let (x, y) = (
        gap + (i % cols) * (tile_w + gap),
        gap + (i / cols) * (tile_h + gap),
    );
    (tile_w > 0 && tile_h > 0)
        .then(|| image::imageops::crop_imm(grid, x, y, tile_w, tile_h).to_image())
}

/// The file name of a data set label; the studio escapes it before showing it.
fn short(label: &str) -> String {
    Path::new(label)
        .file_name()
        .map_or(label.into(), |n| n.to_string_lossy().into_owned())
}
