rule export:
    input:
        f"{RESULT}/stage",
    output:
        directory(f"{RESULT}/export/{{variant}}"),
    log:
        f"{LOGS}/export-{{variant}}.log",
    benchmark:
        f"{LOGS}/export-{{variant}}.benchmark.tsv"
    container:
        image_for
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        image=provenance_image,
        python=python_for,
        family=family_of,
        dtype=lambda w: variant_of(w)["dtype"],
        opset=lambda w: variant_of(w).get("opset", 23),
    message:
        "Export {wildcards.model}/{wildcards.checkpoint} variant {wildcards.variant} to ONNX"
    shell:
        "ONNXFORGE_IMAGE={params.image} {params.python} -m onnxforge"
        " export --family {params.family} --stage {input}"
        " --dtype {params.dtype} --opset {params.opset} --out {output} > {log} 2>&1"
