//! Named data set descriptions (`datasets/*.toml`) and the resolution of `data.source`.
//!
//! The descriptions shipped with facestudio are compiled in, so names work from any folder;
//! a `datasets/NAME.toml` in the working directory adds to them or replaces one. Relative
//! image paths are looked up under the data roots: each folder of `FACESTUDIO_DATA`
//! (colon-separated), then `./data`, `~/data` and `~/datasets`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::DataError;
use crate::config::Crop;

const SHIPPED: [(&str, &str); 4] = [
    ("synthetic", include_str!("../../datasets/synthetic.toml")),
    ("celeba", include_str!("../../datasets/celeba.toml")),
    ("ffhq", include_str!("../../datasets/ffhq.toml")),
    ("frey", include_str!("../../datasets/frey.toml")),
];

/// What kind of source a description points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DescriptionKind {
    /// The embedded generator.
    Synthetic,
    /// A folder of images.
    Folder,
    /// An NPY array.
    Npy,
}

/// One `datasets/*.toml` file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Description {
    /// The name used in `--data NAME` and `data.source`.
    pub name: String,
    /// A title for display.
    pub title: String,
    /// `synthetic`, `folder` or `npy`.
    pub kind: DescriptionKind,
    /// The images, relative to a data root, or absolute.
    #[serde(default)]
    pub path: Option<String>,
    /// Channels of the images.
    pub channels: usize,
    /// The crop that suits the images.
    pub crop: Crop,
    /// Where the data comes from.
    pub source: String,
    /// Its terms of use.
    pub terms: String,
    /// How to get the images when they are missing.
    #[serde(default)]
    pub get: Option<String>,
}

/// A resolved source, ready to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    /// The embedded generator.
    Synthetic,
    /// A folder of images.
    Folder(PathBuf),
    /// An NPY file.
    Npy(PathBuf),
}

/// A resolved `data.source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// What to load.
    pub kind: SourceKind,
    /// The crop its description asks for, if it came from one.
    pub crop: Option<Crop>,
}

/// Every known description, shipped ones first, by name.
pub fn descriptions() -> Vec<Description> {
    let mut all: Vec<Description> = SHIPPED
        .iter()
        .map(|(name, text)| toml::from_str(text).unwrap_or_else(|e| panic!("shipped {name}: {e}")))
        .collect();
    let Ok(dir) = std::fs::read_dir("datasets") else {
        return all;
    };
    for entry in dir.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "toml") {
            match std::fs::read_to_string(&path).map(|t| toml::from_str::<Description>(&t)) {
                Ok(Ok(d)) => {
                    all.retain(|o| o.name != d.name);
                    all.push(d);
                }
                Ok(Err(e)) => {
                    tracing::warn!(path = %path.display(), error = %e, "bad data set description")
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "unreadable description")
                }
            }
        }
    }
    all
}

/// The folders under which relative data set paths are looked up.
pub fn data_roots() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = std::env::var_os("FACESTUDIO_DATA")
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
    roots.push(PathBuf::from("data"));
    if let Some(home) = std::env::var_os("HOME") {
        roots.push(PathBuf::from(&home).join("data"));
        roots.push(PathBuf::from(home).join("datasets"));
    }
    roots
}

fn kind_of_path(path: &Path) -> SourceKind {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npy"))
    {
        SourceKind::Npy(path.to_path_buf())
    } else {
        SourceKind::Folder(path.to_path_buf())
    }
}

/// Resolves `data.source`: `synthetic`, a description name, or a path.
pub fn resolve(source: &str) -> Result<Source, DataError> {
    if let Some(desc) = descriptions().into_iter().find(|d| d.name == source) {
        return resolve_description(&desc);
    }
    let path = Path::new(source);
    if path.exists() {
        return Ok(Source {
            kind: kind_of_path(path),
            crop: None,
        });
    }
    Err(DataError::Source(format!(
        "data source `{source}` is neither a data set name ({}) nor an existing path",
        descriptions()
            .iter()
            .map(|d| d.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

fn resolve_description(desc: &Description) -> Result<Source, DataError> {
    let crop = Some(desc.crop);
    let rel = match (desc.kind, &desc.path) {
        (DescriptionKind::Synthetic, _) => {
            return Ok(Source {
                kind: SourceKind::Synthetic,
                crop,
            })
        }
        (_, None) => {
            return Err(DataError::Source(format!(
                "data set `{}` has no path",
                desc.name
            )))
        }
        (_, Some(p)) => PathBuf::from(p),
    };
    let candidates: Vec<PathBuf> = if rel.is_absolute() {
        vec![rel.clone()]
    } else {
        data_roots().iter().map(|r| r.join(&rel)).collect()
    };
    let found = candidates.iter().find(|p| p.exists()).cloned();
    match found {
        Some(path) if desc.kind == DescriptionKind::Npy => Ok(Source {
            kind: SourceKind::Npy(path),
            crop,
        }),
        Some(path) => Ok(Source {
            kind: SourceKind::Folder(path),
            crop,
        }),
        None => Err(DataError::Source(format!(
            "the images of data set `{}` are missing: looked for {} in {}. {}",
            desc.name,
            rel.display(),
            data_roots()
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            desc.get.as_deref().unwrap_or("")
        ))),
    }
}

/// Checks a `data.source` value without loading it: names must be known and paths must exist.
pub fn check_source(source: &str) -> Result<(), String> {
    if source.is_empty() {
        return Err("must name a data set or a path".into());
    }
    if descriptions().iter().any(|d| d.name == source) || Path::new(source).exists() {
        return Ok(());
    }
    Err(format!(
        "`{source}` is not a known data set name and no such file or folder exists"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_descriptions_parse() {
        let names: Vec<String> = descriptions().into_iter().map(|d| d.name).collect();
        for n in ["synthetic", "celeba", "ffhq", "frey"] {
            assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
        }
    }

    #[test]
    fn missing_images_say_where_to_get_them() {
        let desc = descriptions()
            .into_iter()
            .find(|d| d.name == "ffhq")
            .unwrap();
        let e = resolve_description(&desc).unwrap_err().to_string();
        assert!(e.contains("missing") && e.contains("ffhq-dataset"), "{e}");
    }

    #[test]
    fn unknown_source_is_rejected() {
        assert!(check_source("no-such-set").is_err());
        assert!(check_source("synthetic").is_ok());
        assert!(resolve("no-such-set").is_err());
    }
}
