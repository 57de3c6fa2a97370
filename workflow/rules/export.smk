rule export:
    input:
        stage=STAGE,
        # A KV export's folder holds the checkpoint's tokenizer files, for ONNX Runtime GenAI.
        checkpoint=lambda w: export_arguments(w)[1:],
    output:
        directory(EXPORT),
    log:
        paths.step_log("export"),
    benchmark:
        paths.step_log("export", paths.BENCHMARK)
    wildcard_constraints:
        variant=rf"(?!(?:{QUANTIZED_VARIANT})$)[A-Za-z0-9][A-Za-z0-9_-]*",
    container:
        image_for
    threads: 4
    resources:
        **sized("export", "stage"),
        gpu=gpus_for,
    params:
        **STEP_PARAMS,
        family=lambda w: family_of(w).name,
        dtype=lambda w: variant_of(w)["dtype"],
        opset=lambda w: variant_of(w)["opset"],
        decoder=lambda w: variant_of(w)["decoder"],
        ops=lambda w: variant_of(w)["ops"],
        flags=export_arguments,
        withdraw=RELEASE,  # this variant's release: withdrawn when the export starts
    message:
        "Export {wildcards.model}/{wildcards.checkpoint} variant {wildcards.variant} to ONNX"
    shell:
        onnxforge_step(
            "export --family {params.family:q} --stage {input.stage:q} --dtype {params.dtype:q}"
            " --opset {params.opset:q} --decoder {params.decoder:q} --ops {params.ops:q}"
            " {params.flags:q} --withdraw {params.withdraw:q}"
            " --threads {threads} --out {output:q}"
        )
