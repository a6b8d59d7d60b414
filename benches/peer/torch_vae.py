#!/usr/bin/env python3
"""The PyTorch peer of facestudio's VAE, for side-by-side speed and quality comparisons.

Subcommands:
  bench  trains the conv VAE on random images and decodes latents, like benches/train_step.rs,
         and prints one `side=pytorch ...` line with the same keys;
  train  trains on CelebA (conv VAE, Bernoulli decoder) or Frey Face (MLP, Gaussian decoder)
         and prints one `side=pytorch data=...` line with the held-out negative ELBO.

The model mirrors src/model.rs layer for layer. Everything random that facestudio draws from
its seeded SplitMix64 generator (src/rng.rs) is drawn here from a bit-exact copy of it: the
weight initialisation, the validation split, the epoch shuffles, the flips, the
reparameterisation noise of training and of evaluation. A peer run therefore starts from the
same weights and sees the same batches and the same noise as a facestudio run with the same
seed and settings.
"""

import argparse
import json
import math
import os
import resource
import sys
import time
from pathlib import Path


def _omp_wait_policy():
    """Spinning OpenMP threads lose several times more than rayon's on busy cores: unless told
    otherwise (OMP_WAIT_POLICY, or PEER_OMP_WAIT=default), they sleep when the load is high."""
    if "OMP_WAIT_POLICY" in os.environ or os.environ.get("PEER_OMP_WAIT") == "default":
        return
    try:
        load = os.getloadavg()[0]
    except OSError:
        return
    if load > 0.5:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        print(f"peer: load average {load:.2f}, so OMP_WAIT_POLICY=PASSIVE "
              "(PEER_OMP_WAIT=default keeps PyTorch's own)", file=sys.stderr)


_omp_wait_policy()

import numpy as np  # noqa: E402 - OpenMP reads its wait policy when torch loads it
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

# Slope of the leaky ReLU used between convolutions (src/model.rs, LEAK).
LEAK = 0.2
REPO = Path(__file__).resolve().parents[2]
CELEBA = REPO.parent / "shared" / "datasets" / "celeba" / "img_align_celeba"
FREY = REPO.parent / "shared" / "datasets" / "frey" / "frey_faces_u8_1965x28x20.npy"
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp")

# ---------------------------------------------------------------------------------------------
# facestudio's random numbers (src/rng.rs), bit for bit
# ---------------------------------------------------------------------------------------------

MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3


def _mix(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


class Rng:
    """SplitMix64, as facestudio's `Rng`; bulk draws are vectorised with numpy."""

    def __init__(self, seed):
        self.state = (seed ^ GOLDEN) & MASK

    @classmethod
    def keyed(cls, seed, purpose, index):
        h = FNV_OFFSET
        for b in purpose.encode():
            h = ((h ^ b) * FNV_PRIME) & MASK
        r = cls(seed ^ h)
        r.state ^= (index * 0xD1B54A32D192ED03) & MASK
        r.next_u64()
        return r

    def next_u64(self):
        self.state = (self.state + GOLDEN) & MASK
        return _mix(self.state)

    def uniform(self):
        return (self.next_u64() >> 11) / float(1 << 53)

    def below(self, n):
        return (self.next_u64() * n) >> 64

    def shuffle(self, items):
        for i in range(len(items) - 1, 0, -1):
            j = self.below(i + 1)
            items[i], items[j] = items[j], items[i]

    def uniforms(self, n):
        """`n` draws of `uniform()` as float64."""
        with np.errstate(over="ignore"):
            steps = np.arange(1, n + 1, dtype=np.uint64) * np.uint64(GOLDEN)
            z = np.uint64(self.state) + steps
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            z = z ^ (z >> np.uint64(31))
        self.state = (self.state + n * GOLDEN) & MASK
        return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)

    def normals(self, n):
        """`n` standard normal draws (Box-Muller) as float32, as `Rng::normals`."""
        u = self.uniforms(2 * n)
        u1 = 1.0 - u[0::2]
        u2 = u[1::2]
        return (np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * math.pi * u2)).astype(np.float32)


def round_half_away(x):
    return math.floor(x + 0.5)


# ---------------------------------------------------------------------------------------------
# The model (src/model.rs)
# ---------------------------------------------------------------------------------------------


class Vae(nn.Module):
    """The conv VAE (DCGAN-style) or the MLP VAE of Kingma and Welling, as facestudio's `Vae`.

    `names()` gives facestudio's safetensors key of every parameter.
    """

    def __init__(self, arch, shape, latent, widths=(32, 64, 128, 256), hidden=200,
                 upsample="transpose", recon="bce", sigma=0.1):
        super().__init__()
        self.arch, self.shape, self.latent = arch, shape, latent
        self.recon, self.sigma, self.upsample = recon, sigma, upsample
        channels, height, width = shape
        self.fs_names = {}
        if arch == "conv":
            assert height == width, "conv models take square images"
            self.enc = nn.ModuleList()
            in_c = channels
            for i, w in enumerate(widths):
                self.enc.append(nn.Conv2d(in_c, w, 4, stride=2, padding=1))
                self._name(self.enc[-1], f"enc.conv{i}")
                in_c = w
            self.side = height >> len(widths)
            self.top = widths[-1]
            features = self.top * self.side * self.side
            self.dec_fc = self._name(nn.Linear(latent, features), "dec.fc")
            self.up = nn.ModuleList()
            for i in reversed(range(len(widths))):
                out_c = channels if i == 0 else widths[i - 1]
                if upsample == "transpose":
                    layer = nn.ConvTranspose2d(widths[i], out_c, 4, stride=2, padding=1)
                else:
                    layer = nn.Conv2d(widths[i], out_c, 3, padding=1)
                self.up.append(self._name(layer, f"dec.up{len(widths) - 1 - i}"))
        elif arch == "mlp":
            pixels = channels * height * width
            features = hidden
            self.enc_hidden = self._name(nn.Linear(pixels, hidden), "enc.hidden")
            self.dec_hidden = self._name(nn.Linear(latent, hidden), "dec.hidden")
            self.dec_out = self._name(nn.Linear(hidden, pixels), "dec.out")
            self.dec_out_logvar = None
            if recon == "gaussian":
                self.dec_out_logvar = self._name(nn.Linear(hidden, pixels), "dec.out_logvar")
        else:
            raise ValueError(f"unknown arch {arch!r}")
        if recon == "gaussian" and arch != "mlp":
            raise ValueError("the gaussian decoder needs the mlp arch, as in facestudio")
        self.fc_mu = self._name(nn.Linear(features, latent), "fc_mu")
        self.fc_logvar = self._name(nn.Linear(features, latent), "fc_logvar")

    def _name(self, module, prefix):
        self.fs_names[id(module.weight)] = f"{prefix}.weight"
        self.fs_names[id(module.bias)] = f"{prefix}.bias"
        return module

    def names(self):
        return [(self.fs_names[id(p)], p) for p in self.parameters()]

    def init_like_facestudio(self, seed):
        """Uniform in +-1/sqrt(fan_in), weights and biases, drawn as `model::init` draws them."""
        params = dict(self.names())
        with torch.no_grad():
            for name, p in params.items():
                dims = p.shape
                if name.endswith(".bias"):
                    dims = params[name[: -len(".bias")] + ".weight"].shape
                if len(dims) == 4:
                    fan_in = dims[1] * dims[2] * dims[3]
                elif len(dims) == 2:
                    fan_in = dims[1]
                else:
                    fan_in = max(int(np.prod(dims)), 1)
                bound = 1.0 / math.sqrt(fan_in)
                u = Rng.keyed(seed, name, 0).uniforms(p.numel())
                values = ((u * 2.0 - 1.0) * bound).astype(np.float32)
                p.copy_(torch.from_numpy(values.reshape(tuple(p.shape))))

    def encode(self, xs):
        if self.arch == "conv":
            h = xs
            for conv in self.enc:
                h = F.leaky_relu(conv(h), LEAK)
            h = h.flatten(1)
        else:
            h = torch.tanh(self.enc_hidden(xs.flatten(1)))
        return self.fc_mu(h), self.fc_logvar(h)

    def decode_params(self, zs):
        """Logits (bce) or means (mse, gaussian), and the gaussian decoder's log-variances."""
        n = zs.shape[0]
        if self.arch == "conv":
            h = self.dec_fc(zs).view(n, self.top, self.side, self.side)
            for i, layer in enumerate(self.up):
                h = F.leaky_relu(h, LEAK)
                if self.upsample == "nearest":
                    h = F.interpolate(h, scale_factor=2, mode="nearest")
                h = layer(h)
                if i + 1 == len(self.up) and self.recon != "bce":
                    h = torch.sigmoid(h)
            return h, None
        h = torch.tanh(self.dec_hidden(zs))
        out = self.dec_out(h)
        if self.recon != "bce":
            out = torch.sigmoid(out)
        out = out.view(n, *self.shape)
        logvar = None
        if self.dec_out_logvar is not None:
            logvar = self.dec_out_logvar(h).view(n, *self.shape)
        return out, logvar

    def decode(self, zs):
        out, _ = self.decode_params(zs)
        return torch.sigmoid(out) if self.recon == "bce" else out

    def recon_nll(self, out, logvar, xs):
        """Negative log-likelihood per image `(n,)`, in nats."""
        if self.recon == "bce":
            per_pixel = F.binary_cross_entropy_with_logits(out, xs, reduction="none")
        elif self.recon == "mse":
            s2 = self.sigma * self.sigma
            c = 0.5 * math.log(2.0 * math.pi * s2)
            per_pixel = (xs - out).square() * (0.5 / s2) + c
        else:
            c = 0.5 * math.log(2.0 * math.pi)
            per_pixel = 0.5 * ((xs - out).square() * torch.exp(-logvar) + logvar) + c
        return per_pixel.flatten(1).sum(1)

    @staticmethod
    def kl(mu, logvar):
        return -0.5 * (1.0 + logvar - mu.square() - logvar.exp()).sum(1)

    def losses(self, xs, beta, eps):
        """(total, recon, kl), each the mean over the batch of per-image sums."""
        mu, logvar = self.encode(xs)
        zs = mu + torch.exp(0.5 * logvar) * eps
        out, out_logvar = self.decode_params(zs)
        recon = self.recon_nll(out, out_logvar, xs).mean()
        kl = self.kl(mu, logvar).mean()
        return recon + beta * kl, recon, kl


# ---------------------------------------------------------------------------------------------
# bench: the same case as benches/train_step.rs
# ---------------------------------------------------------------------------------------------


def forward_flops(size, widths, latent, upsample, channels=3):
    """Multiply-adds times two of one image forward, as `forward_flops` in train_step.rs."""
    side, c, flops = size, channels, 0.0
    for w in widths:
        side //= 2
        flops += 2.0 * (c * 16 * w * side * side)
        c = w
    features = c * side * side
    flops += 2.0 * 3.0 * (features * latent)
    k = 4 if upsample == "transpose" else 9  # taps per output pixel
    for i in reversed(range(len(widths))):
        out = channels if i == 0 else widths[i - 1]
        side *= 2
        flops += 2.0 * (widths[i] * k * out * side * side)
    return flops


def peak_flops(threads):
    """Theoretical fp32 peak, as `peak_flops` in train_step.rs (threads stand for rayon's)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    mhz = 2500.0
    for line in info.splitlines():
        if line.startswith("cpu MHz"):
            try:
                mhz = float(line.split(":")[1].strip())
            except (IndexError, ValueError):
                pass
            break
    lanes = 16.0 if "avx512f" in info else 8.0
    return threads * lanes * 2.0 * 2.0 * mhz * 1e6


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cmd_bench(a):
    widths = parse_widths(a.widths)
    shape = (3, a.size, a.size)
    model = Vae("conv", shape, a.latent, widths, upsample=a.upsample, recon="bce")
    model.init_like_facestudio(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = Rng(1)
    numel = 3 * a.size * a.size
    batches = [torch.from_numpy(rng.uniforms(a.batch * numel).astype(np.float32))
               .view(a.batch, *shape) for _ in range(4)]

    fwd = bwd = adam = 0.0
    for step in range(a.warmup + a.steps):
        xs = batches[step % len(batches)]
        t0 = time.perf_counter()
        eps = torch.randn(a.batch, a.latent)
        total, _, _ = model.losses(xs, 1.0, eps)
        t1 = time.perf_counter()
        total.backward()
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        if step >= a.warmup:
            fwd += t1 - t0
            bwd += t2 - t1
            adam += t3 - t2
    train_ips = a.steps * a.batch / (fwd + bwd + adam)

    zs = torch.from_numpy(rng.normals(a.batch * a.latent)).view(a.batch, a.latent)
    decode_rounds = max(a.steps, 3)
    with torch.no_grad():
        for _ in range(a.warmup):
            model.decode(zs)
        t0 = time.perf_counter()
        for _ in range(decode_rounds):
            model.decode(zs)
        decode_ips = decode_rounds * a.batch / (time.perf_counter() - t0)

    flops = forward_flops(a.size, widths, a.latent, a.upsample)
    peak = peak_flops(a.threads)

    def ms(s):
        return s * 1000.0 / a.steps

    print(
        f"side=pytorch upsample={a.upsample} size={a.size} latent={a.latent} batch={a.batch} "
        f"train_img_s={train_ips:.1f} decode_img_s={decode_ips:.1f} forward_ms={ms(fwd):.1f} "
        f"backward_ms={ms(bwd):.1f} adam_ms={ms(adam):.1f} "
        f"train_peak_share={3.0 * flops * train_ips / peak:.3f} "
        f"decode_peak_share={flops * decode_ips / peak:.3f} peak_rss_mb={peak_rss_mb():.0f}",
        flush=True,
    )


# ---------------------------------------------------------------------------------------------
# Data, prepared as src/data prepares it
# ---------------------------------------------------------------------------------------------


def scan_folder(root):
    """Image files under `root`, recursively, hidden ones skipped, sorted as `folder::scan`."""
    entries = []
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            items = list(os.scandir(folder))
        except OSError as e:
            print(f"warning: cannot list {folder}: {e}", file=sys.stderr)
            continue
        for item in items:
            if item.name.startswith("."):
                continue
            if item.is_dir():
                stack.append(Path(item.path))
            elif item.name.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS and "." in item.name:
                st = item.stat()
                rel = Path(item.path).relative_to(root)
                entries.append((rel, st.st_size, st.st_mtime_ns))
    entries.sort(key=lambda e: e[0].parts)
    return entries


def cache_key(root, entries, size, channels, crop):
    """The name of facestudio's decoded-image cache file for this folder (src/data/cache.rs)."""
    h = FNV_OFFSET

    def add(data):
        nonlocal h
        for b in data:
            h = ((h ^ b) * FNV_PRIME) & MASK
        h = ((h ^ 0xFF) * FNV_PRIME) & MASK

    add((1).to_bytes(4, "little"))
    add(str(Path(os.path.realpath(root))).encode())
    add(f"({size[0]}, {size[1]}) {channels} {crop.capitalize()}".encode())
    for rel, nbytes, mtime_ns in entries:
        add(str(rel).encode())
        add(nbytes.to_bytes(8, "little"))
        add(mtime_ns.to_bytes(16, "little"))
    return f"{h:016x}"


def facestudio_cache_dir(configured):
    if configured:
        return Path(configured)
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg) / "facestudio"
    home = os.environ.get("HOME")
    return Path(home) / ".cache" / "facestudio" if home else None


def read_cache(path, channels, size):
    """Pixels (N, C, H, W) u8 and labels of a facestudio cache file, or None."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    if len(raw) < 8 or raw[:4] != b"FSC1":
        return None
    n = int.from_bytes(raw[4:8], "little")
    header = json.loads(raw[8:8 + n])
    pixels = np.frombuffer(raw, dtype=np.uint8, offset=8 + n)
    shape = (len(header["labels"]), header["channels"], header["height"], header["width"])
    if pixels.size != int(np.prod(shape)) or shape[1:] != (channels, *size):
        return None
    return pixels.reshape(shape), header["labels"]


def crop_rect(crop, w, h):
    """`folder::crop_rect`: (x, y, width, height)."""
    if crop == "none":
        return 0, 0, w, h
    if crop == "center":
        s = min(w, h)
        return (w - s) // 2, (h - s) // 2, s, s
    s = max(round_half_away(float(np.float32(min(w, h)) * np.float32(0.832))), 1)
    return (w - s) // 2, (h - s) // 2, s, s


def _catmull_rom(x):
    """The image crate's `catmullrom_kernel` (B = 0, C = 0.5) in float32, term by term."""
    f = np.float32
    a = np.abs(x.astype(np.float32))
    a2 = a * a
    a3 = a2 * a
    inner = (f(9.0) * a3 + f(-15.0) * a2) + f(6.0)
    outer = ((f(-3.0) * a3 + f(15.0) * a2) + f(-24.0) * a) + f(12.0)
    k = np.where(a < f(1.0), inner, np.where(a < f(2.0), outer, f(0.0)))
    return (k / f(6.0)).astype(np.float32)


def _taps(size, new_size):
    """Per output index: the first input index and the normalised float32 weights."""
    f = np.float32
    ratio = f(size) / f(new_size)
    sratio = max(ratio, f(1.0))
    support = f(2.0) * sratio
    lefts, weights = [], []
    for out in range(new_size):
        centre = (f(out) + f(0.5)) * ratio
        left = min(max(int(math.floor(centre - support)), 0), size - 1)
        right = min(max(int(math.ceil(centre + support)), left + 1), size)
        centre = centre - f(0.5)
        idx = np.arange(left, right, dtype=np.float32)
        w = _catmull_rom((idx - centre) / sratio)
        total = f(0.0)
        for v in w:
            total = f(total + v)
        lefts.append(left)
        weights.append((w / total).astype(np.float32))
    width = max(len(w) for w in weights)
    index = np.zeros((new_size, width), dtype=np.int64)
    wmat = np.zeros((new_size, width), dtype=np.float32)
    for i, (left, w) in enumerate(zip(lefts, weights)):
        index[i] = np.minimum(left + np.arange(width), size - 1)
        wmat[i, : len(w)] = w
    return index, wmat


def resize_catmull_rom(img, new_h, new_w):
    """`imageops::resize(.., CatmullRom)` of a u8 HWC array: vertical pass to float32, then
    horizontal, summed tap by tap in the same order, clamped and rounded half away from 0."""
    h, w = img.shape[:2]
    if (h, w) == (new_h, new_w):
        return img.copy()
    src = img.astype(np.float32)
    index, wmat = _taps(h, new_h)
    tmp = np.zeros((new_h, w) + img.shape[2:], dtype=np.float32)
    for k in range(index.shape[1]):
        wk = wmat[:, k].reshape((new_h, 1) + (1,) * (img.ndim - 2))
        tmp += src[index[:, k]] * wk
    index, wmat = _taps(w, new_w)
    out = np.zeros((new_h, new_w) + img.shape[2:], dtype=np.float32)
    for k in range(index.shape[1]):
        wk = wmat[:, k].reshape((1, new_w) + (1,) * (img.ndim - 2))
        out += tmp[:, index[:, k]] * wk
    out = np.clip(out, 0.0, 255.0).astype(np.float64)
    return np.floor(out + 0.5).astype(np.uint8)


def prepare_file(job):
    """Decodes, crops and resizes one image to u8 CHW (3 channels), or returns an error."""
    from PIL import Image

    path, crop, size = job
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("RGB", "L", "RGBA"):
                im = im.convert("RGBA" if "transparency" in im.info or "A" in im.mode else "RGB")
            x, y, cw, ch = crop_rect(crop, im.width, im.height)
            arr = np.asarray(im)[y:y + ch, x:x + cw]
    except Exception as e:  # noqa: BLE001 - any unreadable file is skipped, as facestudio does
        return None, f"cannot decode: {e}"
    out = resize_catmull_rom(arr, size[0], size[1])
    if out.ndim == 2:
        out = np.repeat(out[:, :, None], 3, axis=2)
    return np.ascontiguousarray(out[:, :, :3].transpose(2, 0, 1)), None


def load_folder(root, size, crop, cache_dir, decode, workers):
    """Pixels (N, 3, H, W) u8 of a folder, from facestudio's cache when it holds them."""
    if not root.is_dir():
        sys.exit(f"error: {root} is not a folder of images (pass --path)")
    entries = scan_folder(root)
    if not entries:
        sys.exit(f"error: no {'/'.join(IMAGE_EXTENSIONS)} files under {root}")
    if decode in ("auto", "cache"):
        folder = facestudio_cache_dir(cache_dir)
        key = cache_key(root, entries, size, 3, crop)
        found = read_cache(folder / f"{key}.fsc", 3, size) if folder else None
        if found is not None:
            print(f"data: {len(found[1])} images from facestudio's cache {key}.fsc",
                  file=sys.stderr)
            return found[0]
        if decode == "cache":
            sys.exit(f"error: no facestudio cache {key}.fsc in {folder}; run facestudio on "
                     "this folder first or pass --decode pillow")
    jobs = [(root / rel, crop, size) for rel, _, _ in entries]
    t0 = time.perf_counter()
    if workers > 1:
        from multiprocessing import Pool

        with Pool(workers) as pool:
            results = pool.map(prepare_file, jobs, chunksize=64)
    else:
        results = [prepare_file(j) for j in jobs]
    images = [px for px, _ in results if px is not None]
    bad = [(j[0], err) for j, (px, err) in zip(jobs, results) if px is None]
    for path, err in bad[:20]:
        print(f"warning: skipped {path}: {err}", file=sys.stderr)
    if not images:
        sys.exit(f"error: none of the {len(jobs)} image files under {root} could be read")
    print(f"data: {len(images)} images decoded with Pillow in {time.perf_counter() - t0:.1f}s "
          f"({len(bad)} skipped)", file=sys.stderr)
    return np.stack(images)


def load_npy(path):
    """Pixels (N, C, H, W) u8 of an NPY array of faces, N x H x W or N x H x W x C."""
    if not path.is_file():
        sys.exit(f"error: {path} not found (pass --path)")
    arr = np.load(path)
    if arr.dtype != np.uint8:
        finite = arr[np.isfinite(arr)]
        scale = 255.0 if finite.size == 0 or finite.max() <= 1.0 else 1.0
        arr = np.where(np.isfinite(arr), np.clip(np.round(arr * scale), 0, 255), 0)
        arr = arr.astype(np.uint8)
    if arr.ndim == 3:
        return arr[:, None]
    if arr.ndim == 4 and arr.shape[3] in (1, 3):
        return np.ascontiguousarray(arr.transpose(0, 3, 1, 2))
    sys.exit(f"error: {path}: shape {arr.shape} is not N x H x W or N x H x W x C")


def split(n, fraction, seed):
    """`batcher::split`: (train, val) index lists, ascending."""
    order = list(range(n))
    Rng.keyed(seed, "split", 0).shuffle(order)
    n_val = min(round_half_away(n * fraction), max(n - 1, 0))
    return sorted(order[n_val:]), sorted(order[:n_val])


def epoch_order(n, seed, epoch):
    order = list(range(n))
    Rng.keyed(seed, "epoch", epoch).shuffle(order)
    return order


def flip_mask(ids, seed, epoch, enabled):
    rng = Rng.keyed(seed, "flip", epoch)
    return [enabled and Rng.keyed(rng.next_u64(), "img", i).uniform() < 0.5 for i in ids]


def to_f32(pixels, ids, flips=None):
    xs = pixels[ids].astype(np.float32) / np.float32(255.0)
    if flips is not None and any(flips):
        mask = np.asarray(flips)
        xs[mask] = xs[mask][..., ::-1]
    return torch.from_numpy(np.ascontiguousarray(xs))


# ---------------------------------------------------------------------------------------------
# train: the quality comparison
# ---------------------------------------------------------------------------------------------


def lr_at(lr, schedule, step, total):
    if schedule == "constant":
        return lr
    t = min(step / max(total, 1), 1.0)
    return lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * t)))


def beta_at(beta, warmup, step):
    return beta if warmup == 0 else beta * min((step + 1) / warmup, 1.0)


def clip_grad(params, clip):
    """The global gradient norm; scales the gradients to `clip` when above it (clip > 0)."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = math.sqrt(sum(float(g.double().square().sum()) for g in grads))
    if clip > 0.0 and norm > clip:
        for g in grads:
            g.mul_(clip / norm)
    return norm


@torch.no_grad()
def evaluate(model, pixels, ids, seed, samples, chunk=64, purpose="eval"):
    """Per-image means of (recon, kl) with one posterior draw per image, and the IWAE bound
    with `samples` draws (0 skips it), as src/eval.rs computes them (noise from `seed`)."""
    recon = kl = iwae = 0.0
    log2pi = math.log(2.0 * math.pi)
    for i in range(0, len(ids), chunk):
        xs = to_f32(pixels, ids[i:i + chunk])
        mu, logvar = model.encode(xs)
        rng = Rng.keyed(seed, purpose, i // chunk)

        def draw():
            eps = torch.from_numpy(rng.normals(mu.numel())).view_as(mu)
            return mu + torch.exp(0.5 * logvar) * eps

        z = draw()
        out, out_logvar = model.decode_params(z)
        recon += float(model.recon_nll(out, out_logvar, xs).double().sum())
        kl += float(model.kl(mu, logvar).double().sum())
        if samples > 0:
            log_w = []
            for _ in range(samples):
                z = draw()
                out, out_logvar = model.decode_params(z)
                d = z.shape[1]
                log_px = -model.recon_nll(out, out_logvar, xs)
                log_pz = -0.5 * z.square().sum(1) - 0.5 * d * log2pi
                sq = (z - mu).square() * torch.exp(-logvar)
                log_qz = -0.5 * (sq + logvar).sum(1) - 0.5 * d * log2pi
                log_w.append(log_px + log_pz - log_qz)
            lse = torch.logsumexp(torch.stack(log_w, 1), 1) - math.log(samples)
            iwae += float((-lse).double().sum())
    n = max(len(ids), 1)
    return recon / n, kl / n, (iwae / n if samples > 0 else None)


def cmd_train(a):
    torch.manual_seed(a.seed)
    if a.data == "celeba":
        arch, recon = a.arch or "conv", a.recon or "bce"
        size = (a.image_size, a.image_size)
        root = Path(a.path) if a.path else CELEBA
        pixels = load_folder(root, size, a.crop, a.cache_dir, a.decode, a.workers)
    else:
        arch, recon = a.arch or "mlp", a.recon or "gaussian"
        pixels = load_npy(Path(a.path) if a.path else FREY)
        if arch == "conv":
            sys.exit("error: --data frey runs the mlp arch here (facestudio resizes npy images "
                     "to a square for conv models; the peer does not)")
    n_images = pixels.shape[0]
    shape = tuple(pixels.shape[1:])
    latent = a.latent if a.latent is not None else (128 if a.data == "celeba" else 2)
    model = Vae(arch, shape, latent, parse_widths(a.widths), a.hidden, a.upsample, recon,
                a.gaussian_sigma)
    model.init_like_facestudio(a.seed)
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=a.lr)
    train_ids, val_ids = split(n_images, a.val_fraction, a.seed)
    if not train_ids:
        sys.exit("error: no training images left after the validation split")
    n_train = len(train_ids)
    per_epoch = max(n_train // max(a.batch_size, 1), 1)
    metrics = open(a.metrics, "w") if a.metrics else None
    print(f"peer: {a.data} {n_images} images {shape}, {n_train} training, {len(val_ids)} held "
          f"out, {sum(p.numel() for p in params)} parameters, {a.threads} threads",
          file=sys.stderr)

    wall = 0.0
    epoch, batch, order = 0, 0, epoch_order(n_train, a.seed, 0)
    window = [0, 0.0, 0.0, 0.0]
    for step in range(a.steps):
        if batch >= per_epoch:
            epoch, batch = epoch + 1, 0
            order = epoch_order(n_train, a.seed, epoch)
        ids = [train_ids[k] for k in order[batch * a.batch_size:(batch + 1) * a.batch_size]]
        xs = to_f32(pixels, ids, flip_mask(ids, a.seed, epoch, a.flip))
        t0 = time.perf_counter()
        beta = beta_at(a.beta, a.kl_warmup_steps, step)
        lr = lr_at(a.lr, a.lr_schedule, step, a.steps)
        for group in opt.param_groups:
            group["lr"] = lr
        noise = Rng.keyed(a.seed, "noise", step).normals(len(ids) * latent)
        eps = torch.from_numpy(noise).view(len(ids), latent)
        total, rec, kl = model.losses(xs, beta, eps)
        rec, kl = rec.detach(), kl.detach()
        opt.zero_grad(set_to_none=True)
        total.backward()
        clip_grad(params, a.grad_clip)
        opt.step()
        wall += time.perf_counter() - t0
        batch += 1
        total, rec, kl = total.item(), rec.item(), kl.item()
        if not math.isfinite(total):
            sys.exit(f"error: the loss is {total} at step {step + 1}")
        window = [window[0] + 1, window[1] + total, window[2] + rec, window[3] + kl]
        done = step + 1
        epochs = epoch + batch / per_epoch
        if done % a.log_every == 0 or done == a.steps:
            k = window[0]
            rec_line = {"kind": "train", "step": done, "epoch": epochs, "time": wall,
                        "total": window[1] / k, "recon": window[2] / k, "kl": window[3] / k,
                        "beta": beta, "lr": lr}
            window = [0, 0.0, 0.0, 0.0]
            if metrics:
                metrics.write(json.dumps(rec_line) + "\n")
            if done % (a.log_every * 10) == 0 or done == a.steps:
                print(f"step {done}/{a.steps} loss {rec_line['total']:.2f} "
                      f"(recon {rec_line['recon']:.2f}, KL {rec_line['kl']:.2f}) "
                      f"{done * a.batch_size / wall:.0f} img/s", file=sys.stderr)
        if a.val_every and done % a.val_every == 0 and val_ids:
            # The trainer's own pass: the first 1024 held-out images, noise "val-noise".
            r, k, _ = evaluate(model, pixels, val_ids[:1024], a.seed, 0, 128, "val-noise")
            if metrics:
                metrics.write(json.dumps({"kind": "val", "step": done, "epoch": epochs,
                                          "time": wall, "total": r + k, "recon": r,
                                          "kl": k}) + "\n")
    if metrics:
        metrics.close()

    if not val_ids:
        sys.exit("error: no held-out images (raise --val-fraction)")
    recon_v, kl_v, iwae = evaluate(model, pixels, val_ids, a.eval_seed, a.iwae)
    extra = f" val_iwae_nats={iwae:.3f} iwae_k={a.iwae}" if iwae is not None else ""
    print(f"side=pytorch data={a.data} steps={a.steps} latent={latent} wall_s={wall:.1f} "
          f"val_neg_elbo_nats={recon_v + kl_v:.3f} val_recon={recon_v:.3f} val_kl={kl_v:.3f}"
          f"{extra}", flush=True)


# ---------------------------------------------------------------------------------------------


def parse_widths(text):
    try:
        widths = [int(w) for w in text.split(",")]
    except ValueError:
        sys.exit(f"error: --widths takes numbers separated by commas, got {text!r}")
    if not widths or min(widths) <= 0:
        sys.exit(f"error: --widths needs positive widths, got {text!r}")
    return widths


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2)")
    sub = p.add_subparsers(dest="cmd", required=True)

    b = sub.add_parser("bench", help="training and decoding throughput on random images")
    b.add_argument("--batch", type=int, default=64)
    b.add_argument("--size", type=int, default=64)
    b.add_argument("--latent", type=int, default=128)
    b.add_argument("--widths", default="32,64,128,256")
    b.add_argument("--upsample", choices=["transpose", "nearest"], default="transpose")
    b.add_argument("--steps", type=int, default=10)
    b.add_argument("--warmup", type=int, default=2)
    b.add_argument("--threads", type=int, default=argparse.SUPPRESS)

    t = sub.add_parser("train", help="train on real data and score the held-out images")
    t.add_argument("--data", choices=["celeba", "frey"], required=True)
    t.add_argument("--path", help="the image folder (celeba) or .npy file (frey)")
    t.add_argument("--steps", type=int, default=5000)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--latent", type=int, help="default 128 (celeba), 2 (frey)")
    t.add_argument("--arch", choices=["conv", "mlp"], help="default conv (celeba), mlp (frey)")
    t.add_argument("--recon", choices=["bce", "mse", "gaussian"],
                   help="default bce (celeba), gaussian (frey)")
    t.add_argument("--gaussian-sigma", type=float, default=0.1)
    t.add_argument("--image-size", type=int, default=64)
    t.add_argument("--widths", default="32,64,128,256")
    t.add_argument("--hidden", type=int, default=200)
    t.add_argument("--upsample", choices=["transpose", "nearest"], default="transpose")
    t.add_argument("--crop", choices=["celeba", "center", "none"], default="celeba")
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--lr-schedule", choices=["constant", "cosine"], default="constant")
    t.add_argument("--beta", type=float, default=1.0)
    t.add_argument("--kl-warmup-steps", type=int, default=500)
    t.add_argument("--grad-clip", type=float, default=0.0)
    t.add_argument("--val-fraction", type=float, default=0.05)
    t.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True)
    t.add_argument("--eval-seed", type=int, default=0,
                   help="seed of the evaluation noise (facestudio eval uses 0)")
    t.add_argument("--iwae", type=int, default=0, help="also the IWAE bound with K draws")
    t.add_argument("--log-every", type=int, default=10)
    t.add_argument("--val-every", type=int, default=0,
                   help="also run the trainer's validation pass every N steps (0: off)")
    t.add_argument("--metrics", help="write facestudio-style metrics.jsonl lines here")
    t.add_argument("--decode", choices=["auto", "cache", "pillow"], default="auto",
                   help="celeba pixels: facestudio's cache when present (auto), or Pillow")
    t.add_argument("--cache-dir", default="", help="facestudio's cache folder (data.cache_dir)")
    t.add_argument("--workers", type=int, default=2, help="processes decoding images")
    t.add_argument("--threads", type=int, default=argparse.SUPPRESS)

    a = p.parse_args()
    if a.threads < 1:
        sys.exit("error: --threads must be at least 1")
    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    if a.cmd == "bench":
        if a.steps < 1 or a.batch < 1:
            sys.exit("error: --steps and --batch must be at least 1")
        cmd_bench(a)
    else:
        if a.steps < 1 or a.batch_size < 1 or a.log_every < 1:
            sys.exit("error: --steps, --batch-size and --log-every must be at least 1")
        cmd_train(a)


if __name__ == "__main__":
    main()
