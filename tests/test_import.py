import subprocess
import sys

HEAVY = ["transformers", "torch_pruning", "sklearn", "matplotlib", "onnxruntime", "openvino", "tvm", "mlxtend", "scipy", "typer"]


def test_import_slimkit_is_light():
    code = ("import sys, slimkit; heavy = %r; loaded = [m for m in heavy if m in sys.modules]; "
            "print(','.join(loaded))" % HEAVY)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"import slimkit pulled in: {out}"


def test_registries_load_without_optional_packages():
    code = ("import sys, slimkit; slimkit.list_tasks(); slimkit.list_steps(); "
            "print(','.join(m for m in %r if m in sys.modules))" % ["transformers", "torch_pruning", "onnxruntime", "openvino", "tvm", "mlxtend"])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"loading the registries pulled in: {out}"
