"""Weight-only int4/int8 quantization of an exported graph, by ONNX Runtime's own quantizer.

``quantize`` turns each weight MatMul of an export folder (B a 2-D float initializer) into
``MatMulNBits`` (format ``ort``) or a blocked ``DequantizeLinear`` + ``MatMul`` (format
``plain``: standard ONNX, opset >= 21). The numbers are ``onnxruntime.quantization``'s
``MatMulNBitsQuantizer``'s, called one weight at a time on a one-node model: the float weights
stay memory-mapped in the input's external data, so the process holds one float weight at a
time besides the quantized ones (a whole-model ``MatMulNBitsQuantizer`` would load every
weight into one ModelProto, which cannot be saved past 2 GB). MoE experts (a ``MoE`` node's
inputs, or batched ``[E, K, N]`` weights) stay float: QMoE is another pass.

``dequantized_weights`` and ``params_with_dequantized`` (``graph.dequantized``, re-exported
here) read them back as ONNX Runtime computes with them and put them into the JAX parameters,
for the exactness gate. Run that gate at accuracy level 1: level 4 (int8 activations) differs
from the dequantized model by ~1e-2 relative. A ``plain`` graph's level is a session option
(``session_config``): ONNX Runtime fuses its DequantizeLinear + MatMul into MatMulNBits.

What ONNX Runtime 1.32's quantizer offers (algorithm here: its config):
- ``rtn``: ``DefaultWeightOnlyQuantConfig``, blockwise min/max round-to-nearest in C++ (MLAS).
  4 and 8 bits, symmetric or not; QDQ (``plain``) for 4 bits only, so 8-bit ``plain`` is its
  8-bit MatMulNBits laid out as DequantizeLinear (the same integers, scales and zero points).
  Its ``RTNWeightOnlyQuantConfig`` (Intel Neural Compressor's numpy RTN) is not used: it writes
  a wrong zero-point layout for 4 bits when K / block_size is odd.
- ``k_quant``: ``KQuantWeightOnlyQuantConfig`` (llama.cpp's k-quant search), 4 and 8 bits,
  asymmetric only (it always writes zero points), QOperator only (``plain``: laid out as
  DequantizeLinear like 8-bit rtn); 4 bits only where K / block_size is even (same bug).
- ``hqq``: ``HQQWeightOnlyQuantConfig``, asymmetric with float zero points, which
  DequantizeLinear cannot hold (``ort`` only) and ONNX Runtime's CPU MatMulNBits refuses at 8
  bits (4 only). It writes no accuracy_level: set here.
- Gather (embeddings): ``rtn`` only, 4 bits, ``ort`` only (``GatherBlockQuantized``, blocks
  along the hidden axis); 8 bits and QDQ it logs as an error and leaves float. A Gather and a
  MatMul that share one initializer come out broken (both quantized tensors get one name).
  Tied embeddings in our exports are two initializers (the LM head's is the transposed copy
  einsum_to_matmul writes): ``embeddings=True`` then reads the LM head's quantized tensors
  through ``GatherBlockQuantized`` (uint8 data, as ONNX Runtime GenAI's builder shares them),
  so both hold the same values and the float table is gone.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import shutil
import warnings
from collections.abc import Collection
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from onnxforge.core.errors import InputError
from onnxforge.core.paths import DATA_FILE, ONNX_FILE
from onnxforge.graph.dequantized import (
    CONTRIB,
    WEIGHT_KEY,
    dequantized_weights,
    float_initializers,
    nbits_parts,
    params_with_dequantized,
)
from onnxforge.graph.signature import INPUT_IDS, LOGITS
from onnxforge.graph.tracing import save

ALGORITHMS = ("rtn", "k_quant", "hqq")
FORMATS = ("ort", "plain")
LM_HEAD = ("same", "int4", "int8", "float")
# ONNX Runtime fuses a plain graph's DequantizeLinear + MatMul into MatMulNBits at load, at
# this session option's accuracy level: 4 (int8 activations) unless set (``session_config``).
QDQ_ACCURACY_KEY = "session.qdq_matmulnbits_accuracy_level"
_STANDARD = ("", "ai.onnx")
# Read back (graph.dequantized), here too: what the exactness gate calls after ``quantize``.
__all__ = [
    "Scheme",
    "dequantized_weights",
    "float_initializers",
    "params_with_dequantized",
    "quantize",
    "session_config",
]


@dataclass(frozen=True)
class Scheme:
    """How weights are quantized: a variant's settings."""

    bits: int = 4
    block_size: int = 32
    symmetric: bool = True
    accuracy_level: int = 4  # MatMulNBits' activations: 1 float32 ... 4 int8 (plain: at run)
    algorithm: str = "rtn"
    format: str = "ort"

    def refusal(self) -> str | None:
        """Why ONNX Runtime's quantizer (or its CPU kernels) cannot do this, else None."""
        if self.algorithm not in ALGORITHMS:
            return f"algorithm {self.algorithm!r} is not one of {ALGORITHMS}"
        if self.format not in FORMATS:
            return f"format {self.format!r} is not one of {FORMATS}"
        if self.bits not in (4, 8):
            return f"bits {self.bits}: MatMulNBits variants take 4 or 8"
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            return f"block_size {self.block_size}: MatMulNBits needs a power of two >= 16"
        if self.accuracy_level not in range(5):
            return f"accuracy_level {self.accuracy_level}: 0 (unset), 1 (fp32) ... 4 (int8)"
        if self.algorithm == "hqq":
            if self.symmetric:
                return "hqq is asymmetric (float zero points): set symmetric false"
            if self.format == "plain":
                return "hqq's float zero points have no DequantizeLinear form: use format ort"
            if self.bits == 8:
                return "ONNX Runtime's CPU MatMulNBits refuses 8 bits with float zero points"
        if self.algorithm == "k_quant" and self.symmetric:
            return "k_quant is asymmetric (it always writes zero points): set symmetric false"
        return None

    def label(self) -> str:
        kind = "sym" if self.symmetric else "asym"
        return f"int{self.bits} {self.algorithm} {kind} block {self.block_size} {self.format}"


def session_config(accuracy_level: int) -> dict[str, str]:
    """ONNX Runtime session config entries that run a ``plain`` graph at ``accuracy_level``
    (it fuses DequantizeLinear + MatMul into MatMulNBits, at 4 by default); an ``ort`` graph's
    level is its nodes' attribute."""
    return {QDQ_ACCURACY_KEY: str(accuracy_level)}


def check(scheme: Scheme) -> None:
    problem = scheme.refusal()
    if problem is not None:
        raise InputError(f"quantization {scheme.label()}: {problem}")


def quantize(
    model_dir_in: Path,
    model_dir_out: Path,
    *,
    bits: int = 4,
    block_size: int = 32,
    symmetric: bool = True,
    accuracy_level: int = 4,
    algorithm: str = "rtn",
    format: str = "ort",
    lm_head: str = "same",
    embeddings: bool | None = False,
    experts: bool = False,
    exclude: Collection[str] = (),
) -> dict:
    """Quantize ``model_dir_in``'s weights into ``model_dir_out`` (``ONNX_FILE`` + ``DATA_FILE``,
    and a copy of the folder's other files but ``manifest.json``). ``lm_head``: the LM head's
    bits (``same``, ``int4``, ``int8``) or ``float``. ``embeddings``: the token embedding
    becomes GatherBlockQuantized (4 bits; or the tied LM head's tensors); None: where it is
    tied to a quantized LM head (else the JAX model's one leaf would be float on one side and
    quantized on the other). ``experts``: each ``com.microsoft.MoE`` node becomes ``QMoE``
    (``graph.qmoe``) of the same bits and block. ``exclude``: node or initializer names left
    float. Returns what it did: counts, what stayed float and why, bytes.
    """
    model_dir_in, model_dir_out = Path(model_dir_in), Path(model_dir_out)
    scheme = Scheme(bits, block_size, symmetric, accuracy_level, algorithm, format)
    check(scheme)
    if lm_head not in LM_HEAD:
        raise InputError(f"quantization lm_head {lm_head!r}: one of {LM_HEAD}")
    head_scheme = None if lm_head == "float" else scheme
    if lm_head in ("int4", "int8"):
        head_scheme = replace(scheme, bits=int(lm_head[3:]))
        check(head_scheme)
    if model_dir_out.resolve() == model_dir_in.resolve():
        raise ValueError("quantize writes a new folder: model_dir_out is model_dir_in")

    model = ir.load(model_dir_in / ONNX_FILE)  # weights memory-mapped, not read
    graph = model.graph
    opset = model.opset_imports.get("", 0)
    if scheme.format == "plain" and opset < 21:
        raise InputError(
            f"{model_dir_in / ONNX_FILE}: opset {opset}; blocked DequantizeLinear needs 21"
        )
    head = _lm_head(graph)
    head_weight = head.inputs[1].name if head is not None else None
    embedding = _embedding_gather(graph)
    tie = embedding is not None and _tie(embedding, head)
    summary: dict = {"scheme": asdict(scheme), "lm_head": lm_head, "skipped": {}}
    if tie and embeddings is None and scheme.format == "plain" and head_scheme is not None:
        # One table for two ops: plain ONNX has no quantized Gather, so neither is quantized
        # (the model's one parameter keeps one set of values).
        head_scheme = None
        summary["lm_head"] = "float (tied to the embedding, which plain ONNX gathers float)"
    routers = _router_matmuls(graph)
    serial = itertools.count()
    pieces, by_bits = _quantize_matmuls(
        graph,
        head,
        {"head": head_scheme, "body": scheme},
        {*exclude, *routers},
        opset,
        summary,
        serial,
    )
    for name in routers:
        summary["skipped"][name] = "MoE router kept float (as llama.cpp keeps ffn_gate_inp)"

    if embeddings is None:
        embeddings = tie and head_scheme is not None
    if embedding is not None and embeddings:
        head_piece = pieces.get(head_weight) if tie else None
        summary["embeddings"] = _quantize_embedding(
            graph, embedding, tie, head_piece, scheme, opset, next(serial)
        )
    elif embedding is not None:
        table = embedding.inputs[0].name
        summary["skipped"][embedding.name] = "embedding kept float" + (
            f" (tied: {table!r} is the LM head's {head_weight!r} transposed)" if tie else ""
        )
    if experts:
        from onnxforge.graph import qmoe

        summary["experts"] = qmoe.quantize_moe_nodes(
            model, bits, block_size, accuracy_level=accuracy_level
        )
    for node in graph:
        if node.domain == CONTRIB and node.op_type == "MoE":
            summary["skipped"][node.name] = "MoE: experts kept float"
    if any(node.domain == CONTRIB for node in graph):
        model.opset_imports.setdefault(CONTRIB, 1)

    model_dir_out.mkdir(parents=True, exist_ok=True)
    float_bytes = sum(
        v.const_value.nbytes
        for v in graph.initializers.values()
        if v.const_value is not None and v.dtype in (ir.DataType.FLOAT, ir.DataType.FLOAT16)
    )
    save(model, model_dir_out)
    copied = []
    for path in sorted(model_dir_in.iterdir()):
        if path.is_file() and path.name not in (ONNX_FILE, DATA_FILE, "manifest.json"):
            shutil.copy2(path, model_dir_out / path.name)
            copied.append(path.name)
    files = (ONNX_FILE, DATA_FILE)
    summary.update(
        matmuls_quantized=sum(by_bits.values()),
        matmuls_by_bits={str(b): n for b, n in by_bits.items() if n},
        weights_quantized=len(pieces),
        float_weight_bytes_left=float_bytes,
        bytes={
            "before": sum((model_dir_in / f).stat().st_size for f in files),
            "after": sum((model_dir_out / f).stat().st_size for f in files),
        },
        copied=copied,
    )
    return summary


def _quantize_matmuls(graph, head, schemes: dict, exclude: set, opset: int, summary, serial):
    """Each weight MatMul, one weight at a time (every MatMul reading it rewired to the one
    quantized copy, the float initializer dropped). Returns the pieces by weight name and
    how many MatMuls each bit width got; what stays float goes into ``summary["skipped"]``."""
    users: dict[ir.Value, list[ir.Node]] = {}
    for node in graph:
        if node.op_type == "MatMul" and node.domain in _STANDARD and len(node.inputs) == 2:
            weight = node.inputs[1]
            if weight is not None and weight.is_initializer() and weight.const_value is not None:
                users.setdefault(weight, []).append(node)
    pieces: dict[str, _Piece] = {}
    by_bits = {4: 0, 8: 0}
    for weight, nodes in users.items():
        scheme = schemes["head"] if head in nodes else schemes["body"]
        reason = "LM head kept float (lm_head: float)" if scheme is None else None
        if {weight.name, *(n.name for n in nodes)} & exclude:
            reason = "excluded"
        if len(weight.shape) != 2:
            reason = f"weight {list(weight.shape)} is batched (MoE experts?): 2-D weights only"
        elif weight.dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16):
            reason = f"weight is {weight.dtype.name}"
        if reason is not None:
            summary["skipped"].update(dict.fromkeys((n.name for n in nodes), reason))
            continue
        piece = _quantized(weight.name, weight.const_value.numpy(), "MatMul", scheme, opset)
        pieces[weight.name] = piece
        for node in nodes:
            _splice(graph, node, piece, {"A": node.inputs[0]}, next(serial), weight.name)
        by_bits[scheme.bits] += len(nodes)
        if not weight.uses():
            graph.initializers.pop(weight.name)
    return pieces, by_bits


# One quantized weight: nodes over named inputs ("A": the activations; "ids": a Gather's
# indices; the rest its tensors), with the name of the value that replaces the old output.
@dataclass
class _Piece:
    nodes: list[tuple[str, str, list[str], list[str], dict]]  # op, domain, ins, outs, attrs
    tensors: dict[str, ir.TensorProtocol]
    output: str
    registered: dict[str, ir.Value] | None = None


# ONNX Runtime's quantizer takes a ModelProto, which cannot be serialized past 2 GB: a larger
# MatMul weight (gpt-oss-20b's LM head, 2.3 GB in float32) goes through in column slices.
SLICE_BYTES = 1 << 30


def _quantized(name: str, array: np.ndarray, op: str, scheme: Scheme, opset: int) -> _Piece:
    """ONNX Runtime's quantizer on a model of one ``op`` over ``array`` (named ``name``); a
    MatMulNBits weight past ``SLICE_BYTES`` by slices of its output columns, joined: each
    column's blocks run along K alone, so the slices' codes, scales and zero points (all
    laid out N-major) are the whole weight's."""
    slices = -(-array.nbytes // SLICE_BYTES)
    if op == "MatMul" and slices > 1 and scheme.format == "ort":
        step = -(-array.shape[1] // slices)
        pieces = [
            _quantized(name, array[:, i : i + step], op, scheme, opset)
            for i in range(0, array.shape[1], step)
        ]
        first = pieces[0]
        tensors = {
            key: ir.tensor(np.concatenate([p.tensors[key].numpy() for p in pieces]), name=key)
            for key in first.tensors
        }
        nodes = [
            (op_type, domain, ins, outs, {**attrs, "N": array.shape[1]} if "N" in attrs else attrs)
            for op_type, domain, ins, outs, attrs in first.nodes
        ]
        return _Piece(nodes, tensors, first.output)
    if op == "MatMul" and slices > 1:
        raise InputError(
            f"weight {name!r} ({array.nbytes / 2**30:.1f} GiB) is too large for ONNX Runtime's "
            f"quantizer in one piece as {scheme.label()}: use format ort (sliced by columns)"
        )
    mq, quant_format = _ort_quantizer()
    blocks = -(-array.shape[0] // scheme.block_size)
    if op == "MatMul" and scheme.algorithm == "k_quant" and scheme.bits == 4 and blocks % 2:
        raise InputError(
            f"quantization {scheme.label()}: weight {name!r} has K {array.shape[0]}, an odd "
            "number of blocks, which ONNX Runtime's k_quant packs wrongly: change block_size"
        )
    qdq = scheme.format == "plain" and scheme.algorithm == "rtn" and scheme.bits == 4
    fmt = quant_format.QDQ if qdq else quant_format.QOperator
    if scheme.algorithm == "rtn" or op == "Gather":
        config = mq.DefaultWeightOnlyQuantConfig(
            block_size=scheme.block_size,
            is_symmetric=scheme.symmetric,
            accuracy_level=scheme.accuracy_level or None,
            quant_format=fmt,
            op_types_to_quantize=(op,),
            bits=scheme.bits,
        )
    elif scheme.algorithm == "k_quant":
        config = mq.KQuantWeightOnlyQuantConfig(
            customized_weight_config={op: {"bits": scheme.bits}}
        )
    else:
        config = mq.HQQWeightOnlyQuantConfig(block_size=scheme.block_size, bits=scheme.bits)
    dtype = onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
    if op == "MatMul":
        node = onnx.helper.make_node("MatMul", ["A", name], ["Y"], name=op)
        inputs = [onnx.helper.make_tensor_value_info("A", dtype, ["M", array.shape[0]])]
    else:
        node = onnx.helper.make_node("Gather", [name, "ids"], ["Y"], name=op)
        inputs = [onnx.helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, ["M"])]
    one = onnx.helper.make_model(
        onnx.helper.make_graph(
            [node],
            op,
            inputs,
            [onnx.helper.make_tensor_value_info("Y", dtype, None)],
            [onnx.numpy_helper.from_array(np.asarray(array), name)],
        ),
        opset_imports=[onnx.helper.make_opsetid("", max(opset, 21))],
    )
    quantizer = mq.MatMulNBitsQuantizer(
        one,
        bits=scheme.bits,
        block_size=scheme.block_size,
        is_symmetric=scheme.symmetric,
        accuracy_level=scheme.accuracy_level or None,
        algo_config=config,
    )
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # hqq: torch on a read-only array
        quantizer.process()  # (k_quant prints a progress bar)
    result = quantizer.model.model
    del one, quantizer
    tensors = {t.name: ir.from_proto(t) for t in result.graph.initializer}
    if name in tensors or not tensors:
        raise RuntimeError(f"ONNX Runtime's quantizer left {name!r} ({op}) float: {scheme.label()}")
    nodes = []
    for n in result.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "MatMulNBits":
            attrs.pop("accuracy_level", None)  # hqq writes none: one rule for all, here
            if scheme.accuracy_level:
                attrs["accuracy_level"] = scheme.accuracy_level
        nodes.append((n.op_type, n.domain, list(n.input), list(n.output), attrs))
    piece = _Piece(nodes, tensors, result.graph.output[0].name)
    if scheme.format == "plain" and not qdq and op == "MatMul":
        piece = _as_dequantize_linear(piece)
    return piece


def _ort_quantizer():
    """``matmul_nbits_quantizer``, without what its import does to the process's logging
    (``logging.basicConfig`` at INFO on the root logger) and its INFO line per node."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    from onnxruntime.quantization import matmul_nbits_quantizer as mq
    from onnxruntime.quantization.quant_utils import QuantFormat

    for handler in root.handlers[len(handlers) :]:
        root.removeHandler(handler)
    root.setLevel(level)
    for name in (mq.__name__, "neural_compressor"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return mq, QuantFormat


def _as_dequantize_linear(piece: _Piece) -> _Piece:
    """A MatMulNBits (uint8 zero points or none) as DequantizeLinear (axis 0, blocked) + MatMul:
    ONNX Runtime's integers, scales and zero points in the standard operator's layout."""
    ((_, _, ins, _, attrs),) = piece.nodes
    b, scales, zero = (piece.tensors.get(i) if i else None for i in [*ins[1:4], ""][:3])
    q, scales, zero = nbits_parts(b, scales, zero, attrs)
    bits = attrs["bits"]
    if zero is not None and zero.dtype != np.uint8:
        raise InputError("float zero points have no DequantizeLinear form: use format ort")
    scales = np.ascontiguousarray(scales.T)
    if zero is None:  # symmetric: ONNX Runtime's default zero point 2^(bits-1) -> signed
        data = (q.T.astype(np.int16) - (1 << (bits - 1))).astype(_integer(bits, signed=True))
        tensors = {"B": ir.Tensor(np.ascontiguousarray(data)), "scales": ir.Tensor(scales)}
    else:
        unsigned = _integer(bits, signed=False)
        tensors = {
            "B": ir.Tensor(np.ascontiguousarray(q.T).astype(unsigned)),
            "scales": ir.Tensor(scales),
            "zero_points": ir.Tensor(np.ascontiguousarray(zero.T).astype(unsigned)),
        }
    tensors = {f"{ins[1]}_DQ_{key}": t for key, t in tensors.items()}
    dq_attrs = {"axis": 0, "block_size": attrs["block_size"]}
    return _Piece(
        [
            ("DequantizeLinear", "", list(tensors), ["W"], dq_attrs),
            ("MatMul", "", ["A", "W"], ["Y"], {}),
        ],
        tensors,
        "Y",
    )


def _integer(bits: int, *, signed: bool):
    import ml_dtypes

    if bits == 8:
        return np.int8 if signed else np.uint8
    return ml_dtypes.int4 if signed else ml_dtypes.uint4


def _splice(
    graph: ir.Graph, old: ir.Node, piece: _Piece, inputs: dict, serial: int, source: str
) -> None:
    """Replace ``old`` by ``piece``'s nodes over ``inputs`` (its tensors registered once)."""
    if piece.registered is None:
        piece.registered = {}
        for name, tensor in piece.tensors.items():
            if name in graph.initializers:
                raise RuntimeError(f"quantized tensor {name!r}: the graph has one of that name")
            value = ir.Value(name=name, const_value=tensor)
            graph.register_initializer(value)
            piece.registered[name] = value
    values = {**inputs, **piece.registered}
    base = old.name or f"quantized_{serial}"
    nodes = []
    for op, domain, ins, outs, attrs in piece.nodes:
        node = ir.node(
            op,
            [values[i] if i else None for i in ins],
            attrs,
            domain=domain,
            num_outputs=len(outs),
            name=f"{base}_{op}",
            metadata_props={WEIGHT_KEY: source},
        )
        for name, value in zip(outs, node.outputs, strict=True):
            value.name = f"{base}_{op}_{name}"
            values[name] = value
        nodes.append(node)
    ir.convenience.replace_nodes_and_values(
        graph, old, [old], nodes, [old.outputs[0]], [values[piece.output]]
    )


def _producers_back(value: ir.Value, depth: int = 12):
    """The nodes behind ``value`` (breadth first, through non-constant inputs)."""
    seen, frontier = set(), [value]
    for _ in range(depth):
        nodes = [v.producer() for v in frontier if v is not None and v.producer() is not None]
        frontier = []
        for node in nodes:
            if node in seen:
                continue
            seen.add(node)
            yield node
            frontier += [v for v in node.inputs if v is not None and not v.is_initializer()]


def _router_matmuls(graph: ir.Graph) -> set[str]:
    """The weight MatMuls that give a ``MoE`` node its router logits: kept float, since a
    quantized router picks other experts, an error no later layer undoes (llama.cpp keeps
    its routers in float32 at every quantization)."""
    routers = set()
    for node in graph:
        if node.domain != CONTRIB or node.op_type not in ("MoE", "QMoE"):
            continue
        for producer in _producers_back(node.inputs[1], depth=6):
            if producer.op_type == "MatMul" and producer.inputs[1].is_initializer():
                routers.add(producer.name)
                break
    return routers


def _lm_head(graph: ir.Graph) -> ir.Node | None:
    """The weight MatMul nearest before ``logits`` (through a softcap, a Reshape ...)."""
    logits = next((v for v in graph.outputs if v.name == LOGITS), None)
    if logits is None:
        return None
    for node in _producers_back(logits):
        weight = node.inputs[1] if len(node.inputs) > 1 else None
        if node.op_type == "MatMul" and weight is not None and weight.is_initializer():
            return node
    return None


def _embedding_gather(graph: ir.Graph) -> ir.Node | None:
    """The Gather of a float table by (a Cast of) ``input_ids``: not RoPE's position tables."""
    for node in graph:
        if node.op_type != "Gather" or node.domain not in _STANDARD:
            continue
        table, ids = node.inputs[0], node.inputs[1]
        if table is None or not table.is_initializer() or len(table.shape) != 2:
            continue
        if ids.name == INPUT_IDS or any(
            v.name == INPUT_IDS for n in _producers_back(ids, 4) for v in n.inputs if v is not None
        ):
            return node
    return None


def _tie(embedding: ir.Node, head: ir.Node | None) -> bool:
    """Whether the LM head's weight is the embedding table transposed (the same floats)."""
    if head is None:
        return False
    table, weight = embedding.inputs[0].const_value, head.inputs[1].const_value
    if weight is None or tuple(table.shape) != tuple(reversed(weight.shape)):
        return False
    return bool(np.array_equal(table.numpy(), weight.numpy().T))


def _quantize_embedding(graph, gather, tie, piece, scheme, opset, serial) -> dict:
    """The token embedding as GatherBlockQuantized: the tied LM head's tensors (``piece``)
    read through a Reshape, or ONNX Runtime's own Gather quantization."""
    table = gather.inputs[0]
    if scheme.format != "ort":
        raise InputError(
            "quantization embeddings: ONNX Runtime's quantizer writes GatherBlockQuantized only "
            "(format ort); DequantizeLinear + Gather would hold the float table at run time"
        )
    if tie:
        if piece is None:
            raise InputError(
                f"quantization embeddings: {table.name!r} is tied to the LM head, which stays "
                "float: quantize the LM head too, or leave embeddings float"
            )
        node = next(n for n in piece.nodes if n[0] == "MatMulNBits")
        attrs, ins = node[4], node[2]
        zero = piece.tensors.get(ins[3]) if len(ins) > 3 and ins[3] else None
        vocab, hidden = table.shape
        if (zero is not None and zero.dtype != ir.DataType.UINT8) or hidden % attrs["block_size"]:
            raise InputError(
                f"quantization embeddings: the tied LM head's {scheme.label()} tensors cannot "
                "feed GatherBlockQuantized (float zero points, or hidden size not whole blocks)"
            )
        shape = ir.Value(
            name=f"{table.name}_GBQ_shape",
            const_value=ir.tensor(np.array([vocab, hidden * attrs["bits"] // 8], np.int64)),
        )
        graph.register_initializer(shape)
        gbq = {"bits": attrs["bits"], "block_size": attrs["block_size"], "gather_axis": 0}
        gbq["quantize_axis"] = 1
        tied = _Piece(
            [
                ("Reshape", "", [ins[1], shape.name], ["data"], {}),
                ("GatherBlockQuantized", CONTRIB, ["data", "ids", *ins[2:4]], ["Y"], gbq),
            ],
            {},
            "Y",
            registered={**piece.registered, shape.name: shape},
        )
        _splice(graph, gather, tied, {"ids": gather.inputs[1]}, serial, table.name)
        how = f"GatherBlockQuantized over the tied LM head's int{attrs['bits']} tensors"
    else:
        if scheme.bits != 4:
            raise InputError(
                "quantization embeddings: ONNX Runtime's quantizer quantizes Gather to 4 bits "
                "only: leave embeddings float in an 8-bit variant"
            )
        gather_scheme = replace(scheme, algorithm="rtn")  # its only Gather path
        piece = _quantized(table.name, table.const_value.numpy(), "Gather", gather_scheme, opset)
        _splice(graph, gather, piece, {"ids": gather.inputs[1]}, serial, table.name)
        how = "GatherBlockQuantized int4 (ONNX Runtime's rtn, its only Gather path)"
    if not table.uses():
        graph.initializers.pop(table.name)
    return {"node": gather.name, "table": table.name, "as": how}
