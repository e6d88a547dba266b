"""The Train tab's plan and checks before Start: the recipe's plan for the form's data in words
(tuning/train/recipe.py), the checks that name a risk and its fix (tuning/train/preflight.py) with a
button per fix, and the memory and time estimate (estimate.py). Plain functions over a TrainConfig;
train_tab.py wires them to the form."""

from __future__ import annotations

import gradio as gr

from tuning import config as config_mod
from tuning import data as data_mod
from tuning.train import preflight, recipe
from tuning.ui.common import AppContext, ago, load_dataset
from tuning.ui.train_fields import FORM_FIELDS, config_to_form

FIX_BUTTONS = 3  # buttons under the checks, one per fix (findings with a fix rarely number more)
TOKEN_SAMPLE = 300  # rows tokenized for the length check: a second on 2 cores, the Dataset tab does all


def findings(ctx: AppContext, cfg: config_mod.TrainConfig, plan: recipe.Plan | None) -> list[preflight.Finding]:
    """The checks for the form's config; [] when its data cannot be read here (a Hub dataset the run
    downloads: the run's own log then says what it found)."""
    if plan is None:
        return []
    try:
        loaded = load_dataset(cfg.dataset, cfg.dataset_format, cfg.column_map, workspace=ctx.workspace)
        held = data_mod.heldout_rows(cfg)
    except Exception:  # noqa: BLE001 - the estimate says the data could not be read
        return []
    has_checks = any("expect" in extra for _, extra in data_mod.scored(held))
    return preflight.check(cfg, loaded.conversations, plan, _token_stats(ctx, cfg, loaded), has_checks)


def _token_stats(ctx: AppContext, cfg: config_mod.TrainConfig, loaded) -> dict | None:
    from tuning.ui import dataset_tokens

    try:
        tokenizer = dataset_tokens.tokenizer_for(ctx, cfg.base_model)
        return data_mod.statistics(loaded, tokenizer, cfg.max_length, cfg.train_on_completions_only,
                                   sample=TOKEN_SAMPLE)
    except Exception:  # noqa: BLE001 - no tokenizer here (a Hub model not downloaded yet): no length check
        return None


def report(ctx: AppContext, cfg: config_mod.TrainConfig) -> tuple[str, list[preflight.Finding]]:
    """(the plan, the checks and the estimate as Markdown, the findings)."""
    from tuning.ui import estimate

    rows, avg_tokens = estimate.dataset_size(cfg, ctx.workspace)
    result = estimate.estimate(cfg, ctx.workspace, rows, avg_tokens)
    found = findings(ctx, cfg, result.plan)
    parts = []
    if result.plan is not None:
        parts.append(f"**Plan:** {recipe.describe(result.plan, cfg)}.")
    if found:
        parts.append("**Checks before Start:**\n\n" + "\n".join(f"- {f.markdown()}" for f in found))
    elif result.plan is not None:
        parts.append("**Checks before Start:** nothing to flag.")
    parts.append(result.markdown())
    if cfg.objective == "grpo":
        parts.append(rewards_trial(ctx, cfg, result.steps, result.seconds))
    return "\n\n".join(parts), found


DRY_RUN_SAMPLES = 2  # prompts the Train tab's reward trial answers: seconds for the embedded model here


def rewards_trial(ctx: AppContext, cfg: config_mod.TrainConfig, steps: int | None = None,
                  estimated: float | None = None) -> str:
    """GRPO's reward dry-run (tuning/train/grpo.py) for the form: a few training prompts answered
    num_generations times by the model the run would start from, each answer's rewards, and which groups
    teach nothing, before any training is spent. The estimate's time counts training passes at SFT's
    pace; the sampling the trial timed comes on top of it (`steps` and `estimated`, when known)."""
    from tuning import models
    from tuning.train import grpo

    try:
        result = grpo.rewards_dry_run(cfg, ctx.workspace, DRY_RUN_SAMPLES)
    except (config_mod.ConfigError, data_mod.DataError, models.ModelError, OSError, ValueError) as exc:
        return f"**Rewards, tried on {DRY_RUN_SAMPLES} prompts:** not tried: {str(exc).splitlines()[0]}"
    text = (f"**Rewards, tried on {DRY_RUN_SAMPLES} prompts before training** (`python -m tuning rewards` "
            f"tries more):\n\n```\n{grpo.dry_run_text(result)}\n```")
    if steps and estimated is not None and result.get("seconds_per_prompt") is not None:
        sampling = steps * result["prompts_per_step"] * result["seconds_per_prompt"]
        text += (f"\n\n**Time with the sampling:** ~{ago(estimated + sampling)} for {steps} steps (the estimate "
                 f"above counts the training passes; sampling the answers adds ~{ago(sampling)}, timed above).")
    return text


def fix_updates(found: list[preflight.Finding]) -> dict:
    """The fix buttons (fix0, fix1, ...): one per finding with a fix, labelled with what it does."""
    fixes = [f for f in found if f.fix][:FIX_BUTTONS]
    return {f"fix{i}": gr.update(visible=i < len(fixes), value=fixes[i].fix_label if i < len(fixes) else "")
            for i in range(FIX_BUTTONS)}


def with_fix(cfg: config_mod.TrainConfig, found: list[preflight.Finding], index: int) -> config_mod.TrainConfig:
    """The config with the index-th fix of `found` made (as numbered by fix_updates)."""
    fixes = [f for f in found if f.fix]
    if not 0 <= index < len(fixes):
        raise config_mod.ConfigError("that fix no longer applies to the form; press Plan and checks again")
    return preflight.apply(cfg, fixes[index])


def form_values(cfg: config_mod.TrainConfig) -> dict:
    return dict(zip(FORM_FIELDS, config_to_form(cfg)))
