//! Procedural cartoon faces, drawn deterministically from a seed with no files needed.
//!
//! Every face is described by continuous parameters (skin tone, head shape, eyes, brows, nose,
//! mouth, hair, backdrop and pose), so nearby parameters give nearby images and a VAE trained on
//! the set learns a latent space in which interpolation changes features smoothly. Shapes are
//! evaluated as signed distances in a face-local frame and blended over a one-pixel ramp, which
//! anti-aliases them at any resolution without supersampling. The framing mimics aligned
//! CelebA crops: the head is centred, fills most of the frame and has its eyes near 40% height.

use rayon::prelude::*;

/// An RGB colour with channels in `0.0..=1.0`.
pub type Rgb = [f32; 3];

/// SplitMix64: tiny, fast and good enough to spread parameters across the set.
struct Rng(u64);

impl Rng {
    /// Starts a stream unique to one face of one set.
    fn new(seed: u64, index: u64) -> Self {
        let mut mix = Rng(index ^ 0x5851_f42d_4c95_7f2d);
        let salt = mix.next_u64();
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ salt)
    }

    /// Returns the next 64 random bits.
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Returns a uniform value in `[0, 1)`.
    fn unit(&mut self) -> f32 {
        // 24 bits fill an f32 mantissa exactly, so the result never rounds up to 1.0.
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Returns a uniform value in `[lo, hi)`.
    fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }

    /// Returns a bell-shaped value in `[lo, hi)` that favours the middle of the range.
    fn bell(&mut self, lo: f32, hi: f32) -> f32 {
        let t = (self.unit() + self.unit() + self.unit()) / 3.0;
        lo + (hi - lo) * t
    }

    /// Returns true with probability `p`.
    fn chance(&mut self, p: f32) -> bool {
        self.unit() < p
    }
}

const SKIN_TONES: [Rgb; 7] = [
    [0.99, 0.87, 0.77],
    [0.95, 0.77, 0.64],
    [0.88, 0.66, 0.51],
    [0.77, 0.54, 0.39],
    [0.62, 0.41, 0.28],
    [0.46, 0.30, 0.20],
    [0.34, 0.22, 0.15],
];

const HAIR_COLOURS: [Rgb; 8] = [
    [0.07, 0.06, 0.06],
    [0.19, 0.12, 0.08],
    [0.36, 0.23, 0.14],
    [0.54, 0.26, 0.13],
    [0.64, 0.49, 0.30],
    [0.85, 0.71, 0.46],
    [0.92, 0.87, 0.75],
    [0.62, 0.61, 0.60],
];

const IRIS_COLOURS: [Rgb; 6] = [
    [0.22, 0.12, 0.06],
    [0.40, 0.24, 0.11],
    [0.45, 0.40, 0.18],
    [0.28, 0.45, 0.25],
    [0.27, 0.45, 0.66],
    [0.47, 0.54, 0.62],
];

const EYE_WHITE: Rgb = [0.96, 0.95, 0.93];
const LASH: Rgb = [0.08, 0.06, 0.06];
const MOUTH_INSIDE: Rgb = [0.28, 0.07, 0.08];
const TEETH: Rgb = [0.95, 0.93, 0.88];

/// Interpolates linearly between two colours.
fn mix3(a: Rgb, b: Rgb, t: f32) -> Rgb {
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

/// Multiplies every channel of a colour by `k`.
fn scale3(c: Rgb, k: f32) -> Rgb {
    [c[0] * k, c[1] * k, c[2] * k]
}

/// Reads a palette at a continuous position `t` in `[0, 1]`, blending neighbouring entries.
fn palette(colours: &[Rgb], t: f32) -> Rgb {
    let pos = t.clamp(0.0, 1.0) * (colours.len() - 1) as f32;
    let i = (pos as usize).min(colours.len() - 2);
    mix3(colours[i], colours[i + 1], pos - i as f32)
}

/// Converts hue, saturation and value (all in `[0, 1]`) to RGB.
fn hsv(h: f32, s: f32, v: f32) -> Rgb {
    let h6 = h.rem_euclid(1.0) * 6.0;
    let f = h6 - h6.floor();
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match h6 as u32 {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

/// Nudges each channel of a colour by up to `amount`, keeping it in range.
fn jitter(rng: &mut Rng, c: Rgb, amount: f32) -> Rgb {
    c.map(|v| (v + rng.range(-amount, amount)).clamp(0.0, 1.0))
}

/// Head outline and skin, in face-local units where the image is one unit wide.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    /// Skin colour.
    pub skin: Rgb,
    /// Half-width of the head oval.
    pub width: f32,
    /// Half-height of the head oval.
    pub height: f32,
    /// How much the lower half narrows towards the chin (0 = pure oval).
    pub jaw: f32,
    /// Strength of the rosy tint on the cheeks.
    pub blush: f32,
    /// Colour of the clothing visible at the bottom of the frame.
    pub clothes: Rgb,
}

impl Shape {
    fn sample(rng: &mut Rng) -> Self {
        let tone = palette(&SKIN_TONES, rng.unit());
        Self {
            skin: jitter(rng, tone, 0.025),
            width: rng.bell(0.255, 0.325),
            height: rng.bell(0.395, 0.445),
            jaw: rng.bell(0.05, 0.45),
            blush: rng.range(0.0, 0.35),
            clothes: hsv(rng.unit(), rng.range(0.1, 0.7), rng.range(0.15, 0.9)),
        }
    }
}

/// Eye placement, shape and colour.
#[derive(Debug, Clone, PartialEq)]
pub struct Eyes {
    /// Vertical position of the eye centres relative to the image centre.
    pub y: f32,
    /// Horizontal distance of each eye centre from the face midline.
    pub spacing: f32,
    /// Half-width of each eye.
    pub size: f32,
    /// How far the lids are open (0 = shut, 1 = wide).
    pub open: f32,
    /// Upward lift of the outer corners.
    pub tilt: f32,
    /// Iris colour.
    pub iris: Rgb,
    /// Horizontal gaze shift of both irises, as a fraction of the eye half-width.
    pub gaze: f32,
}

impl Eyes {
    fn sample(rng: &mut Rng) -> Self {
        let iris = palette(&IRIS_COLOURS, rng.unit().powf(1.3));
        Self {
            y: rng.bell(-0.105, -0.06),
            spacing: rng.bell(0.115, 0.145),
            size: rng.bell(0.048, 0.066),
            open: rng.bell(0.45, 1.0),
            tilt: rng.range(-0.15, 0.25),
            iris: jitter(rng, iris, 0.03),
            gaze: rng.bell(-0.35, 0.35),
        }
    }
}

/// Eyebrow shape and colour.
#[derive(Debug, Clone, PartialEq)]
pub struct Brows {
    /// Gap between the eye centre line and the brow centre line.
    pub lift: f32,
    /// Thickness at the inner end.
    pub thickness: f32,
    /// Slope from inner to outer end; positive raises the outer end.
    pub angle: f32,
    /// Height of the arch in the middle of the brow.
    pub arch: f32,
    /// Brow colour.
    pub colour: Rgb,
}

/// Nose size and placement.
#[derive(Debug, Clone, PartialEq)]
pub struct Nose {
    /// Distance from the eye line down to the nose tip.
    pub length: f32,
    /// Half-width of the nostrils.
    pub width: f32,
}

/// Mouth shape and expression.
#[derive(Debug, Clone, PartialEq)]
pub struct Mouth {
    /// Vertical position of the mouth centre relative to the image centre.
    pub y: f32,
    /// Half-width of the mouth.
    pub width: f32,
    /// Curvature of the mouth line: positive smiles, negative frowns.
    pub smile: f32,
    /// How far the lips are parted (0 = closed).
    pub open: f32,
    /// Fullness of the lips.
    pub lips: f32,
    /// Lip colour.
    pub colour: Rgb,
}

/// Hair style and colour; styles blend continuously into one another.
#[derive(Debug, Clone, PartialEq)]
pub struct Hair {
    /// Hair colour.
    pub colour: Rgb,
    /// Thickness of the hair above and around the skull.
    pub volume: f32,
    /// How far hair falls below the head (0 = cropped, 1 = past the shoulders).
    pub length: f32,
    /// How far bangs come down over the forehead (0 = none, 1 = down to the brows).
    pub fringe: f32,
    /// Side part: sweeps the hairline towards one side (negative = left, positive = right).
    pub part: f32,
    /// Size of the bald crown (0 = full head of hair, 1 = bald on top).
    pub baldness: f32,
    /// Strength of the glossy highlight band.
    pub sheen: f32,
}

/// Background colours.
#[derive(Debug, Clone, PartialEq)]
pub struct Backdrop {
    /// Colour at the start of the gradient.
    pub from: Rgb,
    /// Colour at the end of the gradient.
    pub to: Rgb,
    /// Direction of the gradient in radians (0 = left to right).
    pub angle: f32,
}

/// Small shifts of the head within the frame, plus lighting.
#[derive(Debug, Clone, PartialEq)]
pub struct Pose {
    /// Horizontal offset of the head, as a fraction of the image width.
    pub dx: f32,
    /// Vertical offset of the head, as a fraction of the image height.
    pub dy: f32,
    /// Zoom factor applied to the whole head.
    pub scale: f32,
    /// In-plane head tilt in radians (positive turns clockwise on screen).
    pub tilt: f32,
    /// Side the key light comes from (-1 = left, 1 = right).
    pub light: f32,
}

/// Parameters of one synthetic face, all continuous, drawn from a seed.
#[derive(Debug, Clone, PartialEq)]
pub struct FaceParams {
    /// Head outline, skin and clothing.
    pub shape: Shape,
    /// Eyes.
    pub eyes: Eyes,
    /// Eyebrows.
    pub brows: Brows,
    /// Nose.
    pub nose: Nose,
    /// Mouth and expression.
    pub mouth: Mouth,
    /// Hair.
    pub hair: Hair,
    /// Background.
    pub backdrop: Backdrop,
    /// Placement of the head in the frame.
    pub pose: Pose,
}

impl FaceParams {
    /// Draws the parameters of face number `index` of the set with seed `seed`.
    pub fn from_seed(seed: u64, index: u64) -> Self {
        let mut rng = Rng::new(seed, index);
        let shape = Shape::sample(&mut rng);
        let eyes = Eyes::sample(&mut rng);
        let hair = sample_hair(&mut rng);
        let brows = sample_brows(&mut rng, &hair);
        let nose = sample_nose(&mut rng);
        let mouth = sample_mouth(&mut rng, &shape, &eyes);
        let backdrop = sample_backdrop(&mut rng);
        let pose = sample_pose(&mut rng);
        Self {
            shape,
            eyes,
            brows,
            nose,
            mouth,
            hair,
            backdrop,
            pose,
        }
    }
}

/// Draws a hair style: a discrete look picked first, then blurred by continuous jitter.
fn sample_hair(rng: &mut Rng) -> Hair {
    let base = palette(&HAIR_COLOURS, rng.unit().powf(1.5));
    let style = rng.unit();
    let (length, fringe, part, baldness) = if style < 0.28 {
        (
            rng.range(0.0, 0.25),
            rng.range(0.0, 0.3),
            rng.range(-0.2, 0.2),
            0.0,
        )
    } else if style < 0.58 {
        (
            rng.range(0.6, 1.0),
            rng.range(0.0, 0.45),
            rng.range(-0.3, 0.3),
            0.0,
        )
    } else if style < 0.72 {
        (
            rng.range(0.15, 0.9),
            rng.range(0.75, 1.0),
            rng.range(-0.15, 0.15),
            0.0,
        )
    } else if style < 0.9 {
        let side = if rng.chance(0.5) { -1.0 } else { 1.0 };
        (
            rng.range(0.0, 0.75),
            rng.range(0.15, 0.5),
            side * rng.range(0.55, 1.0),
            0.0,
        )
    } else {
        (0.0, 0.0, rng.range(-0.1, 0.1), rng.range(0.55, 1.05))
    };
    Hair {
        colour: jitter(rng, base, 0.02),
        volume: rng.range(0.008, 0.035) + 0.025 * length,
        length,
        fringe,
        part,
        baldness,
        sheen: rng.range(0.0, 1.0),
    }
}

/// Draws brows whose colour follows the hair, as it usually does.
fn sample_brows(rng: &mut Rng, hair: &Hair) -> Brows {
    let darker = mix3(hair.colour, LASH, rng.range(0.2, 0.6));
    Brows {
        lift: rng.bell(0.045, 0.07),
        thickness: rng.bell(0.009, 0.022),
        angle: rng.range(-0.25, 0.3),
        arch: rng.range(0.0, 0.016),
        colour: darker,
    }
}

fn sample_nose(rng: &mut Rng) -> Nose {
    Nose {
        length: rng.bell(0.12, 0.16),
        width: rng.bell(0.03, 0.045),
    }
}

/// Draws the mouth; wider smiles tend to part the lips, as real smiles do.
fn sample_mouth(rng: &mut Rng, shape: &Shape, eyes: &Eyes) -> Mouth {
    let smile = rng.range(-0.5, 1.0);
    let open = (rng.range(-0.6, 0.8) + 0.3 * smile).clamp(0.0, 1.0);
    let red = [0.72, 0.28, 0.30];
    Mouth {
        y: eyes.y + rng.bell(0.23, 0.27),
        width: rng.bell(0.07, 0.1),
        smile,
        open,
        lips: rng.bell(0.5, 1.4),
        colour: scale3(mix3(shape.skin, red, rng.range(0.25, 0.6)), 0.9),
    }
}

fn sample_backdrop(rng: &mut Rng) -> Backdrop {
    let hue = rng.unit();
    let sat = rng.range(0.05, 0.6);
    let val = rng.range(0.25, 0.97);
    Backdrop {
        from: hsv(hue, sat, val),
        to: hsv(
            hue + rng.range(-0.12, 0.12),
            sat * rng.range(0.5, 1.2),
            val * rng.range(0.5, 1.1),
        ),
        angle: rng.range(0.0, std::f32::consts::TAU),
    }
}

fn sample_pose(rng: &mut Rng) -> Pose {
    Pose {
        dx: rng.bell(-0.04, 0.04),
        dy: rng.bell(-0.03, 0.03),
        scale: rng.bell(0.92, 1.08),
        tilt: rng.bell(-0.14, 0.14),
        light: rng.range(-1.0, 1.0),
    }
}

/// Coverage of a shape at signed distance `d` (negative inside), over a ramp `aa` wide.
fn cover(d: f32, aa: f32) -> f32 {
    (0.5 - d / aa).clamp(0.0, 1.0)
}

/// Hermite smoothstep between `a` and `b`.
fn smooth(a: f32, b: f32, x: f32) -> f32 {
    let t = ((x - a) / (b - a)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// Approximate signed distance from `(x, y)` to an axis-aligned ellipse at the origin.
fn sd_ellipse(x: f32, y: f32, rx: f32, ry: f32) -> f32 {
    let k0 = ((x / rx).powi(2) + (y / ry).powi(2)).sqrt();
    let k1 = ((x / (rx * rx)).powi(2) + (y / (ry * ry)).powi(2)).sqrt();
    if k1 < 1e-9 {
        return -rx.min(ry);
    }
    k0 * (k0 - 1.0) / k1
}

/// Signed distance to an axis-aligned box with rounded corners, centred at the origin.
fn sd_round_box(x: f32, y: f32, hx: f32, hy: f32, r: f32) -> f32 {
    let qx = x.abs() - hx + r;
    let qy = y.abs() - hy + r;
    let outside = (qx.max(0.0).powi(2) + qy.max(0.0).powi(2)).sqrt();
    outside + qx.max(qy).min(0.0) - r
}

/// Blends `src` over `dst` with opacity `alpha`.
fn over(dst: &mut Rgb, src: Rgb, alpha: f32) {
    if alpha > 0.0 {
        *dst = mix3(*dst, src, alpha);
    }
}

/// Per-face values derived once so the per-pixel loop stays cheap.
struct Layout<'a> {
    p: &'a FaceParams,
    /// Width of the anti-aliasing ramp in face-local units (one pixel).
    aa: f32,
    cos: f32,
    sin: f32,
    /// Vertical centre of the head oval.
    head_y: f32,
    /// Vertical centre of the ears.
    ear_y: f32,
    /// Brow centre line.
    brow_y: f32,
    /// Nose tip.
    nose_y: f32,
    /// Hairline height at the midline.
    hairline: f32,
}

impl<'a> Layout<'a> {
    fn new(p: &'a FaceParams, size: u32) -> Self {
        let head_y = -0.015;
        let brow_y = p.eyes.y - p.brows.lift;
        let top = head_y - p.shape.height;
        let natural = top + 0.3 * (brow_y - top);
        Self {
            p,
            aa: 1.0 / (size as f32 * p.pose.scale),
            cos: p.pose.tilt.cos(),
            sin: p.pose.tilt.sin(),
            head_y,
            ear_y: p.eyes.y + 0.04,
            brow_y,
            nose_y: p.eyes.y + p.nose.length,
            hairline: natural + (brow_y - 0.018 - natural) * p.hair.fringe,
        }
    }

    /// Maps an image point (centred, one unit wide) into the face-local frame.
    fn to_local(&self, x: f32, y: f32) -> (f32, f32) {
        let pose = &self.p.pose;
        let (ux, uy) = ((x - pose.dx) / pose.scale, (y - pose.dy) / pose.scale);
        (
            self.cos * ux + self.sin * uy,
            -self.sin * ux + self.cos * uy,
        )
    }

    /// Colour of the pixel whose centre sits at image point `(x, y)`.
    fn shade(&self, x: f32, y: f32) -> Rgb {
        let mut c = self.backdrop(x, y);
        let (lx, ly) = self.to_local(x, y);
        self.clothes(&mut c, lx, ly);
        self.back_hair(&mut c, lx, ly);
        self.neck(&mut c, lx, ly);
        self.ears(&mut c, lx, ly);
        let inside = self.head(&mut c, lx, ly);
        if inside > 0.0 {
            self.nose(&mut c, lx, ly);
            self.eyes(&mut c, lx, ly);
            self.brows(&mut c, lx, ly);
            self.mouth(&mut c, lx, ly);
        }
        self.hair_cap(&mut c, lx, ly);
        c
    }

    fn backdrop(&self, x: f32, y: f32) -> Rgb {
        let b = &self.p.backdrop;
        let t = 0.5 + x * b.angle.cos() + y * b.angle.sin();
        let base = mix3(b.from, b.to, t.clamp(0.0, 1.0));
        // A faint vignette keeps the frame edges from competing with the face.
        scale3(base, 1.0 - 0.25 * (x * x + y * y))
    }

    fn clothes(&self, c: &mut Rgb, x: f32, y: f32) {
        if y < 0.35 {
            return;
        }
        let d = sd_ellipse(x, y - 0.64, 0.56, 0.22);
        let shade = 1.0 - 0.3 * (x / 0.56).abs().min(1.0);
        over(c, scale3(self.p.shape.clothes, shade), cover(d, self.aa));
    }

    fn neck(&self, c: &mut Rgb, x: f32, y: f32) {
        let half = self.p.shape.width * 0.42;
        if y < 0.1 || x.abs() > half + 0.02 {
            return;
        }
        let d = sd_round_box(x, y - 0.45, half, 0.25, 0.02);
        // The chin casts a shadow that fades down the neck.
        let shade = 0.62 + 0.18 * smooth(0.3, 0.5, y);
        over(c, scale3(self.p.shape.skin, shade), cover(d, self.aa));
    }

    fn ears(&self, c: &mut Rgb, x: f32, y: f32) {
        let s = &self.p.shape;
        let ex = x.abs() - s.width * 0.97;
        let ey = y - self.ear_y;
        if ex.abs() > 0.06 || ey.abs() > 0.08 {
            return;
        }
        // Long hair hides the ears; fade them out so the change stays continuous.
        let seen = 1.0 - smooth(0.35, 0.7, self.p.hair.length);
        let d = sd_ellipse(ex, ey, 0.035, 0.06);
        over(c, scale3(s.skin, 0.93), cover(d, self.aa) * seen);
        let inner = sd_ellipse(ex - 0.008, ey, 0.016, 0.035);
        over(c, scale3(s.skin, 0.72), cover(inner, self.aa * 2.0) * seen);
    }

    /// Paints the head oval with soft shading and returns its coverage.
    fn head(&self, c: &mut Rgb, x: f32, y: f32) -> f32 {
        let s = &self.p.shape;
        let hy = y - self.head_y;
        if x.abs() > s.width + 0.02 || hy.abs() > s.height + 0.02 {
            return 0.0;
        }
        let below = (hy / s.height).clamp(0.0, 1.0);
        let taper = 1.0 - s.jaw * below * below;
        let d = sd_ellipse(x / taper, hy, s.width, s.height) * taper;
        let alpha = cover(d, self.aa);
        if alpha > 0.0 {
            over(c, self.skin_at(x, y, d), alpha);
        }
        alpha
    }

    /// Skin colour with directional light, rim shadow and cheek blush.
    fn skin_at(&self, x: f32, y: f32, d: f32) -> Rgb {
        let s = &self.p.shape;
        let light = 1.0 + 0.12 * self.p.pose.light * (x / s.width).clamp(-1.0, 1.0);
        let rim = 1.0 - 0.22 * smooth(-0.07, 0.0, d);
        let mut skin = scale3(s.skin, light * rim);
        let cheek_x = x.abs() - s.width * 0.6;
        let cheek_y = y - (self.p.mouth.y - 0.07);
        let glow = 1.0 - ((cheek_x * cheek_x + cheek_y * cheek_y) / 0.0025).min(1.0);
        over(&mut skin, [0.9, 0.35, 0.35], s.blush * glow * glow);
        skin
    }

    fn eyes(&self, c: &mut Rgb, x: f32, y: f32) {
        let e = &self.p.eyes;
        let side = if x < 0.0 { -1.0 } else { 1.0 };
        // Mirroring puts both eyes in one frame whose +x points away from the midline.
        let ex = x.abs() - e.spacing;
        if ex.abs() > e.size * 1.4 || (y - e.y).abs() > e.size * 1.2 {
            return;
        }
        let ey = y - e.y + e.tilt * ex;
        let bulge = (1.0 - (ex / e.size).powi(2)).max(0.0);
        let top = -e.size * 0.62 * e.open * bulge;
        let bottom = e.size * 0.42 * e.open * bulge;
        let d_eye = (top - ey).max(ey - bottom).max(ex.abs() - e.size);
        let a_eye = cover(d_eye, self.aa);
        if a_eye > 0.0 {
            over(c, self.eyeball(ex, ey, side), a_eye);
        }
        self.lid(c, ex, ey, top);
    }

    /// Colour inside the eye opening: white, iris, pupil and a catch-light.
    fn eyeball(&self, ex: f32, ey: f32, side: f32) -> Rgb {
        let e = &self.p.eyes;
        let r = e.size * 0.5;
        let ix = ex - e.gaze * e.size * 0.45 * side;
        let iy = ey + e.size * 0.05;
        let dist = (ix * ix + iy * iy).sqrt();
        let mut col = EYE_WHITE;
        let rim = scale3(e.iris, 0.6 + 0.4 * (1.0 - dist / r).clamp(0.0, 1.0));
        over(&mut col, rim, cover(dist - r, self.aa));
        over(&mut col, LASH, cover(dist - r * 0.45, self.aa));
        let hx = ix + r * 0.35 * side;
        let hy = iy + r * 0.35;
        let spark = (hx * hx + hy * hy).sqrt() - r * 0.22;
        over(&mut col, [1.0, 1.0, 1.0], cover(spark, self.aa) * 0.9);
        col
    }

    /// Dark upper lid line, flicking past the outer corner like lashes.
    fn lid(&self, c: &mut Rgb, ex: f32, ey: f32, top: f32) {
        let e = &self.p.eyes;
        if ex < -e.size || ex > e.size * 1.25 {
            return;
        }
        let flick = if ex > e.size * 0.7 {
            (ex - e.size * 0.7) * 0.5
        } else {
            0.0
        };
        let line = (ey - top + flick).abs() - e.size * 0.1;
        let span = (-e.size - ex).max(ex - e.size * 1.25);
        over(c, LASH, cover(line.max(span), self.aa) * 0.9);
    }

    fn brows(&self, c: &mut Rgb, x: f32, y: f32) {
        let (e, b) = (&self.p.eyes, &self.p.brows);
        let half = e.size * 1.25;
        let bx = x.abs() - e.spacing - e.size * 0.1;
        let by = y - self.brow_y;
        if bx.abs() > half + 0.01 || by.abs() > 0.06 {
            return;
        }
        let t = (bx / half).clamp(-1.0, 1.0);
        let centre = -b.arch * (1.0 - t * t) - b.angle * bx;
        let slope = 2.0 * b.arch * t / half - b.angle;
        let thick = b.thickness * (1.0 - 0.3 * (t + 1.0));
        let across = (by - centre).abs() / (1.0 + slope * slope).sqrt() - thick * 0.5;
        let along = bx.abs() - half;
        over(c, b.colour, cover(across.max(along), self.aa) * 0.95);
    }

    fn nose(&self, c: &mut Rgb, x: f32, y: f32) {
        let n = &self.p.nose;
        let ny = y - self.nose_y;
        if x.abs() > n.width * 1.6 || ny < -0.11 || ny > 0.04 {
            return;
        }
        let skin = self.p.shape.skin;
        // The ridge shadow falls on the side facing away from the light.
        let ridge_x = x + self.p.pose.light.signum() * n.width * 0.45;
        let ridge = ridge_x.abs() - 0.004;
        let fade = smooth(-0.1, -0.02, ny) * (1.0 - smooth(-0.01, 0.0, ny));
        over(
            c,
            scale3(skin, 0.75),
            cover(ridge, self.aa * 3.0) * 0.35 * fade,
        );
        let under = sd_ellipse(x, ny - 0.012, n.width * 0.9, 0.011);
        over(c, scale3(skin, 0.72), cover(under, self.aa * 3.0) * 0.5);
        let tip = sd_ellipse(x, ny + 0.004, n.width * 0.55, 0.017);
        over(c, scale3(skin, 1.08), cover(tip, self.aa * 3.0) * 0.5);
        let nostril = sd_ellipse(x.abs() - n.width * 0.5, ny - 0.006, n.width * 0.24, 0.007);
        over(c, scale3(skin, 0.42), cover(nostril, self.aa * 1.5) * 0.85);
    }

    fn mouth(&self, c: &mut Rgb, x: f32, y: f32) {
        let m = &self.p.mouth;
        let my = y - m.y;
        if x.abs() > m.width + 0.01 || my.abs() > 0.09 {
            return;
        }
        let u = (x / m.width).clamp(-1.0, 1.0);
        let mid = -m.smile * 0.03 * u * u + m.smile.max(0.0) * 0.006;
        let profile = (1.0 - u * u).max(0.0).sqrt();
        let gap = m.open * 0.03 * profile;
        let upper = mid - gap - m.lips * 0.01 * (0.25 + 0.75 * profile);
        let lower = mid + gap + m.lips * 0.014 * profile;
        let ends = x.abs() - m.width;
        let lips = (upper - my).max(my - lower).max(ends);
        over(c, m.colour, cover(lips, self.aa));
        self.mouth_inside(c, x, my, mid, gap);
    }

    /// The dark opening between the lips, with a row of teeth when parted.
    fn mouth_inside(&self, c: &mut Rgb, x: f32, my: f32, mid: f32, gap: f32) {
        let m = &self.p.mouth;
        let ends = x.abs() - m.width * 0.96;
        let seam = ((my - mid).abs() - 0.0035).max(ends);
        let opening = (mid - gap - my).max(my - mid - gap).max(ends);
        over(c, MOUTH_INSIDE, cover(seam.min(opening), self.aa));
        let teeth_edge = mid - gap + gap * 0.9;
        let teeth = (mid - gap - my)
            .max(my - teeth_edge)
            .max(x.abs() - m.width * 0.75);
        over(c, TEETH, cover(teeth, self.aa) * smooth(0.05, 0.25, m.open));
    }

    fn back_hair(&self, c: &mut Rgb, x: f32, y: f32) {
        let h = &self.p.hair;
        if h.length <= 0.0 {
            return;
        }
        let s = &self.p.shape;
        let bottom = self.head_y + 0.15 + 0.55 * h.length;
        let half = s.width + h.volume + 0.025;
        let top = self.head_y - 0.05;
        // Hair spreads a little as it falls, which reads as a natural silhouette.
        let spread = half + 0.06 * ((y - top) / (bottom - top)).clamp(0.0, 1.0);
        let centre = 0.5 * (top + bottom);
        let d = sd_round_box(x, y - centre, spread, 0.5 * (bottom - top), 0.05);
        over(c, scale3(h.colour, 0.8), cover(d, self.aa));
    }

    fn hair_cap(&self, c: &mut Rgb, x: f32, y: f32) {
        let (h, s) = (&self.p.hair, &self.p.shape);
        let (rx, ry) = (s.width + h.volume, s.height + h.volume * 1.3);
        if x.abs() > rx + 0.01 || y > self.ear_y + 0.06 || y < self.head_y - ry - 0.01 {
            return;
        }
        let outer = sd_ellipse(x, y - self.head_y, rx, ry);
        let crown_y = self.head_y - s.height;
        let bald = -sd_ellipse(
            x,
            y - crown_y,
            s.width * 1.05 * h.baldness,
            0.3 * h.baldness,
        );
        let d = outer.max(self.below_hairline(x, y)).max(bald);
        let alpha = cover(d, self.aa);
        if alpha > 0.0 {
            over(c, self.hair_colour(x, y, d, rx, ry), alpha);
        }
    }

    /// Signed distance below the hairline (positive where skin should show).
    fn below_hairline(&self, x: f32, y: f32) -> f32 {
        let (h, w) = (&self.p.hair, self.p.shape.width);
        let shift = h.part * w * 0.25;
        let u = ((x - shift) / w).clamp(-1.3, 1.3);
        // Bangs are cut straight across, a plain hairline curves down at the temples.
        let power = 2.5 + 5.0 * h.fringe;
        let drop = self.ear_y - self.hairline;
        let sweep = h.part * 0.07;
        let line = self.hairline + drop * u.abs().powf(power) + sweep * u;
        let slope = (drop * power * u.abs().powf(power - 1.0) * u.signum() + sweep) / w;
        (y - line) / (1.0 + slope * slope).sqrt()
    }

    /// Hair shading: darker towards the edge, with a glossy band across the crown.
    fn hair_colour(&self, x: f32, y: f32, d: f32, rx: f32, ry: f32) -> Rgb {
        let h = &self.p.hair;
        let edge = 1.0 - 0.25 * smooth(-0.04, 0.0, d);
        let light = 1.0 + 0.1 * self.p.pose.light * (x / rx).clamp(-1.0, 1.0);
        let band = ((y - self.head_y) / ry + 0.7).abs();
        let gloss = h.sheen * 0.25 * (1.0 - smooth(0.0, 0.12, band));
        let base = scale3(h.colour, edge * light);
        mix3(base, [1.0, 1.0, 1.0], gloss * (1.0 - 0.5 * (x / rx).abs()))
    }
}

/// Renders a face as RGB pixels, row-major HWC u8, `size * size * 3` bytes.
pub fn render(params: &FaceParams, size: u32) -> Vec<u8> {
    let layout = Layout::new(params, size);
    let n = size as usize;
    let inv = 1.0 / size as f32;
    let mut out = Vec::with_capacity(n * n * 3);
    for row in 0..n {
        let y = (row as f32 + 0.5) * inv - 0.5;
        for col in 0..n {
            let x = (col as f32 + 0.5) * inv - 0.5;
            let rgb = layout.shade(x, y);
            out.extend(rgb.map(|v| (v.clamp(0.0, 1.0) * 255.0 + 0.5) as u8));
        }
    }
    out
}

/// Renders faces `0..count` of the set with seed `seed` into one CHW u8 buffer
/// (`count * 3 * size * size` bytes, image after image, channel planes R, G, B), in parallel
/// with rayon.
pub fn render_set(seed: u64, count: usize, size: u32) -> Vec<u8> {
    let plane = size as usize * size as usize;
    let mut out = vec![0u8; count * 3 * plane];
    if plane == 0 {
        return out;
    }
    out.par_chunks_mut(3 * plane)
        .enumerate()
        .for_each(|(i, image)| {
            let hwc = render(&FaceParams::from_seed(seed, i as u64), size);
            for (px, rgb) in hwc.chunks_exact(3).enumerate() {
                for (ch, &v) in rgb.iter().enumerate() {
                    image[ch * plane + px] = v;
                }
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mean and standard deviation of a sample.
    fn mean_std(values: &[f32]) -> (f32, f32) {
        let n = values.len() as f32;
        let mean = values.iter().sum::<f32>() / n;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / n;
        (mean, var.sqrt())
    }

    /// Average luminance of a square patch of an HWC image.
    fn patch_luma(img: &[u8], size: u32, cx: f32, cy: f32, half: u32) -> f32 {
        let (cx, cy) = ((cx * size as f32) as i64, (cy * size as f32) as i64);
        let mut sum = 0.0;
        let mut n = 0.0;
        for y in cy - half as i64..=cy + half as i64 {
            for x in cx - half as i64..=cx + half as i64 {
                let i = (y as usize * size as usize + x as usize) * 3;
                sum +=
                    0.299 * img[i] as f32 + 0.587 * img[i + 1] as f32 + 0.114 * img[i + 2] as f32;
                n += 1.0;
            }
        }
        sum / n
    }

    #[test]
    fn same_seed_and_index_give_identical_bytes() {
        for index in [0, 1, 999] {
            let a = FaceParams::from_seed(42, index);
            let b = FaceParams::from_seed(42, index);
            assert_eq!(a, b);
            assert_eq!(render(&a, 64), render(&b, 64));
        }
    }

    #[test]
    fn different_indices_and_seeds_give_different_faces() {
        let base = render(&FaceParams::from_seed(7, 0), 64);
        for index in 1..20 {
            let other = render(&FaceParams::from_seed(7, index), 64);
            let differing = base
                .iter()
                .zip(&other)
                .filter(|(a, b)| a.abs_diff(**b) > 8)
                .count();
            assert!(
                differing > base.len() / 10,
                "face {index} too close to face 0"
            );
        }
        assert_ne!(FaceParams::from_seed(1, 5), FaceParams::from_seed(2, 5));
    }

    #[test]
    fn output_sizes_match_request() {
        for size in [32u32, 64, 128] {
            let img = render(&FaceParams::from_seed(3, 4), size);
            assert_eq!(img.len(), (size * size * 3) as usize);
            assert_eq!(render_set(3, 5, size).len(), 5 * 3 * (size * size) as usize);
        }
        assert!(render_set(3, 0, 64).is_empty());
    }

    #[test]
    fn every_size_from_8_to_256_renders() {
        for size in 8u32..=256 {
            let img = render(&FaceParams::from_seed(11, size as u64), size);
            assert_eq!(img.len(), (size * size * 3) as usize);
        }
    }

    #[test]
    fn render_set_is_planar_concatenation_of_render() {
        let (seed, count, size) = (99u64, 6usize, 32u32);
        let set = render_set(seed, count, size);
        let plane = (size * size) as usize;
        for i in 0..count {
            let hwc = render(&FaceParams::from_seed(seed, i as u64), size);
            let chw = &set[i * 3 * plane..(i + 1) * 3 * plane];
            for px in 0..plane {
                for ch in 0..3 {
                    assert_eq!(
                        chw[ch * plane + px],
                        hwc[px * 3 + ch],
                        "face {i} px {px} ch {ch}"
                    );
                }
            }
        }
    }

    #[test]
    fn pixels_vary_substantially_across_faces() {
        let size = 64u32;
        let faces: Vec<Vec<u8>> = (0..100)
            .map(|i| render(&FaceParams::from_seed(5, i), size))
            .collect();
        let stds: Vec<f32> = (0..faces[0].len())
            .map(|k| mean_std(&faces.iter().map(|f| f[k] as f32).collect::<Vec<_>>()).1)
            .collect();
        let (mean_std_px, _) = mean_std(&stds);
        assert!(mean_std_px > 25.0, "mean per-pixel std only {mean_std_px}");
        let flat = stds.iter().filter(|s| **s < 3.0).count();
        assert!(
            flat < stds.len() / 50,
            "{flat} pixels barely change across faces"
        );
    }

    #[test]
    fn skin_and_hair_colours_vary() {
        let mut cheeks = Vec::new();
        let mut hair = Vec::new();
        for i in 0..60 {
            let p = FaceParams::from_seed(8, i);
            cheeks.push(p.shape.skin[0] + p.shape.skin[1] + p.shape.skin[2]);
            hair.push(p.hair.colour[0] + p.hair.colour[1] + p.hair.colour[2]);
            let img = render(&p, 64);
            let cheek = patch_luma(&img, 64, 0.5, 0.56, 1);
            let skin = p.shape.skin.map(|v| v * 255.0);
            let expect = 0.299 * skin[0] + 0.587 * skin[1] + 0.114 * skin[2];
            assert!(
                (cheek - expect).abs() < 45.0,
                "face {i}: centre {cheek} vs skin {expect}"
            );
        }
        assert!(mean_std(&cheeks).1 > 0.25, "skin tones too uniform");
        assert!(mean_std(&hair).1 > 0.35, "hair colours too uniform");
    }

    #[test]
    fn eyes_and_mouth_are_darker_than_cheeks() {
        let size = 128u32;
        let (mut eyes, mut mouths, mut cheeks) = (0.0, 0.0, 0.0);
        for i in 0..40 {
            let mut p = FaceParams::from_seed(21, i);
            p.pose = Pose {
                dx: 0.0,
                dy: 0.0,
                scale: 1.0,
                tilt: 0.0,
                light: 0.0,
            };
            let img = render(&p, size);
            let ey = 0.5 + p.eyes.y;
            let iris = p.eyes.gaze * p.eyes.size * 0.45;
            eyes += patch_luma(&img, size, 0.5 + p.eyes.spacing + iris, ey + 0.004, 0);
            mouths += patch_luma(&img, size, 0.5, 0.5 + p.mouth.y, 0);
            cheeks += patch_luma(&img, size, 0.5 - p.eyes.spacing, 0.5 + p.mouth.y - 0.1, 1);
        }
        assert!(
            eyes < cheeks * 0.6,
            "pupils {eyes} not darker than cheeks {cheeks}"
        );
        assert!(
            mouths < cheeks * 0.85,
            "mouths {mouths} not darker than cheeks {cheeks}"
        );
    }

    #[test]
    fn hair_styles_cover_the_range() {
        let params: Vec<_> = (0..500)
            .map(|i| FaceParams::from_seed(13, i).hair)
            .collect();
        assert!(params.iter().any(|h| h.baldness > 0.8));
        assert!(params.iter().any(|h| h.length > 0.8));
        assert!(params.iter().any(|h| h.fringe > 0.8));
        assert!(params.iter().any(|h| h.part.abs() > 0.7));
        assert!(params.iter().any(|h| h.length < 0.1 && h.baldness == 0.0));
    }
}
