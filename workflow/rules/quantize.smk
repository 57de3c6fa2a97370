# A quantized variant's export: the float KV export it quantizes (`quantizes:`), its weights
# as int4/int8 (steps/export/quantized.py). Its parity and promotion are any variant's.


rule quantize:
    input:
        base=base_export,
    output:
        directory(EXPORT),
    log:
        paths.step_log("export"),
    benchmark:
        paths.step_log("export", paths.BENCHMARK)
    wildcard_constraints:
        variant=QUANTIZED_VARIANT,
    container:
        image_for
    threads: 2
    resources:
        **sized("quantize", "base"),
    params:
        **STEP_PARAMS,
        settings=quantize_settings_json,
        withdraw=RELEASE,  # this variant's release: withdrawn when the quantization starts
    message:
        "Quantize {wildcards.model}/{wildcards.checkpoint} variant {wildcards.variant}"
    shell:
        onnxforge_step(
            "quantize --base {input.base:q} --settings {params.settings:q}"
            " --withdraw {params.withdraw:q} --threads {threads} --out {output:q}"
        )
