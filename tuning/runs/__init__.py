"""The run store: the one package that names a run folder's files, writes them safely and reads them back.

    runs/<run_id>/
      config.yaml           the resolved TrainConfig (written once, before the trainer starts)
      events.jsonl          the truth about the run: the trainer appends (tuning/runs/events.py owns the line format)
      process.json          the training process's pid, start time, process group and host (touched while it runs)
      train.log             the training process's stdout and stderr
      checkpoints/checkpoint-N/   each with a COMPLETE marker, written last, after every file is fsynced
      adapter/              the final adapter
      evaluation.json       base vs tuned on held-out data (tuning/evaluation/evaluate.py computes it)
      benchmarks.json       base vs tuned on standard benchmarks (tuning/evaluation/benchmarks.py, lm-eval)
      probes.json           the prompts answered at every checkpoint
      probe_answers.jsonl   one line of base/tuned answers per checkpoint
      ab_votes.jsonl        one line per blind A/B vote
      corrections.jsonl     answers a person corrected in the Playground: an SFT dataset (messages), with the original
      preference_pairs.jsonl  the votes (ties left out) and corrections as DPO pairs, rewritten whole on request
      rows.json             where each training and held-out example came from (file, row), by row id
      row_losses.jsonl      each example's own loss: training rows as the trainer computed them, held-out
                            rows at every evaluation (tuning/evaluation/row_losses.py)
      tensorboard/          TensorBoard event files, only with report_to: tensorboard

    queue.json              (in the workspace, beside runs/) the runs waiting to start, in order

Data flows one way: the trainer writes -> this package reads -> tabs, CLI, exports. Nobody else
opens these files, so a reload, a second browser or an app restart sees exactly what the trainer
wrote. Status is derived from the files alone (and whether the recorded process is alive), so any
process can answer it after any crash. Readers never raise on a damaged file: the Runs table
lists the run as damaged and the others normally.

Its modules, by concern: layout (names, paths, statuses, config.yaml, the queue file), files (atomic
writes, tolerant reads), events (the event log's format and the summary every page reads from it),
process (the trainer's liveness and log), checkpoints (complete checkpoints, the chosen adapter),
listing (run summaries and the cached listing), results (evaluation, probes, per-row losses, votes),
feedback (corrections and votes as training data). Beside them: runner (starting, stopping and
queueing runs), seeds (runs of one config on several seeds) and compare (runs side by side).
Callers use the names re-exported here (`runs.run_dir`, `runs.summarize`, ...); modules inside the
package import each other directly.
"""


from __future__ import annotations

from tuning.runs.layout import (ACTIVE_STATUSES, ADAPTER_CONFIG, ADAPTER_WEIGHTS, BENCHMARKS, COMPLETED,
                                COMPLETE_MARKER, DAMAGED, EVALUATION, FAILED, INTERRUPTED, MAX_PROBES, PLAN,
                                PREFERENCE_PAIRS, PROBES, PROCESS, QUEUE, RUNNING, RunError, STARTING, STOPPED,
                                TENSORBOARD, VOTES, adapter_dir, check_run_id, checkpoint_dir, checkpoints_dir,
                                config_path, events_path, existing_run_dir, log_path, new_run_id, queue_path,
                                read_config, read_queue, run_dir, runs_dir, write_config, write_queue)
from tuning.runs.files import read_json, write_json
from tuning.runs.events import EventSummary, decimate, event_log, read_run_events, status_from
from tuning.runs.process import (REMOTE_STALE_S, log_tail, mark_process_ended, process_alive, read_process_info,
                                 remote_host, start_heartbeat, this_host, training_process, write_process_info)
from tuning.runs.checkpoints import (adapter_step, adapter_version, choose_checkpoint, chosen_checkpoint,
                                     complete_checkpoints, current_adapter, discard_incomplete_checkpoints,
                                     has_final_adapter, latest_checkpoint, mark_complete)
from tuning.runs.listing import (RunSummary, active_runs, default_run, delete_run, list_runs,
                                 one_listing, run_ids, summarize)
from tuning.runs.results import (ab_summary, append_probe_answers, append_row_losses, append_vote,
                                 cached_base_answers, check_probes, checks_done, latest_examples, perplexity,
                                 probe_history, read_benchmarks, read_evaluation, read_probes, read_row_index,
                                 read_row_losses, read_votes, write_benchmarks, write_evaluation, write_probes,
                                 write_row_index)
from tuning.runs.feedback import (append_correction, corrections_path, preference_pairs, read_corrections,
                                  runs_with_preferences, vote_pairs, write_preference_pairs)

__all__ = [
    "ACTIVE_STATUSES", "ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "COMPLETED", "COMPLETE_MARKER", "DAMAGED",
    "EVALUATION", "FAILED", "INTERRUPTED", "MAX_PROBES", "PLAN", "PREFERENCE_PAIRS", "PROBES", "PROCESS", "QUEUE",
    "RUNNING", "RunError", "STARTING", "STOPPED", "TENSORBOARD", "VOTES", "adapter_dir", "check_run_id",
    "checkpoint_dir", "checkpoints_dir", "config_path", "events_path", "existing_run_dir", "log_path",
    "new_run_id", "queue_path", "read_config", "read_queue", "run_dir", "runs_dir", "write_config",
    "write_queue", "read_json", "write_json", "EventSummary", "decimate", "event_log", "read_run_events",
    "status_from", "REMOTE_STALE_S", "log_tail", "mark_process_ended", "process_alive", "read_process_info",
    "remote_host", "start_heartbeat", "this_host", "training_process", "write_process_info", "adapter_step",
    "adapter_version", "choose_checkpoint", "chosen_checkpoint", "complete_checkpoints", "current_adapter",
    "discard_incomplete_checkpoints", "has_final_adapter", "latest_checkpoint", "mark_complete",
    "RunSummary", "active_runs", "default_run", "delete_run", "list_runs", "one_listing",
    "run_ids", "summarize", "ab_summary", "append_probe_answers", "append_row_losses", "append_vote",
    "cached_base_answers", "check_probes", "checks_done", "latest_examples", "perplexity", "probe_history",
    "read_evaluation", "read_probes", "read_row_index", "read_row_losses", "read_votes", "write_evaluation",
    "write_probes", "write_row_index", "append_correction", "corrections_path", "preference_pairs",
    "read_corrections", "runs_with_preferences", "vote_pairs", "write_preference_pairs"
]
