"""Layer 2, model families: the contract (base), the registry (this module), the transformers
reference, shared staging and tiny-checkpoint helpers, tap names; gpt_oss/ and maxtext/.
Import core and graph only. A catalog entry names its family by one of FAMILIES' keys."""

from __future__ import annotations

from onnxforge.core.errors import InputError
from onnxforge.families.base import Family
from onnxforge.families.gpt_oss import FAMILY as GPT_OSS
from onnxforge.families.maxtext import FAMILY as MAXTEXT

FAMILIES: dict[str, Family] = {family.name: family for family in (GPT_OSS, MAXTEXT)}


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise InputError(
            f"unknown model family {name!r}; known families: {sorted(FAMILIES)}"
        ) from None
