rule download:
    output:
        directory(DOWNLOAD),
    log:
        paths.step_log("download"),
    benchmark:
        paths.step_log("download", paths.BENCHMARK)
    container:
        image_for
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        **STEP_PARAMS,
        source=source_of,
        source_state=download_source_state,
        flags=download_arguments,
        # every variant's release of this checkpoint: withdrawn when the download starts
        withdraw=lambda w: os.path.dirname(paths.RELEASE).format(**w),
    message:
        "Download {wildcards.model}/{wildcards.checkpoint} from {params.source}"
    shell:
        onnxforge_step(
            "download --source {params.source:q} {params.flags:q}"
            " --withdraw {params.withdraw:q} --out {output:q}"
        )
