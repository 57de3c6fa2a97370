"""Our NNX GPT-OSS against transformers' GptOss (independent) and jax2onnx's example model."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from onnxforge.core import params_store
from onnxforge.families.gpt_oss import FAMILY


def _load(stage_dir, dtype=jnp.float32):
    config = FAMILY.read_config(stage_dir)
    abstract = nnx.eval_shape(lambda: FAMILY.build(config, dtype))
    return params_store.load_into(abstract, stage_dir / "params", dtype)


@pytest.fixture(scope="module")
def jax_model(tiny_stage):
    return _load(tiny_stage)


@pytest.fixture(scope="module")
def torch_model(tiny_checkpoint):
    model = transformers.GptOssForCausalLM.from_pretrained(
        tiny_checkpoint, dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval()


def _ids(batch, seq, vocab, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, (batch, seq), dtype=np.int32)


@pytest.mark.parametrize("batch,seq", [(1, 1), (2, 7), (3, 40)])
def test_logits_and_hidden_states_match_transformers(jax_model, torch_model, batch, seq):
    ids = _ids(batch, seq, jax_model.config.vocab_size)
    logits, hidden = jax_model(jnp.asarray(ids), with_hidden_states=True)
    with torch.no_grad():
        ref = torch_model(
            input_ids=torch.from_numpy(ids.astype(np.int64)), output_hidden_states=True
        )
    np.testing.assert_allclose(np.asarray(logits), ref.logits.numpy(), atol=2e-5, rtol=1e-4)
    # transformers' hidden_states: embeddings, then each layer's output (the last one normed).
    for layer, ours in enumerate(hidden[:-1]):
        np.testing.assert_allclose(
            np.asarray(ours), ref.hidden_states[layer + 1].numpy(), atol=2e-5, rtol=1e-4
        )


def test_sliding_window_is_exercised(jax_model):
    """The tiny config's window is shorter than the long parity input, so it is tested."""
    assert jax_model.config.sliding_window < 40
    assert "sliding_attention" in jax_model.config.layer_types


def test_expert_choices_match_transformers_router(jax_model, torch_model):
    ids = _ids(2, 16, jax_model.config.vocab_size, seed=3)
    ours = jax_model.expert_choices(jnp.asarray(ids))
    with torch.no_grad():
        out = torch_model(
            input_ids=torch.from_numpy(ids.astype(np.int64)), output_router_logits=True
        )
    k = jax_model.config.num_experts_per_tok
    for layer, router_logits in enumerate(out.router_logits):
        theirs = torch.topk(router_logits, k, dim=-1).indices.numpy().reshape(2, 16, k)
        np.testing.assert_array_equal(np.sort(np.asarray(ours[layer]), -1), np.sort(theirs, -1))


def test_yarn_frequencies_match_transformers(jax_model, torch_model):
    inv_freq, scale = jax_model.config.rotary_inverse_frequencies()
    rotary = torch_model.model.rotary_emb
    np.testing.assert_allclose(inv_freq, rotary.inv_freq.numpy(), rtol=1e-6)
    assert scale == pytest.approx(rotary.attention_scaling)


def test_tied_embeddings(tmp_path):

    FAMILY.synthesize(tmp_path / "ckpt", seed=1, overrides={"tie_word_embeddings": True})
    FAMILY.stage(tmp_path / "ckpt", tmp_path / "stage")
    model = _load(tmp_path / "stage")
    ids = _ids(1, 9, model.config.vocab_size)
    ref = FAMILY.reference_logits(tmp_path / "ckpt", tmp_path / "stage", [ids])[0]
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(ids))), ref, atol=2e-5, rtol=1e-4)


def _as_jax2onnx_example(model, seq):
    """The same weights in jax2onnx's example GPT-OSS (OpenAI's fused layout)."""
    from jax2onnx.plugins.examples.nnx import gpt_oss_flax as ex

    cfg = model.config
    ex_cfg = ex.GPTOSSConfig(
        hidden_size=cfg.hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        head_dim=cfg.head_dim,
        num_hidden_layers=cfg.num_hidden_layers,
        vocab_size=cfg.vocab_size,
        sliding_window=cfg.sliding_window,
        rope_theta=cfg.rope_theta,
        initial_context_length=cfg.rope_original_max_position_embeddings,
        rope_scaling_factor=cfg.rope_factor,
        rope_ntk_alpha=cfg.rope_beta_slow,
        rope_ntk_beta=cfg.rope_beta_fast,
        num_experts=cfg.num_local_experts,
        experts_per_token=cfg.num_experts_per_tok,
        intermediate_size=cfg.intermediate_size,
        swiglu_limit=cfg.swiglu_limit,
    )
    cos, sin = ex._rotary_tables_for_config(ex_cfg, min_length=seq)
    example = ex.Transformer(
        config=ex_cfg,
        cos_table=cos,
        sin_table=sin,
        sequence_length=seq,
        mask_sliding=ex._causal_mask(seq, seq, sliding_window=cfg.sliding_window),
        mask_causal=ex._causal_mask(seq, seq),
    )

    def interleave(gate, up):  # [..., i] x2 -> [..., 2i], gate on even columns
        return jnp.stack([gate, up], axis=-1).reshape(*gate.shape[:-1], -1)

    example.token_embedding.embedding.set_value(model.embedding[...])
    example.norm.scale.set_value(model.norm.scale[...])
    example.unembedding_kernel.set_value(model.lm_head[...])
    for i, layer in enumerate(model.layers):
        block = example.blocks[f"block_{i}"]
        attn, mlp = layer.attention, layer.mlp
        block.norm1.scale.set_value(layer.input_norm.scale[...])
        block.norm2.scale.set_value(layer.post_attention_norm.scale[...])
        block.attention.qkv_kernel.set_value(
            jnp.concatenate([attn.q_kernel[...], attn.k_kernel[...], attn.v_kernel[...]], 1)
        )
        block.attention.qkv_bias.set_value(
            jnp.concatenate([attn.q_bias[...], attn.k_bias[...], attn.v_bias[...]])
        )
        block.attention.out_kernel.set_value(attn.o_kernel[...])
        block.attention.out_bias.set_value(attn.o_bias[...])
        block.attention.sinks.set_value(attn.sinks[...])
        block.mlp.gate_kernel.set_value(mlp.router_kernel[...])
        block.mlp.gate_bias.set_value(mlp.router_bias[...])
        w1 = interleave(mlp.gate_kernel[...], mlp.up_kernel[...])  # [e, h, 2i]
        block.mlp.mlp1_weight.set_value(jnp.swapaxes(w1, 1, 2))
        block.mlp.mlp1_bias.set_value(interleave(mlp.gate_bias[...], mlp.up_bias[...]))
        block.mlp.mlp2_weight.set_value(jnp.swapaxes(mlp.down_kernel[...], 1, 2))
        block.mlp.mlp2_bias.set_value(mlp.down_bias[...])
    return example


def test_matches_jax2onnx_example_within_the_window(jax_model):
    seq = jax_model.config.sliding_window  # the example and we agree up to the window
    ids = _ids(1, seq, jax_model.config.vocab_size, seed=5)
    example = _as_jax2onnx_example(jax_model, seq)
    ours = np.asarray(jax_model(jnp.asarray(ids)))[0]
    np.testing.assert_allclose(np.asarray(example(jnp.asarray(ids[0]))), ours, atol=2e-5)


def test_jax2onnx_example_sliding_window_sees_one_key_more(jax_model, torch_model):
    """Why we own the model: past the window the example lets each query see window + 1 keys
    (it masks q - k > window), transformers and OpenAI's reference window keys (q - k >= window).
    """
    seq = jax_model.config.sliding_window + 8
    ids = _ids(1, seq, jax_model.config.vocab_size, seed=6)
    example = np.asarray(_as_jax2onnx_example(jax_model, seq)(jnp.asarray(ids[0])))
    with torch.no_grad():
        ref = torch_model(input_ids=torch.from_numpy(ids.astype(np.int64))).logits.numpy()[0]
    window = jax_model.config.sliding_window
    np.testing.assert_allclose(example[:window], ref[:window], atol=2e-5)
    assert np.abs(example[window:] - ref[window:]).max() > 1e-3
    np.testing.assert_allclose(np.asarray(jax_model(jnp.asarray(ids)))[0], ref, atol=2e-5)
