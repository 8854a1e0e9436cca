#!/usr/bin/env bash
# One command: inferneo and its peers on the same workload, one table.
#
#   tools/peers/run_all.sh [--quick]
#
# Builds inferneo, writes the GPT-2 124M-shaped HuggingFace directory (random weights, seed 0),
# makes a venv under target/peers/venv and installs the peers from PyPI, then runs: inferneo
# f32 and int8, HF transformers (torch eager, fp32), CTranslate2 f32 and int8, llama.cpp's
# llama-server on GGUF f32, f16 and q8_0. A step that fails leaves an error result and the
# run goes on; compare.py prints every system, failed ones as "not available: <reason>".
# Results: target/peers/results/*.json and table.md, charts: target/peers/charts/*.svg;
# logs: target/peers/logs/.
# Environment: PEERS_ONLY="ours hf ct2 llama" redoes a subset (its results replaced, the others
# kept); PEERS_PYTHON picks the Python that makes the venv (default python3).
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
QUICK=0
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done
ONLY="${PEERS_ONLY:-ours hf ct2 llama}"
WORK="$ROOT/target/peers"
RES="$WORK/results"
LOGS="$WORK/logs"
mkdir -p "$RES" "$LOGS"
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
      write_err "$res" "$system" "$why: $(grep -v '^\s*$' "$LOGS/$name.log" | tail -n 1 | cut -c1-200) (log: target/peers/logs/$name.log)"
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
NO_INF="inferneo could not be built (log: target/peers/logs/build-inferneo.log)"

# 2. The model directory all systems load.
MODEL="$WORK/model"
if [ ! -s "$MODEL/model.safetensors" ] || [ ! -s "$MODEL/config.json" ]; then
  if [ -x "$INF" ]; then
    rm -rf "$MODEL"
    step init-model "" "" 600 "$INF" init --preset gpt2 --seed 0 --out "$MODEL"
  fi
fi
if [ ! -s "$MODEL/model.safetensors" ]; then
  for s in ours-f32:"inferneo f32" ours-int8:"inferneo int8" ours-w8a8:"inferneo w8a8" hf:"HF transformers (torch eager)" \
           ct2-f32:"CTranslate2 f32" ct2-int8:"CTranslate2 int8" llama-f32:"llama.cpp llama-server f32" \
           llama-f16:"llama.cpp llama-server f16" llama-q8_0:"llama.cpp llama-server q8_0"; do
    write_err "$RES/${s%%:*}.json" "${s#*:}" "no model directory: $NO_INF"
  done
  "$PYSYS" "$HERE/compare.py" --results "$RES" --out "$RES/table.md"
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
    || HF_ERR="pip install torch transformers failed (log: target/peers/logs/pip-hf.log)"
  step pip-ct2 "" "" 900 "$PY" -m pip install -q ctranslate2 \
    || CT2_ERR="pip install ctranslate2 failed (log: target/peers/logs/pip-ct2.log)"
  [ -n "$HF_ERR" ] && CT2_ERR="${CT2_ERR:-its converter needs transformers and torch: $HF_ERR}"
  step pip-llama "" "" 900 "$PY" -m pip install -q --only-binary cmake,ninja cmake ninja scikit-build-core sentencepiece \
    || LLAMA_ERR="pip install cmake ninja failed (log: target/peers/logs/pip-llama.log)"
else
  HF_ERR="could not create a venv with ${PEERS_PYTHON:-python3} -m venv (log: target/peers/logs/venv.log)"
  CT2_ERR="$HF_ERR" LLAMA_ERR="$HF_ERR"
fi

if [ "$QUICK" = 1 ]; then
  BENCH=(--quick)
  PEER=(--quick)
else
  BENCH=(--requests 10 --concurrency 1,4,8,16,32 --batch-sizes 1,4,8,16,32 --duration 15 --warmup 3)
  PEER=(--batch-sizes 1,4,8,16,32 --new-tokens 100 --runs 3)
fi

# 4. Ours: the HTTP server in-process (latency, concurrency) and the engine alone (batch).
if wants ours; then
  for dt in f32 int8 w8a8; do
    if [ -x "$INF" ]; then
      step "ours-$dt" "$RES/ours-$dt.json" "inferneo $dt" 3600 "$INF" bench --model "$MODEL" --dtype "$dt" \
        --scenarios latency,concurrency,batch "${BENCH[@]}" --json "$RES/ours-$dt.json" \
        && "$PYSYS" - "$RES/ours-$dt.json" "$dt" "$INF_REV" <<'EOF2' || true
import json, sys
path, dt, rev = sys.argv[1:]
d = json.load(open(path))
d.update(system=f"inferneo {dt}", dtype=dt,
         version=f"inferneo {d.get('machine', {}).get('inferneo_version', '?')} ({rev})")
json.dump(d, open(path, "w"), indent=1)
EOF2
    else
      write_err "$RES/ours-$dt.json" "inferneo $dt" "$NO_INF"
    fi
  done
fi

# 5. HuggingFace transformers, torch eager, fp32.
if wants hf; then
  if [ -n "$HF_ERR" ]; then
    write_err "$RES/hf.json" "HF transformers (torch eager)" "$HF_ERR"
  else
    step hf "$RES/hf.json" "HF transformers (torch eager)" 3600 \
      "$PY" "$HERE/hf_peer.py" --model "$MODEL" --out "$RES/hf.json" "${PEER[@]}" || true
  fi
fi

# 6. CTranslate2, f32 and int8.
if wants ct2; then
  for dt in f32 int8; do
    if [ -n "$CT2_ERR" ]; then
      write_err "$RES/ct2-$dt.json" "CTranslate2 $dt" "$CT2_ERR"
    else
      step "ct2-$dt" "$RES/ct2-$dt.json" "CTranslate2 $dt" 1800 \
        "$PY" "$HERE/ct2_peer.py" --model "$MODEL" --work "$WORK" --dtype "$dt" --out "$RES/ct2-$dt.json" "${PEER[@]}" || true
    fi
  done
fi

# 7. llama.cpp's llama-server, GGUF f32, f16, q8_0 (built from source on the first run).
if wants llama; then
  if [ -n "$LLAMA_ERR" ] || [ ! -x "$INF" ]; then
    for q in f32 f16 q8_0; do
      write_err "$RES/llama-$q.json" "llama.cpp llama-server $q" "${LLAMA_ERR:-$NO_INF (it drives the load test)}"
    done
  else
    LARGS=()
    [ "$QUICK" = 1 ] && LARGS=(--quick)
    step llama "" "" 5400 bash "$HERE/llama_cpp_peer.sh" --model "$MODEL" --inferneo "$INF" --python "$PY" \
      --work "$WORK" --out "$RES" "${LARGS[@]}" || true
    for q in f32 f16 q8_0; do
      [ -s "$RES/llama-$q.json" ] || write_err "$RES/llama-$q.json" "llama.cpp llama-server $q" \
        "llama_cpp_peer.sh left no result (log: target/peers/logs/llama.log)"
    done
  fi
fi

# 8. The table.
log "all steps done in $(( $(date +%s) - T0 ))s"
"$PYSYS" "$HERE/compare.py" --results "$RES" --out "$RES/table.md"

# 9. The charts: every system on shared axes, one chart per mode (HTTP server, offline batch),
# drawn by the inferneo binary from the results alone (`bench --scenarios none` measures nothing).
if [ -x "$INF" ]; then
  if "$INF" bench --scenarios none --peers "$RES" --svg "$WORK/charts" >"$LOGS/charts.log" 2>&1; then
    log "charts: $WORK/charts/*.svg"
  else
    log "charts FAILED, see $LOGS/charts.log"
  fi
fi
