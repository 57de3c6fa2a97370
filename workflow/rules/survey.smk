# Survey: every model config MaxText ships, tiny and with random weights, through JAX,
# jax2onnx and ONNX Runtime; a Markdown table (and JSON) of what works. Configs that fail are
# rows of the table, not failures of the job. Not part of the default targets: ask for it
# (snakemake maxtext_survey).


rule maxtext_survey:
    output:
        md=f"{paths.SURVEY}.md",
        json=f"{paths.SURVEY}.json",
    log:
        f"{paths.RESULTS}/logs/maxtext-survey.log",
    benchmark:
        f"{paths.RESULTS}/logs/maxtext-survey.benchmark.tsv"
    container:
        lambda w: image_for_environment("maxtext")
    threads: 2
    resources:
        mem_mb=16000,
        runtime=120,
    params:
        # A function, so a checkout without the maxtext environment still parses the workflow.
        python=lambda w: python_for_environment("maxtext"),
    message:
        "Survey MaxText's model configs: tiny, exported with jax2onnx, parity with ONNX Runtime"
    shell:
        "{params.python} -m onnxforge.survey --out {output.md} --jobs {threads} > {log} 2>&1"
