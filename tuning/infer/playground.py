"""Side-by-side generation: the base and the tuned model answer the same prompt with the same
seed and settings, in ONE batched call (PEFT mixed-adapter batch: rows tagged "__base__" skip
the adapter). The base is loaded once, exactly as the run loaded it (4-bit for QLoRA), and
adapters (final or any checkpoint) are attached to it by name and cached.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from tuning import config as config_mod
from tuning import levers, models
from tuning.infer import generation
from tuning import runs
from tuning.infer.generation import BASE


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int = 0
    min_new_tokens: int = 0  # > 0 forces answers this long (like-for-like timing in bench/side_by_side.py)


class Comparer:
    """One base model in memory, any number of adapters attached by name."""

    def __init__(self, base_path: str, method: str, dtype: torch.dtype, trust_remote_code: bool = False):
        self.base_path, self.method = base_path, method
        qcfg = models.get_quantization_config(config_mod.TrainConfig(method=method)) if method == "qlora" else None
        if qcfg is not None:
            qcfg.bnb_4bit_compute_dtype = dtype
        self.model = models.load_model(base_path, method, dtype, trust_remote_code, qcfg)
        self.model.config.use_cache = True
        self.model.eval()
        # a CPU: both columns' rows share each read of the weights (tuning/levers/few_rows.py)
        levers.apply(levers.GENERATION, self.model, levers.AUTO, models.device_type())
        self.tokenizer = models.load_tokenizer(base_path, trust_remote_code)
        self.peft = None
        self.adapters: dict[str, tuple] = {}  # name -> runs.adapter_version
        self.lock = threading.Lock()

    @property
    def precision_label(self) -> str:
        return "4-bit NF4 (as trained)" if self.method == "qlora" else "full precision (as trained)"

    def attach(self, path: Path) -> str:
        """The adapter folder's name in the PeftModel, loading it on first use. Keyed by the folder
        and the version of its weights: a resumed run rewrites adapter/, and the stale copy is dropped."""
        from peft import PeftModel

        version = runs.adapter_version(path)
        name = "a" + str(abs(hash(version)))
        if name in self.adapters:
            return name
        if self.peft is None:
            self.peft = PeftModel.from_pretrained(self.model, str(path), adapter_name=name, is_trainable=False)
        else:
            self.peft.load_adapter(str(path), adapter_name=name, is_trainable=False)
        self.peft.eval()
        for stale in [n for n, v in self.adapters.items() if v[0] == version[0]]:
            self.peft.delete_adapter(stale)
            del self.adapters[stale]
        self.adapters[name] = version
        return name

    @staticmethod
    def conversations(prompts: list[str], system: str | None = None) -> list[list[dict]]:
        return [([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": p}]
                for p in prompts]

    def _generate_kwargs(self, settings: GenerationSettings) -> dict:
        kwargs = dict(max_new_tokens=settings.max_new_tokens, repetition_penalty=settings.repetition_penalty)
        if settings.min_new_tokens > 0:
            kwargs["min_new_tokens"] = settings.min_new_tokens
        if settings.temperature > 0:
            kwargs.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p)
        else:
            kwargs.update(generation.GREEDY)
        return kwargs

    def generate(self, prompts: list[str], adapter: Path, system: str | None = None,
                 settings: GenerationSettings = GenerationSettings(), time_limit_s: float | None = None
                 ) -> list[tuple[str, str]]:
        """(base answer, tuned answer) for each prompt, from one mixed-adapter batch; cut short (as
        far as it got) after `time_limit_s` of generating, when given."""
        kwargs = self._generate_kwargs(settings)
        if time_limit_s:
            deadline = time.monotonic() + time_limit_s
            kwargs["stopping_criteria"] = StoppingCriteriaList([Cancelled(threading.Event(), deadline)])
        with self.lock:
            name = self.attach(adapter)
            torch.manual_seed(settings.seed)
            texts = generation.generate_rows(self.peft, self.tokenizer, self.conversations(prompts + prompts, system),
                                             [BASE] * len(prompts) + [name] * len(prompts), **kwargs)
        return list(zip(texts[: len(prompts)], texts[len(prompts):]))

    def generate_one(self, prompts: list[str], adapter: Path | None, system: str | None = None,
                     settings: GenerationSettings = GenerationSettings()) -> list[str]:
        """One side only (adapter None = the base): the reference for the mixed-batch equivalence."""
        with self.lock:
            name = self.attach(adapter) if adapter is not None else BASE
            torch.manual_seed(settings.seed)
            model = self.peft if self.peft is not None else self.model
            return generation.generate_rows(model, self.tokenizer, self.conversations(prompts, system),
                                            [name] * len(prompts), **self._generate_kwargs(settings))

    def stream(self, prompt: str, adapter: Path, system: str | None = None,
               settings: GenerationSettings = GenerationSettings(), time_limit_s: float | None = None
               ) -> Iterator[tuple[str, str]]:
        """(base so far, tuned so far) after each new token, for one prompt: `stream_chat` with no history."""
        conversation = self.conversations([prompt], system)[0]
        yield from self.stream_chat(conversation, conversation, adapter, settings, time_limit_s)

    def stream_chat(self, base_conversation: list[dict], tuned_conversation: list[dict], adapter: Path,
                    settings: GenerationSettings = GenerationSettings(), time_limit_s: float | None = None
                    ) -> Iterator[tuple[str, str]]:
        """(base so far, tuned so far) after each new token: the same one mixed-adapter batch as
        `generate` (rows: the base answering its conversation, the tuned model answering its own),
        run in a thread that feeds a per-row streamer.

        The thread stops within one decoding step once this generator is closed (Gradio closes it
        when the stream is cancelled, its page goes away or it is stopped: GeneratorExit at the
        yield) or `time_limit_s` has passed: it then frees the model lock for the next one."""
        stop = threading.Event()
        deadline = time.monotonic() + time_limit_s if time_limit_s else None
        streamer = generation.RowStreamer(rows=2, stop_ids={self.tokenizer.eos_token_id,
                                                            self.tokenizer.pad_token_id})
        failure: list[BaseException] = []

        def work():
            try:
                with self.lock:
                    if stop.is_set():  # the reader left while another generation held the model
                        return
                    name = self.attach(adapter)
                    torch.manual_seed(settings.seed)
                    generation.generate_rows(self.peft, self.tokenizer, [base_conversation, tuned_conversation],
                                             [BASE, name], streamer,
                                             stopping_criteria=StoppingCriteriaList([Cancelled(stop, deadline)]),
                                             **self._generate_kwargs(settings))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                failure.append(exc)
            finally:
                streamer.end()

        thread = threading.Thread(target=work, name="playground-stream", daemon=True)
        thread.start()
        try:
            for rows in streamer:
                yield tuple(self.tokenizer.decode(r, skip_special_tokens=True).strip() for r in rows)
        finally:
            stop.set()  # a no-op after a whole answer; after a close, the thread's last step
        thread.join()
        if failure:
            raise failure[0]


class Cancelled(StoppingCriteria):
    """transformers' stopping criterion for "nobody reads this any more": true for every row once
    `event` is set or `deadline` (time.monotonic()) has passed. Asked after each decoding step, by
    `generate` and by the greedy loop alike (tuning/infer/decoding.py)."""

    def __init__(self, event: threading.Event, deadline: float | None = None):
        self.event, self.deadline = event, deadline

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        if self.deadline is not None and time.monotonic() > self.deadline:
            self.event.set()
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


_CACHE: dict[tuple, Comparer] = {}
_CACHE_LOCK = threading.Lock()


def comparer_for_run(run_dir: Path, workspace: Path, full_precision_base: bool = False) -> Comparer:
    """The cached Comparer for a run's base model (loaded lazily, once per base and precision)."""
    cfg = runs.read_config(run_dir)
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
