"""Rewrites of the exported ONNX graph (onnx_ir) into the shapes ONNX Runtime runs fast.

jax2onnx lowers every ``dot_general`` that is not a plain 2-D product to ``Einsum``: MaxText's
projections become ``abc,cd->abd``-like Einsums over a weight, and attention becomes
``btkgd,bskd->bkgts``. ONNX Runtime's CPU Einsum transposes and copies its operands on every
call and cannot pre-pack a constant weight the way ``MatMul`` does (an ONNX Runtime profile
of a MaxText Llama prefill: 77% of the time in Einsum). ``einsum_to_matmul`` rewrites each
two-operand Einsum into the same contraction as ``MatMul``: a weight is transposed and
flattened once, here, into a ``[K, N]`` initializer; a runtime operand gets the ``Transpose``
and ``Reshape`` (free, no copy) that bring it to ``[..., M, K]``. Same numbers; an Einsum it
cannot express (ellipses, repeated or summed-away labels, dynamic sizes it would have to
flatten) stays as it is. An elementwise Einsum (jax2onnx writes a norm's scale as
``...k,...k->...k``) becomes ``Mul``.

``fuse_sibling_matmuls`` then merges the MatMuls that read one input with constant weights
(q, k and v; gate and up) into one MatMul and a Split, as GenAI's builder lays them out.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import IdentityEliminationPass, RemoveUnusedNodesPass


@dataclass(frozen=True)
class Contraction:
    """An Einsum's labels by role. ``a`` is the operand whose free labels come first (M side),
    ``b`` the other (N side); each tuple is in the order the MatMul form uses."""

    batch: tuple[str, ...]  # in a, b and the output
    a_free: tuple[str, ...]  # only in a and the output
    b_free: tuple[str, ...]  # only in b and the output
    contract: tuple[str, ...]  # in a and b, summed
    output: str


def parse_equation(equation: str) -> tuple[str, str, str] | None:
    """``"abc,cd->abd"`` -> ``("abc", "cd", "abd")``; None for what the rewrite leaves alone."""
    equation = equation.replace(" ", "")
    if "->" not in equation or "." in equation:
        return None
    inputs, output = equation.split("->")
    terms = inputs.split(",")
    if len(terms) != 2 or not all(t.isalpha() for t in (*terms, output) if t):
        return None
    if any(len(set(t)) != len(t) for t in (*terms, output)):
        return None  # a repeated label is a diagonal: not a product
    return terms[0], terms[1], output


def classify(a: str, b: str, output: str) -> Contraction | None:
    if any(label not in a and label not in b for label in output):
        return None
    if any(label not in b and label not in output for label in a) or any(
        label not in a and label not in output for label in b
    ):
        return None  # a label summed within one operand (a ReduceSum, not a product)
    in_output = [label for label in output]
    return Contraction(
        batch=tuple(label for label in in_output if label in a and label in b),
        a_free=tuple(label for label in in_output if label in a and label not in b),
        b_free=tuple(label for label in in_output if label in b and label not in a),
        contract=tuple(label for label in a if label in b and label not in output),
        output=output,
    )


def rows_last(a_free: tuple[str, ...], lhs: ir.Value, labels: str) -> tuple[str, ...]:
    """The M side's free axes with the longest last: MatMul multiplies over the last one (its
    rows) and loops over the others. Attention's ``btkgd,bskd->bktgs`` in the output's order
    would loop over the tokens with 2 rows each (the query group); with the tokens last it is
    one ``[tokens, d] x [d, keys]`` product per head. A symbolic size counts as the longest."""
    if len(a_free) < 2 or lhs.shape is None or len(lhs.shape) != len(labels):
        return a_free

    def length(label: str) -> float:
        size = lhs.shape[labels.index(label)]
        return size if isinstance(size, int) else math.inf

    longest = max(a_free, key=length)  # the first of equals: no move where nothing gains
    if length(longest) <= length(a_free[-1]):
        return a_free
    return (*(label for label in a_free if label != longest), longest)


def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """The value as an array if it is a weight: an initializer, or a Transpose, Reshape,
    Cast, Identity, Unsqueeze or Concat of such (the forms jax2onnx leaves in front of a
    weight, and the MoE op's interleaved experts)."""
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value.numpy()
    node = value.producer()
    if node is None or node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "Concat":
        parts = [constant_array(part) for part in node.inputs]
        if not parts or any(part is None for part in parts):
            return None
        return np.concatenate(parts, axis=node.attributes.get_int("axis"))
    source = constant_array(node.inputs[0]) if node.inputs else None
    if source is None:
        return None
    if node.op_type == "Identity":
        return source
    if node.op_type == "Transpose":
        perm = node.attributes.get_ints("perm", None)
        return np.transpose(source, perm) if perm is not None else source.T
    if node.op_type == "Cast":
        to = ir.DataType(node.attributes.get_int("to"))
        return source.astype(to.numpy())
    if node.op_type == "Reshape":
        shape = constant_array(node.inputs[1])
        if shape is None or node.attributes.get_int("allowzero", 0):
            return None
        target = [source.shape[i] if d == 0 else int(d) for i, d in enumerate(shape)]
        return source.reshape(target)
    if node.op_type == "Unsqueeze":
        axes = constant_array(node.inputs[1])
        return None if axes is None else np.expand_dims(source, tuple(int(a) for a in axes))
    return None


_LAYOUT_OPS = ("Identity", "Transpose", "Cast", "Reshape", "Unsqueeze", "Concat")


def fold_constant_layouts(model: ir.Model) -> int:
    """Each chain of layout ops over weights alone (``constant_array``'s forms: the MoE op's
    interleaved experts, a transposed kernel) becomes one initializer, here, once: not in
    ONNX Runtime at every load, holding the weights twice. Each chain's own weights are
    dropped as soon as it is folded, so at most one extra copy is held at a time. In place;
    returns how many chains it folded."""
    graph, folded = model.graph, 0
    layout = {"", "ai.onnx"}
    for node in list(graph):
        if node.op_type not in _LAYOUT_OPS or node.domain not in layout or node.graph is None:
            continue
        output = node.outputs[0]
        users = [user for user, _ in output.uses()]
        if users and all(u.op_type in _LAYOUT_OPS and u.domain in layout for u in users):
            continue  # not the chain's end
        if output in graph.outputs:
            continue
        array = constant_array(output)
        if array is None:
            continue
        value = ir.Value(
            name=f"{output.name}_folded", const_value=ir.tensor(np.ascontiguousarray(array))
        )
        del array
        graph.register_initializer(value)
        ir.convenience.replace_all_uses_with(output, value)
        RemoveUnusedNodesPass()(model)  # the chain and its weights, before the next one
        folded += 1
    return folded


def _dims(value: ir.Value, depth: int = 8) -> tuple | None:
    """The value's sizes (ints or symbolic names), or None if any is unknown; sizes our passes
    leave unstamped are read off the producer (Identity, Cast, MatMul by a 2-D weight, Split,
    Reshape to a constant target)."""
    if value is None:
        return None
    if value.shape is not None:
        dims = tuple(d if isinstance(d, int) else d.value for d in value.shape.dims)
        if all(d is not None for d in dims):
            return dims
    node = value.producer()
    if node is None or depth == 0 or node.domain not in ("", "ai.onnx"):
        return None
    source = _dims(node.inputs[0], depth - 1) if node.inputs else None
    if source is None:
        return None
    if node.op_type in ("Identity", "Cast"):
        return source
    if node.op_type == "MatMul":
        weight = _dims(node.inputs[1], depth - 1)
        return (*source[:-1], weight[-1]) if weight and len(weight) == 2 else None
    if node.op_type == "Split" and len(node.inputs) > 1:
        sizes = constant_array(node.inputs[1])
        axis = node.attributes.get_int("axis", 0) % len(source)
        if sizes is None:
            return None
        return (*source[:axis], int(sizes[value.index()]), *source[axis + 1 :])
    if node.op_type == "Reshape" and not node.attributes.get_int("allowzero", 0):
        target = constant_array(node.inputs[1])
        return None if target is None else _reshaped(source, target.tolist())
    return None


def _reshaped(source: tuple, target: list[int]) -> tuple | None:
    """Reshape's output sizes: 0 copies, -1 is what the sizes not copied leave (if static)."""
    out = [source[i] if t == 0 else t for i, t in enumerate(target)]
    if -1 not in out:
        return tuple(out)
    rest_in = [d for i, d in enumerate(source) if not (i < len(target) and target[i] == 0)]
    rest_out = [d for i, d in enumerate(out) if target[i] != 0 and d != -1]
    for d in [d for d in rest_out if not isinstance(d, int)]:
        if d not in rest_in:
            return None
        rest_in.remove(d)
        rest_out.remove(d)
    if not all(isinstance(d, int) for d in rest_in):
        return None
    out[out.index(-1)] = math.prod(rest_in) // max(math.prod(rest_out), 1)
    return tuple(out)


def _keeps_shape(dims: tuple | None, target: np.ndarray) -> bool:
    """Whether Reshape to ``target`` gives a tensor of ``dims`` its own shape: same rank, each
    size copied (0), the same, or the one -1 (which then can only be that size)."""
    if dims is None or len(dims) != len(target) or list(target).count(-1) > 1:
        return False
    return all(t in (0, -1) or t == d for t, d in zip(target.tolist(), dims, strict=True))


def collapse_reshapes(model: ir.Model) -> int:
    """Reshape chains around the fused ops (a head split, then the op's packed layout): a
    Reshape of a Reshape reads the first one's input where the sizes its target copies (0s)
    are the same there, and a Reshape that gives its input its own shape is dropped. Returns
    the Reshapes dropped."""
    IdentityEliminationPass()(model)  # (MaxText's sharding hints leave Identity nodes)
    graph, dropped = model.graph, 0
    for node in list(graph):
        if node.op_type != "Reshape" or node.domain not in ("", "ai.onnx") or node.graph is None:
            continue
        target = constant_array(node.inputs[1])
        if target is None or node.attributes.get_int("allowzero", 0):
            continue
        inner = node.inputs[0].producer()
        if inner is not None and inner.op_type == "Reshape" and inner.domain in ("", "ai.onnx"):
            source, middle = _dims(inner.inputs[0]), _dims(node.inputs[0])
            copied = [i for i, size in enumerate(target.tolist()) if size == 0]
            same = source and middle and all(i < len(source) for i in copied)
            if same and all(source[i] == middle[i] for i in copied):
                node.replace_input_with(0, inner.inputs[0])
        if node.outputs[0] not in graph.outputs and _keeps_shape(_dims(node.inputs[0]), target):
            ir.convenience.replace_all_uses_with(node.outputs[0], node.inputs[0])
            dropped += 1
    remove_unused(model)
    return dropped


def remove_unused(model: ir.Model) -> None:
    """Nodes and initializers nothing reads any more (a rewritten node's constant operands;
    jax2onnx's own cleanup leaves uses by nodes it took out of the graph)."""
    RemoveUnusedNodesPass()(model)
    graph = model.graph
    for value in list(graph.initializers.values()):
        if value not in graph.inputs and all(user.graph is None for user, _ in value.uses()):
            graph.initializers.pop(value.name)


def static_dims(value: ir.Value, labels: str, wanted: tuple[str, ...]) -> list[int] | None:
    """Sizes of ``wanted`` labels of ``value`` (whose axes are ``labels``), if all static."""
    if value.shape is None or len(value.shape) != len(labels):
        return None
    dims = [value.shape[labels.index(label)] for label in wanted]
    return dims if all(isinstance(d, int) for d in dims) else None


class _Builder:
    """New nodes in front of one Einsum, and the int64 constants they need."""

    def __init__(self, graph: ir.Graph, prefix: str, dtype, serial: itertools.count):
        self.graph, self.prefix, self.dtype, self.serial = graph, prefix, dtype, serial
        self.nodes: list[ir.Node] = []

    def _name(self, what: str) -> str:
        return f"{self.prefix}_{what}_{next(self.serial)}"

    def const(self, array: np.ndarray, what: str) -> ir.Value:
        value = ir.Value(name=self._name(what), const_value=ir.tensor(array))
        self.graph.register_initializer(value)
        return value

    def op(self, op_type: str, inputs: list[ir.Value], **attributes) -> ir.Value:
        node = ir.node(op_type, inputs, attributes or None, name=self._name(op_type))
        node.outputs[0].name = self._name(op_type.lower())
        node.outputs[0].type = ir.TensorType(self.dtype)
        self.nodes.append(node)
        return node.outputs[0]

    def transpose(self, value: ir.Value, labels: str, order: str) -> ir.Value:
        if labels == order:
            return value
        return self.op("Transpose", [value], perm=[labels.index(label) for label in order])

    def reshape(self, value: ir.Value, shape: list[int]) -> ir.Value:
        return self.op("Reshape", [value, self.const(np.asarray(shape, np.int64), "shape")])

    def unsqueeze(self, value: ir.Value, axes: list[int]) -> ir.Value:
        if not axes:
            return value
        return self.op("Unsqueeze", [value, self.const(np.asarray(axes, np.int64), "axes")])


def _rewrite(graph: ir.Graph, node: ir.Node, weights: dict, serial: itertools.count) -> bool:
    if node.op_type != "Einsum" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
        return False
    parsed = parse_equation(node.attributes.get_string("equation", ""))
    if parsed is None:
        return False
    first, second, output = parsed
    lhs, rhs = node.inputs
    lhs_const, rhs_const = constant_array(lhs), constant_array(rhs)
    if lhs_const is not None and rhs_const is None:  # the weight goes on the N side
        first, second, lhs, rhs, lhs_const, rhs_const = (
            second,
            first,
            rhs,
            lhs,
            rhs_const,
            lhs_const,
        )
    roles = classify(first, second, output)
    if roles is None or lhs_const is not None or lhs.type is None:
        return False
    if rhs_const is None and len(roles.b_free) > 1 >= len(roles.a_free):
        # Several free axes broadcast on the M side (as MatMul batch axes) whatever their
        # sizes; on the N side they would have to be flattened.
        first, second, lhs, rhs = second, first, rhs, lhs
        roles = classify(first, second, output)
    dtype = lhs.type.dtype
    batch, b_free, contract = roles.batch, roles.b_free, roles.contract
    a_free = rows_last(roles.a_free, lhs, first)
    b_order = "".join(batch + contract + b_free)

    if rhs_const is not None:
        k_dims = [rhs_const.shape[second.index(label)] for label in contract]
        n_dims = [rhs_const.shape[second.index(label)] for label in b_free]
    else:
        k_dims = static_dims(rhs, second, contract) or static_dims(lhs, first, contract)
        n_dims = static_dims(rhs, second, b_free)
        # One K or one N axis needs no flattening, whatever its size.
        if k_dims is None and len(contract) == 1:
            k_dims = [-1]
        if n_dims is None and len(b_free) == 1:
            n_dims = [-1]
        if k_dims is None or n_dims is None:
            return False  # flattening rhs at runtime needs its sizes

    build = _Builder(graph, node.name or "einsum", dtype, serial)
    # a: batch + a_free + contract, the contraction flattened to one K axis.
    a = build.transpose(lhs, first, "".join(batch + a_free + contract))
    if len(contract) > 1:
        a = build.reshape(a, [0] * (len(batch) + len(a_free)) + [math.prod(k_dims)])
    if not a_free:
        a = build.unsqueeze(a, [len(batch)])  # M = 1
    # b: batch + [1 per extra a_free axis] + [K, N].
    k, n = math.prod(k_dims), math.prod(n_dims)
    if rhs_const is not None:
        key = (rhs.name, b_order, len(batch), len(a_free))
        if key not in weights:
            array = np.transpose(rhs_const, [second.index(label) for label in b_order])
            batch_shape = list(array.shape[: len(batch)])
            # A 2-D weight broadcasts over any leading axes, and only a 2-D one is pre-packed
            # by ONNX Runtime's MatMul; batch axes need a 1 per extra free axis of a.
            ones = [1] * (len(a_free) - 1) if batch and a_free else []
            array = array.reshape(batch_shape + ones + [k, n])
            weights[key] = build.const(np.ascontiguousarray(array), "weight")
        b = weights[key]
    else:
        b = build.transpose(rhs, second, b_order)
        if len(contract) > 1 or len(b_free) != 1:
            b = build.reshape(b, [0] * len(batch) + [k if len(contract) > 1 else -1, n])
        b = build.unsqueeze(b, list(range(len(batch), len(batch) + len(a_free) - 1)))
    product = build.op("MatMul", [a, b])  # batch + a_free (or [1]) + [N]
    if len(b_free) != 1 or not a_free:
        product = build.reshape(product, [0] * (len(batch) + len(a_free)) + list(n_dims))
    result = build.transpose(product, "".join(batch + a_free + b_free), output)
    ir.convenience.replace_nodes_and_values(
        graph, node, [node], build.nodes, [node.outputs[0]], [result]
    )
    return True


def is_elementwise(equation: str) -> bool:
    """``"...k,...k->...k"``: both operands and the output carry the same labels, so the
    Einsum is a broadcasting ``Mul`` (an ellipsis broadcasts the way ONNX's Mul does)."""
    terms = equation.replace(" ", "").replace("->", ",").split(",")
    return len(terms) == 3 and len(set(terms)) == 1 and terms[0].count(".") in (0, 3)


def _rewrite_elementwise(graph: ir.Graph, node: ir.Node) -> bool:
    if node.op_type != "Einsum" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
        return False
    if not is_elementwise(node.attributes.get_string("equation", "")):
        return False
    mul = ir.node("Mul", list(node.inputs), name=f"{node.name}_Mul")
    mul.outputs[0].name, mul.outputs[0].type = f"{node.name}_mul", node.outputs[0].type
    mul.outputs[0].shape = node.outputs[0].shape
    ir.convenience.replace_nodes_and_values(
        graph, node, [node], [mul], [node.outputs[0]], [mul.outputs[0]]
    )
    return True


def einsum_to_matmul(model: ir.Model) -> int:
    """Rewrite the model's two-operand Einsums (main graph) as MatMul, or as Mul where they are
    elementwise (jax2onnx writes a norm's scale as ``...k,...k->...k``), in place; drops the
    weights and nodes nothing uses any more. Returns how many it rewrote."""
    weights: dict = {}  # a weight several Einsums share is laid out once
    serial = itertools.count()
    rewritten = 0
    for node in list(model.graph):
        rewritten += _rewrite_elementwise(model.graph, node) or _rewrite(
            model.graph, node, weights, serial
        )
    if rewritten:
        RemoveUnusedNodesPass()(model)
    return rewritten


def _weight(node: ir.Node) -> np.ndarray | None:
    """A MatMul's constant 2-D ``[K, N]`` weight (an initializer), else None."""
    if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
        return None
    weight = node.inputs[1]
    if weight is None or weight.const_value is None or not weight.is_initializer():
        return None
    return weight.const_value.numpy() if len(weight.const_value.shape) == 2 else None


def fuse_sibling_matmuls(model: ir.Model) -> int:
    """MatMuls of one input by constant ``[K, N_i]`` weights (attention's q, k and v; an MLP's
    gate and up) become one MatMul by the weights side by side, then a ``Split`` into the
    same outputs: one pass over the input and one kernel instead of several (GenAI's builder
    writes them fused too). In place; returns how many MatMuls were merged away."""
    graph, merged, serial = model.graph, 0, itertools.count()
    order = {node: index for index, node in enumerate(graph)}
    inputs = {node.inputs[0] for node in graph if node.op_type == "MatMul" and node.inputs}
    for value in sorted((v for v in inputs if v is not None), key=lambda v: v.name or ""):
        siblings = sorted(
            (user for user, index in value.uses() if index == 0 and _weight(user) is not None),
            key=order.__getitem__,
        )
        by_dtype: dict = {}
        for node in siblings:
            weight = _weight(node)
            by_dtype.setdefault((weight.dtype, weight.shape[0]), []).append((node, weight))
        for group in by_dtype.values():
            if len(group) < 2:
                continue
            nodes = [node for node, _ in group]
            name = f"{nodes[0].name}_fused_{next(serial)}"
            joined = ir.Value(
                name=f"{name}_weight",
                const_value=ir.tensor(
                    np.ascontiguousarray(np.concatenate([w for _, w in group], 1))
                ),
            )
            graph.register_initializer(joined)
            matmul = ir.node("MatMul", [value, joined], name=name)
            matmul.outputs[0].name, matmul.outputs[0].type = f"{name}_out", nodes[0].outputs[0].type
            sizes = ir.Value(
                name=f"{name}_sizes",
                const_value=ir.tensor(np.asarray([w.shape[1] for _, w in group], np.int64)),
            )
            graph.register_initializer(sizes)
            split = ir.node(
                "Split",
                [matmul.outputs[0], sizes],
                {"axis": -1},
                name=f"{name}_split",
                num_outputs=len(group),
            )
            for old, new in zip((n.outputs[0] for n in nodes), split.outputs, strict=True):
                new.name, new.type, new.shape = f"{old.name}_part", old.type, old.shape
            weights = [node.inputs[1] for node in nodes]
            ir.convenience.replace_nodes_and_values(
                graph,
                nodes[0],
                nodes,
                [matmul, split],
                [n.outputs[0] for n in nodes],
                list(split.outputs),
            )
            for weight in weights:  # drop the separate weights now: one copy at a time
                if not weight.uses() and graph.initializers.get(weight.name) is weight:
                    graph.initializers.pop(weight.name)
            merged += len(group) - 1
    return merged
