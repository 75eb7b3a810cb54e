#!/usr/bin/env bash
# The python/README.md walkthrough as a script (CI runs it as is):
# install, train + export a tiny CNN, test the exporter, run it encrypted;
# then an int8 variant whose accumulators need 22 bits.
# Run from anywhere; works in the repository root.
#   OUT=dir         where the model files go     (default target/walkthrough)
#   ACC_BITS=b      accumulator bits / set b<b>   (default 16; 8, 12, 16, 20, 24)
#   IMAGES=n        encrypted inferences to run  (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-target/walkthrough}"
ACC_BITS="${ACC_BITS:-16}"
IMAGES="${IMAGES:-20}"
export PYTHONPATH=python OMP_NUM_THREADS=1

echo "== 1. install torch (CPU use), numpy, scikit-learn, pytest"
bash python/install-ci.sh

echo "== 2. train the tiny digits CNN and export it for b = $ACC_BITS"
python3 python/examples/train_tiny_digits.py --out "$OUT" --accumulator-bits "$ACC_BITS"

echo "== 3. exporter tests"
python3 -m pytest python/tests -q

echo "== 4. encrypted inference with the Rust CLI on the exported model"
# No --set: the crate picks the cheapest shipped set that carries the model
# under the default policy and prints why (PARAM-7).
cargo run --release -- infer --model "$OUT/tiny-digits.json" --inputs "$OUT/tiny-digits-test.json" \
  --images "$IMAGES"

echo "== 5. the same with 8-bit weights and activations: 22-bit accumulators, carried by b24"
python3 python/examples/train_tiny_digits.py --out "$OUT/int8" --accumulator-bits 24 --act-bits 8 --weight-bits 8
cargo run --release -- infer --model "$OUT/int8/tiny-digits.json" --inputs "$OUT/int8/tiny-digits-test.json" \
  --images "$IMAGES"
