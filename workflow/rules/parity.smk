# Two rules so that a failed gate fails the target while its report stays for reading:
# parity_report always writes the report; parity_gate passes only if the report says PASS.


rule parity_report:
    input:
        checkpoint=f"{RESULT}/download",
        stage=f"{RESULT}/stage",
        export=f"{RESULT}/export/{{variant}}",
    output:
        directory(f"{RESULT}/parity/{{variant}}"),
    log:
        f"{LOGS}/parity-{{variant}}.log",
    benchmark:
        f"{LOGS}/parity-{{variant}}.benchmark.tsv"
    container:
        image_for
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        image=provenance_image,
        python=python_for,
        family=family_of,
        settings=parity_settings_json,
        target=lambda w: f"{w.model}/{w.checkpoint}/{w.variant}",
    message:
        "Parity of {wildcards.model}/{wildcards.checkpoint} {wildcards.variant}: "
        "ONNX Runtime vs JAX vs reference"
    shell:
        "ONNXFORGE_IMAGE={params.image} {params.python} -m onnxforge"
        " parity --family {params.family} --target {params.target}"
        " --checkpoint {input.checkpoint} --stage {input.stage} --export {input.export}"
        " --settings '{params.settings}' --out {output} > {log} 2>&1"


rule parity_gate:
    input:
        f"{RESULT}/parity/{{variant}}",
    output:
        f"{RESULT}/parity/{{variant}}.passed.json",
    log:
        f"{LOGS}/gate-{{variant}}.log",
    container:
        image_for
    params:
        image=provenance_image,
        python=python_for,
        release="results/release/{model}/{checkpoint}/{variant}",
    message:
        "Gate {wildcards.model}/{wildcards.checkpoint} {wildcards.variant}"
    shell:
        "ONNXFORGE_IMAGE={params.image} {params.python} -m onnxforge"
        " gate --report {input}/report.json --release {params.release}"
        " --out {output} 2>&1 | tee {log}"
