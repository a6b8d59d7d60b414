//! Images drawn with unicode half-blocks: each cell shows two pixels, the upper one as the
//! foreground of `▀` and the lower one as its background. Works in every terminal with true
//! colour, over SSH and in tmux. Without colour (the mono theme) pixels become grey levels
//! drawn with shading characters.
//!
//! Kitty, sixel and iTerm2 graphics replace this where the terminal has them (a later step).

use std::path::{Path, PathBuf};

use image::RgbImage;
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::Color;

use crate::tui::theme::ImageMode;

/// Shading characters from dark to light, for [`ImageMode::Shade`].
const SHADES: [&str; 5] = [" ", "░", "▒", "▓", "█"];

/// An image to show, decoded once, with its last downscaled copy kept for redraws.
#[derive(Debug, Default)]
pub struct SampleView {
    path: Option<PathBuf>,
    image: Option<RgbImage>,
    /// The image under a stable identity, for the graphics protocols' cache.
    picture: Option<crate::tui::graphics::Picture>,
    error: Option<String>,
    scaled: Option<((u32, u32), RgbImage)>,
}

impl SampleView {
    /// A view of an image already in memory.
    pub fn from_image(image: RgbImage) -> Self {
        Self {
            image: Some(image),
            ..Default::default()
        }
    }

    /// Shows the PNG at `path`, decoding it only when it is a different file from before.
    pub fn set_path(&mut self, path: Option<&Path>) {
        if self.path.as_deref() == path {
            return;
        }
        self.path = path.map(Path::to_path_buf);
        self.scaled = None;
        self.error = None;
        self.image = None;
        self.picture = None;
        let Some(path) = path else { return };
        match image::open(path) {
            Ok(img) => self.image = Some(img.to_rgb8()),
            Err(e) => {
                tracing::warn!("cannot read {}: {e}", path.display());
                self.error = Some(format!("cannot read the sample: {e}"));
            }
        }
    }

    /// The file shown, when it came from a file.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Why the file could not be shown.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// The image as a picture for [`crate::tui::graphics::Pictures`], made once per image.
    pub fn picture(&mut self) -> Option<&crate::tui::graphics::Picture> {
        if self.picture.is_none() {
            self.picture = self.image.clone().map(crate::tui::graphics::Picture::new);
        }
        self.picture.as_ref()
    }

    /// Whether there is an image to draw.
    pub fn has_image(&self) -> bool {
        self.image.is_some()
    }

    /// Draws the image as large as fits `area`, keeping its aspect, centred.
    pub fn render(&mut self, area: Rect, buf: &mut Buffer, mode: ImageMode) {
        let Some(image) = &self.image else { return };
        let (w, h) = fit(
            image.dimensions(),
            (u32::from(area.width), u32::from(area.height) * 2),
        );
        if w == 0 || h == 0 {
            return;
        }
        if self.scaled.as_ref().is_none_or(|(size, _)| *size != (w, h)) {
            let scaled =
                image::imageops::resize(image, w, h, image::imageops::FilterType::Triangle);
            self.scaled = Some(((w, h), scaled));
        }
        let Some((_, scaled)) = &self.scaled else {
            return;
        };
        let x0 = area.x + (area.width - w as u16) / 2;
        let y0 = area.y + (area.height - h.div_ceil(2) as u16) / 2;
        draw(scaled, x0, y0, buf, mode);
    }
}

/// The largest size of aspect `image` within `room`, in pixels.
pub fn fit(image: (u32, u32), room: (u32, u32)) -> (u32, u32) {
    let (iw, ih) = image;
    let (rw, rh) = room;
    if iw == 0 || ih == 0 || rw == 0 || rh == 0 {
        return (0, 0);
    }
    let scale = (rw as f64 / iw as f64).min(rh as f64 / ih as f64);
    let w = ((iw as f64 * scale).floor() as u32).clamp(1, rw);
    let h = ((ih as f64 * scale).floor() as u32).clamp(1, rh);
    (w, h)
}

/// Draws `img` with its top-left cell at `(x0, y0)`, clipped to the buffer.
pub fn draw(img: &RgbImage, x0: u16, y0: u16, buf: &mut Buffer, mode: ImageMode) {
    let area = buf.area;
    let (w, h) = img.dimensions();
    for cy in 0..h.div_ceil(2) {
        let y = y0 as u32 + cy;
        if y >= u32::from(area.bottom()) {
            break;
        }
        for px in 0..w {
            let x = x0 as u32 + px;
            if x >= u32::from(area.right()) {
                break;
            }
            let upper = img.get_pixel(px, cy * 2).0;
            let lower = if cy * 2 + 1 < h {
                Some(img.get_pixel(px, cy * 2 + 1).0)
            } else {
                None
            };
            let cell = &mut buf[(x as u16, y as u16)];
            match mode {
                ImageMode::Color => {
                    cell.set_symbol("▀").set_fg(rgb(upper));
                    cell.set_bg(lower.map_or(Color::Reset, rgb));
                }
                ImageMode::Shade => {
                    let l = (luma(upper) + lower.map_or(luma(upper), luma)) / 2.0;
                    let i = ((l / 256.0) * SHADES.len() as f64) as usize;
                    cell.set_symbol(SHADES[i.min(SHADES.len() - 1)]);
                }
            }
        }
    }
}

fn rgb(p: [u8; 3]) -> Color {
    Color::Rgb(p[0], p[1], p[2])
}

fn luma(p: [u8; 3]) -> f64 {
    0.299 * f64::from(p[0]) + 0.587 * f64::from(p[1]) + 0.114 * f64::from(p[2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_keeps_aspect() {
        assert_eq!(fit((100, 100), (20, 40)), (20, 20));
        assert_eq!(fit((200, 100), (20, 40)), (20, 10));
        assert_eq!(fit((10, 10), (0, 5)), (0, 0));
    }

    #[test]
    fn half_blocks_carry_two_pixels_per_cell() {
        let mut img = RgbImage::new(2, 2);
        img.put_pixel(0, 0, image::Rgb([255, 0, 0]));
        img.put_pixel(0, 1, image::Rgb([0, 0, 255]));
        let mut buf = Buffer::empty(Rect::new(0, 0, 4, 2));
        draw(&img, 1, 0, &mut buf, ImageMode::Color);
        let c = &buf[(1, 0)];
        assert_eq!(
            (c.symbol(), c.fg, c.bg),
            ("▀", Color::Rgb(255, 0, 0), Color::Rgb(0, 0, 255))
        );
        let mut mono = Buffer::empty(Rect::new(0, 0, 4, 2));
        draw(&img, 0, 0, &mut mono, ImageMode::Shade);
        assert_eq!(mono[(0, 0)].fg, Color::Reset);
    }
}
