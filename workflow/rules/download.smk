rule download:
    output:
        directory(f"{RESULT}/download"),
    log:
        f"{LOGS}/download.log",
    benchmark:
        f"{LOGS}/download.benchmark.tsv"
    container:
        image_for
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        image=provenance_image,
        python=python_for,
        source=source_of,
        patterns=download_patterns,
    message:
        "Download {wildcards.model}/{wildcards.checkpoint} from {params.source}"
    shell:
        "ONNXFORGE_IMAGE={params.image} {params.python} -m onnxforge"
        " download --source '{params.source}' {params.patterns} --out {output} > {log} 2>&1"
