#!/usr/bin/env bash
# A long run with the studio open: memory over time, the studio's own CPU share, and the loss
# curve against a headless run of the same seed.
#
# usage: benches/soak.sh [--minutes M] [--data SOURCE] [--size COLSxROWS] [--every SECONDS]
#                        [--compare-steps K] [--config FILE] [--keep DIR]
#
# The studio trains in a detached tmux session of the given size (default 160x48) for M minutes
# (default 60). Every SECONDS (default 30) a line gives the step, the resident memory of the
# studio and of its trainer process, and the CPU each took since the previous line. Then the
# studio is stopped through its quit dialog, the same configuration trains headless for the
# first K steps (default 200) into a second run, and the two metrics files are compared step
# by step. The last line reads
# `studio_rss_mb=A->B trainer_rss_mb=C->D ui_cpu_share=E loss_max_rel_diff=F open_vs_headless=G`
# (memory after the first sample and at the end; the studio's CPU as a share of one core; the
# largest relative difference of the total loss over the common steps; training images/s with
# the studio open over headless for those steps).
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
    echo "soak.sh: error: $*" >&2
    exit 1
}

minutes=60
data=synthetic
size=160x48
every=30
compare=200
config=""
keep=""
while [[ $# -gt 0 ]]; do
    case $1 in
        --minutes) minutes=$2; shift 2 ;;
        --data) data=$2; shift 2 ;;
        --size) size=$2; shift 2 ;;
        --every) every=$2; shift 2 ;;
        --compare-steps) compare=$2; shift 2 ;;
        --config) config=$(realpath "$2"); shift 2 ;;
        --keep) keep=$2; shift 2 ;;
        -h | --help) sed -n '4,5p' "$0" | sed 's/^# //'; exit 0 ;;
        *) die "unknown option $1" ;;
    esac
done
[[ $minutes =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--minutes must be a number, got $minutes"
[[ $size =~ ^[0-9]+x[0-9]+$ ]] || die "--size must be COLSxROWS, got $size"
[[ $compare =~ ^[1-9][0-9]*$ ]] || die "--compare-steps must be a whole number, got $compare"
command -v tmux >/dev/null || die "tmux is not installed"
[[ -e $data || $data != */* ]] || die "the data set $data does not exist"
[[ $data != */* ]] || data=$(realpath "$data")

cargo build --release --quiet --locked
bin=$(realpath target/release/facestudio)
if [[ -n $keep ]]; then
    mkdir -p "$keep"
    work=$(realpath "$keep")
else
    work=$(mktemp -d "${TMPDIR:-/tmp}/facestudio-soak.XXXXXX")
fi
sock="facestudio-soak-$$"
cleanup() {
    tmux -L "$sock" kill-server 2>/dev/null || true
    [[ -n $keep ]] || rm -rf "$work"
}
trap cleanup EXIT
[[ -z $config ]] || cp "$config" "$work/facestudio.toml"

ticks() { # utime + stime of a process, in clock ticks
    awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0
}
rss_mb() {
    awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$1/status" 2>/dev/null || echo 0
}
field() { # a field of the run's status.json
    sed -n "s/.*\"$2\": *\"\{0,1\}\([^\",]*\).*/\1/p" "$work/runs/$1/status.json" 2>/dev/null | head -1 || true
}

cols=${size%x*}
rows=${size#*x}
tmux -L "$sock" -f /dev/null new-session -d -x "$cols" -y "$rows" -c "$work" \
    "exec '$bin' --run soak --data '$data' --steps 1000000"
studio=$(tmux -L "$sock" display -p '#{pane_pid}')
for _ in $(seq 600); do
    trainer=$(field soak pid)
    [[ -n $trainer && $(field soak state) == running ]] && break
    sleep 1
done
[[ -n ${trainer:-} ]] || die "the studio's trainer did not start (see $work/runs/soak/studio.log)"

hz=$(getconf CLK_TCK)
end=$(($(date +%s) + $(awk -v m="$minutes" 'BEGIN {printf "%d", m * 60}')))
first_studio="" first_trainer=""
ui_ticks=0 ui_secs=0
echo "elapsed_s step studio_rss_mb trainer_rss_mb studio_cpu trainer_cpu"
start=$(date +%s)
s0=$(ticks "$studio") t0=$(ticks "$trainer") w0=$start
while (($(date +%s) < end)); do
    sleep "$every"
    kill -0 "$studio" 2>/dev/null || die "the studio exited (see $work/runs/soak/studio.log)"
    now=$(date +%s) s1=$(ticks "$studio") t1=$(ticks "$trainer")
    srss=$(rss_mb "$studio") trss=$(rss_mb "$trainer")
    [[ -n $first_studio ]] || { first_studio=$srss; first_trainer=$trss; }
    dt=$((now - w0))
    ui_ticks=$((ui_ticks + s1 - s0)) ui_secs=$((ui_secs + dt))
    awk -v e=$((now - start)) -v st="$(field soak step)" -v sr="$srss" -v tr="$trss" \
        -v ds=$((s1 - s0)) -v dtr=$((t1 - t0)) -v dt="$dt" -v hz="$hz" \
        'BEGIN {printf "%d %s %s %s %.3f %.3f\n", e, st, sr, tr, ds / hz / dt, dtr / hz / dt}'
    s0=$s1 t0=$t1 w0=$now
done
last_studio=$(rss_mb "$studio") last_trainer=$(rss_mb "$trainer")
tmux -L "$sock" send-keys q
sleep 1
tmux -L "$sock" send-keys s
for _ in $(seq 120); do
    kill -0 "$studio" 2>/dev/null || break
    sleep 1
done

# The same settings, headless, for the first K steps.
(cd "$work" && "$bin" train --headless --run headless --data "$data" --steps "$compare" \
    >"$work/headless.out" 2>&1) || die "the headless run failed: $(tail -3 "$work/headless.out")"
python3 - "$work/runs/soak/metrics.jsonl" "$work/runs/headless/metrics.jsonl" "$compare" \
    >"$work/compare.out" <<'PY'
import json, sys
def train(path):
    out = {}
    for line in open(path):
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if r.get("kind", "train") == "train" and "total" in r:
            out[r["step"]] = r
    return out
a, b, k = train(sys.argv[1]), train(sys.argv[2]), int(sys.argv[3])
common = sorted(s for s in a if s in b and s <= k)
diff = max(abs(a[s]["total"] - b[s]["total"]) / max(abs(b[s]["total"]), 1e-9) for s in common)
rate = lambda m: sum(m[s]["ips"] for s in common[1:]) / max(len(common) - 1, 1)
print(f"{diff:.2e} {rate(a) / rate(b):.3f} {len(common)}")
PY
read -r diff ratio n <"$work/compare.out"
share=$(awk -v t="$ui_ticks" -v s="$ui_secs" -v hz="$hz" 'BEGIN {printf "%.4f", t / hz / s}')
echo "compared $n logged steps up to step $compare"
echo "studio_rss_mb=$first_studio->$last_studio trainer_rss_mb=$first_trainer->$last_trainer" \
    "ui_cpu_share=$share loss_max_rel_diff=$diff open_vs_headless=$ratio"
