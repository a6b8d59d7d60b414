//! Folders of face images: a recursive scan, decoding with limits, cropping and resizing.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use rayon::prelude::*;

use super::{cache, BadFile, DataError, Dataset};
use crate::config::Crop;

/// File extensions that are read as images.
pub const EXTENSIONS: [&str; 5] = ["jpg", "jpeg", "png", "webp", "bmp"];
/// The largest width or height an image may claim; larger ones are refused before decoding.
pub const MAX_SIDE: u32 = 16_384;
/// The most memory one decode may allocate.
pub const MAX_ALLOC: u64 = 512 * 1024 * 1024;

/// One image file found by a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The path relative to the scanned folder.
    pub rel: PathBuf,
    /// File size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch (0 when unknown).
    pub mtime_ns: u128,
}

/// Whether a path has an image extension.
pub fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// The list of excluded images in a data set folder: one path relative to the folder a line.
pub const EXCLUDE_FILE: &str = ".facestudio-exclude";

/// The images of `root` excluded from training (empty when there is no list).
pub fn read_excluded(root: &Path) -> std::collections::BTreeSet<PathBuf> {
    let text = std::fs::read_to_string(root.join(EXCLUDE_FILE)).unwrap_or_default();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(PathBuf::from)
        .collect()
}

/// Writes the exclusion list of `root` atomically.
pub fn write_excluded(
    root: &Path,
    excluded: &std::collections::BTreeSet<PathBuf>,
) -> std::io::Result<()> {
    let mut text = String::from("# images left out of training by facestudio; one path a line\n");
    for p in excluded {
        text.push_str(&p.to_string_lossy());
        text.push('\n');
    }
    crate::run::atomic_write(&root.join(EXCLUDE_FILE), text.as_bytes())
}

/// Lists the image files under `root` that training uses: [`scan_all`] less those named in
/// the folder's [`EXCLUDE_FILE`].
pub fn scan(root: &Path) -> Result<(Vec<Entry>, Vec<BadFile>), DataError> {
    let (mut entries, bad) = scan_all(root)?;
    let excluded = read_excluded(root);
    if !excluded.is_empty() {
        entries.retain(|e| !excluded.contains(&e.rel));
    }
    Ok((entries, bad))
}

/// Lists every image file under `root`, recursively, sorted by path. Unreadable folders are
/// reported in the second list.
pub fn scan_all(root: &Path) -> Result<(Vec<Entry>, Vec<BadFile>), DataError> {
    let meta = std::fs::metadata(root).map_err(|e| DataError::io(root, e))?;
    if !meta.is_dir() {
        return Err(DataError::BadFile {
            path: root.to_path_buf(),
            reason: "not a folder".into(),
        });
    }
    let mut entries = Vec::new();
    let mut bad = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let listing = match std::fs::read_dir(&dir) {
            Ok(l) => l,
            Err(e) => {
                bad.push(BadFile {
                    path: dir,
                    reason: format!("cannot list folder: {e}"),
                });
                continue;
            }
        };
        for item in listing.flatten() {
            let path = item.path();
            let Ok(meta) = item.metadata() else { continue };
            let hidden = item.file_name().to_string_lossy().starts_with('.');
            if meta.is_dir() {
                if !hidden {
                    stack.push(path);
                }
            } else if hidden {
                continue;
            } else if !is_image(&path) {
                let ext = path
                    .extension()
                    .map_or("none".into(), |e| e.to_string_lossy().into_owned());
                bad.push(BadFile {
                    path,
                    reason: format!("not an image file type (extension: {ext})"),
                });
            } else if is_image(&path) {
                let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
                let mtime_ns = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                entries.push(Entry {
                    rel,
                    size: meta.len(),
                    mtime_ns,
                });
            }
        }
    }
    entries.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok((entries, bad))
}

/// Decodes an image file with limits on its claimed size and allocation.
pub fn decode(path: &Path) -> Result<image::DynamicImage, String> {
    let mut reader = image::ImageReader::open(path)
        .map_err(|e| format!("cannot open: {e}"))?
        .with_guessed_format()
        .map_err(|e| format!("cannot read: {e}"))?;
    if reader.format().is_none() {
        return Err("not an image (unknown format)".into());
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_ALLOC);
    reader.limits(limits);
    reader.decode().map_err(|e| format!("cannot decode: {e}"))
}

/// The crop rectangle `(x, y, side_w, side_h)` for an image of `w x h`.
pub fn crop_rect(crop: Crop, w: u32, h: u32) -> (u32, u32, u32, u32) {
    match crop {
        Crop::None => (0, 0, w, h),
        Crop::Center => {
            let s = w.min(h);
            ((w - s) / 2, (h - s) / 2, s, s)
        }
        // CelebA's aligned photos (178 x 218) put the face in the middle; a centred square of
        // 148 px keeps hair and chin while dropping most of the background.
        Crop::Celeba => {
            let s = ((w.min(h) as f32) * 0.832).round().max(1.0) as u32;
            ((w - s) / 2, (h - s) / 2, s, s)
        }
    }
}

/// Crops, resizes and converts one picture to u8 CHW with `channels` planes.
pub fn prepare(
    img: &image::DynamicImage,
    crop: Crop,
    (h, w): (usize, usize),
    channels: usize,
) -> Vec<u8> {
    let (x, y, cw, ch) = crop_rect(crop, img.width(), img.height());
    let cropped = img.crop_imm(x, y, cw, ch);
    let resized = cropped.resize_exact(w as u32, h as u32, FilterType::CatmullRom);
    let plane = h * w;
    if channels == 1 {
        return resized.to_luma8().into_raw();
    }
    let rgb = resized.to_rgb8();
    let mut out = vec![0u8; 3 * plane];
    for (p, px) in rgb.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + p] = px[c];
        }
    }
    out
}

/// Decodes and prepares every image under `root`; bad files are skipped and listed.
pub fn load(
    root: &Path,
    size: (usize, usize),
    channels: usize,
    crop: Crop,
) -> Result<Dataset, DataError> {
    let (entries, mut bad_files) = scan(root)?;
    load_entries(root, &entries, size, channels, crop, &mut bad_files)
}

fn load_entries(
    root: &Path,
    entries: &[Entry],
    size: (usize, usize),
    channels: usize,
    crop: Crop,
    bad_files: &mut Vec<BadFile>,
) -> Result<Dataset, DataError> {
    let results: Vec<Result<Vec<u8>, String>> = entries
        .par_iter()
        .map(|e| decode(&root.join(&e.rel)).map(|img| prepare(&img, crop, size, channels)))
        .collect();
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for (entry, result) in entries.iter().zip(results) {
        match result {
            Ok(px) => {
                pixels.extend_from_slice(&px);
                labels.push(entry.rel.to_string_lossy().into_owned());
            }
            Err(reason) => bad_files.push(BadFile {
                path: root.join(&entry.rel),
                reason,
            }),
        }
    }
    if labels.is_empty() {
        let reason = if entries.is_empty() {
            format!("no {} files found", EXTENSIONS.join("/"))
        } else {
            format!("all {} image files could not be read", entries.len())
        };
        return Err(DataError::Empty {
            path: root.to_path_buf(),
            reason,
        });
    }
    let name = root
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (height, width) = size;
    Ok(Dataset {
        name,
        channels,
        height,
        width,
        pixels,
        labels,
        bad_files: std::mem::take(bad_files),
    })
}

/// Like [`load`], but reuses the decoded images cached under `cache_dir` when the folder and
/// the preparation are unchanged.
pub fn load_cached(
    root: &Path,
    size: (usize, usize),
    channels: usize,
    crop: Crop,
    cache_dir: Option<&Path>,
) -> Result<Dataset, DataError> {
    let (entries, mut bad_files) = scan(root)?;
    let Some(dir) = cache_dir else {
        return load_entries(root, &entries, size, channels, crop, &mut bad_files);
    };
    let key = cache::key(root, &entries, size, channels, crop);
    let file = dir.join(format!("{key:016x}.fsc"));
    if let Some(ds) = cache::read(&file) {
        tracing::info!(path = %file.display(), images = ds.len(), "data cache hit");
        return Ok(ds);
    }
    let ds = load_entries(root, &entries, size, channels, crop, &mut bad_files)?;
    if let Err(e) = cache::write(&file, &ds) {
        tracing::warn!(path = %file.display(), error = %e, "cannot write the data cache");
    }
    Ok(ds)
}
