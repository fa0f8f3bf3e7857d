#!/usr/bin/env bash
# `make train-demo`: retrains the embedded demo model (models/demo.gguf) from scratch with the
# curriculum of docs/DEMO_MODEL.md: four stages, each starting from the previous stage's
# checkpoint (weights and the auxiliary patch head; fresh optimizer). Seeds are fixed and every
# stage runs on 2 threads, so the result is bit-reproducible on one machine (the SIMD kernels are
# picked at run time: another CPU may differ in the last bits).
#   scripts/train_demo.sh [BIN] [FIRST_STAGE]   (FIRST_STAGE > 1 reuses build/demo-s*.ckpt)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-build/minigpt}
first=${2:-1}
out=${MG_DEMO_OUT:-models/demo.gguf}
mkdir -p build "$(dirname "$out")"
six=red+green+blue+yellow+purple+orange
shapes=circle+square+triangle+star+diamond+cross
train() { echo "== stage $1: ${*:2}"; "$bin" train -t 2 --aux 1 --ckpt-every 0 "${@:2}"; }
# 1. colour: one large or medium square of 6 colours on the light grey tone, captions; the ViT
#    position embedding starts as 2D sine-cosine (boxes need it, docs/DEMO_MODEL.md)
[ "$first" -gt 1 ] || train 1 --v-embd 128 --v-layer 4 --v-head 4 --v-ff 384 --pos-sincos 1 --seed 1 \
    --scene objects=1,bg=plain,tones=0,colors=$six,shapes=square,sizes=medium+large --tasks 0,0,0,0,0,0,1 \
    --steps 300 --warmup 20 --eval-every 100 --ckpt build/demo-s1.ckpt
# 2. shape: one large object of 6 shapes and 6 colours on the same tone, captions
[ "$first" -gt 2 ] || train 2 --init build/demo-s1.ckpt --seed 2 \
    --scene objects=1,bg=plain,tones=0,colors=$six,shapes=$shapes,sizes=large --tasks 0,0,0,0,0,0,1 \
    --steps 1500 --warmup 20 --eval-every 250 --ckpt build/demo-s2.ckpt
# 3. one object, any colour and plain tone, medium or large: every task
[ "$first" -gt 3 ] || train 3 --init build/demo-s2.ckpt --seed 3 \
    --scene objects=1,bg=plain,shapes=$shapes,sizes=medium+large \
    --steps 2500 --warmup 50 --eval-every 500 --ckpt build/demo-s3.ckpt
# 4. one to three objects, every task: the shipped model
train 4 --init build/demo-s3.ckpt --seed 4 \
    --scene objects=1-3,bg=plain,shapes=$shapes,sizes=medium+large \
    --steps 2500 --warmup 50 --lr 1e-3 --eval-every 500 --ckpt build/demo-s4.ckpt -o "$out"
