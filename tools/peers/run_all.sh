#!/usr/bin/env bash
# One command: inferneo and its peers on the same workload, one table.
#
#   tools/peers/run_all.sh [--quick] [--preset NAME] [--alternate]
#
# Builds inferneo, writes a HuggingFace directory of the preset's shape (default gpt2, the 124M
# shape; random weights, seed 0), makes a venv under target/peers/venv and installs the peers
# from PyPI, then runs: inferneo (f32, int8, w8a8; for the larger presets every dtype the binary
# has), HF transformers (torch eager, fp32), CTranslate2 f32 and int8, llama.cpp's llama-server
# on GGUF f32, f16, q8_0 and q4_0. A step that fails leaves an error result and the run goes on;
# compare.py prints every system, failed ones as "not available: <reason>".
# --preset gpt2-medium|gpt2-large|gpt2-xl (or distilgpt2): that shape, with settings sized
# for it (see README.md, "Large shapes"); its model, conversions, results, charts and logs get a
# -<preset> suffix (target/peers/results-gpt2-xl/ ...). --alternate runs one system at a time in
# turn, ours and a peer alternating, so that a slow spell of the machine does not fall on one side.
# Results: target/peers/results/*.json and table.md, charts: target/peers/charts/*.svg;
# logs: target/peers/logs/.
# Environment: PEERS_ONLY="ours hf ct2 llama" redoes a subset (its results replaced, the others
# kept); PEERS_DTYPES="f32 int8 ..." sets our dtypes; PEERS_QUANTS="f32 q8_0 ..." llama.cpp's
# GGUF types (default f32 f16 q8_0 q4_0); PEERS_CT2="int8" CTranslate2's (default f32 int8);
# PEERS_PYTHON picks the Python that makes the venv (default python3).
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
QUICK=0 PRESET=gpt2 ALTERNATE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1; shift ;;
    --alternate) ALTERNATE=1; shift ;;
    --preset) [ $# -ge 2 ] || { echo "--preset needs a name" >&2; exit 2; }; PRESET="$2"; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
case "$PRESET" in
  gpt2|distilgpt2|gpt2-medium|gpt2-large|gpt2-xl) ;;
  tiny) echo "--preset tiny: its 128 positions cannot hold the workload (50 + 100 tokens)" >&2; exit 2 ;;
  *) echo "--preset: unknown preset '$PRESET' (gpt2, distilgpt2, gpt2-medium, gpt2-large, gpt2-xl)" >&2; exit 2 ;;
esac
# The 124M shape keeps the directories it always had; another preset gets its own.
SUFFIX=""
[ "$PRESET" = gpt2 ] || SUFFIX="-$PRESET"
ONLY="${PEERS_ONLY:-ours hf ct2 llama}"
WORK="$ROOT/target/peers"
RES="$WORK/results$SUFFIX"
LOGS="$WORK/logs$SUFFIX"
LOGREL="target/peers/logs$SUFFIX"
mkdir -p "$RES" "$LOGS"
# Our dtypes: the three the 124M table always had, and for the larger shapes every dtype the
# binary accepts (checked below; w4a8 and bf16dot where this build has them).
if [ -n "${PEERS_DTYPES:-}" ]; then
  DTYPES="$PEERS_DTYPES"
elif [ "$PRESET" = gpt2 ] || [ "$QUICK" = 1 ]; then
  DTYPES="f32 int8 w8a8"
else
  DTYPES="f32 f16 bf16 int8 w8a8 w4a8 bf16dot"
fi
QUANTS="${PEERS_QUANTS:-f32 f16 q8_0 q4_0}"
CT2_TYPES="${PEERS_CT2:-f32 int8}"
# A full run starts from a clean results directory; a subset (PEERS_ONLY) replaces only its own
# results, so that it can redo the rows that a busy machine spoiled.
if [ -z "${PEERS_ONLY:-}" ]; then
  rm -f "$RES"/*.json "$RES"/table.md "$RES"/load.tsv
else
  for s in $ONLY; do
    case "$s" in
      ours) rm -f "$RES"/ours-*.json ;;
      hf) rm -f "$RES"/hf.json ;;
      ct2) rm -f "$RES"/ct2-*.json ;;
      llama) rm -f "$RES"/llama-*.json ;;
      *) echo "PEERS_ONLY: unknown system $s (ours, hf, ct2, llama)" >&2; exit 2 ;;
    esac
  done
fi
T0=$(date +%s)
PYSYS="$(command -v python3)"

# How busy the machine is with other work while each system is measured (results/load.tsv).
SID="$(ps -o sid= $$ | tr -d ' ')"
"$PYSYS" "$HERE/loadmon.py" "$RES/load.tsv" "$SID" 2 &
MON=$!
trap 'kill $MON 2>/dev/null' EXIT

log() { echo "== [$(( $(date +%s) - T0 ))s] $*" >&2; }
wants() { [[ " $ONLY " == *" $1 "* ]]; }
write_err() {  # result file, system, reason
  "$PYSYS" -c "import sys; sys.path.insert(0, sys.argv[1]); from common import write_error; write_error(*sys.argv[2:])" \
    "$HERE" "$1" "$2" "$3"
}
stamp() {  # result file, t0, t1: the time window the figures were taken in (compare.py's load column)
  "$PYSYS" - "$@" <<'EOF2'
import json, sys
path, t0, t1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
try:
    d = json.load(open(path))
except (OSError, ValueError):
    sys.exit(0)
if "error" not in d and "window" not in d:
    d["window"] = [t0, t1]
    json.dump(d, open(path, "w"), indent=1)
EOF2
}
# step NAME RESULT SYSTEM TIMEOUT_S CMD...: runs CMD with its log; on failure makes sure an error
# result exists (a runner may already have written a more precise one).
step() {
  local name="$1" res="$2" system="$3" limit="$4"; shift 4
  local t=$(date +%s) t0=$(date +%s.%N) rc
  log "$name: $*"
  timeout --kill-after=30 "$limit" "$@" >"$LOGS/$name.log" 2>&1
  rc=$?
  [ -n "$res" ] && [ -s "$res" ] && stamp "$res" "$t0" "$(date +%s.%N)"
  if [ $rc -ne 0 ]; then
    local why="exit status $rc"
    [ $rc -eq 124 ] && why="timed out after ${limit}s"
    if [ -n "$res" ] && ! { [ -s "$res" ] && grep -q '"error"\|"scenarios"\|"batch"' "$res"; }; then
      write_err "$res" "$system" "$why: $(grep -v '^\s*$' "$LOGS/$name.log" | tail -n 1 | cut -c1-200) (log: $LOGREL/$name.log)"
    fi
    log "$name FAILED ($why), see $LOGS/$name.log"
  else
    log "$name done in $(( $(date +%s) - t ))s"
  fi
  return $rc
}

# 1. inferneo. The other systems' results do not depend on our build, so a failed build falls
# back to an existing binary; it is copied so that a concurrent rebuild cannot swap it mid-run.
mkdir -p "$WORK/bin"
INF="$WORK/bin/inferneo"
if step build-inferneo "" "" 3600 cargo build --release --manifest-path "$ROOT/Cargo.toml"; then
  cp "$ROOT/target/release/inferneo" "$INF"
elif [ -x "$ROOT/target/release/inferneo" ]; then
  log "cargo build failed: using the existing target/release/inferneo"
  cp "$ROOT/target/release/inferneo" "$INF"
else
  rm -f "$INF"
fi
# Which source the binary is: the commit, and whether the tree had changes outside tools/peers.
INF_REV="git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
[ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no -- . ':!tools/peers' 2>/dev/null)" ] \
  && INF_REV="$INF_REV + uncommitted changes"
NO_INF="inferneo could not be built (log: $LOGREL/build-inferneo.log)"
# Keep only the dtypes this binary knows (`tokenize` parses --dtype and loads no model).
if [ -x "$INF" ]; then
  KNOWN=""
  for dt in $DTYPES; do
    if "$INF" tokenize --dtype "$dt" x >/dev/null 2>&1; then KNOWN="$KNOWN $dt"; else log "dtype $dt: not in this build, skipped"; fi
  done
  DTYPES="${KNOWN# }"
fi

# 2. The model directory all systems load (written again if it is not of this preset's shape).
MODEL="$WORK/model$SUFFIX"
shape_ok() {
  "$PYSYS" - "$MODEL/config.json" "$PRESET" <<'EOF2'
import json, sys
want = {"gpt2": (768, 12, 12), "distilgpt2": (768, 6, 12), "gpt2-medium": (1024, 24, 16),
        "gpt2-large": (1280, 36, 20), "gpt2-xl": (1600, 48, 25)}[sys.argv[2]]
try:
    c = json.load(open(sys.argv[1]))
except (OSError, ValueError):
    sys.exit(1)
sys.exit(0 if (c.get("n_embd"), c.get("n_layer"), c.get("n_head")) == want else 1)
EOF2
}
if [ ! -s "$MODEL/model.safetensors" ] || ! shape_ok; then
  if [ -x "$INF" ]; then
    rm -rf "$MODEL"
    step init-model "" "" 1800 "$INF" init --preset "$PRESET" --seed 0 --out "$MODEL"
  fi
fi
if [ ! -s "$MODEL/model.safetensors" ]; then
  for dt in ${DTYPES:-f32}; do write_err "$RES/ours-$dt.json" "inferneo $dt" "no model directory: $NO_INF"; done
  for q in $QUANTS; do write_err "$RES/llama-$q.json" "llama.cpp llama-server $q" "no model directory: $NO_INF"; done
  write_err "$RES/hf.json" "HF transformers (torch eager)" "no model directory: $NO_INF"
  for t in $CT2_TYPES; do write_err "$RES/ct2-$t.json" "CTranslate2 $t" "no model directory: $NO_INF"; done
  "$PYSYS" "$HERE/compare.py" --results "$RES" --out "$RES/table.md" --preset "$PRESET"
  exit 1
fi

# 3. The peers' Python: a venv under target/peers, packages from PyPI, one group at a time so
# that one that cannot be installed takes only its own peer down.
VENV="$WORK/venv"
PY="$VENV/bin/python"
HF_ERR="" CT2_ERR="" LLAMA_ERR=""
if [ ! -x "$PY" ]; then
  step venv "" "" 600 "${PEERS_PYTHON:-python3}" -m venv "$VENV" || true
fi
if [ -x "$PY" ]; then
  step pip-base "" "" 600 "$PY" -m pip install -q --upgrade pip || true
  step pip-hf "" "" 1800 "$PY" -m pip install -q torch transformers numpy safetensors \
    || HF_ERR="pip install torch transformers failed (log: $LOGREL/pip-hf.log)"
  step pip-ct2 "" "" 900 "$PY" -m pip install -q ctranslate2 \
    || CT2_ERR="pip install ctranslate2 failed (log: $LOGREL/pip-ct2.log)"
  [ -n "$HF_ERR" ] && CT2_ERR="${CT2_ERR:-its converter needs transformers and torch: $HF_ERR}"
  step pip-llama "" "" 900 "$PY" -m pip install -q --only-binary cmake,ninja cmake ninja scikit-build-core sentencepiece \
    || LLAMA_ERR="pip install cmake ninja failed (log: $LOGREL/pip-llama.log)"
else
  HF_ERR="could not create a venv with ${PEERS_PYTHON:-python3} -m venv (log: $LOGREL/venv.log)"
  CT2_ERR="$HF_ERR" LLAMA_ERR="$HF_ERR"
fi

LARGE=0
case "$PRESET" in gpt2-medium|gpt2-large|gpt2-xl) LARGE=1 ;; esac
if [ "$QUICK" = 1 ]; then
  BENCH=(--quick)
  PEER=(--quick)
  LBENCH=()
elif [ "$LARGE" = 1 ]; then
  # The larger shapes: batch 1 (3 sequential requests: p50 ms/token and TTFT) and 32 streams at
  # once, as one wave (--duration 1: every client sends one request; the level lasts until the
  # last one ends, so its tok/s is the wave's), with time for a wave of the slowest dtype.
  # The KV pool holds 32 x 150 tokens (2.9 GB at XL in f32) so that no stream is preempted.
  BENCH=(--requests 3 --concurrency 32 --batch-sizes 32 --duration 1 --warmup 0 --drain 3600 --timeout 3600
         --kv-cache-mb 4096)
  PEER=(--batch-sizes 32 --new-tokens 100 --runs 2)
  LBENCH=(--requests 3 --concurrency 32 --duration 1 --warmup 0 --drain 3600 --timeout 3600)
else
  BENCH=(--requests 10 --concurrency 1,4,8,16,32 --batch-sizes 1,4,8,16,32 --duration 15 --warmup 3)
  PEER=(--batch-sizes 1,4,8,16,32 --new-tokens 100 --runs 3)
  LBENCH=()
fi
CONV="$WORK"
[ -n "$SUFFIX" ] && CONV="$WORK/conv$SUFFIX"

# Ours, one dtype: the HTTP server in-process (latency, concurrency) and the engine alone (batch).
# At the larger shapes the batch scenario is a second process without a server, so that a
# process never holds two copies of the model; its figures are merged into the same result.
run_ours() {
  local dt="$1"
  local res="$RES/ours-$dt.json" ok=1
  if [ ! -x "$INF" ]; then
    write_err "$res" "inferneo $dt" "$NO_INF"
    return
  fi
  if [ "$LARGE" = 1 ]; then
    rm -f "$RES/ours-$dt.batch"
    step "ours-$dt" "$res" "inferneo $dt" 3600 "$INF" bench --model "$MODEL" --dtype "$dt" \
      --scenarios latency,concurrency "${BENCH[@]}" --json "$res" || ok=0
    [ "$ok" = 1 ] && { step "ours-$dt-batch" "" "" 3600 "$INF" bench --model "$MODEL" --dtype "$dt" \
      --scenarios batch "${BENCH[@]}" --json "$RES/ours-$dt.batch" || ok=0; }
  else
    step "ours-$dt" "$res" "inferneo $dt" 3600 "$INF" bench --model "$MODEL" --dtype "$dt" \
      --scenarios latency,concurrency,batch "${BENCH[@]}" --json "$res" || ok=0
  fi
  [ "$ok" = 1 ] && "$PYSYS" - "$res" "$dt" "$INF_REV" "$PRESET" "$RES/ours-$dt.batch" <<'EOF2' || true
import json, os, sys, time
path, dt, rev, preset, batch = sys.argv[1:]
d = json.load(open(path))
d.update(system=f"inferneo {dt}", dtype=dt, preset=preset,
         version=f"inferneo {d.get('machine', {}).get('inferneo_version', '?')} ({rev})")
if os.path.exists(batch):
    b = json.load(open(batch))
    d["scenarios"]["batch"] = b["scenarios"]["batch"]
    d["engine_peak_rss_mb"] = b.get("engine_peak_rss_mb")
    if "window" in d:  # the other-load column covers the batch process too
        d["window"][1] = time.time()
    os.remove(batch)
json.dump(d, open(path, "w"), indent=1)
EOF2
}

# HuggingFace transformers, torch eager, fp32.
run_hf() {
  if [ -n "$HF_ERR" ]; then
    write_err "$RES/hf.json" "HF transformers (torch eager)" "$HF_ERR"
  else
    step hf "$RES/hf.json" "HF transformers (torch eager)" 3600 \
      "$PY" "$HERE/hf_peer.py" --model "$MODEL" --out "$RES/hf.json" "${PEER[@]}" || true
  fi
}

# CTranslate2, one of f32 and int8.
run_ct2() {
  local dt="$1"
  if [ -n "$CT2_ERR" ]; then
    write_err "$RES/ct2-$dt.json" "CTranslate2 $dt" "$CT2_ERR"
  else
    mkdir -p "$CONV"
    step "ct2-$dt" "$RES/ct2-$dt.json" "CTranslate2 $dt" 3600 \
      "$PY" "$HERE/ct2_peer.py" --model "$MODEL" --work "$CONV" --dtype "$dt" --out "$RES/ct2-$dt.json" "${PEER[@]}" || true
  fi
}

# llama.cpp's llama-server on the GGUF quantizations given (built from source on the first run).
run_llama() {
  local quants="$*" name="llama"
  [ "$ALTERNATE" = 1 ] && name="llama-${quants// /-}"
  if [ -n "$LLAMA_ERR" ] || [ ! -x "$INF" ]; then
    for q in $quants; do
      write_err "$RES/llama-$q.json" "llama.cpp llama-server $q" "${LLAMA_ERR:-$NO_INF (it drives the load test)}"
    done
    return
  fi
  local largs=(--quants "$quants" --gguf-dir "$WORK/gguf$SUFFIX")
  [ "$QUICK" = 1 ] && largs+=(--quick)
  [ ${#LBENCH[@]} -gt 0 ] && largs+=(-- "${LBENCH[@]}")
  step "$name" "" "" 5400 bash "$HERE/llama_cpp_peer.sh" --model "$MODEL" --inferneo "$INF" --python "$PY" \
    --work "$WORK" --out "$RES" "${largs[@]}" || true
  for q in $quants; do
    [ -s "$RES/llama-$q.json" ] || write_err "$RES/llama-$q.json" "llama.cpp llama-server $q" \
      "llama_cpp_peer.sh left no result (log: $LOGREL/$name.log)"
  done
}

# 4-7. The systems: ours, HF, CTranslate2, llama.cpp in that order; with --alternate one at a
# time, ours and a peer in turn (ours f32, HF, ours f16, llama f32, ...), the rest at the end.
OURS_UNITS=() PEER_UNITS=()
if wants ours; then for dt in $DTYPES; do OURS_UNITS+=("run_ours $dt"); done; fi
if [ "$ALTERNATE" = 1 ]; then
  wants hf && PEER_UNITS+=("run_hf")
  if wants llama; then for q in $QUANTS; do PEER_UNITS+=("run_llama $q"); done; fi
  if wants ct2; then for t in $CT2_TYPES; do PEER_UNITS+=("run_ct2 $t"); done; fi
  UNITS=()
  for ((i = 0; i < ${#OURS_UNITS[@]} || i < ${#PEER_UNITS[@]}; i++)); do
    [ $i -lt ${#OURS_UNITS[@]} ] && UNITS+=("${OURS_UNITS[$i]}")
    [ $i -lt ${#PEER_UNITS[@]} ] && UNITS+=("${PEER_UNITS[$i]}")
  done
else
  wants hf && PEER_UNITS+=("run_hf")
  if wants ct2; then for t in $CT2_TYPES; do PEER_UNITS+=("run_ct2 $t"); done; fi
  wants llama && PEER_UNITS+=("run_llama $QUANTS")
  UNITS=("${OURS_UNITS[@]}" "${PEER_UNITS[@]}")
fi
for u in "${UNITS[@]}"; do
  $u
done

# 8. The table.
log "all steps done in $(( $(date +%s) - T0 ))s"
"$PYSYS" "$HERE/compare.py" --results "$RES" --out "$RES/table.md" --preset "$PRESET"

# 9. The charts: every system on shared axes, one chart per mode (HTTP server, offline batch),
# drawn by the inferneo binary from the results alone (`bench --scenarios none` measures nothing).
if [ -x "$INF" ]; then
  if "$INF" bench --scenarios none --peers "$RES" --svg "$WORK/charts$SUFFIX" >"$LOGS/charts.log" 2>&1; then
    log "charts: $WORK/charts$SUFFIX/*.svg"
  else
    log "charts FAILED, see $LOGS/charts.log"
  fi
fi
