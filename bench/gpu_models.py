"""Model folders for bench/gpu_check.sh, built from configs with random weights (speed does not depend
on the weights): SmolLM2-135M (the embedded model's architecture) and a ~1.1B Llama, both with the
embedded model's tokenizer and chat template (copied from TOKENIZER_DIR).

    python bench/gpu_models.py TOKENIZER_DIR OUT_DIR      # writes OUT_DIR/smollm2-135m, OUT_DIR/llama-1b
"""

import sys
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

SMOLLM2_135M = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, head_dim=64, tie_word_embeddings=True, rope_theta=100000.0)
# 2048 x 22 layers, GQA 32/4, MLP 5632: TinyLlama-1.1B's shape; with a 49k vocabulary ~1.0B parameters
LLAMA_1B = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                num_key_value_heads=4, tie_word_embeddings=False)


def build(tokenizer_dir: str, out: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    for name, shape in (("smollm2-135m", SMOLLM2_135M), ("llama-1b", LLAMA_1B)):
        folder = out / name
        if (folder / "config.json").is_file():
            continue
        config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=8192, rms_norm_eps=1e-5,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id, **shape)
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        print(f"{folder}: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters", flush=True)


if __name__ == "__main__":
    build(sys.argv[1], Path(sys.argv[2]))
