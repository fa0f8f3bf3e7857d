#!/usr/bin/env bash
# compare_llamacpp.sh - times the same synthetic GGUF files with llama.cpp's llama-bench and with
# `minigpt bench`, one type after the other, and records peak RSS with /usr/bin/time -v.
# The files (4-14 GB each for 7B) go to OUTDIR (default /tmp/mg-compare) and are deleted after use.
#
#   LLAMA_BENCH=/path/to/llama-bench MG=build/minigpt bench/compare_llamacpp.sh
#
# Knobs (environment): PRESET (minigpt4-7b), TYPES ("q4_0 q8_0 f16"), THREADS (2), REPS (3), OUTDIR,
# PROMPTS (128,512), GEN (32), DEPTHS (minigpt only; 0,512). An existing file in OUTDIR is reused.
# How to build llama-bench from source: docs/PERFORMANCE.md.
set -euo pipefail

MG=${MG:-build/minigpt}
LLAMA_BENCH=${LLAMA_BENCH:-/tmp/llamacpp-bench/build/bin/llama-bench}
PRESET=${PRESET:-minigpt4-7b}
TYPES=${TYPES:-"q4_0 q8_0 f16"}
THREADS=${THREADS:-2}
REPS=${REPS:-3}
OUTDIR=${OUTDIR:-/tmp/mg-compare}
PROMPTS=${PROMPTS:-128,512}
GEN=${GEN:-32}
DEPTHS=${DEPTHS:-0,512}

[ -x "$MG" ] || { echo "compare_llamacpp.sh: $MG is not built (make)" >&2; exit 1; }
[ -x "$LLAMA_BENCH" ] || { echo "compare_llamacpp.sh: no llama-bench at $LLAMA_BENCH" >&2; exit 1; }
mkdir -p "$OUTDIR"

echo "# $(date -u +%FT%TZ) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) nproc=$(nproc)"
echo "# load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for T in $TYPES; do
    F="$OUTDIR/$PRESET-$T.gguf"
    [ -s "$F" ] || "$MG" bench --synthetic "$PRESET" --type "$T" --llm-only --write-gguf "$F"
    echo "## $PRESET $T: llama-bench -m $F -t $THREADS -p $PROMPTS -n $GEN -r $REPS"
    /usr/bin/time -v "$LLAMA_BENCH" -m "$F" -t "$THREADS" -p "$PROMPTS" -n "$GEN" -r "$REPS" \
        2> "$OUTDIR/llama-bench-$T.time" | tee "$OUTDIR/llama-bench-$T.md"
    grep -E "Maximum resident|Elapsed" "$OUTDIR/llama-bench-$T.time"
    echo "## $PRESET $T: minigpt bench -m $F -t $THREADS -r $REPS --prompt $PROMPTS --gen $GEN --depth $DEPTHS"
    /usr/bin/time -v "$MG" bench -m "$F" -t "$THREADS" -r "$REPS" --prompt "$PROMPTS" --gen "$GEN" --depth "$DEPTHS" --image 0 --json \
        2> "$OUTDIR/minigpt-$T.time" > "$OUTDIR/minigpt-$T.json"
    python3 -c "import json,sys; j=json.load(open(sys.argv[1]))
for r in j['prefill']: print('minigpt pp%d  %.2f tok/s (best %.2f)' % (r['n_prompt'], r['tok_s_median'], r['tok_s_best']))
for r in j['decode']: print('minigpt tg%d@%d %.2f tok/s (best %.2f)' % (r['n_gen'], r['depth'], r['tok_s_median'], r['tok_s_best']))
print('minigpt isa', j['isa'], 'peak RSS %.0f MiB' % j['peak_rss_mib'])" "$OUTDIR/minigpt-$T.json"
    grep -E "Maximum resident|Elapsed" "$OUTDIR/minigpt-$T.time"
    echo "# load after $T: $(cut -d' ' -f1-3 /proc/loadavg)"
    rm -f "$F"
done
