"""The baseline: a plain, idiomatic TRL SFTTrainer + PEFT script, as a tutorial would write it.

    python bench/baseline_trl.py --model DIR --data rows.jsonl --method qlora --batch 8 --max-length 512 --steps 4

Defaults everywhere on purpose: the model in its stored dtype (fp32), TRL's default collation
(pad each batch to its longest row, attention mask), no packing. On a CPU, fp32 (TRL's default
bf16=True refuses to start there until told use_cpu=True; --precision bf16 does that). The same
LoRA config, effective batch, max_length and number of steps as our recipe is given on the
command line. QLoRA uses the usual 4-bit NF4 + double quantization config, with fp32 compute
(the dtype the model is loaded in on a CPU).

Prints one JSON line: trained (non-padding) tokens, seconds from the first step's start to the
last step's log, tokens/s, and the final loss. The benchmark measures the peak RSS from outside.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, TrainerCallback
from trl import SFTConfig, SFTTrainer


class Timer(TrainerCallback):
    def on_train_begin(self, args, state, control, **kwargs):
        self.started, self.last_log = time.time(), None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.last_log, self.loss = time.time(), logs["loss"]


def precision_args(precision: str) -> dict:
    if precision == "bf16":
        return {"bf16": True, "use_cpu": not torch.cuda.is_available()}
    if precision == "fp32" or not torch.cuda.is_available():
        return {"bf16": False}
    return {}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--method", choices=("lora", "qlora"), default="qlora")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-dropout", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--precision", choices=("default", "fp32", "bf16"), default="default",
                   help="default: TRL's own default on a GPU (bf16 autocast), fp32 on a CPU, where TRL's "
                        "default bf16 refuses to start until told use_cpu=True")
    p.add_argument("--output", default="/tmp/baseline-trl")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)

    tokenizer = AutoTokenizer.from_pretrained(a.model)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16 if torch.cuda.is_available() else torch.float32,
                               ) if a.method == "qlora" else None
    model = AutoModelForCausalLM.from_pretrained(a.model, quantization_config=quant,
                                                 device_map="cuda" if torch.cuda.is_available() else "cpu")
    dataset = load_dataset("json", data_files=a.data, split="train")
    peft_config = LoraConfig(r=a.lora_r, lora_alpha=2 * a.lora_r, lora_dropout=a.lora_dropout, target_modules="all-linear",
                             task_type="CAUSAL_LM")
    args = SFTConfig(output_dir=a.output, per_device_train_batch_size=a.batch,
                     gradient_accumulation_steps=a.grad_accum, max_steps=a.steps, max_length=a.max_length,
                     learning_rate=2e-4, logging_steps=1, save_strategy="no", report_to="none",
                     **precision_args(a.precision))
    timer = Timer()
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config, callbacks=[timer])
    trainer.train()

    # The rows consumed: steps x batch x accumulation, from the shuffled order; the benchmark gives
    # exactly that many rows (one epoch), so the trained tokens are all of the dataset's tokens.
    tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
    seconds = timer.last_log - timer.started
    print(json.dumps({"tokens": tokens, "seconds": round(seconds, 3), "tokens_per_second": round(tokens / seconds, 2),
                      "loss": timer.loss, "rows": len(trainer.train_dataset)}), flush=True)


if __name__ == "__main__":
    main()
