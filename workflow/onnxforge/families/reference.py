"""The independent reference: Hugging Face transformers' PyTorch model loaded on the same
checkpoint, its logits, its greedy decode and its per-layer taps (what every family's parity
compares JAX against). torch and transformers are imported inside the functions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from onnxforge.core.errors import InputError


def load_transformers(model_class: str, checkpoint_dir: Path, config: Any, **options) -> Any:
    """transformers' ``model_class`` from the downloaded files, float32, eager attention, in
    eval mode. Missing weights are an error, never random ones."""
    import torch
    import transformers

    model, info = getattr(transformers, model_class).from_pretrained(
        checkpoint_dir,
        config=config,
        dtype=torch.float32,
        attn_implementation="eager",
        output_loading_info=True,
        **options,
    )
    if info["missing_keys"]:
        raise InputError(
            f"{checkpoint_dir}: transformers found no weights for "
            f"{sorted(info['missing_keys'])[:5]}; the reference would be random"
        )
    return model.eval()


def transformers_logits(
    model_class: str, checkpoint_dir: Path, config: Any, inputs: list[Any], **options
) -> list[Any]:
    """Logits of transformers' ``model_class`` (``load_transformers``) on each input."""
    import numpy as np
    import torch

    model = load_transformers(model_class, checkpoint_dir, config, **options)
    with torch.no_grad():
        return [
            model(input_ids=torch.from_numpy(np.asarray(ids, np.int64))).logits.float().numpy()
            for ids in inputs
        ]


def transformers_generate(
    model_class: str, checkpoint_dir: Path, config: Any, prompt: Any, steps: int, **options
) -> tuple[list[int], Any]:
    """Greedy ``generate(do_sample=False)`` of transformers' ``model_class`` with its own
    KV cache: ``steps`` tokens (no end-of-sequence stop, no logits processors) and each
    step's raw logits ``[steps, vocab]`` (float32)."""
    import numpy as np
    import torch
    import transformers

    model = load_transformers(model_class, checkpoint_dir, config, **options)
    ids = torch.from_numpy(np.asarray(prompt, np.int64))
    generation = transformers.GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=steps,
        min_new_tokens=steps,
        eos_token_id=None,
        pad_token_id=0,
        output_logits=True,
        return_dict_in_generate=True,
    )
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=generation
        )
    tokens = out.sequences[0, ids.shape[1] :].tolist()
    logits = torch.cat([step[:1] for step in out.logits], dim=0).float().numpy()
    return tokens, logits


ROUTER_LOGITS_HOOKED = "router logits of layer {}"


def transformers_taps(
    model_class: str, checkpoint_dir: Path, config: Any, token_ids: Any, **options
) -> tuple[Any, dict[str, Any]]:
    """The reference's logits and per-layer taps (``families.taps.tap`` names) on one input.

    Router logits come from transformers' ``output_router_logits``; the blocks' outputs
    from forward hooks on each decoder layer's ``self_attn``, ``mlp`` and the layer itself
    (what transformers' own output recorder hooks), the chosen experts from its router's
    top-k indices. ``output_hidden_states`` would give the last layer after the final norm.
    """
    import numpy as np
    import torch

    from onnxforge.families.taps import final_tap, tap

    model = load_transformers(model_class, checkpoint_dir, config, **options)
    taps: dict[str, Any] = {}
    hooks = []

    def record(name: str, index: int | None = 0):
        def hook(_module, _inputs, output):
            value = output[index] if isinstance(output, tuple) and index is not None else output
            taps[name] = value.detach().float().numpy()

        return hook

    routers = []
    for i, layer in enumerate(model.model.layers):
        hooks.append(layer.self_attn.register_forward_hook(record(tap(i, "attention"))))
        hooks.append(layer.mlp.register_forward_hook(record(tap(i, "mlp"))))
        hooks.append(layer.register_forward_hook(record(tap(i, "output"))))
        router = next((m for m in layer.mlp.modules() if type(m).__name__.endswith("Router")), None)
        if router is not None:
            routers.append(i)
            hooks.append(router.register_forward_hook(record(tap(i, "experts"), 2)))
            # (its logits too, for models whose output has no router_logits: DeepSeek V2)
            hooks.append(router.register_forward_hook(record(ROUTER_LOGITS_HOOKED.format(i), 0)))
    # Past the last layer: the final norm, and the LM head before any final soft cap.
    hooks.append(model.model.norm.register_forward_hook(record(final_tap("norm"), None)))
    hooks.append(model.lm_head.register_forward_hook(record(final_tap("lm_head"), None)))
    ids = torch.from_numpy(np.asarray(token_ids, np.int64))
    try:
        with torch.no_grad():
            out = model(input_ids=ids, output_router_logits=bool(routers))
    finally:
        for hook in hooks:
            hook.remove()
    # (a dense model's output has no router_logits, nor DeepSeek V2's)
    for i, logits in zip(routers, getattr(out, "router_logits", None) or (), strict=False):
        taps[tap(i, "router_logits")] = logits.detach().float().numpy()
    for i in routers:
        hooked = taps.pop(ROUTER_LOGITS_HOOKED.format(i))
        taps.setdefault(tap(i, "router_logits"), hooked)
    return out.logits.float().numpy(), taps
