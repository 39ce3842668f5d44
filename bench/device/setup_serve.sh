#!/usr/bin/env bash
# vLLM 0.26.0 + Triton (nvidia-pytriton 0.7.0) on the lent GPU machine, from carried wheels.
# The device image (Python 3.12, torch 2.11 + CUDA 13) has no registry access, so the wheels travel
# in the git-ignored .carry/ folder, one ≤60 MiB part per device call (bench/device/README.md).
#
#   bash bench/device/setup_serve.sh fetch     # HERE (dev machine, PyPI): rebuild .carry/p1..p7
#   bash bench/device/setup_serve.sh stage     # copy the .carry/p*/ parts present in this call to $STAGE
#   bash bench/device/setup_serve.sh install   # join + sha256-check vllm, install all, print the exports
#   bash bench/device/setup_serve.sh env       # print the exports again (after install)
#
# install puts everything in $SITE (--target, default /tmp/site), numpy 1.26 alone in $SITE_NP1, and
# builds $SERVE_VENV: a pip-less venv whose .pth lists $SITE and the image's site-packages, for
# Triton's Python-backend stub (it ignores PYTHONPATH: it finds its interpreter through the first
# `python3` on PATH and that venv's pyvenv.cfg). The vllm model reads its tensors through DLPack and
# runs on the image's numpy 2 (the image's scipy, which vLLM imports, fails under numpy 1.26:
# `np.long`). SERVE_NUMPY1=1 lists $SITE_NP1 first (BYTES tensors through as_numpy; on this image
# transformers then fails to import AutoModelForCausalLM, so the hf engine does not run here).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CARRY=${CARRY:-$ROOT/.carry}
STAGE=${STAGE:-/tmp/carry}
SITE=${SITE:-/tmp/site}
SITE_NP1=${SITE_NP1:-/tmp/site-np1}
SERVE_VENV=${SERVE_VENV:-/tmp/venv-serve}
PY=${PY:-python3}
PIP=("$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade
     --disable-pip-version-check)

# exact wheels (cp312, manylinux x86_64), found by importing vLLM's offline + LoRA + OpenAI-server
# modules against the image's packages; p6 = pytriton + tritonclient[http] deps, p7 = vLLM's deps
VLLM_SPEC=vllm==0.26.0
P6_SPECS="nvidia-pytriton==0.7.0 tritonclient==2.73.0 geventhttpclient==2.6.1 gevent==26.9.0 greenlet==3.3.2
  brotli==1.2.1 python-rapidjson==1.25 sh==2.4.0 importlib_metadata==10.2.0 lazy-importer==0.1.0 zope.event==6.2
  zope.interface==8.7"
P7_SPECS="pydantic==2.12.5 pydantic-core==2.41.5 annotated-types==0.8.0 typing-inspection==0.4.5 msgspec==0.23.0
  pyzmq==27.3.0 pybase64==1.5.1 cbor2==6.3.0 blake3==1.0.11 cachetools==8.0.2 fastapi==0.136.3 starlette==1.10.0
  uvicorn==0.54.0 watchfiles==1.3.0 openai==2.54.0 openai-harmony==0.0.8 distro==1.9.0 jiter==0.19.0 sniffio==1.3.1
  llguidance==1.7.6 xgrammar==0.2.7 apache-tvm-ffi==0.1.10 partial-json-parser==0.2.1.1.post7 depyf==0.20.0
  astor==0.8.1 dill==0.4.1 compressed-tensors==0.17.0 loguru==0.7.3 model-hosting-container-standards==0.1.16
  jmespath==1.1.0 setproctitle==1.3.8 ijson==3.6.0"
NP1_SPEC=numpy==1.26.4

fetch() {
  local plat=() n d
  for n in 2_35 2_34 2_31 2_28 2_27 2_26 2_24 2_17 2014 2_5 1; do
    case $n in 2014|1) plat+=(--platform "manylinux${n}_x86_64") ;; *) plat+=(--platform "manylinux_${n}_x86_64") ;; esac
  done
  dl() { d=$1; shift; mkdir -p "$d"; python3 -m pip download -q --disable-pip-version-check --no-deps \
           --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" -d "$d" "$@"; }
  local tmp; tmp=$(mktemp -d)
  dl "$tmp" "$VLLM_SPEC"
  local whl; whl=$(cd "$tmp" && ls vllm-*.whl)
  rm -rf "$CARRY"/p[1-7]/{vllm,whl,whl-np1}  # p7/tools, if any, stays
  mkdir -p "$CARRY"/p{1..5}/vllm
  (cd "$tmp" && sha256sum "$whl" > vllm.sha256 && split -b 58M "$whl" part_)
  cp "$tmp/vllm.sha256" "$CARRY/p1/vllm/"
  n=1; for d in "$tmp"/part_*; do mv "$d" "$CARRY/p$n/vllm/"; n=$((n + 1)); done
  [ "$n" = 6 ] || { echo "expected 5 parts of the vllm wheel, got $((n - 1))" >&2; exit 1; }
  # shellcheck disable=SC2086
  dl "$CARRY/p6/whl" $P6_SPECS
  # shellcheck disable=SC2086
  dl "$CARRY/p7/whl" $P7_SPECS
  dl "$CARRY/p7/whl-np1" "$NP1_SPEC"
  rm -rf "$tmp"
  grep -qx '/.carry/' "$ROOT/.git/info/exclude" 2>/dev/null || echo '/.carry/' >> "$ROOT/.git/info/exclude"
  du -sm "$CARRY"/p* | sed 's#'"$CARRY"'/##'
}

stage() {
  mkdir -p "$STAGE"/{vllm,whl,whl-np1,tools}
  local n=0 d sub f
  for d in "$CARRY"/p*/; do
    [ -d "$d" ] || continue
    for sub in vllm whl whl-np1 tools; do
      [ -d "$d$sub" ] || continue
      for f in "$d$sub"/*; do
        [ -f "$f" ] || continue
        # idempotent: skip a file already staged with the same size
        if [ -f "$STAGE/$sub/${f##*/}" ] && [ "$(stat -c %s "$f")" = "$(stat -c %s "$STAGE/$sub/${f##*/}")" ]; then
          continue
        fi
        cp -f "$f" "$STAGE/$sub/"
        n=$((n + 1))
      done
    done
  done
  echo "staged $n new file(s) from $(ls -d "$CARRY"/p*/ 2>/dev/null | xargs -rn1 basename | tr '\n' ' ')into $STAGE;" \
       "now: $(ls "$STAGE"/vllm | tr '\n' ' ')| $(ls "$STAGE"/whl | wc -l) wheels | $(du -sm "$STAGE" | cut -f1) MiB"
}

env_lines() {
  cat <<EOF
export PYTHONPATH=$SITE\${PYTHONPATH:+:\$PYTHONPATH}
export PATH=$SITE/bin:\$PATH
export VLLM_USE_FLASHINFER_SAMPLER=0
export VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export REASONFLOW_SERVE_VENV=$SERVE_VENV
export TRITONSERVER=$SITE/pytriton/tritonserver/bin/tritonserver
EOF
}

install() {
  stage >/dev/null
  local sha="$STAGE/vllm/vllm.sha256"
  [ -f "$sha" ] || { echo "missing $sha (carry .carry/p1 and stage it)" >&2; exit 1; }
  local whl; whl=$(awk '{print $2}' "$sha")
  if [ ! -f "$STAGE/$whl" ] || ! (cd "$STAGE" && sha256sum -c --status "$sha"); then
    local parts=("$STAGE"/vllm/part_*)
    echo "joining ${#parts[@]} part(s): $(basename -a "${parts[@]}" | tr '\n' ' ')"
    cat "${parts[@]}" > "$STAGE/$whl"
    if ! (cd "$STAGE" && sha256sum -c "$sha"); then
      echo "vllm wheel sha256 mismatch: a part is missing or short (stage every .carry/p1..p5)" >&2; exit 1
    fi
  fi
  echo "installing $whl + $(ls "$STAGE"/whl/*.whl | wc -l) wheels into $SITE"
  "${PIP[@]}" --target "$SITE" "$STAGE/$whl" "$STAGE"/whl/*.whl
  if compgen -G "$STAGE/whl-np1/*.whl" >/dev/null; then
    "${PIP[@]}" --target "$SITE_NP1" "$STAGE"/whl-np1/*.whl
  fi
  # serving venv for the Triton Python-backend stub (see the header)
  local base img_sp sp
  base=$("$PY" -c 'import sys; print(sys._base_executable)')
  img_sp=$("$PY" -c 'import site; print("\n".join(p for p in site.getsitepackages()))')
  rm -rf "$SERVE_VENV"
  "$base" -m venv --without-pip "$SERVE_VENV"
  sp=$("$SERVE_VENV/bin/python" -c 'import site; print(site.getsitepackages()[0])')
  { [ "${SERVE_NUMPY1:-0}" = 1 ] && [ -d "$SITE_NP1" ] && echo "$SITE_NP1"; echo "$SITE"; echo "$img_sp"; } \
    > "$sp/00-carried.pth"
  "$SERVE_VENV/bin/python" -c 'import importlib.util as u, numpy, sys; print("serve venv", sys.prefix, "numpy", numpy.__version__, "pytriton", u.find_spec("pytriton").origin)'
  env_lines > "$STAGE/env.sh"
  echo "# exports (also in $STAGE/env.sh: source it)"
  env_lines
}

case "${1:-}" in
  fetch) fetch ;;
  stage) stage ;;
  install) install ;;
  env) env_lines ;;
  *) echo "usage: $0 fetch|stage|install|env" >&2; exit 2 ;;
esac
