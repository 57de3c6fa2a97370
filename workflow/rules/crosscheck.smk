# Independent implementations of one checkpoint (config `crosschecks`: MaxText's GPT-OSS and
# our Flax GPT-OSS, say) against each other and transformers, on the logits their parity steps
# kept. Like parity: the report is always written; the gate fails on any disagreement. It reads
# the parity reports, not their gates: when one implementation fails its own gate, the
# crosscheck still says which one is the odd one out.


rule crosscheck_report:
    input:
        parity=lambda w: [t.parity for t in crosscheck_sides(w)],
        download=lambda w: [t.download for t in crosscheck_sides(w)],
    output:
        directory(paths.CROSSCHECK),
    log:
        f"{paths.RESULTS}/logs/crosscheck-{{name}}.log",
    benchmark:
        f"{paths.RESULTS}/logs/crosscheck-{{name}}.benchmark.tsv"
    container:
        lambda w: image_for_environment("jax")
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        **JAX_STEP_PARAMS,
        sides=crosscheck_side_arguments,
        gates=lambda w: json.dumps(crosscheck_gates(config, w.name)),
    message:
        "Crosscheck {wildcards.name}: implementations of one checkpoint vs each other"
    shell:
        onnxforge_step(
            "crosscheck --name {wildcards.name:q} {params.sides:q}"
            " --gates {params.gates:q} --out {output:q}"
        )


rule crosscheck_gate:
    input:
        paths.CROSSCHECK,
    output:
        paths.CROSSCHECK_PASSED,
    log:
        f"{paths.RESULTS}/logs/crosscheck-gate-{{name}}.log",
    benchmark:
        f"{paths.RESULTS}/logs/crosscheck-gate-{{name}}.benchmark.tsv"
    container:
        lambda w: image_for_environment("jax")
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        **JAX_STEP_PARAMS,
    message:
        "Gate crosscheck {wildcards.name}"
    shell:
        onnxforge_step("gate --report {input:q}/report.json --out {output:q}", console=True)
