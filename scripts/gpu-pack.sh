#!/usr/bin/env bash
# Packs what the GPU check needs into one archive for a machine with an NVIDIA GPU but no
# network (or no Rust): a stripped release kiln built with scripts/features' GPU_PACK set
# (`cuda,nccl`: that machine has no MPI), the configs,
# the data they read, and the check's scripts. Build here, carry the archive there, run
#
#   tar xJf kiln-gpu.tar.xz && cd kiln-gpu && scripts/gpu-check.sh       (on the GPU machine)
#
#   scripts/gpu-pack.sh [--binary] [OUT_DIR]     (default: gpu-pack/, which git ignores)
#
# --binary packs the kiln binary alone (OUT_DIR/kiln.xz), for a GPU machine that has a checkout
# of this repository: there, `xz -dc kiln.xz > kiln && chmod +x kiln && KILN=./kiln
# scripts/gpu-check.sh` in the checkout.
#
# Builds with the same target folder as everything else (CARGO_TARGET_DIR, default
# ./target, as cargo's), after scripts/llvm-bundle.sh (instant when LLVM is there already; if it
# cannot install, cargo tries GitHub). The archive must stay under 64 MiB (what one call to a
# lent GPU machine carries); the script says its size and fails above that.
set -euo pipefail
cd "$(dirname "$0")/.."
binary_only=0
if [ "${1:-}" = "--binary" ]; then
  binary_only=1
  shift
fi
out="${1:-gpu-pack}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
limit=$((64 * 1024 * 1024))

scripts/llvm-bundle.sh || echo "gpu-pack: no LLVM bundle installed (above); cargo will try to download LLVM"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
. scripts/features
features="${KILN_FEATURES-$KILN_FEATURES_GPU_PACK}"
echo "== cargo build --release --features $features --bin kiln"
cargo build --release --features "$features" --bin kiln

if [ "$binary_only" = 1 ]; then
  mkdir -p "$out"
  strip -o "$tmp/kiln" "$CARGO_TARGET_DIR/release/kiln"
  xz -T0 -6 -c "$tmp/kiln" > "$out/kiln.xz.tmp"
  mv "$out/kiln.xz.tmp" "$out/kiln.xz"
  size=$(stat -c %s "$out/kiln.xz")
  awk -v a="$out/kiln.xz" -v s="$size" -v c="$(git describe --always --dirty 2> /dev/null || echo unknown)" \
    'BEGIN { printf "gpu-pack: %s, %.1f MiB, commit %s\n", a, s / 1048576, c }'
  [ "$size" -lt "$limit" ] || { echo "gpu-pack: $out/kiln.xz is over 64 MiB" >&2; exit 1; }
  exit 0
fi

stage="$tmp/kiln-gpu"
mkdir -p "$stage/bin" "$stage/scripts" "$stage/benches" "$stage/data/sklearn"
strip -o "$stage/bin/kiln" "$CARGO_TARGET_DIR/release/kiln"
cp -r configs "$stage/"
cp scripts/gpu-check.sh "$stage/scripts/"
cp benches/gpu_check.py benches/gpt_pytorch.py "$stage/benches/"
cp -r data/mnist data/shakespeare data/NOTICE.md "$stage/data/"
cp data/sklearn/digits.csv.gz "$stage/data/sklearn/"
git describe --always --dirty > "$stage/COMMIT" 2> /dev/null || echo unknown > "$stage/COMMIT"

mkdir -p "$out"
archive="$out/kiln-gpu.tar.xz"
tar -C "$tmp" -cf - kiln-gpu | xz -T0 -6 > "$archive.tmp"
mv "$archive.tmp" "$archive"
bin_size=$(stat -c %s "$stage/bin/kiln")
size=$(stat -c %s "$archive")
awk -v a="$archive" -v s="$size" -v b="$bin_size" -v c="$(git describe --always --dirty 2> /dev/null || echo unknown)" \
  'BEGIN { printf "gpu-pack: %s, %.1f MiB (kiln %.1f MiB stripped), commit %s\n", a, s / 1048576, b / 1048576, c }'
[ "$size" -lt "$limit" ] || { echo "gpu-pack: $archive is over 64 MiB" >&2; exit 1; }
