//! Face data: where it comes from, how it is prepared, and how batches reach the model.
//!
//! Every source ends up as a [`Dataset`]: u8 images in CHW layout, image after image, all of
//! one size, held in memory. Folder images are decoded once and cached on disk.

pub mod batcher;
pub mod cache;
pub mod catalog;
pub mod folder;
pub mod npy;
pub mod scan;
pub mod synthetic;

use std::path::{Path, PathBuf};

use crate::config::{Arch, Config};

/// An error while loading data; each names the file or folder involved.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or folder could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file was read but its content is wrong.
    #[error("{path}: {reason}")]
    BadFile {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A data set has no usable image.
    #[error("{path}: no usable images ({reason})")]
    Empty {
        /// The folder or file.
        path: PathBuf,
        /// Why, such as how many files were unreadable.
        reason: String,
    },
    /// A named data set is not known or its images are missing.
    #[error("{0}")]
    Source(String),
}

impl DataError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A file that could not be used, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BadFile {
    /// The file.
    pub path: PathBuf,
    /// Why it was skipped.
    pub reason: String,
}

/// Images in memory, u8 CHW, all of one size.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// A short name for display.
    pub name: String,
    /// Channels per image.
    pub channels: usize,
    /// Rows per image.
    pub height: usize,
    /// Columns per image.
    pub width: usize,
    /// `len * channels * height * width` bytes.
    pub pixels: Vec<u8>,
    /// One label per image: a file path relative to the source, or a generator index.
    pub labels: Vec<String>,
    /// Files that were skipped.
    pub bad_files: Vec<BadFile>,
}

impl Dataset {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there is no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes per image.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The CHW bytes of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.pixels[i * n..(i + 1) * n]
    }

    /// Image `i` as an RGB picture (grayscale is repeated on all three channels).
    pub fn rgb_image(&self, i: usize) -> image::RgbImage {
        chw_to_rgb(self.image(i), self.channels, self.height, self.width)
    }
}

/// Converts u8 CHW pixels (1 or 3 channels) to an RGB picture.
pub fn chw_to_rgb(chw: &[u8], channels: usize, height: usize, width: usize) -> image::RgbImage {
    let plane = height * width;
    image::RgbImage::from_fn(width as u32, height as u32, |x, y| {
        let p = y as usize * width + x as usize;
        let at = |c: usize| chw[(c % channels) * plane + p];
        image::Rgb([at(0), at(1), at(2)])
    })
}

/// Loads the data set of a configuration at the model's image size and channels.
pub fn load(config: &Config) -> Result<Dataset, DataError> {
    let source = catalog::resolve(&config.data.source)?;
    let model = &config.model;
    let square = (model.image_size, model.image_size);
    let data = match &source.kind {
        catalog::SourceKind::Synthetic => {
            let size = model.image_size;
            let n = config.data.synthetic_count;
            let rgb = synthetic::render_set(config.train.seed, n, size as u32);
            let labels = (0..n).map(|i| format!("synthetic #{i}")).collect();
            let ds = Dataset {
                name: "synthetic".into(),
                channels: 3,
                height: size,
                width: size,
                pixels: rgb,
                labels,
                bad_files: vec![],
            };
            convert_channels(ds, model.channels)
        }
        catalog::SourceKind::Folder(path) => {
            let crop = source.crop.unwrap_or(config.data.crop);
            let cache_dir = cache::cache_dir(&config.data.cache_dir);
            folder::load_cached(path, square, model.channels, crop, cache_dir.as_deref())?
        }
        catalog::SourceKind::Npy(path) => {
            let im = npy::read(path)?;
            let native = model.arch == Arch::Mlp;
            let target = if native {
                (im.height, im.width)
            } else {
                square
            };
            from_npy(im, path, target, model.channels)
        }
    };
    if data.is_empty() {
        let reason = format!("{} files could not be read", data.bad_files.len());
        return Err(DataError::Empty {
            path: PathBuf::from(&config.data.source),
            reason,
        });
    }
    Ok(data)
}

fn from_npy(im: npy::NpyImages, path: &Path, target: (usize, usize), channels: usize) -> Dataset {
    let labels = (0..im.count).map(|i| format!("#{i}")).collect();
    let ds = Dataset {
        name: path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        channels: im.channels,
        height: im.height,
        width: im.width,
        pixels: im.pixels,
        labels,
        bad_files: vec![],
    };
    let ds = convert_channels(ds, channels);
    resize_all(ds, target)
}

/// Converts every image to `channels` (luminance for gray, repetition for RGB).
pub fn convert_channels(mut ds: Dataset, channels: usize) -> Dataset {
    if ds.channels == channels {
        return ds;
    }
    let plane = ds.height * ds.width;
    let mut out = Vec::with_capacity(ds.len() * channels * plane);
    for i in 0..ds.len() {
        let img = ds.image(i);
        if channels == 1 {
            out.extend((0..plane).map(|p| {
                let l = 0.299 * img[p] as f32
                    + 0.587 * img[plane + p] as f32
                    + 0.114 * img[2 * plane + p] as f32;
                l.round() as u8
            }));
        } else {
            for _ in 0..channels {
                out.extend_from_slice(img);
            }
        }
    }
    ds.pixels = out;
    ds.channels = channels;
    ds
}

fn resize_all(mut ds: Dataset, (h, w): (usize, usize)) -> Dataset {
    if (ds.height, ds.width) == (h, w) {
        return ds;
    }
    let mut out = Vec::with_capacity(ds.len() * ds.channels * h * w);
    let plane = ds.height * ds.width;
    for i in 0..ds.len() {
        for c in 0..ds.channels {
            let src = &ds.image(i)[c * plane..(c + 1) * plane];
            let gray = image::GrayImage::from_raw(ds.width as u32, ds.height as u32, src.to_vec())
                .expect("plane has the right length");
            let filter = image::imageops::FilterType::CatmullRom;
            out.extend_from_slice(&image::imageops::resize(&gray, w as u32, h as u32, filter));
        }
    }
    ds.pixels = out;
    ds.height = h;
    ds.width = w;
    ds
}
