#!/usr/bin/env bash
# Everything that needs a GPU, in one go (< 8 minutes on one H100): the GPU- and
# TensorRT-marked tests (real engines: LeNet-5 and ResNet-18 in FP32/FP16/INT8, built,
# verified, benched), then the bench table of TensorRT against PyTorch eager on this GPU.
#   usage: benchmarks/gpu_check.sh [PYTHON]     (default: python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-python3}"
"$PY" -c "import tensorrt, torch; assert torch.cuda.is_available(); print('TensorRT', tensorrt.__version__, '|', torch.cuda.get_device_name(0))"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

timeout 420 "$PY" -m pytest -q -s -m "gpu or tensorrt" -p no:cacheprovider

# The bench table: one bundle, every precision, with the PyTorch source timed in the same run
# (each row says the precision that ran; note: the PyTorch timer of exporter/ times eager on the CPU).
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
"$PY" -m convdeploy.cli export resnet18 --out "$OUT/r18" --precision fp32,fp16,int8 --profile server-gpu --no-parity
"$PY" -m convdeploy.cli build "$OUT/r18" --profile server-gpu --precision fp32,fp16,int8 >/dev/null
for p in fp32 fp16 int8; do
  "$PY" -m convdeploy.cli bench "$OUT/r18" --backend tensorrt --precision "$p" --profile server-gpu \
    --batch-sizes 1,32 --iterations 100 --compare-torch resnet18
done
