rule export:
    input:
        STAGE,
    output:
        directory(EXPORT),
    log:
        f"{LOGS}/export-{{variant}}.log",
    benchmark:
        f"{LOGS}/export-{{variant}}.benchmark.tsv"
    container:
        image_for
    threads: 4
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=gpus_for,
    params:
        **STEP_PARAMS,
        family=lambda w: family_of(w).name,
        dtype=lambda w: variant_of(w)["dtype"],
        opset=lambda w: variant_of(w)["opset"],
    message:
        "Export {wildcards.model}/{wildcards.checkpoint} variant {wildcards.variant} to ONNX"
    shell:
        onnxforge_step(
            "export --family {params.family:q} --stage {input:q} --dtype {params.dtype:q}"
            " --opset {params.opset:q} --threads {threads} --out {output:q}"
        )
