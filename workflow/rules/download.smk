rule download:
    message:
        "Download {wildcards.model}/{wildcards.checkpoint} from {params.source}"
    output:
        directory(f"{RESULT}/download"),
    params:
        source=source_of,
    log:
        f"{LOGS}/download.log",
    benchmark:
        f"{LOGS}/download.benchmark.tsv"
    resources:
        mem_mb=2000,
        runtime=60,
    shell:
        "python -m onnxforge download --source '{params.source}' --out {output} > {log} 2>&1"
