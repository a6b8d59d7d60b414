//! Kitty graphics placed directly at the cursor, for terminals without unicode placeholders.
//!
//! ratatui-image places kitty images through unicode placeholder characters, which kitty draws
//! only from 0.28 on (and Konsole not at all). A direct placement works in every terminal that
//! speaks kitty's protocol: the image is sent as PNG with the command to show it at the cursor,
//! scaled by the terminal to `c` x `r` cells, without moving the cursor (`C=1`) and without a
//! reply (`q=2`, so that no answer reaches the key reader). The sequence is the symbol of the
//! first cell of the area and the other cells are skipped, so ratatui sends it only when that
//! cell changes. A placement stays on screen until it is deleted, so whoever draws frames must
//! delete the images that a frame no longer shows ([`delete`]).

use std::io::Cursor;
use std::num::NonZeroU16;

use base64::Engine;
use image::RgbImage;
use ratatui::buffer::{Buffer, CellDiffOption};
use ratatui::layout::{Rect, Size};

/// Payload bytes per escape sequence; kitty takes at most 4096 per chunk.
const CHUNK: usize = 4096;

/// An image encoded for direct placement.
#[derive(Debug, Clone)]
pub struct Placement {
    /// Kitty's image id; a new image of the same id replaces the old one.
    pub id: u32,
    size: Size,
    sequence: String,
}

impl Placement {
    /// Encodes `image` to fill as much of `cells` as its aspect allows, given the cell size in
    /// pixels. `tmux` wraps the sequence for tmux's passthrough.
    pub fn encode(
        image: &RgbImage,
        cells: Size,
        cell_px: (u16, u16),
        id: u32,
        tmux: bool,
    ) -> Result<Self, String> {
        let size = fit_cells(image.dimensions(), cells, cell_px);
        let mut png = Vec::new();
        image
            .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .map_err(|e| format!("encoding a PNG for kitty: {e}"))?;
        let payload = base64::engine::general_purpose::STANDARD.encode(&png);
        let control = format!(
            "a=T,f=100,i={id},p=1,c={},r={},C=1,q=2",
            size.width, size.height
        );
        Ok(Self {
            id,
            size,
            sequence: wrap(&chunked(&control, &payload), tmux),
        })
    }

    /// The cells the image covers.
    pub fn size(&self) -> Size {
        self.size
    }

    /// The escape sequence that sends and shows the image.
    pub fn sequence(&self) -> &str {
        &self.sequence
    }

    /// Puts the placement at the top left of `area`; nothing when it does not fit.
    pub fn render(&self, area: Rect, buf: &mut Buffer) {
        if self.size.width > area.width || self.size.height > area.height {
            return;
        }
        let one = CellDiffOption::ForcedWidth(NonZeroU16::MIN);
        for y in area.y..area.y + self.size.height {
            for x in area.x..area.x + self.size.width {
                if let Some(cell) = buf.cell_mut((x, y)) {
                    if (x, y) == (area.x, area.y) {
                        cell.set_symbol(&self.sequence).set_diff_option(one);
                    } else {
                        cell.set_diff_option(CellDiffOption::Skip);
                    }
                }
            }
        }
    }
}

/// The sequence that removes image `id` and frees its data in the terminal.
pub fn delete(id: u32, tmux: bool) -> String {
    wrap(&format!("\x1b_Ga=d,d=I,i={id},q=2\x1b\\"), tmux)
}

/// The largest cell rectangle within `cells` with the image's aspect, at least 1 x 1.
fn fit_cells(pixels: (u32, u32), cells: Size, cell_px: (u16, u16)) -> Size {
    let (w, h) = (pixels.0.max(1) as f64, pixels.1.max(1) as f64);
    let (cw, ch) = (cell_px.0.max(1) as f64, cell_px.1.max(1) as f64);
    let scale = (cells.width as f64 * cw / w).min(cells.height as f64 * ch / h);
    let cols = ((w * scale / cw).round() as u16).clamp(1, cells.width.max(1));
    let rows = ((h * scale / ch).round() as u16).clamp(1, cells.height.max(1));
    Size::new(cols, rows)
}

/// The command split into chunks: the control keys go with the first, `m=1` marks more.
fn chunked(control: &str, payload: &str) -> String {
    let parts: Vec<&str> = payload
        .as_bytes()
        .chunks(CHUNK)
        .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
        .collect();
    let mut out = String::with_capacity(payload.len() + parts.len() * 16 + control.len());
    for (i, part) in parts.iter().enumerate() {
        let more = u8::from(i + 1 < parts.len());
        if i == 0 {
            out.push_str(&format!("\x1b_G{control},m={more};{part}\x1b\\"));
        } else {
            out.push_str(&format!("\x1b_Gm={more};{part}\x1b\\"));
        }
    }
    out
}

/// Wraps each sequence for tmux's passthrough (escapes doubled), when asked.
fn wrap(sequence: &str, tmux: bool) -> String {
    if !tmux {
        return sequence.to_string();
    }
    sequence
        .split_inclusive("\x1b\\")
        .map(|s| format!("\x1bPtmux;{}\x1b\\", s.replace('\x1b', "\x1b\x1b")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_keeps_the_aspect_in_cells() {
        // A square image in cells twice as tall as wide: twice as many columns as rows.
        assert_eq!(
            fit_cells((64, 64), Size::new(40, 10), (10, 20)),
            Size::new(20, 10)
        );
        assert_eq!(
            fit_cells((64, 64), Size::new(8, 30), (10, 20)),
            Size::new(8, 4)
        );
        assert_eq!(
            fit_cells((1, 1000), Size::new(5, 5), (10, 20)),
            Size::new(1, 5)
        );
    }

    #[test]
    fn a_placement_is_chunked_png_at_the_cursor_without_a_reply() {
        let img = RgbImage::from_fn(80, 80, |x, y| image::Rgb([x as u8 * 3, y as u8 * 3, 7]));
        let p = Placement::encode(&img, Size::new(8, 4), (10, 20), 42, false).unwrap();
        let seq = p.sequence();
        assert!(seq.starts_with("\x1b_Ga=T,f=100,i=42,p=1,c=8,r=4,C=1,q=2,m="));
        let chunks: Vec<&str> = seq.split_inclusive("\x1b\\").collect();
        for (i, c) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            assert!(
                c.contains(if last { "m=0;" } else { "m=1;" }),
                "{i}: {c:.40}"
            );
            let data = c.split(';').nth(1).unwrap().trim_end_matches("\x1b\\");
            assert!(data.len() <= CHUNK);
        }
        // The payload decodes to a PNG of the image.
        let b64: String = chunks
            .iter()
            .map(|c| c.split(';').nth(1).unwrap().trim_end_matches("\x1b\\"))
            .collect();
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let back = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(back, img);
    }

    #[test]
    fn render_sets_the_first_cell_and_skips_the_rest() {
        let img = RgbImage::new(10, 10);
        let p = Placement::encode(&img, Size::new(4, 2), (10, 20), 1, false).unwrap();
        let mut buf = Buffer::empty(Rect::new(0, 0, 6, 3));
        p.render(Rect::new(1, 1, 5, 2), &mut buf);
        assert_eq!(buf[(1, 1)].symbol(), p.sequence());
        assert_eq!(buf[(2, 1)].diff_option, CellDiffOption::Skip);
        assert_eq!(buf[(0, 1)].diff_option, CellDiffOption::None);
    }

    #[test]
    fn tmux_wrapping_doubles_escapes() {
        let d = delete(5, true);
        assert_eq!(d, "\x1bPtmux;\x1b\x1b_Ga=d,d=I,i=5,q=2\x1b\x1b\\\x1b\\");
        assert_eq!(delete(5, false), "\x1b_Ga=d,d=I,i=5,q=2\x1b\\");
    }
}
