"""Layer 0, what every step stands on: errors, the checkout and result paths, atomic outputs and
manifests, progress, threads and processes, the run lock, config.json, safetensors and parameter
stores, non-finite checks, the project's text. Imports nothing else of onnxforge."""
