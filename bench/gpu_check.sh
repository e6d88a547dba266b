#!/usr/bin/env bash
# One call on a lent NVIDIA GPU, under 10 minutes on an H100: every GPU preset's first steps (QLoRA, the
# preset as written, on a random-weight model of its base's architecture and size built here by
# bench/gpu_models.py, since the GPU machine cannot fetch from the Hub), the side-by-side generation
# (`python -m tuning generate --compare`) and a Playground answer (its streaming path) on the smallest
# preset's run; a Markdown table of preset, model, steps done, tokens/s, peak GPU memory and status
# (bench/gpu_check.py writes it, a row as each part ends). Each part runs under its own `timeout`, so one
# that hangs costs its own limit only.
#
# 1. Here, once, with network (the GPU machine has torch, transformers, peft, accelerate, but no trl,
#    bitsandbytes or datasets, and other versions; nothing can be fetched there):
#        bash bench/gpu_check.sh --prepare
#    puts the wheels in .whl/ and the embedded model's tokenizer in .gpu/tokenizer.tar.xz (both git-ignored):
#    ~61 MB with the working tree, of the 64 MiB a device call carries (the tokenizer is packed for that).
# 2. On the GPU machine (the device tool: carry [".whl", ".gpu"]):
#        bash bench/gpu_check.sh 2>&1 | tee $OUT/gpu_check.log
#    writes the table to $OUT/gpu_check.md (GPU_CHECK_TABLE=FILE to choose). Optional: STEPS=4 (a preset),
#    GPU_CHECK_THROUGHPUT=1 also runs ours against plain TRL (bench/throughput.py; ~6 minutes more, so not
#    within the 10), PEAK_TFLOPS=989 for its MFU (H100 SXM dense bf16; an H200 is the same chip).
# 3. Anywhere, to prove the script end to end without a GPU (tiny models, the presets shrunk; ~1 minute on
#    2 cores; tests/test_gpu_presets.py runs it):
#        bash bench/gpu_check.sh --dry            # or GPU_CHECK_DRY=1 bash bench/gpu_check.sh
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
    tar -cJf .gpu/tokenizer.tar.xz -C .gpu tokenizer && rm -r .gpu/tokenizer
    # the versions the tests pass with (requirements.txt), and liger-kernel for the CUDA lever
    for pkg in "trl==1.16.*" "bitsandbytes==0.50.2" "datasets==5.2.*" "transformers==5.24.0" "peft==0.21.2" \
               dill multiprocess liger-kernel; do
        $py -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 --platform any -d .whl "$pkg"
    done
    du -sh .whl .gpu
    exit 0
fi

DRY=0
if [[ "${1:-}" == "--dry" || "${GPU_CHECK_DRY:-0}" == "1" ]]; then DRY=1; fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if [[ $DRY == 1 ]]; then
    PY=${PYTHON:-.venv/bin/python}
    [[ -x $PY ]] || PY=python3
    WORK=$(mktemp -d)
    STEPS=${STEPS:-2}
    # the presets shrunk to what a CPU does in seconds; the same script, parts and table
    SHRINK=(--set max_length=128 --set per_device_batch_size=2 --set gradient_accumulation_steps=1)
    TIMES=(120 60 60 60 60 60)  # models, the three presets, side by side, Playground
    TOKENIZER=$WORK/tokenizer
    $PY - "$TOKENIZER" <<'PY'
import sys
from transformers import AutoTokenizer
from tuning import models
gguf = models.embedded_gguf_path()  # the embedded model's tokenizer and chat template, without converting it
AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(sys.argv[1])
PY
    NOTE="Dry run on a CPU: tiny models (2 layers, hidden 64) of the presets' architectures, max_length 128, batch 2; peak memory is RSS."
    TINY=--tiny
else
    PY=python3
    WORK=/tmp/gpu-check
    STEPS=${STEPS:-4}
    SHRINK=()
    TIMES=(120 75 100 140 45 45)  # seconds: the sum, with the wheels' install, stays under 10 minutes
    mkdir -p "$WORK"
    tar -xJf .gpu/tokenizer.tar.xz -C "$WORK"
    TOKENIZER=$WORK/tokenizer
    if compgen -G ".whl/*.whl" > /dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
        export PYTHONPATH=/tmp/site
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    NOTE=$($PY -c "import torch, transformers, peft, trl, bitsandbytes, importlib.util as u; print(f'{torch.cuda.get_device_name(0)}; torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, trl {trl.__version__}, bitsandbytes {bitsandbytes.__version__}, liger-kernel ' + ('installed' if u.find_spec('liger_kernel') else 'not installed') + '. Random-weight models of each preset base\'s architecture and size; each preset as written.')")
    TINY=
fi
echo "$NOTE"
TABLE=${GPU_CHECK_TABLE:-${OUT:-$WORK}/gpu_check.md}
MODELS=$WORK/models
mkdir -p "$WORK"
PRESETS=(qwen2.5-0.5b-qlora-8gb qwen2.5-3b-qlora-16gb llama-3.1-8b-qlora-24gb)
MODEL_OF=(qwen2.5-0.5b qwen2.5-3b llama-3.1-8b)

$PY bench/gpu_check.py header "$TABLE" --note "$NOTE"
echo "=== models ($MODELS) ==="
timeout "${TIMES[0]}" $PY bench/gpu_models.py "$TOKENIZER" "$MODELS" $TINY --only "$(IFS=,; echo "${MODEL_OF[*]}")" \
    || echo "models: failed or timed out; the presets whose model is missing fail below"
for i in 0 1 2; do
    preset=${PRESETS[$i]}
    echo "=== $preset: the first $STEPS steps ==="
    # bench/gpu_check.py stops the run at its own limit and writes the row; `timeout` is the backstop
    timeout $(( TIMES[i + 1] + 15 )) $PY bench/gpu_check.py train "$TABLE" "$preset" "$MODELS/${MODEL_OF[$i]}" \
        --workspace "$WORK/ws" --steps "$STEPS" --timeout "${TIMES[i + 1]}" "${SHRINK[@]}" \
        || echo "$preset: the check itself failed"
done
echo "=== side by side and Playground (${PRESETS[0]}'s run) ==="
timeout $(( TIMES[4] + 15 )) $PY bench/gpu_check.py side-by-side "$TABLE" "${PRESETS[0]}" --workspace "$WORK/ws" \
    --timeout "${TIMES[4]}" || echo "side by side: the check itself failed"
timeout $(( TIMES[5] + 15 )) $PY bench/gpu_check.py playground "$TABLE" "${PRESETS[0]}" --workspace "$WORK/ws" \
    --timeout "${TIMES[5]}" || echo "Playground: the check itself failed"

if [[ $DRY == 0 && "${GPU_CHECK_THROUGHPUT:-0}" == "1" ]]; then
    $PY bench/gpu_models.py "$TOKENIZER" "$MODELS" --only smollm2-135m,llama-1b
    for model in smollm2-135m llama-1b; do
        echo "=== $model, qlora, ours vs plain TRL ==="
        timeout 200 $PY bench/throughput.py --model "$MODELS/$model" --method qlora --pairs "${PAIRS:-2}" \
            --steps "${STEPS_TRL:-8}" --batch 8 --max-length 512 --threads 8 --workspace /tmp/gpu-bench \
            --peak-tflops "${PEAK_TFLOPS:-989}" 2>&1 | grep -v -i "warn" || echo "$model: failed or timed out"
    done
fi
echo "=== table: $TABLE ==="
cat "$TABLE"
if [[ $DRY == 1 && -z "${GPU_CHECK_KEEP:-}" ]]; then rm -rf "$WORK"; fi
