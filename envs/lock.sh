#!/usr/bin/env bash
# Usage: envs/lock.sh NAME   -> compiles envs/NAME.in into envs/NAME.lock.txt (hashes, py3.11).
# torch comes from the local CPU wheel via find-links /opt/wheels (pip.conf); don't change that spec.
set -euo pipefail
name=${1:?usage: $0 NAME}
here=$(cd "$(dirname "$0")" && pwd)
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
