rule download:
    output:
        directory(f"{RESULT}/download"),
    log:
        f"{LOGS}/download.log",
    benchmark:
        f"{LOGS}/download.benchmark.tsv"
    container:
        JAX_IMAGE
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        source=source_of,
        patterns=download_patterns,
    message:
        "Download {wildcards.model}/{wildcards.checkpoint} from {params.source}"
    shell:
        "python -m onnxforge download --source '{params.source}' {params.patterns} --out {output} > {log} 2>&1"
