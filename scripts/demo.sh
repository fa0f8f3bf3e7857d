#!/usr/bin/env bash
# `make demo`: runs the embedded demo model on the bundled images with several tasks, prints the
# answers and parsed boxes and writes annotated PNGs to build/demo/. Until the demo model is
# trained and committed (models/demo.gguf), it says so and exits successfully.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-build/minigpt}
model=${MG_DEMO_MODEL:-models/demo.gguf}
if [ ! -f "$model" ]; then
    echo "minigpt demo: demo model not yet available ($model is not in this checkout yet)."
    echo "What works today:"
    "$bin" --help
    exit 0
fi
mkdir -p build/demo
# The bundled images are held-out scenes of the demo model's world (`minigpt synth --eval --seed 7
# --size 96 --scene objects=1,bg=plain,shapes=circle+square+triangle+star+diamond+cross,
# sizes=medium+large`, scenes 0, 1, 4, 11) and two scenes of several objects (the same with
# `objects=2-3`, scenes 1 and 4: multi-1, multi-4); each gets a caption, a grounded description,
# and a [refer], [detection] and [vqa] question; the scenes of several objects also an [identify]
# question (the box of one of their objects).
vq="Based on the image, respond to this question with a short answer:"
ask() { # image name task prompt
    echo "== $1 [$3] ${4:-}"
    if [ -n "${4:-}" ]; then
        "$bin" run -m "$model" --image "$1" --task "$3" -p "$4" --greedy --json --draw "build/demo/$2-$3.png"
    else
        "$bin" run -m "$model" --image "$1" --task "$3" --greedy --json --draw "build/demo/$2-$3.png"
    fi
}
while IFS='|' read -r name refer detect vqa box; do
    img=demo/images/$name.png
    ask "$img" "$name" caption
    ask "$img" "$name" grounding
    ask "$img" "$name" refer "give me the location of $refer"
    ask "$img" "$name" detection "$detect"
    ask "$img" "$name" vqa "$vq $vqa"
    if [ -n "$box" ]; then ask "$img" "$name" identify "$box"; fi
done <<'EOF_LIST'
scene-0|diamond|cyan diamond|What shape is the cyan object?
scene-1|cross|yellow cross|What color is the cross?
scene-4|red circle|red circle|What shape is the red object?
scene-11|large green square|green square|Is there a green triangle?
multi-1|green square|cyan triangle|What color is the cross?|{<25><56><50><80>}
multi-4|red star|red circle|How many red objects are there?|{<35><54><62><81>}
EOF_LIST
echo "annotated images in build/demo/"
