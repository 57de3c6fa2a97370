"""onnxforge: reproducible builds of verified ONNX models from JAX checkpoints."""

__version__ = "0.1.0"
