"""Layer 1, ONNX graphs: the I/O signature, op choice (plain or ort), one converter-side graph
builder, the attention and sparse-MoE lowerings, tracing and saving, graph passes, jax2onnx
plugins and fixes. Imports core only."""
