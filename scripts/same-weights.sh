#!/usr/bin/env bash
# Proves a refactor changed no behaviour: builds COMMIT (default: the last commit, HEAD) and the
# working tree, trains the same configs with the same seed with both binaries, and compares the
# sha256 of the final weights (`final/model.safetensors`) and every final metric. Exit 1 when
# anything differs.
#
#   scripts/same-weights.sh [COMMIT] [--quick]
#
# --quick trains the digits MLP only (seconds); the full check adds one epoch of the MNIST CNN,
# the GPT's first 200 steps on Shakespeare and the ResNet's smoke run on MNIST as PNG files
# (data/mnist_png, which scripts/test writes): a few minutes on 2 cores.
# KILN_SAME_WEIGHTS_KEEP=DIR keeps both binaries there (kiln-before, kiln-after), for a
# benchmark of the two in one run. Both builds share the cargo target folder ($CARGO_TARGET_DIR,
# default ./target) and the test build's feature set (scripts/features; $KILN_FEATURES
# overrides it), so burn is built once, and not again after `scripts/test`.
# Run it on an idle machine or not: training is deterministic, only the time changes.
set -euo pipefail
cd "$(dirname "$0")/.."

commit=HEAD
quick=0
for a in "$@"; do
  case "$a" in
    --quick) quick=1 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) commit="$a" ;;
  esac
done
. scripts/features
features="${KILN_FEATURES-$KILN_FEATURES_TEST}"
target="${CARGO_TARGET_DIR:-$PWD/target}"
export CARGO_TARGET_DIR="$target"
work="$(mktemp -d)"
trap 'git worktree remove --force "$work/src" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

echo "== building $commit (a worktree) and the working tree, features: $features"
git worktree add --detach "$work/src" "$commit" >/dev/null
# kiln's own crates hash the same from either tree, and the other tree's sources look older
# than the artifacts: clean them before each build so that neither reuses the other's.
own=(-p kiln -p kiln-trainer -p kiln-models)
[ -d kernels ] && own+=(-p kiln-kernels)
clean_own() { (cd "$1" && cargo clean --release --quiet "${own[@]}" 2>/dev/null || cargo clean --release --quiet -p kiln -p kiln-trainer -p kiln-models); }
clean_own "$work/src"
(cd "$work/src" && cargo build --release --quiet --bin kiln ${features:+--features "$features"})
cp "$target/release/kiln" "$work/kiln-before"
clean_own .
cargo build --release --quiet --bin kiln ${features:+--features "$features"}
cp "$target/release/kiln" "$work/kiln-after"

if [ -n "${KILN_SAME_WEIGHTS_KEEP:-}" ]; then
  mkdir -p "$KILN_SAME_WEIGHTS_KEEP"
  cp "$work/kiln-before" "$work/kiln-after" "$KILN_SAME_WEIGHTS_KEEP/"
fi

cases=("configs/digits_mlp.toml")
[ "$quick" = 1 ] || cases+=(
  "configs/mnist_cnn.toml --set train.epochs=1"
  "configs/shakespeare_char.toml --set train.max_steps=200"
  "configs/mnist_png_resnet.toml --smoke"
)

# Prints "<sha256 of the final weights> <metrics as canonical JSON>" for one training.
train() {
  local bin="$1" registry="$2"; shift 2
  local out
  out="$(KILN_REGISTRY="$registry" "$bin" train "$@" --json --quiet | tail -n 1)"
  python3 - "$out" <<'PY'
import hashlib, json, sys
r = json.loads(sys.argv[1])
w = open(r["run_dir"] + "/final/model.safetensors", "rb").read()
print(hashlib.sha256(w).hexdigest(), json.dumps(r["metrics"], sort_keys=True))
PY
}

status=0
for c in "${cases[@]}"; do
  # shellcheck disable=SC2086
  before="$(train "$work/kiln-before" "$work/reg-before" $c)"
  # shellcheck disable=SC2086
  after="$(train "$work/kiln-after" "$work/reg-after" $c)"
  if [ "${before%% *}" = "${after%% *}" ] && [ "${before#* }" = "${after#* }" ]; then
    printf 'same      %-52s weights sha256 %s, metrics identical\n' "$c" "${after:0:16}"
  else
    printf 'DIFFERENT %-52s\n  before: %s\n  after:  %s\n' "$c" "$before" "$after"
    status=1
  fi
done
exit $status
