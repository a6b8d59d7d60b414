//! Reading NPY arrays of faces: `u8` or float, shaped `N x H x W` or `N x H x W x C`.
//!
//! The header is untrusted: its size is bounded, its shape must match the file's length, and
//! the image count and sizes are bounded before anything is allocated.

use std::io::Read;
use std::path::Path;

use super::DataError;

/// The most bytes a header may claim; real headers are under 200 bytes.
const MAX_HEADER: usize = 64 * 1024;
/// The largest side of one image.
const MAX_SIDE: usize = 8192;

/// The element type of an array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// Unsigned bytes, 0 to 255.
    U8,
    /// Little-endian f32.
    F32,
    /// Little-endian f64.
    F64,
}

impl Dtype {
    fn size(self) -> usize {
        match self {
            Self::U8 => 1,
            Self::F32 => 4,
            Self::F64 => 8,
        }
    }
}

/// A parsed NPY header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Element type.
    pub dtype: Dtype,
    /// Array shape.
    pub shape: Vec<usize>,
    /// Offset of the data from the start of the file.
    pub data_offset: usize,
}

fn bad(path: &Path, msg: impl Into<String>) -> DataError {
    DataError::BadFile {
        path: path.to_path_buf(),
        reason: msg.into(),
    }
}

/// Parses the header at the start of `bytes` (which may be only the file's first bytes).
pub fn parse_header(bytes: &[u8], path: &Path) -> Result<Header, DataError> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad(path, "not an NPY file (bad magic)"));
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(bad(path, format!("unsupported NPY version {v}"))),
    };
    if len > MAX_HEADER {
        return Err(bad(
            path,
            format!("header claims {len} bytes (limit {MAX_HEADER})"),
        ));
    }
    let text = bytes
        .get(start..start + len)
        .ok_or_else(|| bad(path, "file ends inside the header"))?;
    let text = std::str::from_utf8(text).map_err(|_| bad(path, "header is not text"))?;
    let dtype = match dict_value(text, "descr").as_deref() {
        Some("'|u1'") | Some("'u1'") | Some("'<u1'") => Dtype::U8,
        Some("'<f4'") => Dtype::F32,
        Some("'<f8'") => Dtype::F64,
        other => {
            return Err(bad(
                path,
                format!("unsupported dtype {other:?} (need u1, <f4, <f8)"),
            ))
        }
    };
    if dict_value(text, "fortran_order").as_deref() != Some("False") {
        return Err(bad(path, "Fortran-ordered arrays are not supported"));
    }
    let shape = parse_shape(text).ok_or_else(|| bad(path, "header has no readable shape"))?;
    Ok(Header {
        dtype,
        shape,
        data_offset: start + len,
    })
}

/// The raw text of `'key': value` in a Python dict literal.
fn dict_value(text: &str, key: &str) -> Option<String> {
    let at = text.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = text[at..].trim_start().strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else {
        rest.find([',', '}']).unwrap_or(rest.len())
    };
    Some(rest[..end].trim().to_string())
}

fn parse_shape(text: &str) -> Option<Vec<usize>> {
    let raw = dict_value(text, "shape")?;
    let inner = raw.strip_prefix('(')?.strip_suffix(')')?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().ok())
        .collect()
}

/// Images decoded from an NPY file: u8 CHW, image after image.
#[derive(Debug)]
pub struct NpyImages {
    /// Number of images.
    pub count: usize,
    /// Channels per image (1 or 3).
    pub channels: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// `count * channels * height * width` bytes.
    pub pixels: Vec<u8>,
}

/// Reads an NPY array of faces into u8 CHW images.
pub fn read(path: &Path) -> Result<NpyImages, DataError> {
    let mut file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let file_len = file.metadata().map_err(|e| DataError::io(path, e))?.len() as usize;
    let mut head = vec![0u8; (MAX_HEADER + 12).min(file_len)];
    file.read_exact(&mut head)
        .map_err(|e| DataError::io(path, e))?;
    let header = parse_header(&head, path)?;
    let (count, height, width, channels) = match header.shape[..] {
        [n, h, w] => (n, h, w, 1),
        [n, h, w, c] if c == 1 || c == 3 => (n, h, w, c),
        _ => {
            let msg = format!(
                "shape {:?} is not N x H x W or N x H x W x C (C 1 or 3)",
                header.shape
            );
            return Err(bad(path, msg));
        }
    };
    if count == 0 || height == 0 || width == 0 || height > MAX_SIDE || width > MAX_SIDE {
        return Err(bad(
            path,
            format!("shape {:?} has an empty or oversized side", header.shape),
        ));
    }
    let elems = count
        .checked_mul(height * width * channels)
        .ok_or_else(|| bad(path, "shape overflows"))?;
    let expected = elems
        .checked_mul(header.dtype.size())
        .ok_or_else(|| bad(path, "shape overflows"))?;
    if file_len - header.data_offset != expected {
        let msg = format!(
            "header promises {expected} data bytes for shape {:?}, file has {}",
            header.shape,
            file_len - header.data_offset
        );
        return Err(bad(path, msg));
    }
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let values = to_u8(&bytes[header.data_offset..], header.dtype);
    let pixels = hwc_to_chw(&values, count, height, width, channels);
    Ok(NpyImages {
        count,
        channels,
        height,
        width,
        pixels,
    })
}

/// Converts the raw data to bytes; floats in [0, 1] are scaled by 255, others clamped.
fn to_u8(raw: &[u8], dtype: Dtype) -> Vec<u8> {
    let floats: Vec<f64> = match dtype {
        Dtype::U8 => return raw.to_vec(),
        Dtype::F32 => raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        Dtype::F64 => raw
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("chunk of 8")))
            .collect(),
    };
    let max = floats
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let scale = if max <= 1.0 { 255.0 } else { 1.0 };
    floats
        .iter()
        .map(|&v| {
            if v.is_finite() {
                (v * scale).round().clamp(0.0, 255.0) as u8
            } else {
                0
            }
        })
        .collect()
}

fn hwc_to_chw(values: &[u8], n: usize, h: usize, w: usize, c: usize) -> Vec<u8> {
    if c == 1 {
        return values.to_vec();
    }
    let plane = h * w;
    let mut out = vec![0u8; values.len()];
    for i in 0..n {
        let src = &values[i * plane * c..(i + 1) * plane * c];
        let dst = &mut out[i * plane * c..(i + 1) * plane * c];
        for p in 0..plane {
            for ch in 0..c {
                dst[ch * plane + p] = src[p * c + ch];
            }
        }
    }
    out
}

/// Writes u8 images (N x H x W, or N x H x W x C when `channels` is 3) as an NPY v1 file.
pub fn write_u8(
    path: &Path,
    hwc: &[u8],
    n: usize,
    h: usize,
    w: usize,
    channels: usize,
) -> std::io::Result<()> {
    let shape = if channels == 1 {
        format!("({n}, {h}, {w})")
    } else {
        format!("({n}, {h}, {w}, {channels})")
    };
    let mut dict = format!("{{'descr': '|u1', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + dict.len() + 1) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    bytes.extend_from_slice(dict.as_bytes());
    bytes.extend_from_slice(hwc);
    crate::run::atomic_write(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("fs-npy-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("a.npy")
    }

    #[test]
    fn round_trips_u8_gray_and_rgb() {
        let p = tmp("rt");
        let px: Vec<u8> = (0..2 * 3 * 2 * 3).map(|i| i as u8).collect();
        write_u8(&p, &px, 2, 3, 2, 3).unwrap();
        let im = read(&p).unwrap();
        assert_eq!((im.count, im.height, im.width, im.channels), (2, 3, 2, 3));
        // pixel (0,0) of image 0 has R=0, G=1, B=2 in HWC: planes start at 0, 6, 12
        assert_eq!((im.pixels[0], im.pixels[6], im.pixels[12]), (0, 1, 2));
        write_u8(&p, &px[..12], 2, 3, 2, 1).unwrap();
        assert_eq!(read(&p).unwrap().pixels, px[..12].to_vec());
    }

    #[test]
    fn lying_header_is_an_error_naming_the_file() {
        let p = tmp("lie");
        write_u8(&p, &[1u8; 12], 2, 3, 2, 1).unwrap();
        let mut bytes = std::fs::read(&p).unwrap();
        let at = bytes
            .windows(9)
            .position(|w| w == b"(2, 3, 2)")
            .expect("shape in the header");
        bytes[at + 1] = b'9';
        std::fs::write(&p, &bytes).unwrap();
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains("a.npy") && e.contains("promises"), "{e}");
    }

    #[test]
    fn huge_header_and_garbage_are_rejected() {
        let p = Path::new("x.npy");
        let mut b = b"\x93NUMPY\x02\x00".to_vec();
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_header(&b, p)
            .unwrap_err()
            .to_string()
            .contains("limit"));
        assert!(parse_header(b"hello world", p).is_err());
        assert!(parse_header(b"\x93NUMPY\x01\x00\xff\x00{", p).is_err());
    }

    #[test]
    fn floats_in_unit_range_are_scaled() {
        assert_eq!(
            to_u8(&[0f32, 0.5, 1.0].map(f32::to_le_bytes).concat(), Dtype::F32),
            vec![0, 128, 255]
        );
    }
}
