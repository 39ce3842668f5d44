#!/usr/bin/env bash
# FlashAttention-4 (PyPI flash-attn-4, CuTe DSL) on the lent GPU machine, from carried wheels.
# The device image (Python 3.12, torch 2.11 + CUDA 13) reaches no registry; the wheels (~98 MiB)
# travel in the git-ignored .carry/ in two device calls (one call carries at most 64 MiB):
#
#   bash bench/device/setup_fa4.sh fetch     # HERE (dev machine, PyPI): .carry/fa1 (58 MiB), .carry/fa2 (40 MiB)
#   bash bench/device/setup_fa4.sh stage     # THERE, call 1 (carry .carry/fa1): copy the parts to $STAGE
#   bash bench/device/setup_fa4.sh install   # THERE, call 2 (carry .carry/fa2): join + sha256, install, exports
#
# install puts the wheels in $SITE (pip --target) and writes $STAGE/env.sh. Under --target the
# nvidia-cutlass-dsl wheel's .pth file is not read, so env.sh puts $SITE/nvidia_cutlass_dsl/dsl_packages
# on PYTHONPATH itself.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CARRY=${CARRY:-$ROOT/.carry}
STAGE=${STAGE:-/tmp/carry-fa4}
SITE=${SITE:-/tmp/site-fa4}
BIG=nvidia-cutlass-dsl-libs-cu13==4.8.1  # 88 MiB: split in two parts
SPECS="flash-attn-4==4.0.0b36 nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1
  nvidia-cutlass-dsl-libs-core==4.8.1 quack-kernels==0.6.5 apache-tvm-ffi==0.1.15.post2 torch-c-dlpack-ext==0.1.5"

fetch() {
  local plat=() n tmp
  for n in 2_35 2_34 2_31 2_28 2_27 2_24 2_17 2014; do
    case $n in 2014) plat+=(--platform "manylinux${n}_x86_64") ;; *) plat+=(--platform "manylinux_${n}_x86_64") ;; esac
  done
  dl() { local d=$1; shift; mkdir -p "$d"; python3 -m pip download -q --disable-pip-version-check --no-deps \
           --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" -d "$d" "$@"; }
  tmp=$(mktemp -d)
  dl "$tmp" "$BIG"
  rm -rf "$CARRY"/fa1 "$CARRY"/fa2
  mkdir -p "$CARRY"/fa1 "$CARRY"/fa2/whl
  local whl; whl=$(cd "$tmp" && ls nvidia_cutlass_dsl_libs_cu13-*.whl)
  (cd "$tmp" && sha256sum "$whl" > big.sha256 && split -b 58M "$whl" part_)
  mv "$tmp/part_aa" "$tmp/big.sha256" "$CARRY/fa1/"
  mv "$tmp/part_ab" "$CARRY/fa2/"
  # shellcheck disable=SC2086
  dl "$CARRY/fa2/whl" $SPECS
  rm -rf "$tmp"
  grep -qx '/.carry/' "$ROOT/.git/info/exclude" 2>/dev/null || echo '/.carry/' >> "$ROOT/.git/info/exclude"
  du -sm "$CARRY"/fa1 "$CARRY"/fa2 | sed 's#'"$CARRY"'/##'
}

stage() {
  mkdir -p "$STAGE/whl"
  local d f
  for d in "$CARRY"/fa1 "$CARRY"/fa2; do
    [ -d "$d" ] || continue
    for f in "$d"/* "$d"/whl/*; do
      [ -f "$f" ] || continue
      case $f in */whl/*) cp -f "$f" "$STAGE/whl/" ;; *) cp -f "$f" "$STAGE/" ;; esac
    done
  done
  echo "staged: $(ls "$STAGE" | tr '\n' ' ')| $(ls "$STAGE"/whl | wc -l) wheels"
}

install() {
  stage >/dev/null
  local whl; whl=$(awk '{print $2}' "$STAGE/big.sha256")
  cat "$STAGE"/part_* > "$STAGE/$whl"
  (cd "$STAGE" && sha256sum -c big.sha256) || { echo "cutlass-dsl cu13 wheel: a part is missing (stage .carry/fa1 first)" >&2; exit 1; }
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --disable-pip-version-check \
    --target "$SITE" "$STAGE/$whl" "$STAGE"/whl/*.whl
  printf 'export PYTHONPATH=%s:%s${PYTHONPATH:+:$PYTHONPATH}\n' "$SITE" "$SITE/nvidia_cutlass_dsl/dsl_packages" \
    > "$STAGE/env.sh"
  cat "$STAGE/env.sh"
}

case "${1:-}" in
  fetch) fetch ;;
  stage) stage ;;
  install) install ;;
  *) echo "usage: $0 fetch|stage|install" >&2; exit 2 ;;
esac
