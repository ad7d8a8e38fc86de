"""The text tower's transformer layers in ONNX Runtime, built from an exported encoder's arrays.

For a long-lived searcher: a query reads all of the text tower's weights (150 MB for
ViT-B-32) for a handful of tokens, and numpy's BLAS repacks every weight matrix on each call,
while ONNX Runtime packs them once when its session starts. Per query that is about half the
time; the start costs ~0.3 s, so a one-shot search is better off in numpy: the caller chooses
(`NumpyTextEncoder.load(..., runtime="onnxruntime")`). The graph is built in memory from the same arrays and computes
the same float32 operations, so vectors agree with the numpy encoder to ~1e-6.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .config import usable_cores

_BIG = ("attn_in_weight", "attn_out_weight", "mlp_fc_weight", "mlp_proj_weight")
_SMALL = ("ln_1_weight", "ln_1_bias", "attn_in_bias", "attn_out_bias", "ln_2_weight", "ln_2_bias",
          "mlp_fc_bias", "mlp_proj_bias")
LAYER_ARRAYS = _BIG + _SMALL  # the exported arrays (stacked over layers) the graph is built from


class OrtTextLayers:
    """Callable: (N, S, D) float32 token states and an (S, S) additive mask -> (N, S, D)."""

    def __init__(self, weights: dict[str, np.ndarray], meta: dict[str, Any], threads: int = 0) -> None:
        import onnxruntime as ort

        model, big = _build_graph(weights, meta)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or min(usable_cores(), 2)
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        names = list(big)
        values = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(big[n], dtype=np.float32)) for n in names]
        options.add_external_initializers(names, values)  # copied in at session start
        self._session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def __call__(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self._session.run(None, {"x": np.ascontiguousarray(x, dtype=np.float32),
                                        "mask": np.ascontiguousarray(mask, dtype=np.float32)})[0]


def _build_graph(weights: dict[str, np.ndarray], meta: dict[str, Any]) -> tuple[bytes, dict[str, np.ndarray]]:
    """The serialised ONNX model (small arrays inline, large ones declared external) and the
    large arrays by initializer name."""
    from onnx import TensorProto, helper, numpy_helper

    d, h, layers = int(meta["width"]), int(meta["heads"]), int(meta["layers"])
    hd = d // h
    eps = float(meta["ln_eps"])
    nodes: list[Any] = []
    inits: list[Any] = []
    big: dict[str, np.ndarray] = {}

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    def external(name: str, value: np.ndarray) -> str:
        t = TensorProto()
        t.name = name
        t.data_type = TensorProto.FLOAT
        t.dims.extend(value.shape)
        t.data_location = TensorProto.EXTERNAL
        for key, val in (("location", f"{name}.bin"), ("offset", "0"), ("length", str(value.size * 4))):
            entry = t.external_data.add()
            entry.key, entry.value = key, val
        inits.append(t)
        big[name] = value
        return name

    counter = [0]

    def op(kind: str, inputs: list[str], **attrs: Any) -> str:
        counter[0] += 1
        out = f"t{counter[0]}"
        nodes.append(helper.make_node(kind, inputs, [out], **attrs))
        return out

    def ops(kind: str, inputs: list[str], n: int, **attrs: Any) -> list[str]:
        outs = [f"t{counter[0] + i + 1}" for i in range(n)]
        counter[0] += n
        nodes.append(helper.make_node(kind, inputs, outs, **attrs))
        return outs

    f32 = np.float32
    qkv_shape = const("qkv_shape", np.array([0, 0, 3, h, hd], dtype=np.int64))
    out_shape = const("out_shape", np.array([0, 0, d], dtype=np.int64))
    thirds = const("thirds", np.array([1, 1, 1], dtype=np.int64))
    axis0 = const("axis0", np.array([0], dtype=np.int64))
    scale = const("scale", np.array(hd ** -0.5, dtype=f32))
    one, half = const("one", np.array(1.0, dtype=f32)), const("half", np.array(0.5, dtype=f32))

    def activation(x: str) -> str:
        kind = meta["activation"]
        if kind == "quick_gelu":
            return op("Mul", [x, op("Sigmoid", [op("Mul", [x, const("k1702", np.array(1.702, dtype=f32))])])])
        if kind == "gelu_tanh":
            cube = op("Mul", [op("Mul", [x, x]), x])
            inner = op("Add", [x, op("Mul", [cube, const("k044715", np.array(0.044715, dtype=f32))])])
            tanh = op("Tanh", [op("Mul", [inner, const("ksqrt2pi", np.array(0.7978845608028654, dtype=f32))])])
            return op("Mul", [op("Mul", [x, half]), op("Add", [one, tanh])])
        erf = op("Erf", [op("Mul", [x, const("krsqrt2", np.array(0.7071067811865476, dtype=f32))])])
        return op("Mul", [op("Mul", [x, half]), op("Add", [one, erf])])

    x = "x"
    for layer in range(layers):
        p = {name: f"l{layer}.{name}" for name in _BIG + _SMALL}
        for name in _BIG:
            external(p[name], weights[name][layer])
        for name in _SMALL:
            const(p[name], np.asarray(weights[name][layer], dtype=f32))
        y = op("LayerNormalization", [x, p["ln_1_weight"], p["ln_1_bias"]], axis=-1, epsilon=eps)
        qkv = op("Add", [op("MatMul", [y, p["attn_in_weight"]]), p["attn_in_bias"]])
        heads = op("Transpose", [op("Reshape", [qkv, qkv_shape])], perm=[2, 0, 3, 1, 4])  # (3, N, H, S, hd)
        q, k, v = (op("Squeeze", [part, axis0]) for part in ops("Split", [heads, thirds], 3, axis=0))
        scores = op("Add", [op("MatMul", [op("Mul", [q, scale]), op("Transpose", [k], perm=[0, 1, 3, 2])]), "mask"])
        att = op("MatMul", [op("Softmax", [scores], axis=-1), v])
        att = op("Reshape", [op("Transpose", [att], perm=[0, 2, 1, 3]), out_shape])
        x = op("Add", [x, op("Add", [op("MatMul", [att, p["attn_out_weight"]]), p["attn_out_bias"]])])
        y = op("LayerNormalization", [x, p["ln_2_weight"], p["ln_2_bias"]], axis=-1, epsilon=eps)
        y = activation(op("Add", [op("MatMul", [y, p["mlp_fc_weight"]]), p["mlp_fc_bias"]]))
        x = op("Add", [x, op("Add", [op("MatMul", [y, p["mlp_proj_weight"]]), p["mlp_proj_bias"]])])
    nodes.append(helper.make_node("Identity", [x], ["y"]))
    graph = helper.make_graph(
        nodes, "cliptool-text-layers",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "s", d]),
         helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["s", "s"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "s", d])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString(), big
