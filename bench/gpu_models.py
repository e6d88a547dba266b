"""Model folders for bench/gpu_check.sh, built from configs with random weights (speed and memory do not
depend on the weights, and the GPU machine cannot fetch from the Hub): the architecture and size of each GPU
preset's model (Qwen2.5-0.5B, Qwen2.5-3B, Llama-3.1-8B, each with its own vocabulary size: the LM head is a
large share of a step's memory), SmolLM2-135M (the embedded model's architecture) and a ~1.1B Llama, all with
the embedded model's tokenizer and chat template (copied from TOKENIZER_DIR). The tokenizer's ids are all
below each vocabulary size; ids above it that a random model generates decode to nothing.

    python bench/gpu_models.py TOKENIZER_DIR OUT_DIR                    # every model in MODELS
    python bench/gpu_models.py TOKENIZER_DIR OUT_DIR --only qwen2.5-0.5b,llama-3.1-8b
    python bench/gpu_models.py TOKENIZER_DIR OUT_DIR --tiny             # 2 layers, hidden 64: a CPU dry run

On a GPU the weights are drawn there in bf16 (an 8B model in seconds, where a CPU in fp32 takes minutes).
tests/test_gpu_presets.py checks that each GPU preset's header states its model's figures from SHAPES.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

SMOLLM2_135M = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, head_dim=64, tie_word_embeddings=True, rope_theta=100000.0)
# 2048 x 22 layers, GQA 32/4, MLP 5632: TinyLlama-1.1B's shape; with a 49k vocabulary ~1.0B parameters
LLAMA_1B = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                num_key_value_heads=4, tie_word_embeddings=False)
# The GPU presets' models, from their config.json on the Hub
QWEN25_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, rope_theta=1000000.0,
                  rms_norm_eps=1e-6, max_position_embeddings=32768)
QWEN25_3B = dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, rope_theta=1000000.0,
                 rms_norm_eps=1e-6, max_position_embeddings=32768)
LLAMA31_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False, rope_theta=500000.0,
                  rms_norm_eps=1e-5, max_position_embeddings=131072,
                  rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                    original_max_position_embeddings=8192))
# name -> (transformers model type, shape); a shape without vocab_size takes the tokenizer's
SHAPES = {
    "qwen2.5-0.5b": ("qwen2", QWEN25_05B),
    "qwen2.5-3b": ("qwen2", QWEN25_3B),
    "llama-3.1-8b": ("llama", LLAMA31_8B),
    "smollm2-135m": ("llama", SMOLLM2_135M),
    "llama-1b": ("llama", LLAMA_1B),
}
# each GPU preset (presets/NAME.yaml) -> the model above of its base_model's architecture and size
PRESETS = {
    "qwen2.5-0.5b-qlora-8gb": "qwen2.5-0.5b",
    "qwen2.5-3b-qlora-16gb": "qwen2.5-3b",
    "llama-3.1-8b-qlora-24gb": "llama-3.1-8b",
}
# --tiny: the same architecture (and vocabulary) at a size a CPU trains in a second
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16)


def build(tokenizer_dir: str, out: Path, names: list[str], tiny: bool = False) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    for name in names:
        folder = out / name
        if (folder / "config.json").is_file():
            continue
        model_type, shape = SHAPES[name]
        shape = {"vocab_size": len(tokenizer), **shape, **(TINY if tiny else {})}
        config = AutoConfig.for_model(model_type, bos_token_id=tokenizer.bos_token_id,
                                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                      **shape)
        started = time.time()
        torch.manual_seed(0)
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                model = AutoModelForCausalLM.from_config(config)
        finally:
            torch.set_default_dtype(default)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        count = sum(p.numel() for p in model.parameters())
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
        print(f"{folder}: {model_type}, {count / 1e6:,.0f}M parameters, built in {time.time() - started:.0f} s",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tokenizer_dir")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--only", default=",".join(SHAPES), help="comma-separated: " + ", ".join(SHAPES))
    parser.add_argument("--tiny", action="store_true", help="2 layers, hidden size 64 (a CPU dry run)")
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in SHAPES]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}; the models are {', '.join(SHAPES)}")
    build(args.tokenizer_dir, args.out_dir, names, args.tiny)


if __name__ == "__main__":
    main()
