rule stage:
    message:
        "Stage {wildcards.model}/{wildcards.checkpoint}: checkpoint -> JAX parameters (Orbax)"
    input:
        f"{RESULT}/download",
    output:
        directory(f"{RESULT}/stage"),
    params:
        family=family_of,
    log:
        f"{LOGS}/stage.log",
    benchmark:
        f"{LOGS}/stage.benchmark.tsv"
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "python -m onnxforge stage --family {params.family} --checkpoint {input}"
        " --out {output} > {log} 2>&1"
