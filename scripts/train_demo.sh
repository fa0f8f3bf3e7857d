#!/usr/bin/env bash
# `make train-demo`: retrains the embedded demo model (models/demo.gguf) from scratch with the
# curriculum of docs/DEMO_MODEL.md. Each stage starts from the previous stage's checkpoint
# (weights and the auxiliary patch head; fresh optimizer and schedule). Seeds are fixed and every
# stage runs on 2 threads: the result is bit-reproducible on one machine for that thread count
# (another thread count sums gradients in another order; the SIMD kernels are picked at run time,
# so another CPU may differ in the last bits too).
#   scripts/train_demo.sh [BIN] [FIRST_STAGE]   (FIRST_STAGE > 1 reuses build/demo-s*.ckpt)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-build/minigpt}
first=${2:-1}
out=${MG_DEMO_OUT:-models/demo.gguf}
mkdir -p build "$(dirname "$out")"
six=red+green+blue+yellow+purple+orange
shapes=circle+square+triangle+star+diamond+cross
one="objects=1,bg=plain,shapes=$shapes,sizes=medium+large"
refer=0,0,1,0,0,0,0
stage() { # stage N ARGS...: runs stage N unless FIRST_STAGE is past it; reads build/demo-s(N-1).ckpt
    local n=$1; shift
    [ "$first" -gt "$n" ] && return 0
    echo "== stage $n: $*"
    local init=()
    [ "$n" -gt 1 ] && init=(--init "build/demo-s$((n - 1)).ckpt")
    "$bin" train -t 2 --aux 1 --ckpt-every 0 --warmup 20 --seed "$n" "${init[@]}" "$@" \
        --ckpt "build/demo-s$n.ckpt"
}
# The vision tower first, alone, from the auxiliary patch loss with shape-only labels (background
# or one of the shapes) on scenes of two to four objects of every colour and tone: that is where
# it learns the shapes of objects (with colour in the labels, or one object a scene, it hardly
# did; docs/DEMO_MODEL.md). The position embedding starts as a 2D sine-cosine table.
several4="objects=2-4,bg=plain,shapes=$shapes,sizes=medium+large"
stage 1 --v-embd 128 --v-layer 4 --v-head 4 --v-ff 384 --pos-sincos 1 --aux-labels shape --train vision-aux \
    --steps 6000 --lr 1e-3 --eval-every 1000 --scene "$several4"
stage 2 --train vision-aux --steps 4000 --lr 1e-3 --eval-every 1000 --scene "$several4"
# Then colour too: a new head over colour x shape (it starts at zero, so the tower's first
# gradients are nil and the shapes are not disturbed while it grows).
stage 3 --train vision-aux --aux-labels joint --steps 2000 --lr 1e-3 --eval-every 1000 --scene "$several4"
# From here on the tower is frozen, as MiniGPT-v2 freezes its ViT: the projection and the
# language model learn (training the tower with them made it forget the shapes again).
# Position first ([refer] only, one object): where an object is must be learned while the world is
# narrow, or it never is (docs/DEMO_MODEL.md).
frozen="--train proj+llm"
stage 4 $frozen --tasks $refer --steps 400 --eval-every 200 \
    --scene objects=1,bg=plain,tones=0,colors=red,shapes=$shapes,sizes=medium+large
stage 5 $frozen --tasks $refer --steps 600 --eval-every 300 \
    --scene objects=1,bg=plain,tones=0,colors=$six,shapes=$shapes,sizes=medium+large
stage 6 $frozen --tasks $refer --steps 800 --eval-every 400 --scene "$one"
stage 7 $frozen --tasks $refer --steps 2000 --eval-every 1000 --scene "$one"
stage 8 $frozen --tasks $refer --steps 2000 --eval-every 1000 --scene "$one"
# Names next, narrow first again, [refer] kept in the mix so the boxes are not forgotten:
# six colours on one tone, then one large object of six shapes.
stage 9 $frozen --tasks 0,0,1,0,0,1,2 --steps 1000 --eval-every 500 \
    --scene objects=1,bg=plain,tones=0,colors=$six,shapes=$shapes,sizes=medium+large
stage 10 $frozen --tasks 0,0,1,0,1,1,2 --steps 1500 --eval-every 500 \
    --scene objects=1,bg=plain,tones=0,colors=$six,shapes=$shapes,sizes=large
# Every task on one object of any colour and tone.
stage 11 $frozen --steps 2000 --eval-every 1000 --scene "$one"
# Every task on one to three objects, then more of the same with a fresh schedule: the shipped
# model (docs/DEMO_MODEL.md).
several="objects=1-3,bg=plain,shapes=$shapes,sizes=medium+large"
stage 12 $frozen --steps 5000 --eval-every 1000 --lr 1e-3 --scene "$several"
stage 13 $frozen --steps 3000 --eval-every 1000 --lr 1e-3 -o "$out" --scene "$several"
