#!/usr/bin/env bash
# The checks that need a CUDA GPU, run on a lent machine (torch preinstalled there; the few
# packages it lacks are carried as wheels in .whl). Writes logs and JSON to $OUT.
#   bash benchmarks/device/cuda_checks.sh [env] [pytest] [backends] [dws]   (default: all four)
# DWS_SEEDS and DWS_VARIANTS override the design search's seeds and variants.
set -u
OUT=${OUT:-/tmp/cuda-checks}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1 && [ ! -d /tmp/site/pydantic ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1

env_info() {
  { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    python3 -c "import torch, onnxruntime as o; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available(), 'ort', o.__version__, o.get_available_providers())"
    python3 -c "import tensorrt" 2>&1 | tail -1; } 2>&1 | tee "$OUT/env.txt"
}

cuda_tests() {  # the unit tests that run only on CUDA, 60 s at most
  timeout 60 python3 -m pytest -q tests/backends/test_backends.py -k cuda -p no:cacheprovider 2>&1 | tail -25 | tee "$OUT/pytest_backends.txt"
}

backends() {  # every backend x precision on CUDA for the ResNet-18 (width 16) baseline, each in its own process
  timeout 150 python3 -m slimkit backends --task shapes-cnn --model resnet18 --model-arg width=16 --device cuda \
    -b eager -b torch_compile -b onnxruntime -b tensorrt -p fp32 -p fp16 -p bf16 --threads 8 --repeats 50 --json \
    > "$OUT/backends_resnet18w16_cuda.json" 2> "$OUT/backends_stderr.txt"; echo "backends rc=$?"
  python3 - "$OUT/backends_resnet18w16_cuda.json" <<'PY'
import json, sys
try:
    rows = json.load(open(sys.argv[1]))
except Exception as e:
    sys.exit(f"no backend rows: {e}")
for r in rows:
    print(f"{r['backend']:14s} {r['precision']:5s} ok={r['ok']} b1={r['b1_ms']} bN={r['bN_ms']} x_b1={r['speedup_b1']} "
          f"x_bN={r['speedup_bN']} rel={r['max_rel_diff']} q={r['quality']} err={(r['error'] or '')[:150]}")
PY
}

dws() {  # the depthwise-separable design search (15 processes share the GPU)
  set -f  # variants hold [..]: no globbing
  timeout 240 python3 benchmarks/dws_design.py --device cuda --jobs 15 --out "$OUT" --seeds ${DWS_SEEDS:-0 1 2 3 4} \
    --variants ${DWS_VARIANTS:-cnn_shapes cnn_shapes_dws cnn_shapes_dws:kernel=5 cnn_shapes_dws:residual=true \
    cnn_shapes_dws:kernel=5,residual=true cnn_shapes_dws:width=36 cnn_shapes_dws:width=36,residual=true \
    cnn_shapes_dws:width=34,kernel=5,residual=true cnn_shapes_dws:width=38,residual=true} 2>&1 | tail -40
}

parts=("$@"); [ ${#parts[@]} -eq 0 ] && parts=(env pytest backends dws)
for part in "${parts[@]}"; do
  case $part in
    env) env_info ;; pytest) cuda_tests ;; backends) backends ;; dws) dws ;;
    *) echo "unknown part: $part (env, pytest, backends, dws)"; exit 2 ;;
  esac
done
echo done
