#!/usr/bin/env bash
# CelebA at 64 x 64: facestudio and the PyTorch peer trained with the same architecture, data,
# held-out split, steps and seed (the peer starts from facestudio's initial weights and sees the
# same batches and noise), then the held-out negative ELBO per image of each (nats; lower is
# better) and the wall time of training.
#
#   benches/quality/celeba.sh [--steps N] [--seeds "0 1"] [--schedules "constant cosine"]
#                             [--data DIR]
#
# Each schedule runs on both sides, so the table shows facestudio against the peer with the
# same recipe, and each recipe against the other.
set -euo pipefail
cd "$(dirname "$0")/../.."

steps=800
seeds="0"
schedules="constant cosine"
data="$(cd .. && pwd)/shared/datasets/celeba/img_align_celeba"
while [ $# -gt 0 ]; do
    case "$1" in
        --steps) steps="$2"; shift 2 ;;
        --seeds) seeds="$2"; shift 2 ;;
        --schedules) schedules="$2"; shift 2 ;;
        --data) data="$2"; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
[ -d "$data" ] || { echo "CelebA images not found in $data (pass --data DIR)" >&2; exit 1; }
py=benches/peer/.venv/bin/python
if [ ! -x "$py" ]; then
    echo "the PyTorch peer is not installed; run benches/peer.sh --quick once" >&2
    exit 1
fi
cargo build --release --quiet
bin=target/release/facestudio
out=runs/celeba-bench
mkdir -p "$out"

printf '%-9s %-5s %-11s %7s %12s %9s %9s %8s\n' schedule seed side steps neg_ELBO recon KL wall_s
for schedule in $schedules; do
    for seed in $seeds; do
        name="$schedule-s$seed"
        cfg="$out/$name.toml"
        cat > "$cfg" <<TOML
[data]
source = "$data"
[train]
steps = $steps
seed = $seed
lr_schedule = "$schedule"
val_every = $steps
sample_every = $steps
checkpoint_every = $steps
checkpoint_minutes = 0.0
device = "cpu"
TOML
        rm -rf "${out:?}/$name"
        start=$(date +%s.%N)
        "$bin" train --headless --config "$cfg" --run "$out/$name" > "$out/$name.train.log" 2>&1
        wall=$(echo "$(date +%s.%N) - $start" | bc)
        "$bin" eval --model "$out/$name" --held-out --json "$out/$name.eval.json" > /dev/null
        python3 - "$out/$name.eval.json" "$schedule" "$seed" "$steps" "$wall" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
sched, seed, steps, wall = sys.argv[2:6]
print(f"{sched:<9} {seed:<5} {'facestudio':<11} {steps:>7} {r['neg_elbo']:12.1f} "
      f"{r['recon']:9.1f} {r['kl']:9.2f} {float(wall):8.1f}")
PY
        line=$("$py" benches/peer/torch_vae.py train --data celeba --path "$data" \
            --steps "$steps" --seed "$seed" --lr-schedule "$schedule" 2>/dev/null | tail -1)
        python3 - "$line" "$schedule" "$seed" "$steps" <<'PY'
import sys
kv = dict(p.split("=", 1) for p in sys.argv[1].split() if "=" in p)
sched, seed, steps = sys.argv[2:5]
print(f"{sched:<9} {seed:<5} {'pytorch':<11} {steps:>7} {float(kv['val_neg_elbo_nats']):12.1f} "
      f"{float(kv['val_recon']):9.1f} {float(kv['val_kl']):9.2f} {float(kv['wall_s']):8.1f}")
PY
    done
done
