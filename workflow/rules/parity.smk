# Two rules so that a failed gate fails the target while its report stays for reading:
# parity_report always writes the report; parity_gate passes only if the report says PASS.


rule parity_report:
    input:
        checkpoint=DOWNLOAD,
        stage=STAGE,
        export=EXPORT,
        # A quantized variant's exactness gate matches its weights to JAX's through the float
        # export it quantized.
        base=base_exports,
    output:
        # `snakemake --report report.html`: each target's report.html, filed under its model.
        report(
            directory(PARITY),
            patterns=["{name}.html"],
            category="{model}",
            subcategory="{checkpoint} {variant}",
            caption="../report/parity.rst",
            labels={"model": "{model}", "checkpoint": "{checkpoint}", "variant": "{variant}"},
        ),
    log:
        paths.step_log("parity"),
    benchmark:
        paths.step_log("parity", paths.BENCHMARK)
    container:
        image_for
    threads: 4
    resources:
        **sized("parity", "stage"),
        gpu=gpus_for,
    params:
        **STEP_PARAMS,
        family=lambda w: family_of(w).name,
        settings=parity_settings_json,
        target=target_name,
        withdraw=RELEASE,  # this variant's release: withdrawn when parity starts
        base=lambda w: ["--base-export", *base_exports(w)] if base_exports(w) else [],
    message:
        "Parity of {wildcards.model}/{wildcards.checkpoint} {wildcards.variant}: "
        "ONNX Runtime vs JAX vs reference"
    shell:
        onnxforge_step(
            "parity --family {params.family:q} --target {params.target:q}"
            " --checkpoint {input.checkpoint:q} --stage {input.stage:q}"
            " --export {input.export:q} {params.base:q} --settings {params.settings:q}"
            " --withdraw {params.withdraw:q}"
            " --threads {threads} --out {output:q}"
        )


rule parity_gate:
    input:
        PARITY,
    output:
        PASSED,
    log:
        paths.step_log("gate"),
    benchmark:
        paths.step_log("gate", paths.BENCHMARK)
    container:
        image_for
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        **STEP_PARAMS,
        release=RELEASE,
    message:
        "Gate {wildcards.model}/{wildcards.checkpoint} {wildcards.variant}"
    shell:
        # The gate's verdict (PASS, or the failed gates) is the console's to see.
        onnxforge_step(
            "gate --report {input:q}/report.json --release {params.release:q} --out {output:q}",
            console=True,
        )
