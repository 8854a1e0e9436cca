#!/usr/bin/env bash
# The large GPT-2 shapes, one command a shape: the roofline at the shape's products, then
# inferneo (every dtype the binary has) and its peers (HF transformers f32, CTranslate2 f32 and
# int8, llama.cpp f32, f16, q8_0 and q4_0) on random weights of that shape, one system at a
# time, ours and a peer alternating (run_all.sh --preset NAME --alternate).
#
#   tools/peers/large_shapes.sh gpt2-large|gpt2-xl|gpt2-medium [--quick] [--docs] [--no-roofline]
#
# Writes target/peers/results-<preset>/ (every system's JSON, table.md, load.tsv),
# target/peers/charts-<preset>/*.svg and target/peers/roofline-<preset>.{md,json}; --docs copies
# them to docs/bench/<preset>/ for PERFORMANCE.md to quote. --quick: smoke settings (minutes, not
# hours; the figures mean nothing), to check the machinery. Run it on a quiet machine: every
# figure is invalid while anything else runs (the "other load" column says how much did).
# Environment: as run_all.sh (PEERS_ONLY, PEERS_DTYPES, PEERS_PYTHON).
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PRESET="" QUICK=() DOCS=0 ROOFLINE=1
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=(--quick); shift ;;
    --docs) DOCS=1; shift ;;
    --no-roofline) ROOFLINE=0; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    -*) echo "unknown argument: $1" >&2; exit 2 ;;
    *) [ -z "$PRESET" ] || { echo "one preset at a time (got $PRESET and $1)" >&2; exit 2; }; PRESET="$1"; shift ;;
  esac
done
case "$PRESET" in
  gpt2|distilgpt2|gpt2-medium|gpt2-large|gpt2-xl) ;;
  "") echo "usage: $0 gpt2-large|gpt2-xl|gpt2-medium [--quick] [--docs] [--no-roofline]" >&2; exit 2 ;;
  *) echo "unknown preset '$PRESET' (gpt2-medium, gpt2-large, gpt2-xl; gpt2, distilgpt2 for a check)" >&2; exit 2 ;;
esac
WORK="$ROOT/target/peers"
SUFFIX="-$PRESET"
[ "$PRESET" = gpt2 ] && SUFFIX=""
mkdir -p "$WORK"

# Memory: our bench holds the served model and, for its batch scenario, a second copy; HF loads
# the f32 model, CTranslate2 converts it. An f32 copy is 4 bytes a parameter.
declare -A PARAMS_M=([gpt2]=124 [distilgpt2]=82 [gpt2-medium]=355 [gpt2-large]=774 [gpt2-xl]=1558)
NEED_MB=$(( PARAMS_M[$PRESET] * 4 * 2 + 2048 ))
AVAIL_MB=$(( $(awk '/^MemAvailable:/ {print $2}' /proc/meminfo) / 1024 ))
if [ "$AVAIL_MB" -lt "$NEED_MB" ]; then
  echo "warning: ${AVAIL_MB} MB available, $PRESET's f32 runs want about ${NEED_MB} MB" >&2
fi

T0=$(date +%s)
if [ "$ROOFLINE" = 1 ]; then
  echo "== roofline at $PRESET's shapes" >&2
  if cargo build --release --manifest-path "$ROOT/Cargo.toml" -p inferneo-tools >"$WORK/roofline$SUFFIX.build.log" 2>&1; then
    R="$ROOT/target/release/inferneo"
    RARGS=(roofline --preset "$PRESET")
    [ ${#QUICK[@]} -gt 0 ] && RARGS+=(--quick)
    "$R" "${RARGS[@]}" --json-file "$WORK/roofline$SUFFIX.json" >"$WORK/roofline$SUFFIX.md" \
      || echo "roofline FAILED" >&2
  else
    echo "roofline: build FAILED, see $WORK/roofline$SUFFIX.build.log" >&2
  fi
fi

echo "== inferneo and its peers at $PRESET, alternating" >&2
bash "$HERE/run_all.sh" --preset "$PRESET" --alternate "${QUICK[@]}"
status=$?
echo "== $PRESET done in $(( ($(date +%s) - T0) / 60 )) min: $WORK/results$SUFFIX/table.md" >&2

if [ "$DOCS" = 1 ]; then
  DEST="$ROOT/docs/bench/$PRESET"
  mkdir -p "$DEST"
  cp "$WORK/results$SUFFIX"/*.json "$WORK/results$SUFFIX/table.md" "$DEST/" 2>/dev/null
  cp "$WORK/results$SUFFIX/load.tsv" "$DEST/" 2>/dev/null
  cp "$WORK/charts$SUFFIX"/*.svg "$DEST/" 2>/dev/null
  cp "$WORK/roofline$SUFFIX.json" "$WORK/roofline$SUFFIX.md" "$DEST/" 2>/dev/null
  echo "== copied to $DEST" >&2
fi
exit $status
