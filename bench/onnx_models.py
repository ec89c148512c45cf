"""The inference engines' models: an ONNX graph of one native LSTM/GRU/RNN operator (or one MatMul, for the
roofline) built from torch-style weights, and the ONNX Runtime / OpenVINO objects that run it with a given
thread count. The same ONNX bytes feed both engines."""
import os
import tempfile

import numpy as np

# Row blocks of torch's gate-stacked weights, in the order the ONNX operator wants them.
# torch LSTM: i, f, g, o; ONNX: i, o, f, c.  torch GRU: r, z, n; ONNX: z, r, h.
ONNX_GATE_ORDER = {"lstm": (0, 3, 1, 2), "gru": (1, 0, 2), "rnn": (0,)}
OPSET = 14


def engine_versions():
    """{engine: version or None when not installed}."""
    versions = {}
    for name, module in (("onnxruntime", "onnxruntime"), ("openvino", "openvino")):
        try:
            versions[name] = __import__(module).__version__
        except Exception:
            versions[name] = None
    return versions


def _gate_rows(w, order, H):
    return np.concatenate([w[g * H:(g + 1) * H] for g in order], axis=0)


def recurrent_model(cell, nonlin, state):
    """The serialized ONNX model y = op(X) for a one-layer, unidirectional, float32 layer with torch's weights
    (`state`: weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0). Input X [T, B, I]; output Y [T, 1, B, H]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w_ih = np.asarray(state["weight_ih_l0"], dtype=np.float32)
    w_hh = np.asarray(state["weight_hh_l0"], dtype=np.float32)
    b_ih = np.asarray(state["bias_ih_l0"], dtype=np.float32)
    b_hh = np.asarray(state["bias_hh_l0"], dtype=np.float32)
    H, I = w_hh.shape[1], w_ih.shape[1]
    order = ONNX_GATE_ORDER[cell]
    inits = [
        numpy_helper.from_array(_gate_rows(w_ih, order, H)[None], "W"),
        numpy_helper.from_array(_gate_rows(w_hh, order, H)[None], "R"),
        numpy_helper.from_array(np.concatenate([_gate_rows(b_ih, order, H), _gate_rows(b_hh, order, H)])[None], "B"),
    ]
    attrs = {"hidden_size": H}
    if cell == "gru":
        attrs["linear_before_reset"] = 1  # torch applies the reset gate after the recurrent product
    if cell == "rnn":
        attrs["activations"] = [{"tanh": "Tanh", "relu": "Relu"}[nonlin]]
    op = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}[cell]
    node = helper.make_node(op, ["X", "W", "R", "B"], ["Y"], **attrs)
    graph = helper.make_graph(
        [node], f"bench_{op.lower()}",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "N", I])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["T", 1, "N", H])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def matmul_model(b):
    """The serialized ONNX model C = A @ b with b a constant (as a layer's weights are)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    k, n = b.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "Bw"], ["C"])], "bench_matmul",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("C", TensorProto.FLOAT, ["M", n])],
        [numpy_helper.from_array(np.ascontiguousarray(b, dtype=np.float32), "Bw")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def ort_runner(model_bytes, threads):
    """fn(x) -> the model's first output, on an ONNX Runtime session with `threads` intra-op threads."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})[0]


def openvino_runner(model_bytes, threads):
    """fn(x) -> the model's first output, compiled for OpenVINO's CPU plugin with `threads` threads, one stream,
    float32 arithmetic (OpenVINO would otherwise pick bfloat16 on CPUs that have it, a different precision
    from every other library here)."""
    import openvino as ov

    core = ov.Core()
    # read_model takes a path for ONNX; the file is needed only while it is read.
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "model.onnx")
        with open(path, "wb") as f:
            f.write(model_bytes)
        model = core.read_model(path)
    compiled = core.compile_model(model, "CPU", {
        "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32",
    })
    request = compiled.create_infer_request()
    out = compiled.output(0)
    # share_inputs/outputs: no copies in or out, the engine's fastest way to be called from Python.
    return lambda x: request.infer({0: x}, share_inputs=True, share_outputs=True)[out]


ENGINES = {"onnxruntime": ort_runner, "openvino": openvino_runner}
