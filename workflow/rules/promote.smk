# Only what passed its gate is promoted: the input is the gate's verdict.


rule promote:
    input:
        passed=f"{RESULT}/parity/{{variant}}.passed.json",
    output:
        directory("results/release/{model}/{checkpoint}/{variant}"),
    log:
        f"{LOGS}/promote-{{variant}}.log",
    container:
        image_for
    params:
        image=provenance_image,
        python=python_for,
        root=RESULT,
        target=lambda w: f"{w.model}/{w.checkpoint}/{w.variant}",
    message:
        "Promote {wildcards.model}/{wildcards.checkpoint} {wildcards.variant} to results/release"
    shell:
        "ONNXFORGE_IMAGE={params.image} {params.python} -m onnxforge"
        " promote --target {params.target} --root {params.root}"
        " --variant {wildcards.variant} --passed {input.passed}"
        " --out {output} > {log} 2>&1"
