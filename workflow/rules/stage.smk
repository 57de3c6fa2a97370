rule stage:
    input:
        f"{RESULT}/download",
    output:
        directory(f"{RESULT}/stage"),
    log:
        f"{LOGS}/stage.log",
    benchmark:
        f"{LOGS}/stage.benchmark.tsv"
    container:
        image_for
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        image=provenance_image,
        python=python_for,
        family=family_of,
        options=lambda w: json.dumps(model_entry(config, w.model).get("options", {})),
        subdir=lambda w: checkpoint_entry(config, w.model, w.checkpoint).get("subdir", "."),
        layers=lambda w: (
            f"--layers {n}"
            if (n := checkpoint_entry(config, w.model, w.checkpoint).get("layers"))
            else ""
        ),
    message:
        "Stage {wildcards.model}/{wildcards.checkpoint}: checkpoint -> JAX parameters (Orbax)"
    shell:
        "ONNXFORGE_IMAGE={params.image} {params.python} -m onnxforge"
        " stage --family {params.family} --checkpoint {input}/{params.subdir}"
        " {params.layers} --options '{params.options}' --out {output} > {log} 2>&1"
