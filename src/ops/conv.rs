//! Convolution kernels for f32 tensors on the CPU, and the candle custom ops built on them.
//!
//! Layouts are candle's: images `(n, c, h, w)`, convolution weights `(c_out, c_in, k, k)`,
//! transposed-convolution weights `(c_in, c_out, k, k)`, biases `(c_out)`, all contiguous.
//!
//! Every kernel turns a group of images into one matrix product. `im2col` unfolds the receptive
//! fields of the group into the columns of a `(c_in k k, group ho wo)` matrix kept in a
//! per-thread buffer, `gemm` multiplies on one thread, and `col2im` folds columns back into
//! images. Groups run in parallel on rayon's pool, so the unfolding is parallel too. Three
//! kernels cover a convolution and its transpose, forward and backward:
//! - [`forward`]: `y = w x` (+ bias, + leaky ReLU), a convolution;
//! - [`backward_data`]: `dx = w^T dy`, a convolution's input gradient, which is also the forward
//!   pass of a transposed convolution whose weight `(c_in, c_out, k, k)` reads as a convolution
//!   weight from its output to its input;
//! - [`backward_weight`]: `dw = dy x^T` and `db = sum dy`, summed over the batch.
//!
//! The input may be upsampled by nearest neighbour on the fly (`up = 2`): the decoder's
//! upsample-then-convolve then never builds the four times larger image.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, InplaceOp2, Layout, Result, Shape, Tensor,
};
use rayon::prelude::*;
use std::cell::RefCell;
use std::mem::MaybeUninit;

/// How many columns (images times output pixels) one matrix product should at least get. A
/// product much narrower spends its time packing the weight; a much wider one unfolds more than
/// the core's cache holds before the product reads it back. On the reference model (batch 64,
/// 64x64, 2 threads, AVX-512), 128 trains at about 465 images/s, 256 at 440, 512 at 413 and
/// 2048 at 382.
const GROUP_COLUMNS: usize = 128;

/// Elements per parallel task of the element-wise kernels.
const ELEMENTWISE_CHUNK: usize = 1 << 15;

/// The shape of one convolution: `(n, c_in, h, w)` upsampled by `up`, convolved with a
/// `(c_out, c_in, k, k)` weight at `stride` and zero `pad` to `(n, c_out, ho, wo)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Images in the batch.
    pub n: usize,
    /// Input channels.
    pub c_in: usize,
    /// Input rows, before upsampling.
    pub h: usize,
    /// Input columns, before upsampling.
    pub w: usize,
    /// Output channels.
    pub c_out: usize,
    /// Kernel side.
    pub k: usize,
    /// Step between receptive fields.
    pub stride: usize,
    /// Zero padding on every side.
    pub pad: usize,
    /// Nearest-neighbour upsampling factor applied to the input first (1 for none).
    pub up: usize,
}

impl Geometry {
    /// Output rows.
    pub fn ho(&self) -> usize {
        (self.h * self.up + 2 * self.pad - self.k) / self.stride + 1
    }

    /// Output columns.
    pub fn wo(&self) -> usize {
        (self.w * self.up + 2 * self.pad - self.k) / self.stride + 1
    }

    fn rows(&self) -> usize {
        self.c_in * self.k * self.k
    }

    fn pixels_out(&self) -> usize {
        self.ho() * self.wo()
    }

    fn image_in(&self) -> usize {
        self.c_in * self.h * self.w
    }

    fn image_out(&self) -> usize {
        self.c_out * self.pixels_out()
    }

    /// Images per matrix product: enough columns to be efficient, enough groups to share out.
    fn group(&self) -> usize {
        let threads = rayon::current_num_threads().max(1);
        let wanted = GROUP_COLUMNS.div_ceil(self.pixels_out().max(1));
        wanted.min(self.n.div_ceil(threads)).max(1)
    }

    fn check(&self) -> Result<()> {
        let fits =
            self.h * self.up + 2 * self.pad >= self.k && self.w * self.up + 2 * self.pad >= self.k;
        if !fits || self.stride == 0 || self.up == 0 || self.k == 0 {
            candle_core::bail!("convolution does not fit: {self:?}");
        }
        Ok(())
    }
}

/// A read-only matrix: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl<'a> View<'a> {
    fn new(data: &'a [f32], rs: usize, cs: usize) -> Self {
        Self { data, rs, cs }
    }

    fn fits(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len()
    }
}

/// `dst (m x n, row stride dst_rs) = [dst +] lhs (m x k) rhs (k x n)`, on the calling thread.
fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: View,
    rhs: View,
) {
    assert!(
        lhs.fits(m, k) && rhs.fits(k, n),
        "matrix operand out of bounds"
    );
    assert!(
        m == 0 || n == 0 || (m - 1) * dst_rs + n <= dst.len(),
        "matrix result out of bounds"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            (0..m).for_each(|i| dst[i * dst_rs..][..n].fill(0.0));
        }
        return;
    }
    // SAFETY: the asserts above keep every element gemm touches inside the three slices, and
    // `dst` is borrowed mutably, so it cannot overlap the operands.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

thread_local! {
    static BUFFERS: RefCell<(Vec<f32>, Vec<f32>)> =
        const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Runs `f` with this thread's two scratch buffers, grown to at least the given lengths.
///
/// Their contents are stale: `f` must write before it reads. Keeping them alive between calls
/// saves the page faults and zero-filling of a fresh allocation per product.
fn with_buffers<R>(cols: usize, tmp: usize, f: impl FnOnce(&mut [f32], &mut [f32]) -> R) -> R {
    BUFFERS.with(|cell| {
        let mut bufs = cell.borrow_mut();
        let (a, b) = &mut *bufs;
        if a.len() < cols {
            a.resize(cols, 0.0);
        }
        if b.len() < tmp {
            b.resize(tmp, 0.0);
        }
        f(&mut a[..cols], &mut b[..tmp])
    })
}

/// Fills not yet initialised values with zeros and hands them back as ordinary values.
fn zero_fill(values: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    values.fill(MaybeUninit::new(0.0));
    // SAFETY: every element was initialised just above, and `MaybeUninit<f32>` has the layout
    // of `f32`.
    unsafe { &mut *(values as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// A vector of `len` values built in parallel: each chunk of `chunk` values (the last may be
/// shorter) is zero-filled and handed to `f` with its index by the task that fills it. The
/// zeroing then runs on both cores, on memory that is about to be written anyway, instead of
/// all on the calling thread before the work starts.
pub(crate) fn par_zeroed(
    len: usize,
    chunk: usize,
    f: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let mut v = Vec::<f32>::with_capacity(len);
    v.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, c)| {
            let c = zero_fill(c);
            f(i, c);
        });
    // SAFETY: the chunks cover `0..len` and each was initialised; a panic in `f` propagates
    // out of `for_each` before this line.
    unsafe { v.set_len(len) };
    v
}

/// Output columns `lo..hi` whose tap `kx` lands inside a row of `wv` values.
fn valid_span(kx: usize, pad: usize, stride: usize, wv: usize, wo: usize) -> (usize, usize) {
    let lo = if kx >= pad {
        0
    } else {
        (pad - kx).div_ceil(stride)
    };
    let hi = if wv + pad > kx {
        ((wv - 1 + pad - kx) / stride + 1).min(wo)
    } else {
        0
    };
    (lo.min(hi), hi)
}

/// Walks every (row of the unfolded matrix, output row) pair that reads the input, with the
/// span of output columns inside the image and the input row and first virtual column read.
fn for_each_tap(
    g: &Geometry,
    mut f: impl FnMut(usize, usize, Option<(usize, usize, usize, usize)>),
) {
    let (ho, wo) = (g.ho(), g.wo());
    let (hv, wv) = (g.h * g.up, g.w * g.up);
    for ci in 0..g.c_in {
        for ky in 0..g.k {
            for kx in 0..g.k {
                let row = (ci * g.k + ky) * g.k + kx;
                let (lo, hi) = valid_span(kx, g.pad, g.stride, wv, wo);
                for oy in 0..ho {
                    let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                    if iy < 0 || iy >= hv as isize || lo == hi {
                        f(row, oy, None);
                        continue;
                    }
                    let src_row = ci * g.h + iy as usize / g.up;
                    f(row, oy, Some((lo, hi, src_row, lo * g.stride + kx - g.pad)));
                }
            }
        }
    }
}

/// Unfolds one image into columns `off..off + ho wo` of `cols`, whose rows are `ld` apart.
fn im2col(g: &Geometry, x: &[f32], cols: &mut [f32], ld: usize, off: usize) {
    if g.stride == 2 && g.up == 1 {
        return im2col_stride2(g, x, cols, ld, off);
    }
    let wo = g.wo();
    for_each_tap(g, |row, oy, span| {
        let d = &mut cols[row * ld + off + oy * wo..][..wo];
        let Some((lo, hi, src_row, start)) = span else {
            d.fill(0.0);
            return;
        };
        let src = &x[src_row * g.w..][..g.w];
        d[..lo].fill(0.0);
        d[hi..].fill(0.0);
        let d = &mut d[lo..hi];
        match (g.stride, g.up) {
            (1, 1) => d.copy_from_slice(&src[start..start + d.len()]),
            (2, 1) => gather::<2, 1>(d, src, start),
            (1, 2) => gather::<1, 2>(d, src, start),
            _ => d
                .iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v = src[(start + i * g.stride) / g.up]),
        }
    });
}

/// `d[i] = src[(start + i S) / U]`, with the common strides and factors known at compile time.
fn gather<const S: usize, const U: usize>(d: &mut [f32], src: &[f32], start: usize) {
    d.iter_mut()
        .enumerate()
        .for_each(|(i, v)| *v = src[(start + i * S) / U]);
}

/// `dst[(start + i S) / U] += d[i]`, the reverse of [`gather`].
fn scatter<const S: usize, const U: usize>(d: &[f32], dst: &mut [f32], start: usize) {
    d.iter()
        .enumerate()
        .for_each(|(i, v)| dst[(start + i * S) / U] += v);
}

/// Folds columns `off..off + ho wo` of `cols` back onto one image, adding into `x`.
fn col2im(g: &Geometry, cols: &[f32], ld: usize, off: usize, x: &mut [f32]) {
    if g.stride == 2 && g.up == 1 {
        return col2im_stride2(g, cols, ld, off, x);
    }
    let wo = g.wo();
    for_each_tap(g, |row, oy, span| {
        let Some((lo, hi, src_row, start)) = span else {
            return;
        };
        let d = &cols[row * ld + off + oy * wo..][lo..hi];
        let dst = &mut x[src_row * g.w..][..g.w];
        match (g.stride, g.up) {
            (1, 1) => dst[start..start + d.len()]
                .iter_mut()
                .zip(d)
                .for_each(|(a, b)| *a += b),
            (2, 1) => scatter::<2, 1>(d, dst, start),
            (1, 2) => scatter::<1, 2>(d, dst, start),
            _ => d
                .iter()
                .enumerate()
                .for_each(|(i, v)| dst[(start + i * g.stride) / g.up] += v),
        }
    });
}

thread_local! {
    static PHASES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Length of one phase row of a stride-2 convolution: the values a row of taps reads at even
/// (or odd) padded positions, `wo - 1 + ceil(k / 2)` of them.
fn phase_len(g: &Geometry) -> usize {
    g.wo() - 1 + g.k.div_ceil(2)
}

/// Runs `f` with this thread's buffers for one input channel of a stride-2 convolution: the
/// phases, `h` rows of two phase rows each, and one padded row of `2 phase_len`; both stale.
fn with_phases<R>(g: &Geometry, f: impl FnOnce(&mut [f32], &mut [f32], usize) -> R) -> R {
    let len = phase_len(g);
    PHASES.with(|cell| {
        let mut buf = cell.borrow_mut();
        let need = 2 * g.h * len + 2 * len;
        if buf.len() < need {
            buf.resize(need, 0.0);
        }
        let (phases, padded) = buf[..need].split_at_mut(2 * g.h * len);
        f(phases, padded, len)
    })
}

/// The input values of one row that land in `padded`, a row with `pad` zeros in front.
fn padded_span(pad: usize, w: usize, padded: usize) -> usize {
    w.min(padded.saturating_sub(pad))
}

/// `d = s` for rows of `d.len()` values, with the common short lengths known at compile time
/// (a call to `memcpy` costs more than copying four values).
#[inline(always)]
fn copy_row(d: &mut [f32], s: &[f32]) {
    fn fixed<const N: usize>(d: &mut [f32], s: &[f32]) {
        let d: &mut [f32; N] = d.try_into().expect("row length");
        *d = s[..N].try_into().expect("row length");
    }
    match d.len() {
        4 => fixed::<4>(d, s),
        8 => fixed::<8>(d, s),
        16 => fixed::<16>(d, s),
        32 => fixed::<32>(d, s),
        n => d.copy_from_slice(&s[..n]),
    }
}

/// `d += s` elementwise, with the common short lengths known at compile time.
#[inline(always)]
fn add_row(d: &mut [f32], s: &[f32]) {
    fn fixed<const N: usize>(d: &mut [f32], s: &[f32]) {
        let d: &mut [f32; N] = d.try_into().expect("row length");
        let s: &[f32; N] = s[..N].try_into().expect("row length");
        d.iter_mut().zip(s).for_each(|(a, b)| *a += b);
    }
    match d.len() {
        4 => fixed::<4>(d, s),
        8 => fixed::<8>(d, s),
        16 => fixed::<16>(d, s),
        32 => fixed::<32>(d, s),
        _ => d.iter_mut().zip(s).for_each(|(a, b)| *a += b),
    }
}

/// [`im2col`] for stride 2 without upsampling.
///
/// Tap `kx` of output column `ox` reads padded input position `2 ox + kx`: the even positions
/// of a row for even taps, the odd ones for odd taps, shifted by `kx / 2`. Splitting each input
/// row once into its two phases (zero-padded) turns every row of the unfolded matrix into plain
/// copies of `wo` contiguous values.
fn im2col_stride2(g: &Geometry, x: &[f32], cols: &mut [f32], ld: usize, off: usize) {
    let (ho, wo, p) = (g.ho(), g.wo(), g.pixels_out());
    with_phases(g, |phases, padded, len| {
        let n = padded_span(g.pad, g.w, padded.len());
        for ci in 0..g.c_in {
            let plane = &x[ci * g.h * g.w..][..g.h * g.w];
            for (row, two) in plane.chunks(g.w).zip(phases.chunks_mut(2 * len)) {
                padded.fill(0.0);
                padded[g.pad..g.pad + n].copy_from_slice(&row[..n]);
                let (even, odd) = two.split_at_mut(len);
                for ((e, o), pair) in even.iter_mut().zip(odd).zip(padded.chunks_exact(2)) {
                    *e = pair[0];
                    *o = pair[1];
                }
            }
            for ky in 0..g.k {
                for kx in 0..g.k {
                    let r = (ci * g.k + ky) * g.k + kx;
                    let dst = &mut cols[r * ld + off..][..p];
                    for (oy, d) in dst.chunks_exact_mut(wo).enumerate().take(ho) {
                        match (2 * oy + ky).checked_sub(g.pad).filter(|&iy| iy < g.h) {
                            Some(iy) => copy_row(d, &phases[(2 * iy + kx % 2) * len + kx / 2..]),
                            None => d.fill(0.0),
                        }
                    }
                }
            }
        }
    });
}

/// [`col2im`] for stride 2 without upsampling: the reverse of [`im2col_stride2`]. Each row of
/// the unfolded matrix adds onto a phase row as contiguous values, then the two phases of each
/// input row interleave back onto the image.
fn col2im_stride2(g: &Geometry, cols: &[f32], ld: usize, off: usize, x: &mut [f32]) {
    let (ho, wo, p) = (g.ho(), g.wo(), g.pixels_out());
    with_phases(g, |phases, padded, len| {
        let n = padded_span(g.pad, g.w, padded.len());
        for ci in 0..g.c_in {
            phases.fill(0.0);
            for ky in 0..g.k {
                for kx in 0..g.k {
                    let r = (ci * g.k + ky) * g.k + kx;
                    let src = &cols[r * ld + off..][..p];
                    for (oy, d) in src.chunks_exact(wo).enumerate().take(ho) {
                        if let Some(iy) = (2 * oy + ky).checked_sub(g.pad).filter(|&iy| iy < g.h) {
                            add_row(&mut phases[(2 * iy + kx % 2) * len + kx / 2..][..wo], d);
                        }
                    }
                }
            }
            let plane = &mut x[ci * g.h * g.w..][..g.h * g.w];
            for (row, two) in plane.chunks_mut(g.w).zip(phases.chunks(2 * len)) {
                let (even, odd) = two.split_at(len);
                for ((pair, e), o) in padded.chunks_exact_mut(2).zip(even).zip(odd) {
                    pair[0] = *e;
                    pair[1] = *o;
                }
                add_row(&mut row[..n], &padded[g.pad..]);
            }
        }
    });
}

/// Copies the `(imgs, c, p)` block `src` to the `(c, imgs p)` matrix `dst`.
fn channels_first(src: &[f32], dst: &mut [f32], imgs: usize, c: usize, p: usize) {
    for i in 0..imgs {
        for ch in 0..c {
            dst[ch * imgs * p + i * p..][..p].copy_from_slice(&src[(i * c + ch) * p..][..p]);
        }
    }
}

/// Copies the `(c, imgs p)` matrix `src` to the `(imgs, c, p)` block `dst`.
fn images_first(src: &[f32], dst: &mut [f32], imgs: usize, c: usize, p: usize) {
    for i in 0..imgs {
        for ch in 0..c {
            dst[(i * c + ch) * p..][..p].copy_from_slice(&src[ch * imgs * p + i * p..][..p]);
        }
    }
}

/// Adds a per-channel bias to `(imgs, c, p)` images, then applies a leaky ReLU of `slope`.
fn finish(out: &mut [f32], c: usize, p: usize, bias: Option<&[f32]>, slope: Option<f32>) {
    for (j, plane) in out.chunks_mut(p).enumerate() {
        let b = bias.map_or(0.0, |b| b[j % c]);
        match slope {
            Some(s) => plane.iter_mut().for_each(|v| {
                let x = *v + b;
                *v = if x > 0.0 { x } else { x * s };
            }),
            None if b != 0.0 => plane.iter_mut().for_each(|v| *v += b),
            None => {}
        }
    }
}

/// Unfolds images `first..first + imgs` of `x` side by side into `cols`, `imgs ho wo` wide.
fn unfold(g: &Geometry, x: &[f32], first: usize, imgs: usize, cols: &mut [f32]) {
    let (p, ld) = (g.pixels_out(), imgs * g.pixels_out());
    for i in 0..imgs {
        im2col(
            g,
            &x[(first + i) * g.image_in()..][..g.image_in()],
            cols,
            ld,
            i * p,
        );
    }
}

/// `out = w cols` for `imgs` unfolded images, written image by image as `(imgs, c_out, ho, wo)`;
/// `tmp` (`c_out imgs ho wo` values, unused for one image) holds the product on the way.
fn multiply(g: &Geometry, w: &[f32], cols: &[f32], imgs: usize, out: &mut [f32], tmp: &mut [f32]) {
    let (p, rows, ld) = (g.pixels_out(), g.rows(), imgs * g.pixels_out());
    let (lhs, rhs) = (View::new(w, rows, 1), View::new(cols, ld, 1));
    if imgs == 1 {
        matmul(g.c_out, p, rows, out, p, false, lhs, rhs);
    } else {
        matmul(g.c_out, ld, rows, tmp, ld, false, lhs, rhs);
        images_first(tmp, out, imgs, g.c_out, p);
    }
}

/// A convolution `(n, c_in, h, w) -> (n, c_out, ho, wo)`, plus `bias`, then a leaky ReLU.
pub fn forward(
    g: &Geometry,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    slope: Option<f32>,
) -> Vec<f32> {
    let (p, rows, group) = (g.pixels_out(), g.rows(), g.group());
    par_zeroed(g.n * g.image_out(), group * g.image_out(), |gi, out| {
        let (imgs, first) = (out.len() / g.image_out(), gi * group);
        let ld = imgs * p;
        let tmp_len = if imgs > 1 { g.c_out * ld } else { 0 };
        with_buffers(rows * ld, tmp_len, |cols, tmp| {
            unfold(g, x, first, imgs, cols);
            multiply(g, w, cols, imgs, out, tmp);
        });
        finish(out, g.c_out, p, bias, slope);
    })
}

/// The output of a leaky ReLU that fed a layer: a gradient flowing back into it is multiplied by
/// the slope wherever `res` is not positive, which gives the gradient before the activation.
#[derive(Debug, Clone, Copy)]
pub struct LeakMask<'a> {
    /// The activation's output, shaped as the gradient.
    pub res: &'a [f32],
    /// The activation's slope.
    pub slope: f32,
}

impl LeakMask<'_> {
    /// Applies the mask to `grad`, the block of the gradient starting at value `at`.
    fn apply(&self, grad: &mut [f32], at: usize) {
        let (slope, len) = (self.slope, grad.len());
        for (g, r) in grad.iter_mut().zip(&self.res[at..][..len]) {
            *g *= if *r > 0.0 { 1.0 } else { slope };
        }
    }
}

/// The input gradient `(n, c_in, h, w)` of a convolution from its output gradient `dy`, plus a
/// per-input-channel `bias` and a leaky ReLU of `slope` (which make it a transposed
/// convolution's forward pass).
///
/// With `mask`, the input was a leaky ReLU's output and the result is the gradient before it.
pub fn backward_data(
    g: &Geometry,
    dy: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    slope: Option<f32>,
    mask: Option<LeakMask>,
) -> Vec<f32> {
    let (p, rows, group) = (g.pixels_out(), g.rows(), g.group());
    par_zeroed(g.n * g.image_in(), group * g.image_in(), |gi, dx| {
        let (imgs, first) = (dx.len() / g.image_in(), gi * group);
        let ld = imgs * p;
        let dy = &dy[first * g.image_out()..][..imgs * g.image_out()];
        let tmp_len = if imgs > 1 { g.c_out * ld } else { 0 };
        with_buffers(rows * ld, tmp_len, |cols, tmp| {
            let rhs = if imgs == 1 {
                View::new(dy, p, 1)
            } else {
                channels_first(dy, tmp, imgs, g.c_out, p);
                View::new(tmp, ld, 1)
            };
            matmul(
                rows,
                ld,
                g.c_out,
                cols,
                ld,
                false,
                View::new(w, 1, rows),
                rhs,
            );
            for i in 0..imgs {
                col2im(
                    g,
                    cols,
                    ld,
                    i * p,
                    &mut dx[i * g.image_in()..][..g.image_in()],
                );
            }
        });
        if let Some(mask) = mask {
            mask.apply(dx, first * g.image_in());
        }
        finish(dx, g.c_in, g.h * g.w, bias, slope);
    })
}

/// A convolution `y = w x` (no bias) and the weight gradient `dw = dy x^T` summed over the batch,
/// from one unfolding of `x`: `x (n, c_in, h, w)`, `w (c_out, c_in, k, k)`, `dy (n, c_out, ho,
/// wo)`. Returns `y` and `dw (c_out, c_in k k)`.
///
/// This is the backward pass of a transposed convolution (see [`ConvTranspose2d`]): its output
/// gradient is `x` here, its input gradient is `y`, and its weight gradient is `dw`. Done
/// separately, both would unfold the same large `x`. `y` has room for `spare` more values; with
/// `mask`, it is taken through the leaky ReLU whose output `mask` holds.
pub fn forward_and_weight(
    g: &Geometry,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    spare: usize,
    mask: Option<LeakMask>,
) -> (Vec<f32>, Vec<f32>) {
    let (p, rows, group) = (g.pixels_out(), g.rows(), g.group());
    let len = g.n * g.image_out();
    let mut y = Vec::<f32>::with_capacity(len + spare);
    // A fixed share of the groups per task, summed in task order: the result does not depend
    // on how rayon schedules the tasks.
    let groups = g.n.div_ceil(group);
    let tasks = rayon::current_num_threads().clamp(1, groups.max(1));
    let mut shares = Vec::with_capacity(tasks);
    let mut rest = &mut y.spare_capacity_mut()[..len];
    for t in 0..tasks {
        let (g0, g1) = (t * groups / tasks, (t + 1) * groups / tasks);
        let imgs = (g1 * group).min(g.n) - (g0 * group).min(g.n);
        let (share, tail) = rest.split_at_mut(imgs * g.image_out());
        shares.push((g0..g1, share));
        rest = tail;
    }
    let partials: Vec<Vec<f32>> = shares
        .into_par_iter()
        .map(|(range, share)| {
            let share = zero_fill(share);
            let mut dw = vec![0f32; g.c_out * rows];
            let g0 = range.start;
            for gi in range {
                let first = gi * group;
                let imgs = group.min(g.n - first);
                let out =
                    &mut share[(first - g0 * group) * g.image_out()..][..imgs * g.image_out()];
                let ld = imgs * p;
                let dy = &dy[first * g.image_out()..][..imgs * g.image_out()];
                let tmp_len = if imgs > 1 { g.c_out * ld } else { 0 };
                with_buffers(rows * ld, tmp_len, |cols, tmp| {
                    unfold(g, x, first, imgs, cols);
                    multiply(g, w, cols, imgs, out, tmp);
                    let dyv = if imgs == 1 {
                        View::new(dy, p, 1)
                    } else {
                        channels_first(dy, tmp, imgs, g.c_out, p);
                        View::new(tmp, ld, 1)
                    };
                    let colt = View::new(cols, 1, ld);
                    matmul(g.c_out, rows, ld, &mut dw, rows, true, dyv, colt);
                });
                if let Some(mask) = mask {
                    mask.apply(out, first * g.image_out());
                }
            }
            dw
        })
        .collect();
    let dw = partials
        .into_iter()
        .reduce(|mut a, b| {
            a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
            a
        })
        .unwrap_or_else(|| vec![0f32; g.c_out * rows]);
    // SAFETY: the shares cover `0..len` and each was initialised; a panic in a task
    // propagates out of `collect` before this line.
    unsafe { y.set_len(len) };
    (y, dw)
}

/// The weight gradient `(c_out, c_in k k)` and bias gradient `(c_out)` of a convolution, summed
/// over the batch, from its input `x` and output gradient `dy`.
pub fn backward_weight(g: &Geometry, x: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (p, rows, group) = (g.pixels_out(), g.rows(), g.group());
    let groups = g.n.div_ceil(group);
    let tasks = rayon::current_num_threads().clamp(1, groups.max(1));
    // One accumulator per task rather than per group: each holds a whole weight gradient.
    let partials: Vec<Vec<f32>> = (0..tasks)
        .into_par_iter()
        .map(|t| {
            let mut acc = vec![0f32; g.c_out * rows + g.c_out];
            let (dw, db) = acc.split_at_mut(g.c_out * rows);
            for gi in t * groups / tasks..(t + 1) * groups / tasks {
                let first = gi * group;
                let imgs = group.min(g.n - first);
                let ld = imgs * p;
                let dy = &dy[first * g.image_out()..][..imgs * g.image_out()];
                let tmp_len = if imgs > 1 { g.c_out * ld } else { 0 };
                with_buffers(rows * ld, tmp_len, |cols, tmp| {
                    unfold(g, x, first, imgs, cols);
                    let lhs = if imgs == 1 {
                        View::new(dy, p, 1)
                    } else {
                        channels_first(dy, tmp, imgs, g.c_out, p);
                        View::new(tmp, ld, 1)
                    };
                    matmul(
                        g.c_out,
                        rows,
                        ld,
                        dw,
                        rows,
                        true,
                        lhs,
                        View::new(cols, 1, ld),
                    );
                });
                for (j, plane) in dy.chunks(p).enumerate() {
                    db[j % g.c_out] += sum(plane);
                }
            }
            acc
        })
        .collect();
    let total = partials.into_iter().reduce(|mut a, b| {
        a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
        a
    });
    let mut total = total.unwrap_or_else(|| vec![0f32; g.c_out * rows + g.c_out]);
    let db = total.split_off(g.c_out * rows);
    (total, db)
}

/// The sum of `xs`, in eight interleaved partial sums that the compiler can keep in one vector
/// register (a single running sum waits on every addition).
fn sum(xs: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let mut chunks = xs.chunks_exact(8);
    for c in &mut chunks {
        lanes.iter_mut().zip(c).for_each(|(l, v)| *l += v);
    }
    let tail: f32 = chunks.remainder().iter().sum();
    lanes.iter().sum::<f32>() + tail
}

/// Per-channel sums of `(n, c, p)` images, in parallel over channels.
fn channel_sums(xs: &[f32], c: usize, p: usize) -> Vec<f32> {
    (0..c)
        .into_par_iter()
        .map(|ch| xs.chunks(p).skip(ch).step_by(c).map(sum).sum())
        .collect()
}

/// The contiguous f32 data of a CPU tensor.
pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = s else {
        candle_core::bail!("convolution kernels take f32 only")
    };
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("convolution kernels take contiguous tensors only"),
    }
}

/// The contiguous f32 data of a CPU tensor, to update in place.
pub(crate) fn f32_slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout) -> Result<&'a mut [f32]> {
    let CpuStorage::F32(data) = s else {
        candle_core::bail!("in-place kernels take f32 only")
    };
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&mut data[start..end]),
        None => candle_core::bail!("in-place kernels take contiguous tensors only"),
    }
}

fn dims4(l: &Layout) -> Result<(usize, usize, usize, usize)> {
    l.shape().dims4()
}

/// The settings a convolution op carries; the rest of its geometry comes from its operands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConvParams {
    /// Step between receptive fields.
    pub stride: usize,
    /// Zero padding on every side.
    pub pad: usize,
    /// Nearest-neighbour upsampling of the input (1 for none).
    pub up: usize,
}

impl ConvParams {
    /// The geometry of convolving `x (n, c_in, h, w)` with `w (c_out, c_in, k, k)`.
    fn geometry(
        &self,
        x: (usize, usize, usize, usize),
        w: (usize, usize, usize, usize),
    ) -> Result<Geometry> {
        if x.1 != w.1 || w.2 != w.3 {
            candle_core::bail!(
                "convolution of {x:?} with weight {w:?}: channels or kernel mismatch"
            );
        }
        let g = Geometry {
            n: x.0,
            c_in: x.1,
            h: x.2,
            w: x.3,
            c_out: w.0,
            k: w.2,
            stride: self.stride,
            pad: self.pad,
            up: self.up,
        };
        g.check()?;
        Ok(g)
    }

    /// The convolution whose input gradient is a transposed convolution of `x (n, c_in, h, w)`
    /// with `w (c_in, c_out, k, k)`: it runs from the `(n, c_out, ho, wo)` output back to `x`.
    fn transposed(
        &self,
        x: (usize, usize, usize, usize),
        w: (usize, usize, usize, usize),
    ) -> Result<Geometry> {
        let side = |s: usize| (s - 1) * self.stride + w.2;
        if x.1 != w.0
            || w.2 != w.3
            || self.up != 1
            || x.2 == 0
            || x.3 == 0
            || side(x.2) < 2 * self.pad + 1
        {
            candle_core::bail!("transposed convolution of {x:?} with weight {w:?} does not fit");
        }
        let (h, wd) = (side(x.2) - 2 * self.pad, side(x.3) - 2 * self.pad);
        let g = self.geometry((x.0, w.1, h, wd), (w.0, w.1, w.2, w.3))?;
        if (g.ho(), g.wo()) != (x.2, x.3) {
            candle_core::bail!("transposed convolution of {x:?} with weight {w:?} does not invert");
        }
        Ok(g)
    }
}

/// `leaky(conv(x, w) + b)`: operands `x (n, c_in, h, w)`, `w (c_out, c_in, k, k)`, `b (c_out)`.
pub struct Conv2d {
    /// Stride, padding, upsampling.
    pub params: ConvParams,
    /// Slope of the leaky ReLU applied to the output, if any.
    pub slope: Option<f32>,
}

impl CustomOp3 for Conv2d {
    fn name(&self) -> &'static str {
        "facestudio-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.params.geometry(dims4(l1)?, dims4(l2)?)?;
        let (x, w, b) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        if b.len() != g.c_out {
            candle_core::bail!("bias of {} for {} output channels", b.len(), g.c_out);
        }
        let out = forward(&g, x, w, Some(b), self.slope);
        Ok((
            CpuStorage::F32(out),
            Shape::from((g.n, g.c_out, g.ho(), g.wo())),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dpre = pre_activation_grad(grad, res, self.slope)?;
        // Images straight from the data need no gradient; skipping it saves a whole product.
        let need = Needs {
            input: x.track_op(),
            weight: w.track_op() || b.track_op(),
            input_leak: None,
        };
        self.grads(x, w, &dpre, need)
    }
}

/// Which gradients a backward pass computes.
#[derive(Debug, Clone, Copy)]
pub struct Needs {
    /// The gradient of the input.
    pub input: bool,
    /// The gradients of the weight and the bias.
    pub weight: bool,
    /// The input is the output of a leaky ReLU of this slope: its gradient is taken through
    /// that activation too, while it is still in cache.
    pub input_leak: Option<f32>,
}

/// The gradient before a leaky ReLU of `slope` (if any) from the one after it, `grad`, and the
/// activation's output `res`.
fn pre_activation_grad(grad: &Tensor, res: &Tensor, slope: Option<f32>) -> Result<Tensor> {
    match slope {
        Some(slope) => grad.contiguous()?.apply_op2_no_bwd(res, &LeakyGrad(slope)),
        None => grad.contiguous(),
    }
}

impl Conv2d {
    /// `(dx, dw, db)` of `leaky(conv(x, w) + b)` from `dpre`, the gradient of its output before
    /// the leaky ReLU, computing what `need` asks for.
    pub fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        dpre: &Tensor,
        need: Needs,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dpre = dpre.contiguous()?;
        let dx = match need.input {
            true => {
                let op = InputGrad {
                    params: self.params,
                    leak: need.input_leak,
                };
                Some(dpre.apply_op3_no_bwd(w, &x.contiguous()?, &op)?)
            }
            false => None,
        };
        let dw = match need.weight {
            true => {
                let pass = Pass::Weight {
                    params: self.params,
                    k: w.dim(2)?,
                    transposed: false,
                };
                Some(x.contiguous()?.apply_op2_no_bwd(&dpre, &pass)?)
            }
            false => None,
        };
        let (dw, db) = split_weight_grad(dw, w.dims4()?)?;
        Ok((dx, dw, db))
    }
}

/// `leaky(conv_transpose(x, w) + b)`: operands `x (n, c_in, h, w)`, `w (c_in, c_out, k, k)`,
/// `b (c_out)`.
pub struct ConvTranspose2d {
    /// Stride and padding (`up` must be 1).
    pub params: ConvParams,
    /// Slope of the leaky ReLU applied to the output, if any.
    pub slope: Option<f32>,
}

impl CustomOp3 for ConvTranspose2d {
    fn name(&self) -> &'static str {
        "facestudio-conv-transpose2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.params.transposed(dims4(l1)?, dims4(l2)?)?;
        let (x, w, b) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        if b.len() != g.c_in {
            candle_core::bail!("bias of {} for {} output channels", b.len(), g.c_in);
        }
        let out = backward_data(&g, x, w, Some(b), self.slope, None);
        Ok((CpuStorage::F32(out), Shape::from((g.n, g.c_in, g.h, g.w))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dpre = pre_activation_grad(grad, res, self.slope)?;
        let need = Needs {
            input: x.track_op(),
            weight: w.track_op() || b.track_op(),
            input_leak: None,
        };
        self.grads(x, w, &dpre, need)
    }
}

impl ConvTranspose2d {
    /// `(dx, dw, db)` of `leaky(conv_transpose(x, w) + b)` from `dpre`, the gradient of its
    /// output before the leaky ReLU, computing what `need` asks for.
    pub fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        dpre: &Tensor,
        need: Needs,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = dpre.contiguous()?;
        let x = &x.contiguous()?;
        let (need_dx, need_dw) = (need.input, need.weight);
        if need_dx && need_dw {
            // Both from one unfolding of the output gradient: `[dx | dw | db]` in one buffer.
            let k = w.dim(2)?;
            let both = grad.apply_op3_no_bwd(
                x,
                w,
                &TransposeBackward {
                    params: self.params,
                    k,
                    input_leak: need.input_leak,
                },
            )?;
            let nx = x.elem_count();
            let dx = both.narrow(0, 0, nx)?.reshape(x.shape())?;
            let rest = both.narrow(0, nx, both.dim(0)? - nx)?;
            let (dw, db) = split_weight_grad(Some(rest), w.dims4()?)?;
            return Ok((Some(dx), dw, db));
        }
        let dx = match need_dx {
            true => {
                let dx = grad.apply_op2_no_bwd(
                    w,
                    &Pass::Forward {
                        params: self.params,
                    },
                )?;
                Some(match need.input_leak {
                    Some(slope) => dx.apply_op2_no_bwd(x, &LeakyGrad(slope))?,
                    None => dx,
                })
            }
            false => None,
        };
        // The weight gradient is the equivalent convolution's, with input and output swapped.
        let dw = match need_dw {
            true => {
                let pass = Pass::Weight {
                    params: self.params,
                    k: w.dim(2)?,
                    transposed: true,
                };
                Some(grad.apply_op2_no_bwd(x, &pass)?)
            }
            false => None,
        };
        let (dw, db) = split_weight_grad(dw, w.dims4()?)?;
        Ok((dx, dw, db))
    }
}

/// `(dz, x, w) -> [dx | dw | db]` flattened: every gradient of a transposed convolution
/// `z = conv_transpose(x, w) + b` from its output gradient `dz`, with one unfolding of `dz`.
struct TransposeBackward {
    params: ConvParams,
    k: usize,
    /// `x` is a leaky ReLU's output of this slope: `dx` is taken through it.
    input_leak: Option<f32>,
}

impl CustomOp3 for TransposeBackward {
    fn name(&self) -> &'static str {
        "facestudio-conv-transpose2d-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (dz, x, w) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        let g = self.params.transposed(dims4(l2)?, dims4(l3)?)?;
        if dims4(l1)? != (g.n, g.c_in, g.h, g.w) || g.k != self.k {
            candle_core::bail!("output gradient {:?} does not match {g:?}", l1.dims());
        }
        let spare = g.c_out * g.rows() + g.c_in;
        let mask = self.input_leak.map(|slope| LeakMask { res: x, slope });
        let (mut both, dw) = forward_and_weight(&g, dz, w, x, spare, mask);
        both.extend_from_slice(&dw);
        both.extend_from_slice(&channel_sums(dz, g.c_in, g.h * g.w));
        let len = both.len();
        Ok((CpuStorage::F32(both), Shape::from(len)))
    }
}

/// Splits the flat result of [`Pass::Weight`] into the weight and bias gradients.
fn split_weight_grad(
    both: Option<Tensor>,
    w: (usize, usize, usize, usize),
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let Some(both) = both else {
        return Ok((None, None));
    };
    let weights = w.0 * w.1 * w.2 * w.3;
    let dw = both.narrow(0, 0, weights)?.reshape(w)?;
    let db = both.narrow(0, weights, both.dim(0)? - weights)?;
    Ok((Some(dw), Some(db)))
}

/// `(dy, w, x) -> dx`: the input gradient of a convolution of `x`. With `leak`, `x` is a leaky
/// ReLU's output of that slope and `dx` is taken through the activation as it is made.
struct InputGrad {
    params: ConvParams,
    leak: Option<f32>,
}

impl CustomOp3 for InputGrad {
    fn name(&self) -> &'static str {
        "facestudio-conv2d-backward-data"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (dy, w, x) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        let g = self.params.geometry(dims4(l3)?, dims4(l2)?)?;
        if dims4(l1)? != (g.n, g.c_out, g.ho(), g.wo()) {
            candle_core::bail!("output gradient {:?} does not match {g:?}", l1.dims());
        }
        let mask = self.leak.map(|slope| LeakMask { res: x, slope });
        Ok((
            CpuStorage::F32(backward_data(&g, dy, w, None, None, mask)),
            l3.shape().clone(),
        ))
    }
}

/// The passes used by the backward functions, none of them differentiable again.
enum Pass {
    /// `(x, w) -> y`, a convolution without bias.
    Forward { params: ConvParams },
    /// `(x, dy) -> [dw, db]` flattened, for a `k x k` kernel; with `transposed`, `db` is for a
    /// transposed convolution from `dy` to `x`, so it sums `x` rather than `dy`.
    Weight {
        params: ConvParams,
        k: usize,
        transposed: bool,
    },
}

impl CustomOp2 for Pass {
    fn name(&self) -> &'static str {
        match self {
            Self::Forward { .. } => "facestudio-conv2d-forward",
            Self::Weight { .. } => "facestudio-conv2d-backward-weight",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (a, b) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        match *self {
            Self::Forward { params } => {
                let g = params.geometry(dims4(l1)?, dims4(l2)?)?;
                Ok((
                    CpuStorage::F32(forward(&g, a, b, None, None)),
                    Shape::from((g.n, g.c_out, g.ho(), g.wo())),
                ))
            }
            Self::Weight {
                params,
                k,
                transposed,
            } => {
                let x = dims4(l1)?;
                let dy = dims4(l2)?;
                let g = params.geometry(x, (dy.1, x.1, k, k))?;
                if (g.n, g.ho(), g.wo()) != (dy.0, dy.2, dy.3) {
                    candle_core::bail!("output gradient {dy:?} does not match {g:?}");
                }
                let (mut dw, db) = backward_weight(&g, a, b);
                let db = if transposed {
                    channel_sums(a, g.c_in, g.h * g.w)
                } else {
                    db
                };
                dw.extend_from_slice(&db);
                let len = dw.len();
                Ok((CpuStorage::F32(dw), Shape::from(len)))
            }
        }
    }
}

/// `grad * (res > 0 ? 1 : slope)`: the gradient through a leaky ReLU from its output `res`.
///
/// The output has the input's sign for any positive slope, so the input need not be kept.
struct LeakyGrad(f32);

impl CustomOp2 for LeakyGrad {
    fn name(&self) -> &'static str {
        "facestudio-leaky-relu-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (grad, res) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        if grad.len() != res.len() {
            candle_core::bail!(
                "leaky ReLU gradient of {} values for {}",
                grad.len(),
                res.len()
            );
        }
        let mask = LeakMask { res, slope: self.0 };
        let out = par_zeroed(grad.len(), ELEMENTWISE_CHUNK, |i, out| {
            let at = i * ELEMENTWISE_CHUNK;
            out.copy_from_slice(&grad[at..][..out.len()]);
            mask.apply(out, at);
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `grad *= (res > 0 ? 1 : slope)` in place: the leaky ReLU's backward pass, for a gradient
/// nothing else reads.
pub struct LeakyGradInPlace(pub f32);

impl InplaceOp2 for LeakyGradInPlace {
    fn name(&self) -> &'static str {
        "facestudio-leaky-relu-backward-in-place"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let (grad, res) = (f32_slice_mut(s1, l1)?, f32_slice(s2, l2)?);
        if grad.len() != res.len() {
            candle_core::bail!(
                "leaky ReLU gradient of {} values for {}",
                grad.len(),
                res.len()
            );
        }
        let mask = LeakMask { res, slope: self.0 };
        grad.par_chunks_mut(ELEMENTWISE_CHUNK)
            .enumerate()
            .for_each(|(i, grad)| mask.apply(grad, i * ELEMENTWISE_CHUNK));
        Ok(())
    }
}

/// A leaky ReLU of the given slope, differentiable.
pub struct LeakyRelu(pub f32);

impl CustomOp1 for LeakyRelu {
    fn name(&self) -> &'static str {
        "facestudio-leaky-relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let xs = f32_slice(s, l)?;
        let slope = self.0;
        let out = par_zeroed(xs.len(), ELEMENTWISE_CHUNK, |i, out| {
            let xs = &xs[i * ELEMENTWISE_CHUNK..][..out.len()];
            out.iter_mut()
                .zip(xs)
                .for_each(|(o, x)| *o = if *x > 0.0 { *x } else { *x * slope });
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            grad.contiguous()?
                .apply_op2_no_bwd(res, &LeakyGrad(self.0))?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use candle_core::{Device, Var};

    fn random(shape: &[usize], seed: u64) -> Tensor {
        let n = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|i| (Rng::keyed(seed, "ops", i as u64).uniform() * 2.0 - 1.0) as f32)
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    /// Output and gradients (input, weight, bias) of `f` under a fixed random linear loss.
    fn run(
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        f: impl Fn(&Tensor, &Tensor, &Tensor) -> Tensor,
    ) -> (Tensor, Tensor, Tensor, Tensor) {
        let (xv, wv, bv) = (
            Var::from_tensor(x).unwrap(),
            Var::from_tensor(w).unwrap(),
            Var::from_tensor(b).unwrap(),
        );
        let out = f(xv.as_tensor(), wv.as_tensor(), bv.as_tensor());
        let probe = random(out.dims(), 99);
        let grads = (&out * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g = |v: &Var| grads.get(v.as_tensor()).expect("a gradient").clone();
        (out, g(&xv), g(&wv), g(&bv))
    }

    fn assert_close(
        ours: (Tensor, Tensor, Tensor, Tensor),
        theirs: (Tensor, Tensor, Tensor, Tensor),
    ) {
        let names = [
            "output",
            "input gradient",
            "weight gradient",
            "bias gradient",
        ];
        let pairs = [
            (ours.0, theirs.0),
            (ours.1, theirs.1),
            (ours.2, theirs.2),
            (ours.3, theirs.3),
        ];
        for (name, (a, b)) in names.iter().zip(pairs) {
            let scale = b
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let diff = max_diff(&a, &b);
            assert!(
                diff <= 1e-4 * scale.max(1.0),
                "{name}: differs by {diff} (scale {scale})"
            );
        }
    }

    fn candle_leaky(xs: &Tensor, slope: Option<f64>) -> Tensor {
        match slope {
            Some(s) => candle_nn::ops::leaky_relu(xs, s).unwrap(),
            None => xs.clone(),
        }
    }

    fn check_conv(
        x: &[usize],
        w: &[usize],
        stride: usize,
        pad: usize,
        up: usize,
        slope: Option<f64>,
    ) {
        let (xs, ws, bs) = (random(x, 1), random(w, 2), random(&w[..1], 3));
        let params = ConvParams { stride, pad, up };
        let ours = run(&xs, &ws, &bs, |x, w, b| {
            x.apply_op3(
                w,
                b,
                Conv2d {
                    params,
                    slope: slope.map(|s| s as f32),
                },
            )
            .unwrap()
        });
        let theirs = run(&xs, &ws, &bs, |x, w, b| {
            let (_, _, h, wd) = x.dims4().unwrap();
            let x = if up > 1 {
                x.upsample_nearest2d(h * up, wd * up).unwrap()
            } else {
                x.clone()
            };
            let y = x.conv2d(w, pad, stride, 1, 1).unwrap();
            candle_leaky(
                &y.broadcast_add(&b.reshape((1, (), 1, 1)).unwrap()).unwrap(),
                slope,
            )
        });
        assert_close(ours, theirs);
    }

    #[test]
    fn strided_conv_matches_candle() {
        check_conv(&[3, 2, 8, 8], &[5, 2, 4, 4], 2, 1, 1, None);
        check_conv(&[2, 3, 7, 9], &[4, 3, 4, 4], 2, 1, 1, Some(0.2));
        // More images than one group, so products over several images run too.
        check_conv(&[9, 4, 4, 4], &[6, 4, 4, 4], 2, 1, 1, Some(0.2));
        // Odd kernels, no or wide padding, odd sizes: every phase-row edge case of stride 2.
        check_conv(&[2, 3, 9, 7], &[4, 3, 3, 3], 2, 0, 1, None);
        check_conv(&[2, 2, 9, 11], &[3, 2, 3, 3], 2, 1, 1, Some(0.2));
        check_conv(&[2, 2, 7, 7], &[3, 2, 5, 5], 2, 2, 1, None);
        check_conv(&[1, 2, 6, 6], &[2, 2, 2, 2], 2, 0, 1, None);
    }

    #[test]
    fn same_conv_matches_candle() {
        check_conv(&[3, 2, 6, 5], &[4, 2, 3, 3], 1, 1, 1, None);
        check_conv(&[2, 3, 4, 4], &[2, 3, 3, 3], 1, 0, 1, Some(0.1));
    }

    #[test]
    fn upsampled_conv_matches_candle() {
        check_conv(&[3, 2, 4, 5], &[3, 2, 3, 3], 1, 1, 2, None);
        check_conv(&[9, 3, 2, 2], &[4, 3, 3, 3], 1, 1, 2, Some(0.2));
    }

    fn check_transpose(x: &[usize], w: &[usize], stride: usize, pad: usize, slope: Option<f64>) {
        let (xs, ws, bs) = (random(x, 4), random(w, 5), random(&w[1..2], 6));
        let params = ConvParams { stride, pad, up: 1 };
        let ours = run(&xs, &ws, &bs, |x, w, b| {
            let op = ConvTranspose2d {
                params,
                slope: slope.map(|s| s as f32),
            };
            x.apply_op3(w, b, op).unwrap()
        });
        let theirs = run(&xs, &ws, &bs, |x, w, b| {
            let y = x.conv_transpose2d(w, pad, 0, stride, 1).unwrap();
            candle_leaky(
                &y.broadcast_add(&b.reshape((1, (), 1, 1)).unwrap()).unwrap(),
                slope,
            )
        });
        assert_close(ours, theirs);
    }

    #[test]
    fn transposed_conv_matches_candle() {
        check_transpose(&[3, 4, 4, 4], &[4, 2, 4, 4], 2, 1, None);
        check_transpose(&[2, 3, 3, 5], &[3, 5, 4, 4], 2, 1, Some(0.2));
        check_transpose(&[40, 6, 2, 2], &[6, 3, 4, 4], 2, 1, Some(0.2));
        check_transpose(&[2, 3, 5, 5], &[3, 2, 3, 3], 1, 1, None);
        check_transpose(&[2, 3, 4, 5], &[3, 2, 3, 3], 2, 1, Some(0.2));
        check_transpose(&[2, 2, 3, 3], &[2, 3, 5, 5], 2, 2, None);
    }

    #[test]
    fn leaky_relu_matches_candle() {
        let xs = Var::from_tensor(&random(&[3, 70_000], 7)).unwrap();
        let probe = random(&[3, 70_000], 8);
        let both = |f: &dyn Fn(&Tensor) -> Tensor| {
            let out = f(xs.as_tensor());
            let grads = (&out * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            (out, grads.get(xs.as_tensor()).unwrap().clone())
        };
        let ours = both(&|x| x.apply_op1(LeakyRelu(0.2)).unwrap());
        let theirs = both(&|x| candle_nn::ops::leaky_relu(x, 0.2).unwrap());
        assert!(max_diff(&ours.0, &theirs.0) < 1e-6);
        assert!(max_diff(&ours.1, &theirs.1) < 1e-6);
    }

    /// `dx (x > 0 ? 1 : slope)`: an input gradient taken on through the leaky ReLU whose
    /// output `x` is, by candle's ops.
    fn through_leak(dx: &Tensor, x: &Tensor, slope: f64) -> Tensor {
        let mask = x
            .gt(0f32)
            .unwrap()
            .to_dtype(candle_core::DType::F32)
            .unwrap()
            .affine(1.0 - slope, slope)
            .unwrap();
        (dx * mask).unwrap()
    }

    /// The input gradient of a convolution (transposed with `transposed`) by candle's autograd,
    /// for the output gradient `dy`.
    fn candle_input_grad(x: &Tensor, w: &Tensor, dy: &Tensor, transposed: bool) -> Tensor {
        let xv = Var::from_tensor(x).unwrap();
        let y = match transposed {
            true => xv.as_tensor().conv_transpose2d(w, 1, 0, 2, 1).unwrap(),
            false => xv.as_tensor().conv2d(w, 1, 2, 1, 1).unwrap(),
        };
        let grads = (y * dy).unwrap().sum_all().unwrap().backward().unwrap();
        grads.get(xv.as_tensor()).unwrap().clone()
    }

    #[test]
    fn input_gradients_through_a_leaky_relu_match_candle() {
        let params = ConvParams {
            stride: 2,
            pad: 1,
            up: 1,
        };
        // A convolution's input gradient, with one image per product and with several.
        for n in [2, 9] {
            let (x, w, dy) = (
                random(&[n, 3, 8, 8], 11),
                random(&[4, 3, 4, 4], 12),
                random(&[n, 4, 4, 4], 13),
            );
            let ours = dy
                .apply_op3_no_bwd(
                    &w,
                    &x,
                    &InputGrad {
                        params,
                        leak: Some(0.2),
                    },
                )
                .unwrap();
            let expected = through_leak(&candle_input_grad(&x, &w, &dy, false), &x, 0.2);
            assert!(max_diff(&ours, &expected) < 1e-5, "{n} images");
        }
        // A transposed convolution's, with and without its weight gradient alongside.
        let (x, w, dy) = (
            random(&[3, 4, 3, 3], 14),
            random(&[4, 2, 4, 4], 15),
            random(&[3, 2, 6, 6], 16),
        );
        let expected = through_leak(&candle_input_grad(&x, &w, &dy, true), &x, 0.3);
        let op = ConvTranspose2d {
            params,
            slope: None,
        };
        for weight in [true, false] {
            let need = Needs {
                input: true,
                weight,
                input_leak: Some(0.3),
            };
            let (dx, ..) = op.grads(&x, &w, &dy, need).unwrap();
            assert!(max_diff(&dx.unwrap(), &expected) < 1e-5, "weight: {weight}");
        }
    }

    #[test]
    fn leaky_gradient_in_place_matches_the_copying_one() {
        let (grad, res) = (random(&[3, 70_000], 17), random(&[3, 70_000], 18));
        let copied = grad.apply_op2_no_bwd(&res, &LeakyGrad(0.2)).unwrap();
        let in_place = grad.copy().unwrap();
        in_place.inplace_op2(&res, &LeakyGradInPlace(0.2)).unwrap();
        assert_eq!(max_diff(&copied, &in_place), 0.0);
        assert!(max_diff(&copied, &through_leak(&grad, &res, 0.2)) < 1e-7);
    }

    #[test]
    fn images_without_gradient_get_none() {
        let (xs, w, b) = (
            random(&[2, 3, 8, 8], 1),
            Var::from_tensor(&random(&[4, 3, 4, 4], 2)).unwrap(),
            random(&[4], 3),
        );
        let params = ConvParams {
            stride: 2,
            pad: 1,
            up: 1,
        };
        let out = xs
            .apply_op3(
                w.as_tensor(),
                &b,
                Conv2d {
                    params,
                    slope: Some(0.2),
                },
            )
            .unwrap();
        let grads = out.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&xs).is_none());
        assert_eq!(grads.get(w.as_tensor()).unwrap().dims(), &[4, 3, 4, 4]);
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        let params = ConvParams {
            stride: 2,
            pad: 1,
            up: 1,
        };
        let op = || Conv2d {
            params,
            slope: None,
        };
        let (xs, b) = (random(&[1, 3, 8, 8], 1), random(&[4], 3));
        assert!(xs.apply_op3(&random(&[4, 2, 4, 4], 2), &b, op()).is_err());
        assert!(xs
            .apply_op3(&random(&[4, 3, 4, 4], 2), &random(&[5], 3), op())
            .is_err());
        assert!(random(&[1, 3, 1, 1], 1)
            .apply_op3(&random(&[4, 3, 4, 4], 2), &b, op())
            .is_err());
    }
}
