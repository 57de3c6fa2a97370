"""Export: the staged JAX model -> ONNX (full sequence or KV decoder) and its GenAI folder."""
