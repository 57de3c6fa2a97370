# onnxforge: model x checkpoint -> download -> stage -> export (-> quantize) -> parity -> promote.
# The table of contents; each step is one file under workflow/rules/.


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/download.smk"
include: "workflow/rules/stage.smk"
include: "workflow/rules/export.smk"
include: "workflow/rules/quantize.smk"
include: "workflow/rules/parity.smk"
include: "workflow/rules/promote.smk"
include: "workflow/rules/crosscheck.smk"
include: "workflow/rules/summary.smk"
include: "workflow/rules/survey.smk"


rule all:
    default_target: True
    input:
        default_targets(config),
