"""The TensorFlow Lite Micro side of `benchmarks/tinyml.py --sections tflm` (run by it, in a Python
environment with TensorFlow and the `tflite-micro` wheel; slimkit's own environment stays free
of TensorFlow).

    TFVENV/bin/python benchmarks/tflm_peer.py SPEC.json OUT.json

SPEC.json (written by the tflm section) holds a plain CNN as layers (BatchNorm already folded,
PyTorch layouts), the calibration rows slimkit's `quantize` used and the test rows. This script
builds the same network in Keras (NHWC; the first dense layer's rows permuted from PyTorch's CHW
flatten), checks its float outputs against PyTorch's, converts it with TFLiteConverter to full
int8 (the same calibration rows as its representative dataset, per-channel weights, int8 input
and output), runs the test rows through the TFLite Micro interpreter (`tflite_micro.runtime`),
and records its accuracy, the .tflite bytes and TFLite Micro's arena (RecordingMicroAllocator:
head = the activation tensors its greedy planner placed, total = head + persistent tail).
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import time

import numpy as np


def keras_model(spec):
    import tensorflow as tf

    c, h, w = spec["input_shape"]
    x = inputs = tf.keras.Input((h, w, c), batch_size=1)
    flat_shape = None
    for layer in spec["layers"]:
        kind = layer["kind"]
        if kind == "conv":
            weight = np.array(layer["weight"], dtype=np.float32)  # O, I, kh, kw
            if layer["groups"] != 1:
                raise ValueError("grouped convolutions are not replicated here")
            pad = layer["padding"]
            if pad[0] > 0:
                x = tf.keras.layers.ZeroPadding2D(((pad[0], pad[0]), (pad[1], pad[1])))(x)
            conv = tf.keras.layers.Conv2D(weight.shape[0], weight.shape[2:], strides=layer["stride"], padding="valid",
                                          activation=layer["activation"])
            x = conv(x)
            conv.set_weights([weight.transpose(2, 3, 1, 0), np.array(layer["bias"], dtype=np.float32)])
        elif kind == "maxpool":
            x = tf.keras.layers.MaxPooling2D(layer["kernel"], strides=layer["stride"])(x)
        elif kind == "flatten":
            flat_shape = tuple(int(d) for d in x.shape[1:])  # H, W, C
            x = tf.keras.layers.Flatten()(x)
        elif kind == "dense":
            weight = np.array(layer["weight"], dtype=np.float32)  # out, in
            if flat_shape is not None:  # PyTorch flattened C, H, W; Keras flattens H, W, C
                hh, ww, cc = flat_shape
                weight = weight.reshape(-1, cc, hh, ww).transpose(0, 2, 3, 1).reshape(weight.shape[0], -1)
                flat_shape = None
            dense = tf.keras.layers.Dense(weight.shape[0], activation=layer["activation"])
            x = dense(x)
            dense.set_weights([weight.T, np.array(layer["bias"], dtype=np.float32)])
        else:
            raise ValueError(f"unknown layer kind {kind!r}")
    return tf.keras.Model(inputs, x)


def main() -> None:
    import tensorflow as tf
    from tflite_micro.python.tflite_micro import runtime

    spec = json.load(open(sys.argv[1]))
    calibration = np.array(spec["calibration"], dtype=np.float32).transpose(0, 2, 3, 1)
    test = np.array(spec["test"], dtype=np.float32).transpose(0, 2, 3, 1)
    targets = np.array(spec["targets"])
    model = keras_model(spec)
    float_out = np.concatenate([model(test[i:i + 1], training=False).numpy() for i in range(len(test))])
    float_diff = float(np.abs(float_out - np.array(spec["torch_float_outputs"])).max())

    def representative():
        for row in calibration:
            yield [row[None]]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    started = time.perf_counter()
    flatbuffer = converter.convert()
    convert_seconds = time.perf_counter() - started

    interpreter = runtime.Interpreter.from_bytes(flatbuffer, arena_size=4 * 1024 * 1024)
    details = interpreter.get_input_details(0)
    scale, zero_point = details["quantization_parameters"]["scales"][0], details["quantization_parameters"]["zero_points"][0]
    predictions = []
    for row in test:
        q = np.clip(np.round(row / scale) + zero_point, -128, 127).astype(np.int8)[None]
        interpreter.set_input(q, 0)
        interpreter.invoke()
        predictions.append(int(np.argmax(interpreter.get_output(0)[0])))
    accuracy = float((np.array(predictions) == targets).mean())
    # the allocator's report goes to the C library's stderr: capture it through a temporary file
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            interpreter.print_allocations()
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
        capture.seek(0)
        allocations = capture.read()
    found = {k: int(v) for k, v in re.findall(r"Arena allocation (total|head|tail) (\d+) bytes", allocations)}
    json.dump({"accuracy": accuracy, "tflite_bytes": len(flatbuffer), "arena_total": found.get("total"),
               "arena_head": found.get("head"), "arena_tail": found.get("tail"), "float_max_abs_diff": float_diff,
               "convert_seconds": convert_seconds, "tensorflow": tf.__version__,
               "allocations": allocations[-3000:]}, open(sys.argv[2], "w"), indent=1)


if __name__ == "__main__":
    main()
