//! Training and decoding throughput of the default model, with candle's ops and with ours.
//!
//! `cargo bench --bench train_step -- [--kernels native|candle|both] [--upsample
//! transpose|nearest|both] [--steps N] [--warmup N] [--batch N] [--size PIXELS] [--latent D]
//! [--widths 32,64,128,256]`
//!
//! Each case trains on random images in [0, 1] (BCE + KL, Adam, as the trainer does) and
//! decodes batches of latents, then prints one `key=value` line: images per second for
//! training and decoding, the mean time of forward, backward and Adam, the share of the
//! machine's peak FLOP/s reached, and the peak resident memory of the case.

use std::time::Instant;

use candle_core::{Device, Tensor};
use facestudio::config::{Config, ModelConfig, Upsample};
use facestudio::model::{self, ImageShape};
use facestudio::ops::{self, Kernels};
use facestudio::optim::Adam;
use facestudio::rng::Rng;

struct Args {
    kernels: Vec<Kernels>,
    upsample: Vec<Upsample>,
    steps: usize,
    warmup: usize,
    batch: usize,
    size: usize,
    latent: usize,
    widths: Vec<usize>,
}

fn parse_args() -> Args {
    let mut args = Args {
        kernels: vec![Kernels::Candle, Kernels::Native],
        upsample: vec![Upsample::Transpose, Upsample::Nearest],
        steps: 10,
        warmup: 2,
        batch: 64,
        size: 64,
        latent: 128,
        widths: vec![32, 64, 128, 256],
    };
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let mut it = raw.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| panic!("{flag} needs a value"))
                .clone()
        };
        match flag.as_str() {
            "--kernels" => {
                args.kernels = match value().as_str() {
                    "native" => vec![Kernels::Native],
                    "candle" => vec![Kernels::Candle],
                    _ => vec![Kernels::Candle, Kernels::Native],
                }
            }
            "--upsample" => {
                args.upsample = match value().as_str() {
                    "transpose" => vec![Upsample::Transpose],
                    "nearest" => vec![Upsample::Nearest],
                    _ => vec![Upsample::Transpose, Upsample::Nearest],
                }
            }
            "--steps" => args.steps = value().parse().expect("--steps: a number"),
            "--warmup" => args.warmup = value().parse().expect("--warmup: a number"),
            "--batch" => args.batch = value().parse().expect("--batch: a number"),
            "--size" => args.size = value().parse().expect("--size: a number"),
            "--latent" => args.latent = value().parse().expect("--latent: a number"),
            "--widths" => {
                args.widths = value()
                    .split(',')
                    .map(|w| w.parse().expect("--widths: numbers"))
                    .collect()
            }
            // `cargo bench` passes `--bench`; anything else unknown is ignored the same way.
            _ => {}
        }
    }
    args
}

/// Peak resident memory of this process in MB since the last [`reset_peak_rss`].
fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .unwrap_or("VmHWM: 0 kB");
    let kb: f64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

/// Lets the next [`peak_rss_mb`] start from the current resident memory (Linux 4.0 and later).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Multiply-adds times two of one image through the model's forward pass.
fn forward_flops(config: &ModelConfig, channels: usize) -> f64 {
    let mut side = config.image_size;
    let mut c = channels;
    let mut flops = 0.0;
    for &w in &config.widths {
        side /= 2;
        flops += 2.0 * (c * 16 * w * side * side) as f64;
        c = w;
    }
    let features = c * side * side;
    flops += 2.0 * 3.0 * (features * config.latent) as f64;
    // Taps per output pixel: a stride-2 transposed convolution with a 4x4 kernel spreads each
    // input pixel over 16 outputs, which is 4 taps per output pixel.
    let k = match config.upsample {
        Upsample::Transpose => 4,
        Upsample::Nearest => 9,
    };
    for i in (0..config.widths.len()).rev() {
        let out = if i == 0 {
            channels
        } else {
            config.widths[i - 1]
        };
        side *= 2;
        flops += 2.0 * (config.widths[i] * k * out * side * side) as f64;
    }
    flops
}

/// Theoretical fp32 peak of the machine: cores times FMA lanes times two FMA units.
fn peak_flops() -> f64 {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let mhz: f64 = info
        .lines()
        .find(|l| l.starts_with("cpu MHz"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(2500.0);
    let lanes = if info.contains("avx512f") { 16.0 } else { 8.0 };
    let cores = rayon::current_num_threads() as f64;
    cores * lanes * 2.0 * 2.0 * mhz * 1e6
}

fn random_images(rng: &mut Rng, n: usize, shape: ImageShape) -> Tensor {
    let values: Vec<f32> = (0..n * shape.numel())
        .map(|_| rng.uniform() as f32)
        .collect();
    Tensor::from_vec(
        values,
        (n, shape.channels, shape.height, shape.width),
        &Device::Cpu,
    )
    .unwrap()
}

fn run_case(args: &Args, kernels: Kernels, upsample: Upsample) -> anyhow::Result<()> {
    ops::set_kernels(kernels);
    reset_peak_rss();
    let mut config = Config::default().model;
    config.image_size = args.size;
    config.latent = args.latent;
    config.widths = args.widths.clone();
    config.upsample = upsample;
    let shape = ImageShape {
        channels: 3,
        height: args.size,
        width: args.size,
    };
    let (vae, varmap) = model::init(&config, shape, 0, &Device::Cpu)?;
    let mut adam = Adam::new(model::named_vars(&varmap), 1e-3)?;
    let mut rng = Rng::new(1);
    let batches: Vec<Tensor> = (0..4)
        .map(|_| random_images(&mut rng, args.batch, shape))
        .collect();

    let (mut fwd, mut bwd, mut opt) = (0.0, 0.0, 0.0);
    for step in 0..args.warmup + args.steps {
        let t0 = Instant::now();
        let forward = vae.forward_train(&batches[step % batches.len()], 1.0, &mut rng)?;
        let t1 = Instant::now();
        let grads = vae.backward(forward)?;
        let t2 = Instant::now();
        adam.step(&grads, 0.0)?;
        let t3 = Instant::now();
        if step >= args.warmup {
            fwd += (t1 - t0).as_secs_f64();
            bwd += (t2 - t1).as_secs_f64();
            opt += (t3 - t2).as_secs_f64();
        }
    }
    let train_s = fwd + bwd + opt;
    let train_ips = (args.steps * args.batch) as f64 / train_s;

    let zs = Tensor::from_vec(
        rng.normals(args.batch * args.latent),
        (args.batch, args.latent),
        &Device::Cpu,
    )?;
    let decode_rounds = args.steps.max(3);
    for _ in 0..args.warmup {
        vae.decode(&zs)?;
    }
    let t0 = Instant::now();
    for _ in 0..decode_rounds {
        vae.decode(&zs)?;
    }
    let decode_ips = (decode_rounds * args.batch) as f64 / t0.elapsed().as_secs_f64();

    let flops = forward_flops(&config, 3);
    let peak = peak_flops();
    let kernel_name = match kernels {
        Kernels::Native => "native",
        Kernels::Candle => "candle",
    };
    let upsample_name = match upsample {
        Upsample::Transpose => "transpose",
        Upsample::Nearest => "nearest",
    };
    let ms = |s: f64| s * 1000.0 / args.steps as f64;
    println!(
        "side=facestudio kernels={kernel_name} upsample={upsample_name} size={} latent={} batch={} \
         train_img_s={train_ips:.1} decode_img_s={decode_ips:.1} forward_ms={:.1} backward_ms={:.1} \
         adam_ms={:.1} train_peak_share={:.3} decode_peak_share={:.3} peak_rss_mb={:.0}",
        args.size,
        args.latent,
        args.batch,
        ms(fwd),
        ms(bwd),
        ms(opt),
        3.0 * flops * train_ips / peak,
        flops * decode_ips / peak,
        peak_rss_mb(),
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    facestudio::device::tune_cpu_threads();
    facestudio::device::keep_freed_memory();
    let args = parse_args();
    for &upsample in &args.upsample {
        for &kernels in &args.kernels {
            run_case(&args, kernels, upsample)?;
        }
    }
    Ok(())
}
