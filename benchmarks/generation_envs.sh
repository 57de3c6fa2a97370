#!/usr/bin/env bash
# Throwaway environments for benchmarks/generation.py's anchors, never the project's locks:
#   genai/    onnxruntime-genai (its model builder needs transformers 5.x and onnx_ir; accelerate
#             for transformers to read GPT-OSS's MXFP4 experts, benchmarks/quantization.py)
#   optimum/  optimum-onnx 0.1.0 (needs transformers < 4.58)
# Usage: benchmarks/generation_envs.sh [DIR]   (default /work/bench-envs; python3.11 on PATH)
# Versions are pinned here so that two runs benchmark the same anchors.
set -euo pipefail
root=${1:-/work/bench-envs}
python=${PYTHON:-python3.11}
mkdir -p "$root"

make_env() {  # name, packages...
  local name=$1
  shift
  [ -e "$root/$name/.ready" ] && return 0
  rm -rf "$root/$name"
  "$python" -m venv "$root/$name"
  "$root/$name/bin/pip" install --quiet "$@"
  touch "$root/$name/.ready"
}

make_env genai onnxruntime-genai==0.18.0 "transformers>=5,<6" onnx_ir onnx onnxruntime==1.32.0 \
  torch==2.13.0 safetensors numpy sentencepiece protobuf accelerate==1.16.0
make_env optimum optimum-onnx==0.1.0 "transformers<4.58" onnx onnxruntime==1.32.0 torch==2.13.0 \
  safetensors numpy sentencepiece protobuf
echo "benchmark environments ready in $root"
