rule stage:
    input:
        f"{RESULT}/download",
    output:
        directory(f"{RESULT}/stage"),
    log:
        f"{LOGS}/stage.log",
    benchmark:
        f"{LOGS}/stage.benchmark.tsv"
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        family=family_of,
    message:
        "Stage {wildcards.model}/{wildcards.checkpoint}: checkpoint -> JAX parameters (Orbax)"
    shell:
        "python -m onnxforge stage --family {params.family} --checkpoint {input}"
        " --out {output} > {log} 2>&1"
