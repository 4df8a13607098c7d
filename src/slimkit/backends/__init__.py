"""Runtimes a model is measured on; one file each, optional packages imported inside it.
``step`` registers the ``deploy`` recipe step."""

from slimkit.backends import eager, onnxruntime, openvino, step, tensorrt, tinyml, torch_compile, tvm, xla  # noqa: F401
