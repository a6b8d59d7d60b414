#!/usr/bin/env bash
# Frey Face as in Kingma and Welling (2013): an MLP with one hidden layer of 200 units each way
# and a Gaussian decoder, for latent sizes 2, 5, 10 and 20. Trains facestudio and the PyTorch
# peer with the same settings, seed and held-out split, and prints the held-out lower bound per
# image (the ELBO, in nats; higher is better) and the importance-weighted bound with 100 draws.
#
#   benches/quality/frey.sh [--steps N] [--latents "2 5 10 20"] [--no-peer]
set -euo pipefail
cd "$(dirname "$0")/../.."

steps=20000
latents="2 5 10 20"
peer=1
while [ $# -gt 0 ]; do
    case "$1" in
        --steps) steps="$2"; shift 2 ;;
        --latents) latents="$2"; shift 2 ;;
        --no-peer) peer=0; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

npy="$(cd .. && pwd)/shared/datasets/frey/frey_faces_u8_1965x28x20.npy"
[ -f "$npy" ] || { echo "Frey Face not found at $npy" >&2; exit 1; }
cargo build --release --quiet
bin=target/release/facestudio
out=runs/frey-bench
mkdir -p "$out"
py=benches/peer/.venv/bin/python
if [ "$peer" = 1 ] && [ ! -x "$py" ]; then
    echo "the PyTorch peer is not installed; run benches/peer.sh --quick once, or pass --no-peer" >&2
    exit 1
fi

printf '%-7s %-12s %10s %10s %10s %8s\n' latent side ELBO IWAE-100 KL wall_s
for z in $latents; do
    cfg="$out/frey-z$z.toml"
    cat > "$cfg" <<TOML
[data]
source = "$npy"
val_fraction = 0.1
flip = false
[model]
arch = "mlp"
channels = 1
latent = $z
hidden = 200
recon_loss = "gaussian"
[train]
batch_size = 100
lr = 0.001
kl_warmup_steps = 0
steps = $steps
seed = 0
log_every = 500
val_every = $steps
sample_every = $steps
checkpoint_every = $steps
checkpoint_minutes = 0.0
device = "cpu"
TOML
    rm -rf "$out/z$z"
    start=$(date +%s.%N)
    "$bin" train --headless --config "$cfg" --run "$out/z$z" > "$out/z$z.train.log" 2>&1
    wall=$(echo "$(date +%s.%N) - $start" | bc)
    "$bin" eval --model "$out/z$z" --held-out -k 100 --json "$out/z$z.eval.json" > /dev/null
    python3 - "$out/z$z.eval.json" "$z" "$wall" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]:<7} {'facestudio':<12} {-r['neg_elbo']:10.1f} {-r['iwae_nll']:10.1f} "
      f"{r['kl']:10.2f} {float(sys.argv[3]):8.1f}")
PY
    if [ "$peer" = 1 ]; then
        line=$("$py" benches/peer/torch_vae.py train --data frey --path "$npy" --latent "$z" \
            --steps "$steps" --seed 0 --batch-size 100 --lr 0.001 --kl-warmup-steps 0 \
            --val-fraction 0.1 --no-flip --iwae 100 --log-every 500 2>/dev/null | tail -1)
        python3 - "$line" "$z" <<'PY'
import sys
kv = dict(p.split("=", 1) for p in sys.argv[1].split() if "=" in p)
iw = kv.get("val_iwae_nats")
iwae = f"{-float(iw):10.1f}" if iw else f"{'-':>10}"
print(f"{sys.argv[2]:<7} {'pytorch':<12} {-float(kv['val_neg_elbo_nats']):10.1f} {iwae} "
      f"{float(kv['val_kl']):10.2f} {float(kv['wall_s']):8.1f}")
PY
    fi
done
