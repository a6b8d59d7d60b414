#!/usr/bin/env bash
# facestudio against its PyTorch peer: the same VAE, the same batch, the same threads, the two
# sides taking turns in one session. See benches/peer/README.md.
#
# usage: benches/peer.sh [--rounds N] [--steps N] [--warmup N] [--quick] [--threads N]
#                        [--kernels native|candle] [--upsample transpose|nearest] [--no-build]
#                        [--omp-wait auto|default|passive|active]
#
# The last line reads `train_ratio=X decode_ratio=Y rss_ratio=Z`: facestudio over PyTorch, medians
# over the rounds (above 1 is faster for the throughputs; below 1 is leaner for the RSS).
set -euo pipefail

die() {
    echo "peer.sh: error: $*" >&2
    exit 1
}

usage() {
    sed -n '5,7p' "$0" | sed 's/^# //'
    exit "${1:-0}"
}

rounds=3
steps=10
warmup=2
threads=2
kernels=native
upsample=transpose
build=1
omp_wait=auto
shape_args=(--batch 64 --size 64 --latent 128 --widths 32,64,128,256)

need() {
    [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value"
}

while [[ $# -gt 0 ]]; do
    case $1 in
        --rounds) need "$@"; rounds=$2; shift 2 ;;
        --steps) need "$@"; steps=$2; shift 2 ;;
        --warmup) need "$@"; warmup=$2; shift 2 ;;
        --threads) need "$@"; threads=$2; shift 2 ;;
        --kernels) need "$@"; kernels=$2; shift 2 ;;
        --upsample) need "$@"; upsample=$2; shift 2 ;;
        --omp-wait) need "$@"; omp_wait=$2; shift 2 ;;
        --quick) rounds=1; steps=3; warmup=1; shift ;;
        --no-build) build=0; shift ;;
        -h | --help) usage 0 ;;
        *) echo "peer.sh: unknown option $1" >&2; usage 2 ;;
    esac
done
for n in rounds steps threads; do
    [[ ${!n} =~ ^[1-9][0-9]*$ ]] || die "--$n must be a whole number of at least 1, got ${!n}"
done
[[ $warmup =~ ^[0-9]+$ ]] || die "--warmup must be a whole number, got $warmup"
[[ $kernels == native || $kernels == candle ]] || die "--kernels is native or candle"
[[ $upsample == transpose || $upsample == nearest ]] || die "--upsample is transpose or nearest"
case $omp_wait in
    auto | default | passive | active) ;;
    *) die "--omp-wait is auto, default, passive or active" ;;
esac

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
peer=benches/peer
venv=$peer/.venv
py=$venv/bin/python
work=$(mktemp -d "${TMPDIR:-/tmp}/facestudio-peer.XXXXXX")
trap 'rm -rf "$work"' EXIT

# (a) The peer's virtual environment, reinstalled only when requirements.txt changes.
setup_venv() {
    local base=${PYTHON:-python3} want have=""
    command -v "$base" >/dev/null || die "$base not found; set PYTHON to a Python 3.9+ interpreter"
    want=$(sha256sum "$peer/requirements.txt" | cut -d' ' -f1)
    [[ -f $venv/.requirements.sha256 ]] && have=$(<"$venv/.requirements.sha256")
    if [[ -x $py && $have == "$want" ]] && "$py" -c 'import torch, numpy, PIL' 2>/dev/null; then
        return
    fi
    echo "== setting up $venv (torch from PyPI: several GB the first time)" >&2
    [[ -x $py ]] || "$base" -m venv "$venv" || die "cannot create the venv $venv"
    # shellcheck disable=SC2086 # PEER_PIP_ARGS is a list of pip options
    "$py" -m pip install --disable-pip-version-check -q ${PEER_PIP_ARGS:-} \
        -r "$peer/requirements.txt" || die "pip could not install $peer/requirements.txt"
    "$py" -c 'import torch, numpy, PIL' || die "torch does not import in $venv"
    echo "$want" >"$venv/.requirements.sha256"
}

# (b) facestudio's bench binary, built with the release profile.
find_bench() {
    local target=${CARGO_TARGET_DIR:-target} exe=""
    if [[ $build == 1 ]]; then
        echo "== cargo bench --bench train_step --no-run" >&2
        cargo bench --bench train_step --no-run 2>&1 | tee "$work/build.log" >&2 \
            || die "cargo could not build the train_step bench (see above)"
        exe=$(sed -n 's/.*Executable .*(\(.*train_step-[^)]*\)).*/\1/p' "$work/build.log" | tail -1)
    fi
    if [[ -z $exe ]]; then
        exe=$(find "$target/release/deps" -maxdepth 1 -type f -name 'train_step-*' -perm -u+x \
            ! -name '*.d' -printf '%T@ %p\n' 2>/dev/null | sort -n | tail -1 | cut -d' ' -f2-)
    fi
    [[ -n $exe && -x $exe ]] \
        || die "no train_step bench binary under $target/release/deps; run without --no-build"
    echo "$exe"
}

setup_venv
bench=$(find_bench)

run_rust() {
    RAYON_NUM_THREADS=$threads "$bench" --kernels "$kernels" --upsample "$upsample" \
        --steps "$1" --warmup "$2" "${shape_args[@]}" | grep '^side=facestudio' \
        || die "the facestudio bench printed no result line"
}

run_torch() {
    local env=(OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads")
    if [[ $omp_wait == default ]]; then
        env+=(PEER_OMP_WAIT=default)
    else
        env+=(OMP_WAIT_POLICY="${omp_wait^^}")
    fi
    env "${env[@]}" "$py" "$peer/torch_vae.py" bench \
        --threads "$threads" --upsample "$upsample" --steps "$1" --warmup "$2" \
        "${shape_args[@]}" | grep '^side=pytorch' || die "the PyTorch peer printed no result line"
}

read -r load _ </proc/loadavg
busy=0
awk -v l="$load" 'BEGIN { exit !(l > 0.5) }' && busy=1
# OpenMP threads that spin at barriers lose several times more than rayon's on shared cores.
if [[ $omp_wait == auto ]]; then
    omp_wait=default
    ((busy)) && omp_wait=passive
fi
echo "== $(nproc) CPUs, load average $load; $threads threads a side, $rounds round(s) of" \
    "$steps steps (+$warmup warm-up), upsample=$upsample, facestudio kernels=$kernels," \
    "OpenMP wait policy $omp_wait" >&2
if ((busy)); then
    echo "warning: other processes are using the CPUs (load $load): the figures will be noisy;" \
        "measure on a quiet machine" >&2
fi
echo "== warm-up round (not counted)" >&2
run_rust 1 0 >/dev/null
run_torch 1 0 >/dev/null

results=$work/results.txt
for ((r = 1; r <= rounds; r++)); do
    echo "== round $r of $rounds" >&2
    if ((r % 2 == 1)); then
        run_rust "$steps" "$warmup" | tee -a "$results"
        run_torch "$steps" "$warmup" | tee -a "$results"
    else
        run_torch "$steps" "$warmup" | tee -a "$results"
        run_rust "$steps" "$warmup" | tee -a "$results"
    fi
done

# (d) The table of medians and the ratio line.
"$py" - "$results" <<'EOF'
import statistics
import sys

rows = {}
for line in open(sys.argv[1]):
    fields = dict(kv.split("=", 1) for kv in line.split())
    side = fields["side"]
    if "kernels" in fields:
        side += f" ({fields['kernels']})"
    rows.setdefault(side, []).append(fields)

keys = ["train_img_s", "decode_img_s", "forward_ms", "backward_ms", "adam_ms",
        "train_peak_share", "decode_peak_share", "peak_rss_mb"]
heads = ["train img/s", "decode img/s", "fwd ms", "bwd ms", "adam ms",
         "train peak", "decode peak", "RSS MB"]
med = {s: {k: statistics.median(float(r[k]) for r in rs) for k in keys} for s, rs in rows.items()}
print(f"\nmedians over {max(len(rs) for rs in rows.values())} round(s)")
print(f"{'side':<22}" + "".join(f"{h:>13}" for h in heads))
for side, m in med.items():
    cells = [f"{m[k]:>13.1%}" if "share" in k else f"{m[k]:>13.1f}" for k in keys]
    print(f"{side:<22}" + "".join(cells))
fs = next(m for s, m in med.items() if s.startswith("facestudio"))
pt = med["pytorch"]
print(f"train_ratio={fs['train_img_s'] / pt['train_img_s']:.3f} "
      f"decode_ratio={fs['decode_img_s'] / pt['decode_img_s']:.3f} "
      f"rss_ratio={fs['peak_rss_mb'] / pt['peak_rss_mb']:.3f}")
EOF
