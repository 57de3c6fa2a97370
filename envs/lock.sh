#!/usr/bin/env bash
# Usage: envs/lock.sh NAME   -> compiles envs/NAME.in into envs/NAME.lock.txt (hashes, py3.11).
# torch comes from the local CPU wheel via find-links /opt/wheels (pip.conf); don't change that spec.
set -euo pipefail
name=${1:?usage: $0 NAME}
here=$(cd "$(dirname "$0")" && pwd)
if [[ $name == maxtext ]]; then
  # MaxText's documented install: its `tpu` extra at the lowest versions it names (uv), for
  # Python 3.12 on linux x86_64; libtpu left out (CPU); maxtext.overrides.txt lifts jax2onnx's
  # orbax cap. Needs a Python >= 3.12 (MAXTEXT_PYTHON, else pyenv's 3.12).
  python=${MAXTEXT_PYTHON:-$(ls -d "$HOME"/.pyenv/versions/3.12.*/bin/python | tail -1)}
  venv=$(mktemp -d)/venv
  trap 'rm -rf "$(dirname "$venv")"' EXIT
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q uv==0.13.9
  cd "$here"
  SSL_CERT_FILE=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt} "$venv/bin/uv" pip compile \
    --python "$venv/bin/python" --python-platform x86_64-manylinux_2_31 --resolution lowest \
    --override maxtext.overrides.txt --no-emit-package libtpu --generate-hashes \
    --output-file maxtext.lock.txt maxtext.in
  exit 0
fi
venv=$(mktemp -d)/venv
trap 'rm -rf "$(dirname "$venv")"' EXIT
python3.11 -m venv "$venv"
"$venv/bin/pip" install -q pip==26.3 pip-tools==7.6.2
cd "$here"
# pip-compile pins setuptools/pip too (--allow-unsafe). jax-cuda: jax2onnx requires the CPU
# `onnxruntime`, which would overwrite onnxruntime-gpu's module of the same name. Naming it the
# only "unsafe" package resolves it as usual but leaves it out of the lock (a comment at its
# end); setuptools/pip are then ordinary packages and stay pinned. Install with --no-deps.
unsafe=(--allow-unsafe)
[[ $name == jax-cuda ]] && unsafe=(--unsafe-package onnxruntime)
"$venv/bin/pip-compile" -q --generate-hashes "${unsafe[@]}" --strip-extras \
  --no-emit-index-url --no-emit-find-links --find-links /opt/wheels \
  --output-file "$name.lock.txt" "$name.in"
