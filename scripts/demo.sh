#!/usr/bin/env bash
# `make demo`: runs the embedded demo model on the bundled images with several tasks, prints the
# answers and parsed boxes and writes annotated PNGs to build/demo/. Until the demo model is
# trained and committed (models/demo.gguf), it says so and exits successfully.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-build/minigpt}
model=models/demo.gguf
if [ ! -f "$model" ]; then
    echo "minigpt demo: demo model not yet available ($model is not in this checkout yet)."
    echo "What works today:"
    "$bin" --help
    exit 0
fi
mkdir -p build/demo
for img in demo/images/*.png; do
    name=$(basename "$img" .png)
    for task in caption grounding detection; do
        echo "== $img [$task]"
        "$bin" run -m "$model" --image "$img" --task "$task" --greedy --json \
            --draw "build/demo/${name}-${task}.png"
    done
done
echo "annotated images in build/demo/"
