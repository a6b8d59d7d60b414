//! Colour themes: every style the studio draws with comes from a [`Theme`].
//!
//! Three themes are built in (`dark`, `light`, `mono`); a file `themes/<name>.toml` in the
//! working directory overrides the built-in one of that name, and `--theme PATH` loads any file.
//! `mono` has no colour at all and is chosen when `NO_COLOR` is set and not empty.

use std::path::{Path, PathBuf};

use ratatui::style::{Color, Modifier, Style};
use serde::Deserialize;

/// The names of the built-in themes.
pub const BUILT_IN: [&str; 3] = ["dark", "light", "mono"];

const DARK: &str = include_str!("../../themes/dark.toml");
const LIGHT: &str = include_str!("../../themes/light.toml");
const MONO: &str = include_str!("../../themes/mono.toml");

/// A theme file that could not be used, naming the file and, when known, the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {message}", key.as_ref().map_or(String::new(), |k| format!(": key `{k}`")))]
pub struct ThemeError {
    /// The file (or `<built-in NAME>`).
    pub file: String,
    /// The key at fault, when one is known.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// How sample images are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageMode {
    /// Half-blocks with the pixels' own colours.
    Color,
    /// Grey levels drawn with shading characters, for terminals without colour.
    Shade,
}

/// Every style the studio uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Theme {
    /// The theme's name.
    pub name: String,
    /// How sample images are drawn.
    pub image: ImageMode,
    /// Ordinary text.
    pub text: Style,
    /// Secondary text: labels, hints.
    pub dim: Style,
    /// Panel titles.
    pub title: Style,
    /// Panel borders.
    pub border: Style,
    /// The border of the focused panel.
    pub border_focus: Style,
    /// Inactive tabs.
    pub tab: Style,
    /// The active tab.
    pub tab_active: Style,
    /// The status bar.
    pub status: Style,
    /// Key hints in the status bar.
    pub status_key: Style,
    /// Things going well (a falling loss).
    pub good: Style,
    /// Things going badly (a rising loss).
    pub bad: Style,
    /// Informational messages.
    pub info: Style,
    /// Warnings.
    pub warn: Style,
    /// Errors.
    pub error: Style,
    /// The total loss series.
    pub total: Style,
    /// The reconstruction loss series.
    pub recon: Style,
    /// The KL series.
    pub kl: Style,
    /// Validation points.
    pub val: Style,
    /// Unsmoothed values behind the smoothed line.
    pub raw: Style,
    /// Markers of setting changes on the chart.
    pub marker: Style,
    /// Progress gauges.
    pub gauge: Style,
    /// The selected entry of a list or dialog.
    pub selection: Style,
    /// The background of overlays (help, dialogs).
    pub overlay: Style,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ThemeFile {
    image: ImageMode,
    styles: Styles,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Styles {
    text: String,
    dim: String,
    title: String,
    border: String,
    border_focus: String,
    tab: String,
    tab_active: String,
    status: String,
    status_key: String,
    good: String,
    bad: String,
    info: String,
    warn: String,
    error: String,
    total: String,
    recon: String,
    kl: String,
    val: String,
    raw: String,
    marker: String,
    gauge: String,
    selection: String,
    overlay: String,
}

impl Default for Theme {
    fn default() -> Self {
        Self::parse(DARK, "dark", "<built-in dark>").expect("the built-in dark theme parses")
    }
}

impl Theme {
    /// The theme to use: `--theme` when given, else `mono` under `NO_COLOR`, else `configured`.
    pub fn choose(cli: Option<&str>, configured: &str) -> Result<Self, ThemeError> {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let spec = match cli {
            Some(spec) => spec,
            None if no_color => "mono",
            None => configured,
        };
        Self::load(spec)
    }

    /// Loads a theme by name (working-directory `themes/` first, then built in) or by path.
    pub fn load(spec: &str) -> Result<Self, ThemeError> {
        let as_path = Path::new(spec);
        if spec.ends_with(".toml") || as_path.components().count() > 1 {
            return Self::from_file(as_path);
        }
        let local = PathBuf::from("themes").join(format!("{spec}.toml"));
        if local.is_file() {
            return Self::from_file(&local);
        }
        let text = match spec {
            "dark" => DARK,
            "light" => LIGHT,
            "mono" => MONO,
            _ => {
                let message = format!("no theme `{spec}`; built in: {}", BUILT_IN.join(", "));
                return Err(ThemeError {
                    file: local.display().to_string(),
                    key: None,
                    message,
                });
            }
        };
        Self::parse(text, spec, &format!("<built-in {spec}>"))
    }

    /// Reads a theme file.
    pub fn from_file(path: &Path) -> Result<Self, ThemeError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ThemeError {
            file: file.clone(),
            key: None,
            message: e.to_string(),
        })?;
        let name = path
            .file_stem()
            .map_or(String::new(), |s| s.to_string_lossy().into_owned());
        Self::parse(&text, &name, &file)
    }

    /// Parses theme text; `file` names it in errors.
    pub fn parse(text: &str, name: &str, file: &str) -> Result<Self, ThemeError> {
        let raw: ThemeFile = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let file = line.map_or(file.to_string(), |l| format!("{file}:{l}"));
            ThemeError {
                file,
                key: None,
                message: e.message().trim().to_string(),
            }
        })?;
        let s = raw.styles;
        let get = |key: &str, spec: &str| {
            parse_style(spec).map_err(|message| ThemeError {
                file: file.to_string(),
                key: Some(format!("styles.{key}")),
                message,
            })
        };
        Ok(Self {
            name: name.to_string(),
            image: raw.image,
            text: get("text", &s.text)?,
            dim: get("dim", &s.dim)?,
            title: get("title", &s.title)?,
            border: get("border", &s.border)?,
            border_focus: get("border_focus", &s.border_focus)?,
            tab: get("tab", &s.tab)?,
            tab_active: get("tab_active", &s.tab_active)?,
            status: get("status", &s.status)?,
            status_key: get("status_key", &s.status_key)?,
            good: get("good", &s.good)?,
            bad: get("bad", &s.bad)?,
            info: get("info", &s.info)?,
            warn: get("warn", &s.warn)?,
            error: get("error", &s.error)?,
            total: get("total", &s.total)?,
            recon: get("recon", &s.recon)?,
            kl: get("kl", &s.kl)?,
            val: get("val", &s.val)?,
            raw: get("raw", &s.raw)?,
            marker: get("marker", &s.marker)?,
            gauge: get("gauge", &s.gauge)?,
            selection: get("selection", &s.selection)?,
            overlay: get("overlay", &s.overlay)?,
        })
    }
}

/// Parses `"[colour] [on colour] [modifier...]"`.
pub fn parse_style(spec: &str) -> Result<Style, String> {
    let mut style = Style::default();
    let mut words = spec.split_whitespace();
    let mut fg_set = false;
    while let Some(word) = words.next() {
        let modifier = match word {
            "bold" => Some(Modifier::BOLD),
            "dim" => Some(Modifier::DIM),
            "italic" => Some(Modifier::ITALIC),
            "underlined" => Some(Modifier::UNDERLINED),
            "reversed" => Some(Modifier::REVERSED),
            _ => None,
        };
        if let Some(m) = modifier {
            style = style.add_modifier(m);
        } else if word == "on" {
            let bg = words
                .next()
                .ok_or("`on` needs a background colour after it")?;
            style = style.bg(parse_color(bg)?);
        } else if !fg_set {
            style = style.fg(parse_color(word)?);
            fg_set = true;
        } else {
            return Err(format!(
                "unexpected `{word}` in `{spec}` (a second colour needs `on`)"
            ));
        }
    }
    Ok(style)
}

/// Parses a colour name, `reset`, `#rrggbb` or an index 0-255.
pub fn parse_color(word: &str) -> Result<Color, String> {
    if let Some(hex) = word.strip_prefix('#') {
        let bad = || format!("`{word}` is not a #rrggbb colour");
        if hex.len() != 6 {
            return Err(bad());
        }
        let v = u32::from_str_radix(hex, 16).map_err(|_| bad())?;
        return Ok(Color::Rgb((v >> 16) as u8, (v >> 8) as u8, v as u8));
    }
    if let Ok(i) = word.parse::<u8>() {
        return Ok(Color::Indexed(i));
    }
    let color = match word.to_ascii_lowercase().as_str() {
        "reset" | "default" => Color::Reset,
        "black" => Color::Black,
        "red" => Color::Red,
        "green" => Color::Green,
        "yellow" => Color::Yellow,
        "blue" => Color::Blue,
        "magenta" => Color::Magenta,
        "cyan" => Color::Cyan,
        "gray" | "grey" => Color::Gray,
        "darkgray" | "darkgrey" => Color::DarkGray,
        "lightred" => Color::LightRed,
        "lightgreen" => Color::LightGreen,
        "lightyellow" => Color::LightYellow,
        "lightblue" => Color::LightBlue,
        "lightmagenta" => Color::LightMagenta,
        "lightcyan" => Color::LightCyan,
        "white" => Color::White,
        _ => return Err(format!("unknown colour `{word}`")),
    };
    Ok(color)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_themes_parse() {
        for name in BUILT_IN {
            let t = Theme::load(name).unwrap();
            assert_eq!(t.name, name);
        }
    }

    #[test]
    fn mono_has_no_colour() {
        let t = Theme::load("mono").unwrap();
        for s in [
            t.text,
            t.tab_active,
            t.status,
            t.total,
            t.val,
            t.error,
            t.gauge,
            t.selection,
        ] {
            assert!(matches!(s.fg, None | Some(Color::Reset)), "{s:?}");
            assert!(matches!(s.bg, None | Some(Color::Reset)), "{s:?}");
        }
        assert_eq!(t.image, ImageMode::Shade);
    }

    #[test]
    fn styles_parse() {
        let s = parse_style("#102030 on blue bold").unwrap();
        assert_eq!(s.fg, Some(Color::Rgb(0x10, 0x20, 0x30)));
        assert_eq!(s.bg, Some(Color::Blue));
        assert!(s.add_modifier.contains(Modifier::BOLD));
        assert!(parse_style("bluu").unwrap_err().contains("bluu"));
        assert!(parse_style("red green").is_err());
    }

    #[test]
    fn bad_theme_names_file_and_key() {
        let text = DARK.replace("kl = \"#d7afff\"", "kl = \"#zzzzzz\"");
        let e = Theme::parse(&text, "x", "themes/x.toml").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("styles.kl"));
        assert!(
            e.to_string().starts_with("themes/x.toml: key `styles.kl`"),
            "{e}"
        );
        let missing = DARK.replace("kl = \"#d7afff\"\n", "");
        let e = Theme::parse(&missing, "x", "themes/x.toml").unwrap_err();
        assert!(e.to_string().contains("kl"), "{e}");
        assert!(Theme::load("nosuchtheme")
            .unwrap_err()
            .to_string()
            .contains("nosuchtheme"));
    }
}
