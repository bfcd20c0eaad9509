#!/usr/bin/env bash
# The main job. Installs everything (see setup.sh), then on Fashion-MNIST: trains an FSQ tokenizer for 100 seconds,
# encodes the test split to tokens, decodes the tokens back to images and evaluates the tokenizer.
# Usage: bash scripts/demo.sh [RUN_DIR]   (default runs/demo; an existing tokenizer there is reused)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
run=${1:-runs/demo}
fsq=.venv/bin/fsq

if [ -e "$run/tokenizer/checkpoint.fsq" ]; then
    echo "== reusing the tokenizer in $run/tokenizer"
else
    echo "== training an FSQ tokenizer (levels 8,6,5: 240 codes, 7x7 tokens) for 100 s"
    $fsq train autoencoder --data fashion-mnist --levels 8,6,5 --time-limit 100 --workdir "$run/tokenizer"
fi
echo "== encoding the test split"
$fsq encode --workdir "$run/tokenizer" --data fashion-mnist --split test --out "$run/tokens-test.npz"
echo "== decoding the tokens"
$fsq decode --workdir "$run/tokenizer" --tokens "$run/tokens-test.npz" --out "$run/decoded-test.npz"
echo "== evaluating on the test split"
$fsq eval --workdir "$run/tokenizer" --data fashion-mnist --split test
echo "== pictures: $run/tokenizer/reconstructions.png (originals above reconstructions), $run/decoded-test.png"
