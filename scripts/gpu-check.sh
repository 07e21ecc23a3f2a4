#!/usr/bin/env bash
# The GPU check, on a machine with an NVIDIA GPU, its driver and PyTorch (no network needed):
# run it in the folder that scripts/gpu-pack.sh's archive unpacks to.
#
#   tar xJf kiln-gpu.tar.xz && cd kiln-gpu && scripts/gpu-check.sh [--only devices,cnn,...]
#
# Lists the devices, trains the digits MLP, the MNIST CNN and the Shakespeare GPT on CUDA (f32,
# then f16 and bf16), runs `--devices cuda:all` (NCCL, one rank per GPU), and times the same
# models in PyTorch on the same GPU (benches/gpu_check.py says how). Writes
# $OUT/gpu-check.{json,md} (OUT defaults to ./gpu-check-out); 2 to 3 minutes on one H200.
set -uo pipefail
# KILN and OUT as the caller meant them, before moving to the pack's (or checkout's) root.
[ -n "${KILN:-}" ] && KILN="$(realpath -m "$KILN")"
out="$(realpath -m "${OUT:-gpu-check-out}")"
cd "$(dirname "$0")/.."
kiln="${KILN:-bin/kiln}"
[ -x "$kiln" ] || { echo "gpu-check: no kiln binary at $kiln (unpack the archive of scripts/gpu-pack.sh, or set KILN)" >&2; exit 2; }
python="${PYTHON:-python3}"
"$python" -c "import torch" 2> /dev/null || { echo "gpu-check: $python has no torch (set PYTHON)" >&2; exit 2; }

# CUDA's and NCCL's libraries from pip's nvidia-* wheels (PyTorch's), and the toolkit's: kiln
# loads the driver, NVRTC and NCCL at run time.
libs=$("$python" - << 'PY'
import glob, os, sys
found = []
for p in sys.path:
    found += glob.glob(os.path.join(p, "nvidia", "*", "lib"))
print(":".join(sorted(set(found))))
PY
)
for d in /usr/local/cuda/lib64 /usr/local/nvidia/lib64; do
  [ -d "$d" ] && libs="$libs:$d"
done
libs="${libs#:}"
export LD_LIBRARY_PATH="${libs}${libs:+${LD_LIBRARY_PATH:+:}}${LD_LIBRARY_PATH:-}"
# The kernels' math functions come from the toolkit's libdevice (CUDA_PATH, else /usr/local/cuda).
if [ -z "${CUDA_PATH:-}" ] && [ ! -d /usr/local/cuda/nvvm/libdevice ] && command -v nvcc > /dev/null; then
  export CUDA_PATH="$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")"
fi
export PYTHONUNBUFFERED=1 RUST_BACKTRACE=1

echo "== $(cat COMMIT 2> /dev/null || echo '?'): $("$kiln" --version)"
nvidia-smi -L || echo "gpu-check: nvidia-smi found no GPU"
echo "CUDA_PATH=${CUDA_PATH:-} libdevice: $(ls "${CUDA_PATH:-/usr/local/cuda}"/nvvm/libdevice 2> /dev/null | tr '\n' ' ')"
"$kiln" devices || true
exec "$python" benches/gpu_check.py --kiln "$kiln" --out "$out" "$@"
