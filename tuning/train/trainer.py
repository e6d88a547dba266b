"""The training recipe: setup -> train -> save, top to bottom. Runs in its own process
(`python -m tuning train ...`) and never imports Gradio.

What it does, and the trade-off of each feature:
- QLoRA (method=qlora): the base is frozen in 4-bit NF4 with double quantization; ~3x less
  memory than full precision, some quality loss on very small models.
- LoRA adapters through PEFT on every linear layer by default ("all-linear").
- Loss only on assistant tokens (train_on_completions_only): the mask comes from
  tuning.data.tokens.tokenize_conversation, so it works with any chat template.
- Events: every log, eval, checkpoint, the start and the end go to events.jsonl, which the
  dashboard tails; progress is also printed to stdout.
- Checkpoints every save_steps with optimizer and scheduler state; each gets a COMPLETE
  marker written last, so a resume skips a checkpoint half-written by a crash.
- Phases: a `phase` event at each change (loading the model, preparing the data, training, evaluating
  check k of K, saving), so every view can say what the run is doing; events.PHASES.
- SIGTERM (the Stop button) is honoured in every phase: while loading or preparing the run ends at
  the next stage; in training after the current step (a checkpoint and the adapter are saved); at a
  checkpoint's probes or in the end-of-run evaluation at the next generated token, the evaluation
  then recorded as partial. A "stopping" phase event is written at once; the run ends as "stopped".
- Early stopping on eval loss when early_stopping_patience > 0.
- Evaluation (tuning/evaluation/evaluate.py): the probe prompts are answered by base and tuned at every
  checkpoint (a few seconds each on a CPU; probe_every_checkpoint turns it off); after the adapter
  is saved, the end-of-run evaluation that fits the run (final_evaluation: quick for a short run,
  full for a long one, or none) goes to evaluation.json and an `eval` event. A run stopped during
  training skips it, so a Stop stays quick (`python -m tuning eval` computes it later).
- A non-finite loss or gradient norm for 3 logged steps in a row stops the run with an error
  naming the last good checkpoint; no checkpoint is saved while the loss is non-finite, and a
  checkpoint whose adapter weights are not finite never gets its COMPLETE marker.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from tuning import data as data_mod
from tuning import levers, models
from tuning.data import arrow_data, general
from tuning.train import distributed, faults, grpo, preference, recipe, replay, rewards, tracking
from tuning.evaluation import evaluate, row_losses
from tuning import runs
from tuning.config import ConfigError, TrainConfig
from tuning.runs.events import EVALUATING, LOADING, PREPARING, SAVING, STOPPING, TRAINING, EventLog

BAD_INPUT_ERRORS = (ConfigError, data_mod.DataError, models.ModelError)
NON_FINITE_LIMIT = 3  # consecutive logged steps with a NaN/inf loss or gradient norm before we stop


class NonFiniteLoss(RuntimeError):
    """The loss or gradient norm stayed NaN/inf: training further would only poison the adapter."""


class StopRequested:
    """Set by SIGTERM/SIGINT; checked by the trainer after every step, between the stages of loading
    and at every check (and generated token) of an evaluation. With `announce` given, a "stopping"
    phase is written within ANNOUNCE_S of the signal by a small thread: the handler itself only sets
    the flag (no file I/O in a signal handler, which can interrupt the main thread's own write)."""

    ANNOUNCE_S = 0.25

    def __init__(self, announce=None) -> None:
        self.requested = False
        self.announce = announce  # called once, from a thread, after the first signal
        self._closed = threading.Event()
        self._announced = threading.Lock()  # held once announced: the thread or announce_now, not both
        self._written = threading.Event()  # set once the announcement is written (or failed to be)

    def install(self) -> dict:
        """Install the handlers; returns the previous ones (restore() puts them back)."""
        def handler(signum, frame):
            self.requested = True
        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
        if self.announce is not None:
            threading.Thread(target=self._announce_when_set, name="stop announcer", daemon=True).start()
        return previous

    def _announce_when_set(self) -> None:
        while not self._closed.wait(self.ANNOUNCE_S):
            if self.requested:
                self.announce_now()
                return

    def announce_now(self) -> None:
        """Write the "stopping" phase now if a Stop arrived and it is not written yet: before the run's
        end event, which a quick stop can reach within the thread's ANNOUNCE_S. When the thread is writing
        it at that moment, wait for its write: the end event must come after it."""
        if self.announce is None or not self.requested:
            return
        if not self._announced.acquire(blocking=False):
            self._written.wait(timeout=10)
            return
        try:
            self.announce()
        except OSError:
            pass  # a full disk: the run still stops, the page learns it from the end event
        finally:
            self._written.set()

    def check(self, where: str) -> None:
        """Raise RunStopped when a Stop arrived (between the stages of loading and preparing)."""
        if self.requested:
            raise RunStopped(f"stopped while {where}; nothing was trained")

    def restore(self, previous: dict) -> None:
        self._closed.set()
        for sig, old in previous.items():
            signal.signal(sig, old)


class RunStopped(Exception):
    """A Stop arrived before training began: the run ends as stopped, with nothing to save."""


class Phases:
    """Writes a `phase` event when the run's phase changes (enter) or its progress moves (call)."""

    def __init__(self, events: EventLog) -> None:
        self.events = events
        self.current: str | None = None

    def __call__(self, phase: str, **fields) -> None:
        self.current = phase
        self.events.append("phase", phase=phase, **fields)

    def enter(self, phase: str, **fields) -> None:
        if phase != self.current:
            self(phase, **fields)


def _callbacks(cfg: TrainConfig, events: EventLog, run_dir: Path, stop: StopRequested, phases: Phases,
               recorder: rewards.SampleRecorder | None = None):
    from transformers import TrainerCallback

    class EventsCallback(TrainerCallback):
        """Turns the Trainer's callbacks into events.jsonl lines and stdout progress."""

        def __init__(self):
            self.last_time = None
            self.last_tokens = 0
            self.started = time.time()
            self.first_step = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.last_time, self.last_tokens = time.time(), state.num_input_tokens_seen
            self.first_step = state.global_step
            events.append("start", step=state.global_step, max_steps=state.max_steps,
                          message=f"training {state.max_steps - state.global_step} steps"
                                  + (f" (resumed at step {state.global_step})" if state.global_step else ""))
            # what the end-of-run evaluation will cost, so the page's ETA includes it from the start
            kind = cfg.final_evaluation_for(state.max_steps)
            try:
                checks = evaluate.planned_checks(cfg, run_dir, kind) if distributed.is_main_process() else []
            except Exception:  # noqa: BLE001 - an estimate must never stop a run; the evaluation says why later
                checks = []
            answers = [c for c in checks if c.answers]
            phases(TRAINING, step=state.global_step, max_steps=state.max_steps, final_evaluation=kind,
                   eval_checks=len(checks), eval_work=round(sum(c.work for c in checks), 2),
                   eval_answers=sum(c.answers for c in answers),
                   eval_answer_work=round(sum(c.work for c in answers), 2))
            print(f"start: {state.max_steps} steps", flush=True)

        def on_step_begin(self, args, state, control, **kwargs):
            phases.enter(TRAINING, step=state.global_step, max_steps=state.max_steps)  # after an eval or a save

        def on_step_end(self, args, state, control, **kwargs):
            # With several processes every rank must stop after the same step, wherever the
            # SIGTERM landed (a scheduler, Stop on one node): a rank that went on would wait forever.
            if distributed.any_rank(stop.requested, args.device):
                stop.requested = True
                control.should_training_stop = True
                control.should_save = True  # a resumable checkpoint at the stop
                control.should_evaluate = False  # the stop should be quick; `eval` computes it later
            # The Trainer evaluates, then saves, right after this step: say so, so the page does not
            # count the time as a stalled step
            if control.should_evaluate and args.eval_strategy != "no":
                phases.enter(EVALUATING, step=state.global_step, max_steps=state.max_steps,
                             message=f"held-out loss at step {state.global_step}")
            elif control.should_save:
                phases.enter(SAVING, step=state.global_step, max_steps=state.max_steps,
                             message=f"checkpoint-{state.global_step}")

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" not in logs:
                return
            now = time.time()
            tokens = state.num_input_tokens_seen
            rate = (tokens - self.last_tokens) / max(now - self.last_time, 1e-9)
            self.last_time, self.last_tokens = now, tokens
            done = state.global_step - self.first_step
            elapsed = now - self.started
            eta = elapsed / done * (state.max_steps - state.global_step) if done else None
            events.append("log", step=state.global_step, max_steps=state.max_steps, loss=logs["loss"],
                          learning_rate=logs.get("learning_rate"), grad_norm=logs.get("grad_norm"),
                          epoch=logs.get("epoch"), tokens_per_second=round(rate, 1),
                          tokens_seen=tokens, eta_seconds=round(eta, 1) if eta is not None else None,
                          objective=preference.objective_metrics(logs),
                          samples=(recorder.samples() or None) if recorder is not None else None)
            print(f"step {state.global_step}/{state.max_steps}  loss {logs['loss']:.4f}  "
                  f"lr {logs.get('learning_rate', 0):.2e}  {rate:.0f} tok/s"
                  + (f"  eta {eta:.0f}s" if eta is not None else ""), flush=True)

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            metrics = metrics or {}
            if "eval_loss" in metrics:
                events.append("eval", step=state.global_step, max_steps=state.max_steps,
                              eval_loss=metrics["eval_loss"], objective=preference.objective_metrics(
                                  {k.removeprefix("eval_"): v for k, v in metrics.items()}))
                print(f"eval at step {state.global_step}: eval_loss {metrics['eval_loss']:.4f}", flush=True)
            # A Stop during this evaluation ends the run here rather than after one more step. With
            # several processes only on_step_end may decide (every rank must stop after the same step).
            if stop.requested and distributed.world_size() == 1:
                control.should_training_stop = True
                control.should_save = True
            if control.should_save:
                phases.enter(SAVING, step=state.global_step, max_steps=state.max_steps,
                             message=f"checkpoint-{state.global_step}")

        def on_save(self, args, state, control, model=None, **kwargs):
            if not state.is_world_process_zero:
                return  # with several processes, rank 0 alone marks the checkpoint it saved
            ckpt = runs.checkpoint_dir(run_dir, state.global_step)
            if model is not None and not _trainable_weights_finite(model):
                print(f"checkpoint-{state.global_step} holds NaN/inf weights: not marked COMPLETE", flush=True)
                return
            if ckpt.is_dir():
                runs.mark_complete(ckpt)  # its files fsynced, then the marker: the save is whole
                events.append("checkpoint", step=state.global_step, max_steps=state.max_steps,
                              path=str(ckpt.relative_to(run_dir)))

    class NonFiniteGuard(TrainerCallback):
        """Stop after NON_FINITE_LIMIT logged steps in a row with a NaN/inf loss or gradient norm.
        Runs after EventsCallback (the bad values still reach the curve) and before the Trainer
        saves, so a poisoned step is never checkpointed."""

        def __init__(self):
            self.bad_in_a_row = 0

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" not in logs:
                return
            values = [logs["loss"]] + ([logs["grad_norm"]] if "grad_norm" in logs else [])
            if all(loss_is_finite(v) for v in values):
                self.bad_in_a_row = 0
                return
            self.bad_in_a_row += 1
            control.should_save = False  # never checkpoint a NaN step
            if self.bad_in_a_row >= NON_FINITE_LIMIT:
                good = runs.latest_checkpoint(run_dir)
                raise NonFiniteLoss(
                    f"the loss or gradient norm became NaN/inf for {NON_FINITE_LIMIT} consecutive steps (step "
                    f"{state.global_step}): lower learning_rate, or raise warmup_ratio, or set max_grad_norm to "
                    "1.0; " + (f"the last good checkpoint is {good.name}" if good else "no good checkpoint was "
                               "saved before it") + ". No adapter was saved from the broken weights.")

    # Fault injection first (test runs only), so an injected save failure lands before the marker.
    return [*faults.callbacks(), EventsCallback(), NonFiniteGuard()]


def _trainable_weights_finite(model) -> bool:
    """True when every trainable (adapter) weight is finite: small tensors, a quick check."""
    import torch

    return all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.requires_grad)


def build_trainer(cfg: TrainConfig, run_dir: Path, workspace: Path, events: EventLog, stop: StopRequested,
                  phases: Phases | None = None):
    """Setup: model path, tokenizer, 4-bit (or full) base, data, LoRA, SFTTrainer."""
    import torch
    from transformers import EarlyStoppingCallback, PrinterCallback, set_seed
    from trl import SFTConfig, SFTTrainer

    set_seed(cfg.seed)
    if not torch.cuda.is_available():
        # the cores this process may run on (taskset, a container's cpuset), not the machine's:
        # more threads than cores makes every matmul wait on the slowest
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    phases = phases or Phases(events)
    phases.enter(LOADING, message=f"loading {cfg.base_model}")
    with distributed.main_process_first():  # several processes must not convert the embedded model at once
        model_path = models.resolve_base_model(cfg.base_model, workspace)
    tokenizer = models.load_tokenizer(model_path, cfg.trust_remote_code)
    stop.check("loading the model")
    if cfg.objective != "sft":  # dpo, orpo, kto, grpo: TRL's trainers on the same setup
        return _preference_trainer(cfg, run_dir, workspace, events, stop, phases, tokenizer, model_path)
    model = models.load_base_for_training(cfg, model_path)
    stop.check("loading the model")
    phases.enter(PREPARING, message=f"preparing {cfg.dataset}")
    train_ds, eval_ds, loaded = data_mod.prepare(cfg, tokenizer, workspace)  # a big file: an Arrow cache in it
    replayed = _general_rows(cfg, model, tokenizer, workspace, loaded.rows_valid)
    if replayed:  # a small set (general.AUTO_MAX_ROWS): tokenized again with the general rows, quickly
        train_ds, eval_ds, loaded = data_mod.prepare(cfg, tokenizer, workspace, replayed)
    print(f"data: {len(train_ds)} train rows, {len(eval_ds) if eval_ds is not None else 0} eval rows, "
          f"{len(loaded.problems)} problems", flush=True)
    stop.check("preparing the data")
    cfg = _planned(cfg, run_dir, workspace, model, train_ds, eval_ds, loaded, replayed)  # auto epochs / lr
    dtype = models.compute_dtype(cfg, training=True)  # bf16 -> the Trainer's autocast (CPU too)
    has_eval = eval_ds is not None
    early_stop = cfg.early_stopping_patience > 0 and has_eval
    args = SFTConfig(
        output_dir=str(runs.checkpoints_dir(run_dir)),
        per_device_train_batch_size=cfg.per_device_batch_size,
        per_device_eval_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a share of the total steps
        num_train_epochs=cfg.num_epochs,
        max_steps=cfg.max_steps,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        activation_checkpointing=cfg.gradient_checkpointing,  # transformers 5 renamed gradient_checkpointing
        neftune_noise_alpha=cfg.neftune_noise_alpha or None,  # the Trainer's own NEFTune hook
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=dtype == torch.bfloat16,
        use_cpu=not torch.cuda.is_available(),  # transformers refuses bf16 without a GPU unless told
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.step_interval("save_steps"),
        # at least 2: the Trainer rotates old checkpoints before the new one gets its COMPLETE
        # marker, so with 1 a kill in that window would leave no complete checkpoint at all
        save_total_limit=max(2, cfg.save_total_limit),
        eval_strategy="steps" if has_eval else "no",
        eval_steps=cfg.step_interval("eval_steps"),
        load_best_model_at_end=early_stop,
        metric_for_best_model="eval_loss" if early_stop else None,
        greater_is_better=False if early_stop else None,
        # data.prepare already truncated every example to max_length; TRL needs it only to pack
        max_length=cfg.max_length if cfg.packing else None,
        packing=cfg.packing,
        packing_strategy="bfd",
        # Padding-free batches: the examples of a batch are concatenated into one row with
        # per-sequence position ids and no padding (tuning/levers/attention.py keeps attention inside
        # each example). On mixed lengths a padded batch of 8 rows of 20-400 tokens is ~1.7x its
        # real tokens; here every token computed is a real one. Same examples per step as padding.
        padding_free=True,
        # With no padding in a batch, "all" tokens are the real ones ("non_padding" would count
        # by pad_token_id, which for many chat models is the end-of-turn token in every example).
        include_num_input_tokens_seen="all",
        # Keep the dataset's row_id column: the collator hands it to tuning/evaluation/row_losses.py, which
        # takes it off the batch before the model sees it.
        remove_unused_columns=False,
        **tracking.trainer_kwargs(cfg, run_dir),  # report_to: none, or TensorBoard / trackio (tuning/train/tracking.py)
        disable_tqdm=True,
        logging_nan_inf_filter=False,  # log a NaN loss as NaN (the filter shows 0.0), so the guard sees it
        dataloader_num_workers=0,
        **distributed.trainer_kwargs(cfg),  # ddp/fsdp/deepspeed settings when launched by torchrun
    )
    callbacks = _callbacks(cfg, events, run_dir, stop, phases)
    if early_stop:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    # probe answers at every checkpoint, after its marker
    probes = evaluate.make_callback(cfg, run_dir, stop, phases)
    callbacks.append(probes)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=models.get_peft_config(cfg),
        callbacks=callbacks,
    )
    # With tqdm off the Trainer adds PrinterCallback, which prints every log as a raw dict
    # ({'loss': ..., 'grad_norm': ...}) beside EventsCallback's readable step line: one line a step.
    trainer.remove_callback(PrinterCallback)
    probes.bind(trainer, tokenizer)
    # Each example's own loss, from the loss the trainer computes anyway (tuning/evaluation/row_losses.py).
    row_callback = row_losses.attach(trainer, cfg, loaded, run_dir, distributed.is_main_process(),
                                     _general_count(cfg, loaded, replayed))
    if row_callback is not None:
        trainer.add_callback(row_callback)
    # The levers (tuning/levers): the same computation in less time and memory, where they apply, unless
    # speedups is off or levers_off names them; one line per lever in the log says which applied and why
    # the others did not.
    levers.apply(levers.TRAINER, trainer, cfg.speedups, trainer.args.device.type, turned_off=cfg.levers_turned_off,
                 log=levers.print_line)
    return trainer, tokenizer


def _general_rows(cfg: TrainConfig, model, tokenizer, workspace: Path, rows: int) -> list[list[dict]] | None:
    """The general rows with the base's own answers (tuning/train/replay.py) when the run mixes them in
    (tuning/data/general.py). Several processes: the first answers and keeps them, the others read them."""
    if not general.wanted(cfg, rows):
        return None
    if arrow_data.wanted(cfg.dataset, workspace):  # a big file of few long rows: its Arrow rows and
        print("general rows: not mixed into a source read through the Arrow cache", flush=True)  # ids stay its own
        return None
    with distributed.main_process_first():
        return replay.rows(cfg, model, tokenizer, workspace, str(models.compute_dtype(cfg, training=True)))


def _general_count(cfg: TrainConfig, loaded, replayed: list[list[dict]] | None) -> int:
    """How many general rows follow the person's rows in the training set (data.train_and_heldout)."""
    return len(replayed) if replayed and general.wanted(cfg, loaded.rows_valid) else 0


def _planned(cfg: TrainConfig, run_dir: Path, workspace: Path, model, train_ds, eval_ds, loaded,
             replayed: list[list[dict]] | None) -> TrainConfig:
    """The config with the recipe's numbers for auto (tuning/train/recipe.py), its plan in the log."""
    import torch

    general_count = _general_count(cfg, loaded, replayed)
    params = float(model.num_parameters())
    lengths = [len(ids) for ids in train_ds.select(range(min(len(train_ds), 1000)))["input_ids"]]
    rate, _ = recipe.training_rate(cfg, workspace, params, torch.cuda.is_available())
    seconds = recipe.step_seconds(cfg, rate, sum(lengths) / len(lengths) if lengths else None)
    planned, _ = recipe.start(cfg, run_dir, len(train_ds) - general_count, general_count,
                              len(eval_ds) if eval_ds is not None else 0, seconds, params)
    return planned


def _preference_trainer(cfg: TrainConfig, run_dir: Path, workspace: Path, events: EventLog, stop: StopRequested,
                        phases: Phases, tokenizer, model_path: str):
    """DPO, ORPO or KTO (tuning/train/preference.py) or GRPO (tuning/train/grpo.py) with SFT's callbacks:
    events, the NaN guard, probes."""
    from transformers import PrinterCallback

    probes = evaluate.make_callback(cfg, run_dir, stop, phases)
    # (the preference trainer reads its pairs, then loads the model: one "preparing" phase for both)
    phases.enter(PREPARING, message=f"preparing {cfg.dataset} and loading the model")
    # GRPO: a few of the latest sampled answers, with their rewards, ride on each `log` event
    recorder = rewards.SampleRecorder() if cfg.objective == "grpo" else None
    callbacks = [*_callbacks(cfg, events, run_dir, stop, phases, recorder), probes]
    if recorder is not None:
        trainer = grpo.build_trainer(cfg, run_dir, workspace, callbacks, tokenizer, model_path, recorder=recorder)
    else:
        trainer = preference.build_trainer(cfg, run_dir, workspace, callbacks, tokenizer, model_path)
    trainer.remove_callback(PrinterCallback)  # one readable line a step, as for SFT
    probes.bind(trainer, tokenizer)
    _apply_preference_levers(cfg, trainer)
    return trainer, tokenizer


def _apply_preference_levers(cfg: TrainConfig, trainer) -> list[levers.Outcome]:
    """The trainer-stage levers for a preference trainer: those of preference.shared_levers (TRL's fused
    LM head, which DPO and KTO score through as SFT does, and those that change no value) where they
    apply; the others are skipped, since they patch SFT's model and collator code paths."""
    return levers.apply(levers.TRAINER, trainer, cfg.speedups, trainer.args.device.type,
                        turned_off=cfg.levers_turned_off,
                        reason=f"objective {cfg.objective}: TRL's preference trainer keeps its own code paths",
                        only=preference.shared_levers(cfg.objective), log=levers.print_line)


def run(cfg: TrainConfig, run_dir: Path, workspace: Path, resume: bool = False) -> int:
    """Train one run in `run_dir`. Returns the process exit code (0 ok, 2 bad input, 1 failure)."""
    # With several processes only rank 0 writes events: one events.jsonl, no duplicated steps.
    events = runs.event_log(run_dir) if distributed.is_main_process() else distributed.NullEventLog()
    phases = Phases(events)
    stop = StopRequested(announce=lambda: events.append("phase", phase=STOPPING, message="stop requested"))
    previous_handlers = stop.install()
    try:
        trainer, tokenizer = build_trainer(cfg, run_dir, workspace, events, stop, phases)
        if resume and distributed.is_main_process():  # one rank tidies the shared folder
            for leftover in runs.discard_incomplete_checkpoints(run_dir):
                print(f"removed {leftover.name}: half-written when the run was interrupted", flush=True)
        checkpoint = runs.latest_checkpoint(run_dir) if resume else None
        if resume and checkpoint is None:
            print("no complete checkpoint to resume from; starting from step 0", flush=True)
        stop.check("preparing the data")
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        state = trainer.state
        # Save: the final adapter (the best one when early stopping loaded it back), before the
        # evaluation, so a Stop or a failure there never costs the adapter.
        phases(SAVING, step=state.global_step, max_steps=state.max_steps, final=True, message="saving the adapter")
        adapter_dir = runs.adapter_dir(run_dir)
        # FSDP holds a shard of the adapter on each rank: gathering it takes every rank (the Trainer's
        # save_model, rank 0 writes). Otherwise every rank holds the same adapter: rank 0 saves it.
        sharded = bool(getattr(trainer, "is_fsdp_enabled", False))
        if sharded:
            trainer.save_model(str(adapter_dir))
        elif distributed.is_main_process():
            trainer.model.save_pretrained(adapter_dir, safe_serialization=True)
        if distributed.is_main_process():
            tokenizer.save_pretrained(adapter_dir)
        losses = [h["loss"] for h in state.log_history if "loss" in h]
        # The evaluation that fits the run (quick, full, none); none after a Stop in training, which
        # should be quick. (Not under FSDP: rank 0 alone cannot run the sharded model; `eval` loads
        # the adapter whole.)
        kind = cfg.final_evaluation_for(state.max_steps)
        if stop.requested or sharded or not distributed.is_main_process():
            kind = evaluate.NONE
        evaluation = evaluate.end_of_training(trainer, tokenizer, cfg, run_dir, events, kind,
                                              progress=_evaluation_progress(phases, state, kind),
                                              stopped=lambda: stop.requested) or {}
        status = runs.STOPPED if stop.requested else runs.COMPLETED
        stop.announce_now()
        later = f"python -m tuning eval --run {run_dir.name}"
        note = ("; evaluation not run: " + later if kind == evaluate.NONE and not evaluation else
                f"; evaluation partial (stopped before {evaluation['stopped_at']}): {later} completes it"
                if evaluation.get("partial") else "")
        events.append("end", status=status, step=state.global_step, max_steps=state.max_steps,
                      loss=losses[-1] if losses else None, train_loss=result.training_loss,
                      eval_loss=evaluation.get("eval_loss"), base_eval_loss=evaluation.get("base_eval_loss"),
                      evaluation_error=evaluation.get("error"), evaluation=kind,
                      evaluation_partial=evaluation.get("partial") or None,
                      best_checkpoint=_relative(state.best_model_checkpoint, run_dir),
                      message=f"{status} at step {state.global_step}; adapter saved in adapter/{note}")
        if distributed.is_main_process():
            print(f"{status}: step {state.global_step}, adapter saved in {adapter_dir}{note}", flush=True)
        return 0
    except RunStopped as exc:
        stop.announce_now()
        events.append("end", status=runs.STOPPED, step=0, message=str(exc))
        print(str(exc), flush=True)
        return 0
    except BAD_INPUT_ERRORS as exc:
        events.append("error", message=str(exc), kind="bad_input")
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    except Exception as exc:  # noqa: BLE001 - the run must end with a readable error event
        message = explain_failure(exc)
        events.append("error", message=message, kind=type(exc).__name__, traceback=traceback.format_exc())
        traceback.print_exc()
        print(f"error: {message}", file=sys.stderr, flush=True)
        return 1
    finally:
        stop.restore(previous_handlers)


def _evaluation_progress(phases: Phases, state, kind: str):
    """The end-of-run evaluation's progress as phase events: before each check (done of total checks
    so far, and the work in training steps, from which the page estimates the rest) and at its end."""
    def progress(done: int, total: int, running, work_done: float, work_total: float) -> None:
        phases(EVALUATING, step=state.global_step, max_steps=state.max_steps, final=True, kind=kind, done=done,
               total=total, work_done=round(work_done, 2), work_total=round(work_total, 2),
               message=running.label if running else "done")
    return progress


def _relative(path: str | None, run_dir: Path) -> str | None:
    if not path:
        return None
    try:
        return str(Path(path).resolve().relative_to(run_dir.resolve()))
    except ValueError:
        return path


def explain_failure(exc: BaseException) -> str:
    """A short human message for the Live tab; the traceback goes below it."""
    import errno

    text = str(exc)
    lowered = text.lower()
    if isinstance(exc, NonFiniteLoss):
        return text
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT) or "no space left" in lowered:
        return ("The disk is full: free some space (or move the workspace) and resume the run; the newest "
                "complete checkpoint is kept, a half-written one is skipped.")
    if isinstance(exc, MemoryError) or "out of memory" in lowered or "can't allocate memory" in lowered \
            or type(exc).__name__ == "OutOfMemoryError":
        return ("Out of memory. Lower per_device_batch_size (raise gradient_accumulation_steps to keep the "
                "effective batch), lower max_length or lora_r, or turn on gradient_checkpointing.")
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}"[:500] if first else type(exc).__name__


def loss_is_finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
