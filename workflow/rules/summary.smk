# One page over every target built: results/index.html (and index.json), read from each
# parity report, the steps' benchmark files and the releases. It depends on the default
# targets' reports (never on their gates: a failed target is a row of the index too) and
# lists every report under results/, whatever command built it.


rule summary:
    input:
        [lookup_target(config, **t).parity for t in config["targets"]],
    output:
        html=report(
            paths.INDEX_HTML,
            category="Index",
            caption="../report/index.rst",
            labels={"page": "index of every target built"},
        ),
        json=paths.INDEX_JSON,
    log:
        f"{paths.RESULTS}/logs/summary.log",
    container:
        lambda w: image_for_environment("jax")
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        **JAX_STEP_PARAMS,
        # Every report and release there is, with its time: a new or rebuilt one reruns this.
        built=summary_state,
    message:
        "Index of every target built: {output.html}"
    shell:
        # Every report under results/ (summary's default), not only the inputs'.
        onnxforge_step("summary --out {output.html:q}")
