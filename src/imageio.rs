//! Image grids and strips as PNG files.

use std::path::Path;

use image::{Rgb, RgbImage};

use crate::data::chw_to_rgb;
use crate::run::atomic_write;

/// Pixels between tiles (and around the border) of a grid.
pub const GAP: u32 = 2;
/// The colour between tiles.
const GAP_COLOUR: Rgb<u8> = Rgb([24, 24, 28]);

/// Columns of a near-square grid of `n` tiles.
pub fn grid_columns(n: usize) -> usize {
    ((n as f64).sqrt().ceil() as usize).max(1)
}

/// Pixel size `(width, height)` of a grid of `n` tiles of `side` pixels in `cols` columns.
pub fn grid_size(n: usize, cols: usize, tile_w: usize, tile_h: usize) -> (u32, u32) {
    let rows = n.div_ceil(cols.max(1)).max(1);
    let w = cols as u32 * (tile_w as u32 + GAP) + GAP;
    let h = rows as u32 * (tile_h as u32 + GAP) + GAP;
    (w, h)
}

/// Lays out CHW u8 images in a grid with `cols` columns.
pub fn grid(images: &[u8], channels: usize, h: usize, w: usize, cols: usize) -> RgbImage {
    let per = channels * h * w;
    let n = if per == 0 { 0 } else { images.len() / per };
    let (gw, gh) = grid_size(n, cols, w, h);
    let mut out = RgbImage::from_pixel(gw, gh, GAP_COLOUR);
    for (i, chw) in images.chunks_exact(per.max(1)).enumerate().take(n) {
        let tile = chw_to_rgb(chw, channels, h, w);
        let (r, c) = (i / cols, i % cols);
        let x0 = GAP + c as u32 * (w as u32 + GAP);
        let y0 = GAP + r as u32 * (h as u32 + GAP);
        image::imageops::replace(&mut out, &tile, x0 as i64, y0 as i64);
    }
    out
}

/// Encodes an image as PNG bytes.
pub fn png_bytes(img: &RgbImage) -> Vec<u8> {
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .expect("PNG encoding into memory");
    bytes
}

/// Writes an image as PNG atomically.
pub fn save_png(img: &RgbImage, path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    atomic_write(path, &png_bytes(img))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_has_the_documented_size() {
        let (h, w, c) = (8, 6, 3);
        let images = vec![200u8; 5 * c * h * w];
        let img = grid(&images, c, h, w, 3);
        assert_eq!(img.dimensions(), (3 * (6 + GAP) + GAP, 2 * (8 + GAP) + GAP));
        assert_eq!(img.get_pixel(GAP, GAP), &Rgb([200, 200, 200]));
        assert_eq!(img.get_pixel(0, 0), &GAP_COLOUR);
    }

    #[test]
    fn columns_are_near_square() {
        assert_eq!(grid_columns(64), 8);
        assert_eq!(grid_columns(1), 1);
        assert_eq!(grid_columns(10), 4);
        assert_eq!(grid_columns(16), 4);
    }
}
