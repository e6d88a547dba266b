"""Side-by-side generation: the base and the tuned model answer the same prompt with the same
seed and settings, in ONE batched call (PEFT mixed-adapter batch: rows tagged "__base__" skip
the adapter). The base is loaded once, exactly as the run loaded it (4-bit for QLoRA), and
adapters (final or any checkpoint) are attached to it by name and cached.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from tuning import config as config_mod
from tuning import models, runs

BASE = "__base__"


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int = 0


def adapter_path(run_dir: Path, checkpoint: str | None = None) -> Path:
    """The final adapter, or checkpoint-N; while a run trains, its newest complete checkpoint."""
    if checkpoint and checkpoint != "final":
        path = run_dir / "checkpoints" / runs.check_run_id(checkpoint)
        if not (path / runs.COMPLETE_MARKER).exists():
            raise runs.RunError(f"checkpoint {checkpoint} of {run_dir.name} does not exist or is incomplete")
        return path
    if (run_dir / "adapter" / "adapter_config.json").is_file():
        return run_dir / "adapter"
    latest = runs.latest_checkpoint(run_dir)
    if latest is None:
        raise runs.RunError(f"run {run_dir.name} has no adapter or checkpoint yet")
    return latest


class Comparer:
    """One base model in memory, any number of adapters attached by name."""

    def __init__(self, base_path: str, method: str, dtype: torch.dtype, trust_remote_code: bool = False):
        from peft import PeftModel  # noqa: F401  (imported here: the UI starts without it)

        self.base_path, self.method = base_path, method
        qcfg = models.get_quantization_config(config_mod.TrainConfig(method=method)) if method == "qlora" else None
        if qcfg is not None:
            qcfg.bnb_4bit_compute_dtype = dtype
        self.model = models.load_model(base_path, method, dtype, trust_remote_code, qcfg)
        self.model.config.use_cache = True
        self.model.eval()
        self.tokenizer = models.load_tokenizer(base_path, trust_remote_code)
        self.tokenizer.padding_side = "left"
        self.peft = None
        self.adapters: dict[str, Path] = {}
        self.lock = threading.Lock()

    @property
    def precision_label(self) -> str:
        return "4-bit NF4 (as trained)" if self.method == "qlora" else "full precision (as trained)"

    def attach(self, path: Path) -> str:
        from peft import PeftModel

        name = "a" + str(abs(hash(str(path.resolve()))))
        if name in self.adapters:
            return name
        if self.peft is None:
            self.peft = PeftModel.from_pretrained(self.model, str(path), adapter_name=name, is_trainable=False)
        else:
            self.peft.load_adapter(str(path), adapter_name=name, is_trainable=False)
        self.peft.eval()
        self.adapters[name] = path
        return name

    def encode(self, prompts: list[str], system: str | None = None):
        texts = []
        for prompt in prompts:
            messages = ([{"role": "system", "content": system}] if system else []) + \
                       [{"role": "user", "content": prompt}]
            texts.append(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        return self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)

    def _generate_kwargs(self, settings: GenerationSettings) -> dict:
        kwargs = dict(max_new_tokens=settings.max_new_tokens, repetition_penalty=settings.repetition_penalty,
                      pad_token_id=self.tokenizer.pad_token_id)
        if settings.temperature > 0:
            kwargs.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs

    @torch.no_grad()
    def generate(self, prompts: list[str], adapter: Path, system: str | None = None,
                 settings: GenerationSettings = GenerationSettings()) -> list[tuple[str, str]]:
        """(base answer, tuned answer) for each prompt, from one mixed-adapter batch."""
        with self.lock:
            name = self.attach(adapter)
            batch = self.encode(prompts + prompts, system)
            torch.manual_seed(settings.seed)
            out = self.peft.generate(**batch, adapter_names=[BASE] * len(prompts) + [name] * len(prompts),
                                     **self._generate_kwargs(settings))
        texts = self.tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        texts = [t.strip() for t in texts]
        return list(zip(texts[: len(prompts)], texts[len(prompts):]))

    @torch.no_grad()
    def generate_one(self, prompts: list[str], adapter: Path | None, system: str | None = None,
                     settings: GenerationSettings = GenerationSettings()) -> list[str]:
        """One side only (adapter None = the base): the reference for the mixed-batch equivalence."""
        with self.lock:
            batch = self.encode(prompts, system)
            torch.manual_seed(settings.seed)
            if adapter is None:
                model = self.peft if self.peft is not None else self.model
                ctx = self.peft.disable_adapter() if self.peft is not None else _null()
                with ctx:
                    out = model.generate(**batch, **self._generate_kwargs(settings))
            else:
                name = self.attach(adapter)
                self.peft.set_adapter(name)
                out = self.peft.generate(**batch, **self._generate_kwargs(settings))
        texts = self.tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        return [t.strip() for t in texts]


    def stream(self, prompt: str, adapter: Path, system: str | None = None,
               settings: GenerationSettings = GenerationSettings()) -> Iterator[tuple[str, str]]:
        """(base so far, tuned so far) after each new token: the same one mixed-adapter batch as
        `generate` (rows: base, tuned), run in a thread that feeds a per-row streamer."""
        streamer = _BatchStreamer(rows=2, stop_ids={self.tokenizer.eos_token_id, self.tokenizer.pad_token_id})
        failure: list[BaseException] = []

        def work():
            try:
                with self.lock, torch.no_grad():
                    name = self.attach(adapter)
                    batch = self.encode([prompt, prompt], system)
                    torch.manual_seed(settings.seed)
                    self.peft.generate(**batch, adapter_names=[BASE, name], streamer=streamer,
                                       **self._generate_kwargs(settings))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                failure.append(exc)
            finally:
                streamer.end()

        thread = threading.Thread(target=work, name="playground-stream", daemon=True)
        thread.start()
        texts = ("", "")
        for rows in streamer:
            texts = tuple(self.tokenizer.decode(r, skip_special_tokens=True).strip() for r in rows)
            yield texts
        thread.join()
        if failure:
            raise failure[0]


class _BatchStreamer:
    """A generate() streamer for a whole batch (transformers' own streamers take batch size 1):
    skips the prompt, keeps each row's tokens up to its end token, and hands the rows so far to
    the iterating thread after every step."""

    def __init__(self, rows: int, stop_ids: set):
        self.rows = [[] for _ in range(rows)]
        self.done = [False] * rows
        self.stop_ids = {i for i in stop_ids if i is not None}
        self.seen_prompt = False
        self.queue: queue.Queue = queue.Queue()

    def put(self, value) -> None:
        if not self.seen_prompt:
            self.seen_prompt = True
            return
        for i, tokens in enumerate(value.reshape(len(self.rows), -1).tolist()):
            for token in tokens:
                if self.done[i]:
                    break
                if token in self.stop_ids:
                    self.done[i] = True
                else:
                    self.rows[i].append(token)
        self.queue.put([list(r) for r in self.rows])

    def end(self) -> None:
        self.queue.put(None)

    def __iter__(self):
        while (rows := self.queue.get()) is not None:
            yield rows


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_CACHE: dict[tuple, Comparer] = {}
_CACHE_LOCK = threading.Lock()


def comparer_for_run(run_dir: Path, workspace: Path, full_precision_base: bool = False) -> Comparer:
    """The cached Comparer for a run's base model (loaded lazily, once per base and precision)."""
    cfg = config_mod.load(run_dir / "config.yaml")
    base_path = models.resolve_base_model(cfg.base_model, workspace)
    method = "lora" if full_precision_base else cfg.method
    dtype = models.compute_dtype(cfg)
    key = (base_path, method, dtype)
    with _CACHE_LOCK:
        if key not in _CACHE:
            if len(_CACHE) >= 2:  # keep memory bounded: at most two bases at once
                _CACHE.pop(next(iter(_CACHE)))
            _CACHE[key] = Comparer(base_path, method, dtype, cfg.trust_remote_code)
        return _CACHE[key]
