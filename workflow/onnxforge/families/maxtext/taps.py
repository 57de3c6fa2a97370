"""MaxText's per-layer taps for the diagnosis, from MaxText's own model as it runs.

MaxText's decoder runs each unscanned layer through a merged copy of it (``pure_layer_fn`` in
``layers/nnx_decoders.py``), so the taps cannot hang on module instances, and under
``jax.checkpoint`` (its config system reads our ``remat_policy=none`` as None, which that
code takes for a policy), whose inner trace would not let the taps out. Instead, while one
forward is traced, the classes of the model's decoder layers (DeepSeek: a dense one and a MoE
one), their attention and their MLP (or MoE) have their ``__call__`` wrapped, and
``RoutedMoE.get_topk`` too: each records its output under the index of the Hugging Face layer
being run: each attention call starts one (layers run in order; a Gemma 2 MaxText layer holds
two, local then global, and its output is the second's; the first's output has no tap of its
own). The values are the trace's own, so the taps are outputs of the same jitted function or
ONNX graph as the logits, and ``jax.checkpoint`` is the identity meanwhile (rematerialization
changes when a value is computed for the backward pass, never the value). Nothing of the
model is re-implemented; everything is put back on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import jax

from onnxforge.families import taps as tap_names
from onnxforge.families.maxtext import patches, runtime
from onnxforge.families.maxtext.architectures import decoder_layers


def _first(out: Any) -> Any:
    return out[0] if isinstance(out, tuple) else out


def tapped_classes(model) -> dict[str, set[type]]:
    """The classes whose calls give the taps: the decoder layers' (DeepSeek has a dense and a
    MoE one), and the classes of their attention and of their MLP (a dense ``MlpBlock``, a
    ``RoutedMoE``, or DeepSeek's ``RoutedAndSharedMoE``), found by type since MaxText names
    them per architecture (``mlp``, ``MoeBlock_0``, ``GptOssMlp``, ...)."""
    from maxtext.layers import attentions, linears, moe

    classes: dict[str, set[type]] = {"layer": set(), "attention": set(), "mlp": set()}
    # a MoE layer's MLP is its (routed and shared) MoE, whatever dense MLP that holds
    kinds = {
        "attention": (attentions.Attention,),
        "mlp": (moe.RoutedAndSharedMoE, moe.RoutedMoE, linears.MlpBlock),
    }
    decoder = vars(model.decoder)
    for name in decoder_layers(decoder):
        layer = decoder[name]
        classes["layer"].add(type(layer))
        modules = list(vars(layer).values())
        for part, types in kinds.items():
            found = next((type(m) for kind in types for m in modules if isinstance(m, kind)), None)
            if found is None:
                names = [k.__name__ for k in types]
                raise RuntimeError(f"MaxText's {type(layer).__name__} holds none of {names}")
            classes[part].add(found)
    if not classes["layer"]:
        raise RuntimeError(f"MaxText's decoder has no unscanned layers: {sorted(decoder)}")
    return classes


@contextlib.contextmanager
def recording(classes: dict[str, set[type]]) -> Iterator[dict[str, Any]]:
    """Wrap the classes' calls (and ``RoutedMoE.get_topk``) for one forward; yields the taps."""
    from maxtext.layers import moe

    taps: dict[str, Any] = {}
    state = {"layer": -1, "inside": False, "mlp_depth": 0}
    # every wrapper below, undone when the forward is done (or fails)
    with contextlib.ExitStack() as scoped:

        def wrap(cls: type, method: str, record) -> None:
            original = getattr(cls, method)

            def wrapper(self, *args, **kwargs):
                out = original(self, *args, **kwargs)
                record(args, out)
                return out

            scoped.enter_context(patches.temporarily(cls, method, wrapper))

        def put(part: str, value: Any) -> None:
            if state["inside"]:
                taps.setdefault(
                    tap_names.tap(state["layer"], part), value
                )  # the layer's first call

        def attention(args, out) -> None:
            if state["inside"]:
                state["layer"] += 1  # a Hugging Face layer starts with its attention
                put("attention", _first(out))

        def layer_call(cls: type) -> None:
            original = cls.__call__

            def wrapper(self, *args, **kwargs):
                state["inside"] = True
                try:
                    out = original(self, *args, **kwargs)
                finally:
                    state["inside"] = False
                taps[tap_names.tap(state["layer"], "output")] = _first(out)
                return out

            scoped.enter_context(patches.temporarily(cls, "__call__", wrapper))

        def mlp_call(cls: type) -> None:
            # Only the outermost MLP call is the layer's MLP: DeepSeek's MoE calls its shared
            # experts, an MlpBlock, inside.
            original = cls.__call__

            def wrapper(self, *args, **kwargs):
                state["mlp_depth"] += 1
                try:
                    out = original(self, *args, **kwargs)
                finally:
                    state["mlp_depth"] -= 1
                if state["mlp_depth"] == 0:
                    put("mlp", _first(out))
                return out

            scoped.enter_context(patches.temporarily(cls, "__call__", wrapper))

        for cls in classes["layer"]:
            layer_call(cls)
        for cls in classes["attention"]:
            wrap(cls, "__call__", attention)
        for cls in classes["mlp"]:
            mlp_call(cls)

        def topk(args, out):
            # get_topk(gate_logits, pre_bias_logits, ...): DeepSeek V3 adds its routing bias to
            # the scores it selects by, which transformers' router logits have not
            put("router_logits", args[0] if args[1] is None else args[1])
            put("experts", out[1])

        wrap(moe.RoutedMoE, "get_topk", topk)
        scoped.enter_context(patches.temporarily(jax, "checkpoint", lambda fun, **_: fun))
        yield taps


def apply_with_taps(config, params: dict) -> tuple[Any, Any]:
    """``(apply(param_state, token ids) -> (logits, taps), param_state)``."""
    apply, param_state = runtime.apply_function(config, params)
    classes = tapped_classes(runtime.abstract_model(config))

    def tapped(weights, token_ids):
        with recording(classes) as taps:
            logits = apply(weights, token_ids)
        return logits, dict(taps)

    return tapped, param_state
