"""Layer 3, the DAG's steps, one module or folder each: download, (stage is the family's), export,
parity (generation, metrics, diagnosis, reports), promote (gate and release), crosscheck,
summary. Import core, graph and families, never the driver."""
