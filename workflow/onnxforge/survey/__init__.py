"""Survey: every model config MaxText ships, at a tiny size, through onnxforge's pipeline.

For each ``configs/models/*.yml``: build the model with tiny dimensions and seeded random
weights, run it in JAX, export it with jax2onnx (symbolic batch and sequence; a fixed shape
when that fails), and compare ONNX Runtime's logits with JAX's. Each config runs in its own
subprocess with a timeout (a config can crash or hang the interpreter, and MaxText's pyconfig
keeps global state). The result is a Markdown table and a JSON file of the same rows; a config
that fails is a row, not a failure of the survey.

    python -m onnxforge.survey --out results/maxtext-survey.md \
        [--only llama2-7b,gemma-2b] [--jobs N] [--timeout S]

Modules: ``tiny`` (a config's tiny overrides and random weights), ``worker`` (one config's
stages, in its own process), ``failures`` (a failure as a row's one-line error), ``driver``
(the command line; each config in a subprocess with its timeout), ``report`` (the Markdown
table and the JSON), ``settings`` (input shapes, seed, and the parity gates: config.yaml's
``gates.float32``).
"""
