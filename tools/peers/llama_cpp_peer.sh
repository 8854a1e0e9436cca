#!/usr/bin/env bash
# llama.cpp's llama-server as a peer: fetch llama.cpp's source from the llama-cpp-python sdist
# on PyPI, build llama-server and llama-quantize (cmake + ninja, Release, native, CPU only),
# convert the HuggingFace directory to GGUF f32/f16 with the tree's convert_hf_to_gguf.py,
# quantize to q8_0, then load-test each with `inferneo bench --url` (parallel slots,
# continuous batching). Every failure becomes an error result, never a silent omission.
#
# Usage: llama_cpp_peer.sh --model HF_DIR --inferneo BIN --python VENV_PYTHON --work DIR --out DIR
#                          [--quants "f32 f16 q8_0 q4_0"] [--gguf-dir DIR] [--port 8181] [--quick]
#                          [-- BENCH_ARGS...]
# The build is cached under --work (llama.cpp-build-<version>); reruns skip it. The GGUF files
# go to --gguf-dir (default --work/gguf): one directory per model, since a file is reconverted
# only when the model's safetensors are newer. Only the results of --quants are replaced in --out.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MODEL="" INFERNEO="" PY="" WORK="" OUT="" QUANTS="f32 f16 q8_0 q4_0" GGUF="" PORT=8181 QUICK=0
BENCH_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL="$2"; shift 2 ;;
    --inferneo) INFERNEO="$2"; shift 2 ;;
    --python) PY="$2"; shift 2 ;;
    --work) WORK="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --quants) QUANTS="$2"; shift 2 ;;
    --gguf-dir) GGUF="$2"; shift 2 ;;
    --port) PORT="$2"; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --) shift; BENCH_ARGS=("$@"); break ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
for v in MODEL INFERNEO PY WORK OUT; do
  [ -n "${!v}" ] || { echo "--${v,,} is required" >&2; exit 2; }
done
mkdir -p "$WORK" "$OUT"
WORK="$(cd "$WORK" && pwd)" OUT="$(cd "$OUT" && pwd)"
MODEL="$(cd "$MODEL" && pwd)" || { echo "no model directory $MODEL" >&2; exit 2; }
THREADS="$(nproc)"
PARALLEL=32
CTX=$((PARALLEL * 160))   # 160 tokens a slot: 50 prompt + 100 generated, with room
mkdir -p "$WORK/logs"
LOG="$WORK/logs/llama_cpp_peer.log"
: >"$LOG"

say() { echo "[llama.cpp] $*" | tee -a "$LOG" >&2; }

write_err() {  # result file, system name, reason
  "$PY" -c "import sys; sys.path.insert(0, sys.argv[1]); from common import write_error; write_error(*sys.argv[2:])" \
    "$HERE" "$1" "$2" "$3"
}

fail_all() {  # every quantization gets the reason
  say "FAILED: $1"
  for q in $QUANTS; do write_err "$OUT/llama-$q.json" "llama.cpp llama-server $q" "$1"; done
  exit 1
}

# The error results need a Python; fall back to the system one if the venv is missing.
[ -x "$PY" ] || PY="$(command -v python3)"
for q in $QUANTS; do rm -f "$OUT/llama-$q.json"; done

# 1. Source: llama.cpp ships inside the llama-cpp-python sdist.
say "installing cmake, ninja, scikit-build-core (binary wheels)"
"$PY" -m pip install -q --only-binary cmake,ninja cmake ninja scikit-build-core >>"$LOG" 2>&1 \
  || fail_all "pip install cmake ninja failed (see $LOG)"
VENV_BIN="$(dirname "$PY")"
export PATH="$VENV_BIN:$PATH"
SDIST_DIR="$WORK/sdist"
mkdir -p "$SDIST_DIR"
if ! ls "$SDIST_DIR"/llama_cpp_python-*.tar.gz >/dev/null 2>&1; then
  say "downloading the llama-cpp-python sdist"
  "$PY" -m pip download --no-deps --no-build-isolation --no-binary llama-cpp-python \
    llama-cpp-python -d "$SDIST_DIR" >>"$LOG" 2>&1 \
    || fail_all "pip download of the llama-cpp-python sdist failed (see $LOG)"
fi
SDIST="$(ls -1 "$SDIST_DIR"/llama_cpp_python-*.tar.gz | sort -V | tail -1)"
SDIST_VER="$(basename "$SDIST" .tar.gz | sed 's/^llama_cpp_python-//')"
SRC_ROOT="$WORK/src"
SRC="$SRC_ROOT/llama_cpp_python-$SDIST_VER/vendor/llama.cpp"
if [ ! -f "$SRC/CMakeLists.txt" ]; then
  say "unpacking $SDIST"
  mkdir -p "$SRC_ROOT"
  tar xzf "$SDIST" -C "$SRC_ROOT" >>"$LOG" 2>&1 || fail_all "could not unpack $SDIST"
fi
[ -f "$SRC/CMakeLists.txt" ] || fail_all "no vendor/llama.cpp in $SDIST"

# 2. Build (cached per sdist version).
BUILD="$WORK/llama.cpp-build-$SDIST_VER"
SERVER="$BUILD/bin/llama-server"
QUANTIZE="$BUILD/bin/llama-quantize"
if [ ! -x "$SERVER" ] || [ ! -x "$QUANTIZE" ]; then
  say "configuring llama.cpp ($SDIST_VER) in $BUILD"
  cmake -S "$SRC" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    >>"$LOG" 2>&1 || fail_all "cmake configure failed (see $LOG)"
  say "building llama-server and llama-quantize (takes several minutes on 2 cores)"
  nice -n 10 cmake --build "$BUILD" --target llama-server llama-quantize -j "$THREADS" \
    >>"$LOG" 2>&1 || fail_all "build failed (see $LOG)"
fi
VERSION="$("$SERVER" --version 2>&1 | grep -m1 -i version | sed 's/^version: //')"
say "llama-server: $VERSION (llama-cpp-python sdist $SDIST_VER)"

# 3. Convert the HuggingFace directory: f32 and f16 by the tree's converter, q8_0 by llama-quantize.
say "installing the tree's gguf-py and the converter's requirements"
"$PY" -m pip install -q "$SRC/gguf-py" numpy sentencepiece safetensors >>"$LOG" 2>&1 \
  || fail_all "pip install of gguf-py failed (see $LOG)"
"$PY" -c "import torch, transformers" >>"$LOG" 2>&1 \
  || "$PY" -m pip install -q torch transformers >>"$LOG" 2>&1 \
  || fail_all "the converter needs torch and transformers, which failed to install"
GGUF="${GGUF:-$WORK/gguf}"
mkdir -p "$GGUF"
# The converter reads GPT-2's context length from config.json's `n_ctx`, which the original
# GPT-2 configs carry but newer writers (inferneo init included) leave to `n_positions`: convert
# from a shadow directory (links to every file) whose config.json has n_ctx added when missing.
SHADOW="$GGUF/hf-src"
rm -rf "$SHADOW"; mkdir -p "$SHADOW"
for f in "$MODEL"/*; do ln -s "$f" "$SHADOW/"; done
rm -f "$SHADOW/config.json"
"$PY" - "$MODEL/config.json" "$SHADOW/config.json" <<'EOF2' || fail_all "could not read $MODEL/config.json"
import json, sys
c = json.load(open(sys.argv[1]))
if "n_ctx" not in c and "n_positions" in c:
    c["n_ctx"] = c["n_positions"]
json.dump(c, open(sys.argv[2], "w"), indent=2)
EOF2
declare -A CONVERTED
convert() {  # $1 = outtype; 0 when $GGUF/model-$1.gguf is there
  local f="$GGUF/model-$1.gguf" clog="$WORK/logs/convert-$1.log"
  [ -n "${CONVERTED[$1]:-}" ] && return "${CONVERTED[$1]}"
  if [ ! -s "$f" ] || [ "$MODEL/model.safetensors" -nt "$f" ]; then
    say "converting to GGUF $1 (log: $clog)"
    rm -f "$f"
    nice -n 10 "$PY" "$SRC/convert_hf_to_gguf.py" "$SHADOW" --outtype "$1" --outfile "$f.tmp" \
      >"$clog" 2>&1 && mv "$f.tmp" "$f"
  fi
  if [ -s "$f" ]; then CONVERTED[$1]=0; else CONVERTED[$1]=1; fi
  return "${CONVERTED[$1]}"
}
why_convert() {  # the converter's last words
  echo "convert_hf_to_gguf.py --outtype $1 failed: $(grep -v '^\s*$' "$WORK/logs/convert-$1.log" | tail -n 1 | cut -c1-200) (log: target/peers/logs/convert-$1.log)"
}
declare -A FILE_OF REASON_OF
for q in $QUANTS; do
  case "$q" in
    f32|f16|bf16)
      if convert "$q"; then FILE_OF[$q]="$GGUF/model-$q.gguf"; else REASON_OF[$q]="$(why_convert "$q")"; fi ;;
    *)
      if convert f32; then
        f="$GGUF/model-$q.gguf"
        if [ ! -s "$f" ] || [ "$GGUF/model-f32.gguf" -nt "$f" ]; then
          say "quantizing to $q"
          nice -n 10 "$QUANTIZE" "$GGUF/model-f32.gguf" "$f" "${q^^}" "$THREADS" >"$WORK/logs/quantize-$q.log" 2>&1 || rm -f "$f"
        fi
        if [ -s "$f" ]; then FILE_OF[$q]="$f"
        else REASON_OF[$q]="llama-quantize to $q failed (log: target/peers/logs/quantize-$q.log)"; fi
      else
        REASON_OF[$q]="$(why_convert f32)"
      fi ;;
  esac
done

# 4. Serve and load-test each.
if [ "$QUICK" = 1 ]; then
  [ ${#BENCH_ARGS[@]} -gt 0 ] || BENCH_ARGS=(--quick)
elif [ ${#BENCH_ARGS[@]} -eq 0 ]; then
  BENCH_ARGS=(--requests 10 --concurrency 1,4,8,16,32 --duration 15 --warmup 3)
fi
SERVER_PID=""
stop_server() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" 2>/dev/null
  fi
  SERVER_PID=""
}
trap stop_server EXIT INT TERM

# Flags that not every llama-server version has: use them only where --help lists them.
HELP="$("$SERVER" --help 2>&1)"
EXTRA_FLAGS=()
grep -q -- "--cont-batching" <<<"$HELP" && EXTRA_FLAGS+=(--cont-batching)
grep -q -- "--no-webui" <<<"$HELP" && EXTRA_FLAGS+=(--no-webui)

status=0
for q in $QUANTS; do
  res="$OUT/llama-$q.json"
  name="llama.cpp llama-server $q"
  if [ -z "${FILE_OF[$q]:-}" ]; then
    write_err "$res" "$name" "${REASON_OF[$q]:-unknown}"
    status=1; continue
  fi
  slog="$WORK/llama-server-$q.log"
  say "starting llama-server on $q: -np $PARALLEL -c $CTX -t $THREADS, port $PORT"
  "$SERVER" -m "${FILE_OF[$q]}" --host 127.0.0.1 --port "$PORT" --parallel "$PARALLEL" -c "$CTX" \
    -t "$THREADS" -tb "$THREADS" "${EXTRA_FLAGS[@]}" >"$slog" 2>&1 &
  SERVER_PID=$!
  ok=0
  # Up to 10 minutes: a GPT-2 XL f32 file is 6.2 GB to map and page in.
  for _ in $(seq 1200); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    if curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then ok=1; break; fi
    sleep 0.5
  done
  if [ "$ok" != 1 ]; then
    reason="llama-server did not become healthy: $(tail -n 3 "$slog" | tr '\n' ' ')"
    stop_server
    write_err "$res" "$name" "$reason"
    status=1; continue
  fi
  say "bench: ${BENCH_ARGS[*]}"
  t0=$(date +%s.%N)
  if "$INFERNEO" bench --url "http://127.0.0.1:$PORT" --model-name "gpt2-$q" \
      --scenarios latency,concurrency --server-pid "$SERVER_PID" --json "$res.tmp" "${BENCH_ARGS[@]}" \
      2>&1 | tee -a "$LOG" >&2 && [ -s "$res.tmp" ]; then
    "$PY" - "$res.tmp" "$res" "$name" "$VERSION" "$SDIST_VER" "$q" "$PARALLEL" "$CTX" "$THREADS" "$t0" "$(date +%s.%N)" <<'EOF'
import json, sys
src, dst, name, version, sdist, q, par, ctx, threads, t0, t1 = sys.argv[1:]
d = json.load(open(src))
d.update(system=name, version=f"{version} (from llama-cpp-python {sdist} sdist)", dtype=q,
         window=[float(t0), float(t1)],
         config=f"llama-server --parallel {par} -c {ctx} -t {threads} -tb {threads} (continuous batching)")
json.dump(d, open(dst, "w"), indent=1)
EOF
    rm -f "$res.tmp"
  else
    write_err "$res" "$name" "inferneo bench against llama-server failed (see $LOG)"
    status=1
  fi
  stop_server
done
exit $status
