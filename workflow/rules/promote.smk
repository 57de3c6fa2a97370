# Only what passed its gate is promoted: the gate's verdict and every step it publishes from.


rule promote:
    input:
        passed=PASSED,
        download=DOWNLOAD,
        stage=STAGE,
        export=EXPORT,
        parity=PARITY,
    output:
        directory(RELEASE),
    log:
        paths.step_log("promote"),
    benchmark:
        paths.step_log("promote", paths.BENCHMARK)
    container:
        image_for
    threads: 1
    resources:
        mem_mb=1000,
        runtime=30,
    params:
        **STEP_PARAMS,
        target=target_name,
    message:
        "Promote {wildcards.model}/{wildcards.checkpoint} {wildcards.variant} to results/release"
    shell:
        onnxforge_step(
            "promote --target {params.target:q} --download {input.download:q}"
            " --stage {input.stage:q} --export {input.export:q} --parity {input.parity:q}"
            " --passed {input.passed:q} --out {output:q}"
        )
