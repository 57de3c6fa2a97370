"""Layer 4, what people and Snakefile call: the catalog and its schema, recognizing a checkpoint,
`onnxforge build`, the command line of every step."""
