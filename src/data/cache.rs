//! The on-disk cache of decoded images: one file per folder and preparation, u8 pixels.
//!
//! The file name is a hash of the folder, every file's name, size and modification time, the
//! image size, channels and crop, so any change rebuilds it. Layout: `FSC1`, a little-endian
//! u32 length, a JSON header (name, sizes, labels, bad files), then the raw pixels.

use std::path::{Path, PathBuf};

use super::folder::Entry;
use super::{BadFile, Dataset};
use crate::config::Crop;

const MAGIC: &[u8; 4] = b"FSC1";
const VERSION: u32 = 1;

#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    name: String,
    channels: usize,
    height: usize,
    width: usize,
    labels: Vec<String>,
    bad_files: Vec<BadFile>,
}

/// The cache folder: `configured` when set, else `$XDG_CACHE_HOME/facestudio` or
/// `~/.cache/facestudio`; `None` when no folder can be found.
pub fn cache_dir(configured: &str) -> Option<PathBuf> {
    if !configured.is_empty() {
        return Some(PathBuf::from(configured));
    }
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(x).join("facestudio"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("facestudio"))
}

/// FNV-1a, stable across builds (unlike the standard hasher).
struct Fnv(u64);

impl Fnv {
    fn add(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = (self.0 ^ 0xff).wrapping_mul(0x0100_0000_01b3);
    }
}

/// The cache key of a folder and its preparation.
pub fn key(
    root: &Path,
    entries: &[Entry],
    size: (usize, usize),
    channels: usize,
    crop: Crop,
) -> u64 {
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    h.add(&VERSION.to_le_bytes());
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    h.add(root.to_string_lossy().as_bytes());
    h.add(format!("{size:?} {channels} {crop:?}").as_bytes());
    for e in entries {
        h.add(e.rel.to_string_lossy().as_bytes());
        h.add(&e.size.to_le_bytes());
        h.add(&e.mtime_ns.to_le_bytes());
    }
    h.0
}

/// Reads a cache file; `None` when it is missing or does not make sense.
pub fn read(path: &Path) -> Option<Dataset> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return None;
    }
    let len = u32::from_le_bytes(bytes[4..8].try_into().ok()?) as usize;
    let header: Header = serde_json::from_slice(bytes.get(8..8 + len)?).ok()?;
    let pixels = bytes.get(8 + len..)?.to_vec();
    let expected = header.labels.len() * header.channels * header.height * header.width;
    if pixels.len() != expected {
        return None;
    }
    Some(Dataset {
        name: header.name,
        channels: header.channels,
        height: header.height,
        width: header.width,
        pixels,
        labels: header.labels,
        bad_files: header.bad_files,
    })
}

/// Writes a cache file atomically.
pub fn write(path: &Path, ds: &Dataset) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let header = Header {
        name: ds.name.clone(),
        channels: ds.channels,
        height: ds.height,
        width: ds.width,
        labels: ds.labels.clone(),
        bad_files: ds.bad_files.clone(),
    };
    let json = serde_json::to_vec(&header).map_err(std::io::Error::other)?;
    let mut bytes = Vec::with_capacity(8 + json.len() + ds.pixels.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(json.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&json);
    bytes.extend_from_slice(&ds.pixels);
    crate::run::atomic_write(path, &bytes)
}
