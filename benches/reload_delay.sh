#!/usr/bin/env bash
# How long a saved config edit takes to reach a running training.
#
# usage: benches/reload_delay.sh [--trials N] [--size PIXELS]
#
# Trains headless on the synthetic faces (a small model, so that a step is short, unless --size
# says otherwise), then N times (default 10) writes a new beta into the run's config.toml the
# way many editors do (a temporary file renamed over it) and times how long it takes until
# metrics.jsonl records the new value. The delay is the debounce (a file must be quiet for
# 200 ms) plus the rest of the step in progress. The last line reads
# `reload_delay_ms median=M min=A max=B step_ms=S`.
set -euo pipefail
cd "$(dirname "$0")/.."

trials=10
size=32
while [[ $# -gt 0 ]]; do
    case $1 in
        --trials) trials=$2; shift 2 ;;
        --size) size=$2; shift 2 ;;
        *) echo "reload_delay.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

cargo build --release --quiet --locked
bin=$(realpath target/release/facestudio)
work=$(mktemp -d "${TMPDIR:-/tmp}/facestudio-reload.XXXXXX")
trainer=""
cleanup() {
    [[ -z $trainer ]] || kill "$trainer" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
cd "$work"
widths="[16, 32, 64]"
[[ $size == 32 ]] || widths="[32, 64, 128, 256]"
cat >facestudio.toml <<EOF
[data]
synthetic_count = 1000
[model]
image_size = $size
widths = $widths
latent = 16
[train]
batch_size = 32
steps = 1000000
log_every = 1
sample_every = 100000
val_every = 100000
checkpoint_every = 100000
checkpoint_minutes = 0.0
device = "cpu"
EOF
"$bin" train --headless --run r >train.out 2>&1 &
trainer=$!
config=runs/r/config.toml
metrics=runs/r/metrics.jsonl
for _ in $(seq 300); do
    [[ -s $metrics ]] && break
    sleep 0.2
done
[[ -s $metrics ]] || { echo "the trainer logged no step: $(tail -3 train.out)" >&2; exit 1; }
sleep 2

ms() { date +%s%3N; }
delays=()
for i in $(seq "$trials"); do
    beta="0.$((500 + i))"
    sed "s/^beta = .*/beta = $beta/" "$config" >"$config.tmp"
    before=$(grep -c '"kind":"setting"' "$metrics" || true)
    t0=$(ms)
    mv "$config.tmp" "$config"
    while :; do
        now=$(grep -c '"kind":"setting"' "$metrics" || true)
        ((now > before)) && break
        (($(ms) - t0 < 20000)) || { echo "trial $i: no setting record in 20 s" >&2; exit 1; }
        sleep 0.005
    done
    d=$(($(ms) - t0))
    grep '"kind":"setting"' "$metrics" | tail -1 | grep -q "$beta" ||
        { echo "trial $i: the newest setting record is not beta = $beta" >&2; exit 1; }
    echo "trial $i: beta = $beta in force after $d ms"
    delays+=("$d")
    sleep 0.5
done
step_ms=$(tail -20 "$metrics" | grep '"kind":"train"' | sed 's/.*"ips":\([0-9.]*\).*/\1/' |
    awk '{s += 32 * 1000 / $1; n++} END {printf "%.0f", s / n}')
printf '%s\n' "${delays[@]}" | sort -n | awk -v s="$step_ms" '
    {v[NR] = $1} END {printf "reload_delay_ms median=%d min=%d max=%d step_ms=%s\n",
    v[int((NR + 1) / 2)], v[1], v[NR], s}'
