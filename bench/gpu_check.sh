#!/usr/bin/env bash
# Throughput on one NVIDIA GPU: ours (python -m tuning train) vs the plain TRL baseline, QLoRA, on the
# embedded model's architecture (SmolLM2-135M) and on a ~1B Llama, both with random weights. Prints
# tokens/s, the ratio, peak GPU memory and MFU against the card's bf16 peak. Under 8 minutes on an H100.
#
# 1. Here, once, with network (the GPU machine has torch, transformers, peft, accelerate, but no trl,
#    bitsandbytes or datasets; nothing can be fetched there):
#        bash bench/gpu_check.sh --prepare
#    puts the wheels in .whl/ and the embedded model's tokenizer in .gpu/tokenizer (both git-ignored).
# 2. On the GPU machine (the device tool: carry [".whl", ".gpu"]):
#        bash bench/gpu_check.sh
#    Optional: PEAK_TFLOPS=989 (H100 SXM dense bf16; an H200 is the same chip), PAIRS=2, STEPS=8.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--prepare" ]]; then
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
    mkdir -p .whl .gpu
    py=.venv/bin/python
    $py - <<'PY'
from pathlib import Path
from transformers import AutoTokenizer
from tuning import models
AutoTokenizer.from_pretrained(models.embedded_model_dir(Path("workspace"))).save_pretrained(".gpu/tokenizer")
PY
    for pkg in "trl==1.16.*" "bitsandbytes==0.50.2" "datasets==5.2.*" dill multiprocess; do
        $py -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 --platform any -d .whl "$pkg"
    done
    du -sh .whl .gpu
    exit 0
fi

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, peft, trl, bitsandbytes; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'trl', trl.__version__, 'bnb', bitsandbytes.__version__)"
python3 bench/gpu_models.py .gpu/tokenizer /tmp/gpu-models
PAIRS=${PAIRS:-2}
for model in smollm2-135m llama-1b; do
    echo "=== $model, qlora, ours vs plain TRL ==="
    timeout 200 python3 bench/throughput.py --model /tmp/gpu-models/$model --method qlora --pairs "$PAIRS" \
        --steps "${STEPS:-8}" --batch 8 --max-length 512 --threads 8 --workspace /tmp/gpu-bench \
        --peak-tflops "${PEAK_TFLOPS:-989}" 2>&1 | grep -v -i "warn" || echo "$model: failed or timed out"
done
