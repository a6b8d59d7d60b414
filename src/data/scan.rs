//! `facestudio dataset scan`: what a folder of images holds and what cannot be read.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use rayon::prelude::*;

use super::{folder, BadFile, DataError};

/// What a scan found.
#[derive(Debug, Default)]
pub struct Report {
    /// Image files found (by extension).
    pub files: usize,
    /// Files that decoded (or whose header read, in a quick scan).
    pub readable: usize,
    /// Images per `(width, height)`.
    pub sizes: BTreeMap<(u32, u32), usize>,
    /// Images per channel layout (`gray`, `rgb`, `rgba`, ...).
    pub channels: BTreeMap<String, usize>,
    /// Files that could not be read, with the reason.
    pub bad: Vec<BadFile>,
}

/// Scans `root` recursively; `quick` reads headers only.
pub fn scan_folder(root: &Path, quick: bool) -> Result<Report, DataError> {
    let (entries, mut bad) = folder::scan(root)?;
    let results: Vec<Result<((u32, u32), String), BadFile>> = entries
        .par_iter()
        .map(|e| {
            let path = root.join(&e.rel);
            let fail = |reason: String| BadFile {
                path: path.clone(),
                reason,
            };
            if quick {
                let reader = image::ImageReader::open(&path)
                    .map_err(|e| fail(format!("cannot open: {e}")))?
                    .with_guessed_format()
                    .map_err(|e| fail(format!("cannot read: {e}")))?;
                let dims = reader
                    .into_dimensions()
                    .map_err(|e| fail(format!("cannot read header: {e}")))?;
                Ok((dims, "?".to_string()))
            } else {
                let img = folder::decode(&path).map_err(fail)?;
                let layout = match img.color() {
                    image::ColorType::L8 | image::ColorType::L16 => "gray",
                    image::ColorType::La8 | image::ColorType::La16 => "gray+alpha",
                    image::ColorType::Rgb8 | image::ColorType::Rgb16 | image::ColorType::Rgb32F => {
                        "rgb"
                    }
                    _ => "rgba",
                };
                Ok(((img.width(), img.height()), layout.to_string()))
            }
        })
        .collect();
    let mut report = Report {
        files: entries.len(),
        ..Default::default()
    };
    for r in results {
        match r {
            Ok((dims, layout)) => {
                report.readable += 1;
                *report.sizes.entry(dims).or_default() += 1;
                if layout != "?" {
                    *report.channels.entry(layout).or_default() += 1;
                }
            }
            Err(b) => bad.push(b),
        }
    }
    bad.sort_by(|a, b| a.path.cmp(&b.path));
    report.bad = bad;
    Ok(report)
}

impl Report {
    /// The report as text.
    pub fn render(&self, root: &Path) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{}: {} readable images, {} unreadable files",
            root.display(),
            self.readable,
            self.bad.len()
        );
        let mut sizes: Vec<(&(u32, u32), &usize)> = self.sizes.iter().collect();
        sizes.sort_by(|a, b| b.1.cmp(a.1));
        let _ = writeln!(s, "pixel sizes (width x height):");
        for ((w, h), n) in sizes.iter().take(10) {
            let _ = writeln!(s, "  {w}x{h}: {n}");
        }
        if sizes.len() > 10 {
            let _ = writeln!(s, "  ... and {} more sizes", sizes.len() - 10);
        }
        if !self.channels.is_empty() {
            let list: Vec<String> = self
                .channels
                .iter()
                .map(|(k, n)| format!("{k}: {n}"))
                .collect();
            let _ = writeln!(s, "channels: {}", list.join(", "));
        }
        let _ = writeln!(s, "unreadable: {}", self.bad.len());
        for b in &self.bad {
            let _ = writeln!(s, "  {}: {}", b.path.display(), b.reason);
        }
        s
    }
}
