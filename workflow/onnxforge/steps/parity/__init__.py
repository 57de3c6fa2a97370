"""Parity: ONNX Runtime vs JAX vs transformers, generation gates, diagnosis and reports."""
