rule stage:
    input:
        DOWNLOAD,
    output:
        directory(STAGE),
    log:
        paths.step_log("stage"),
    benchmark:
        paths.step_log("stage", paths.BENCHMARK)
    container:
        image_for
    threads: 4
    resources:
        **sized("stage", 0),
    params:
        **STEP_PARAMS,
        family=lambda w: family_of(w).name,
        options=lambda w: json.dumps(model_entry(config, w.model).get("options", {})),
        checkpoint=lambda w: os.path.join(
            paths.DOWNLOAD.format(**w),
            checkpoint_entry(config, w.model, w.checkpoint).get("subdir", "."),
        ),
        flags=stage_arguments,
        # every variant's release of this checkpoint: withdrawn when the stage starts
        withdraw=lambda w: os.path.dirname(paths.RELEASE).format(**w),
    message:
        "Stage {wildcards.model}/{wildcards.checkpoint}: checkpoint -> JAX parameters (Orbax)"
    shell:
        onnxforge_step(
            "stage --family {params.family:q} --checkpoint {params.checkpoint:q} {params.flags:q}"
            " --options {params.options:q} --withdraw {params.withdraw:q}"
            " --threads {threads} --out {output:q}"
        )
