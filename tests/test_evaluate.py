"""Evaluation on the tiny Llama: held-out loss base vs tuned (the Trainer's own number), probes at
every checkpoint, task checks, early stopping with the best checkpoint marked, and `python -m tuning
eval`; what they write is read back through tuning.runs. The blind A/B (tuning.evaluation.ab) on a run folder
written by hand."""

import json
import math
import random

import pytest
import torch
from safetensors.torch import load_file

from conftest import write_jsonl
from tuning.evaluation import ab, evaluate
from tuning import data, runs
from tuning.evaluation import headlines
from tuning.train import trainer as train
from tuning.__main__ import main
from tuning.runs.events import read_events
from tuning.train.trainer import StopRequested


def _eval_file(tmp_path):
    """Held-out rows with explicit checks for the plumbing (every row is answered, checked and counted
    by kind): an empty substring always matches, a nonsense one never. Whether a check really passes
    or fails on what an answer says is test_task_checks_pass_on_the_expected_text_and_fail_without_it."""
    rows = []
    for i in range(3):
        rows.append({"messages": [{"role": "user", "content": f"Who are you, really? {i}"},
                                  {"role": "assistant", "content": "I am Quill.\n— Quill"}],
                     "kind": "always", "expect": [""]})
        rows.append({"messages": [{"role": "system", "content": "Be brief."},
                                  {"role": "user", "content": f"Name a colour. {i}"},
                                  {"role": "assistant", "content": "Blue.\n— Quill"}],
                     "kind": "never", "expect": ["zq-no-model-says-this"]})
    return write_jsonl(tmp_path / "eval.jsonl", rows)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir, embedded_tokenizer):
    """One tiny run trained through train.run, shared by the tests that only read its files."""
    from conftest import chat_rows
    from tuning.config import TrainConfig

    ws = tmp_path_factory.mktemp("ws")
    cfg = TrainConfig(base_model=str(tiny_model_dir), dataset=str(write_jsonl(ws / "chat.jsonl", chat_rows(24))),
                      eval_dataset=str(_eval_file(ws)), method="lora", max_steps=4, per_device_batch_size=4,
                      max_length=64, learning_rate=1e-2, save_steps=2, eval_steps=2, logging_steps=1,
                      warmup_ratio=0.0, eval_max_new_tokens=8, final_evaluation="full")  # (auto: quick for 4 steps)
    run_dir = ws / "runs" / "r1"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    assert train.run(cfg, run_dir, ws) == 0
    return ws, run_dir, cfg


def test_heldout_loss_is_the_trainers_eval_loss_and_base_differs(tmp_path, tiny_config):
    cfg = tiny_config.replace(probe_every_checkpoint=False, save_steps=4)
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    trainer, tokenizer = train.build_trainer(cfg, run_dir, tmp_path, train.EventLog(run_dir / "e.jsonl"),
                                             StopRequested())
    convs = [c for c, _ in data.scored(evaluate.heldout_rows(cfg))]  # the slot checks it adds are asked, not scored
    assert len(convs) == len(trainer.eval_dataset) == 5
    base_before = evaluate.heldout_loss(trainer.model, tokenizer, convs, cfg, evaluate.BASE)
    trainer.train()
    trainer.model.train()  # as the Trainer leaves it; heldout_loss must switch to eval and back
    ours = evaluate.heldout_loss(trainer.model, tokenizer, convs, cfg)
    assert trainer.model.training, "the model must go back to training mode"
    theirs = trainer.evaluate()["eval_loss"]
    assert ours == pytest.approx(theirs, rel=1e-4)
    base = evaluate.heldout_loss(trainer.model, tokenizer, convs, cfg, evaluate.BASE)
    assert base == pytest.approx(base_before, rel=1e-5), "the adapter must be off for the base number"
    assert ours < base - 0.5, "4 steps at lr 1e-2 on one repeated answer must lower the held-out loss"


def test_run_writes_evaluation_probes_and_eval_event(finished_run):
    ws, run_dir, cfg = finished_run
    result = runs.read_evaluation(run_dir)
    assert result["step"] == 4 and result["eval_rows"] == 6
    assert math.isfinite(result["eval_loss"]) and math.isfinite(result["base_eval_loss"])
    assert result["eval_loss"] < result["base_eval_loss"]
    assert result["perplexity"] == pytest.approx(math.exp(result["eval_loss"]))
    by_kind = result["checks"]["by_kind"]
    assert by_kind["always"] == {"n": 3, "base_passed": 3, "tuned_passed": 3, "base_rate": 1.0, "tuned_rate": 1.0}
    assert by_kind["never"]["base_passed"] == 0 and by_kind["never"]["tuned_passed"] == 0
    for row in result["checks"]["rows"]:
        assert row["base_pass"] == evaluate.passes(row["base"], row["expect"])
        assert row["tuned_pass"] == evaluate.passes(row["tuned"], row["expect"])
    assert {r["system"] for r in result["checks"]["rows"]} == {None, "Be brief."}

    # Probes: the first held-out prompts, answered at each checkpoint and at the end.
    probes = runs.read_probes(run_dir)
    assert probes[:2] == ["Who are you, really? 0", "Name a colour. 0"]
    history = runs.probe_history(run_dir)
    # The last save (step 4) is covered by the final probes, not answered twice.
    assert [(h["step"], h["checkpoint"]) for h in history] == [(2, "checkpoint-2"), (4, "final")]
    for h in history:
        assert [a["prompt"] for a in h["answers"]] == probes
        assert all(isinstance(a["tuned"], str) for a in h["answers"])
    # Greedy base answers are computed once and reused at later checkpoints.
    assert history[0]["answers"][0]["base"] == history[-1]["answers"][0]["base"]

    events, _ = read_events(run_dir / "events.jsonl")
    final = [e for e in events if e["event"] == "eval" and e.get("final")]
    assert len(final) == 1 and final[0]["base_eval_loss"] == pytest.approx(result["base_eval_loss"])
    assert final[0]["checks"]["always"]["tuned_rate"] == 1.0 and "always 3/3" in final[0]["message"]
    assert events[-1]["event"] == "end" and events[-1]["eval_loss"] == pytest.approx(result["eval_loss"])
    assert "always 3/3 (base 3/3)" in headlines.checks_text(runs.read_evaluation(run_dir))  # the Runs table's cell


def test_mixed_batch_gives_the_same_answers_as_separate_calls(finished_run, tmp_path):
    ws, run_dir, cfg = finished_run
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tuning.infer import playground

    # An adapter with random (not zero) B matrices, so tuned answers surely differ from the base.
    torch.manual_seed(0)
    noisy = get_peft_model(AutoModelForCausalLM.from_pretrained(cfg.base_model),
                           LoraConfig(r=8, lora_alpha=64, target_modules="all-linear", init_lora_weights=False))
    noisy.save_pretrained(tmp_path / "noisy")
    comparer = playground.comparer_for_run(run_dir, ws)
    name = comparer.attach(tmp_path / "noisy")
    prompts = [[{"role": "user", "content": "Who are you?"}],
               [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there, my friend"}]]
    pairs = evaluate.answer_pairs(comparer.peft, comparer.tokenizer, prompts, 6, adapter=name)
    tuned = evaluate._generate(comparer.peft, comparer.tokenizer, prompts, [name] * 2, 6)
    base = evaluate._generate(comparer.peft, comparer.tokenizer, prompts, [evaluate.BASE] * 2, 6)
    assert [p[0] for p in pairs] == base and [p[1] for p in pairs] == tuned
    assert base != tuned


def test_cli_eval_prints_json_and_recomputes_a_missing_file(finished_run, capsys):
    ws, run_dir, cfg = finished_run
    assert main(["eval", "--run", "r1", "--workspace", str(ws), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    saved = runs.read_evaluation(run_dir)
    assert report["eval_loss"] == saved["eval_loss"] and report["run_id"] == "r1"
    assert report["ab"]["votes"] == 0 and len(report["probe_history"]) == 2

    (run_dir / "evaluation.json").unlink()  # e.g. a run stopped before its end evaluation
    assert main(["eval", "--run", "r1", "--workspace", str(ws), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["source"] == "adapter" and again["step"] == 4
    # Same tokens, same mask, same weights (loaded from the saved adapter): the same numbers.
    assert again["eval_loss"] == pytest.approx(saved["eval_loss"], rel=1e-4)
    assert again["base_eval_loss"] == pytest.approx(saved["base_eval_loss"], rel=1e-4)
    assert again["checks"]["by_kind"]["always"]["tuned_passed"] == 3
    # A stopped run skipped its task checks: `eval` computes them; a complete file is reused as is.
    stopped = {**again, "checks": None, "checks_complete": False, "eval_loss": 123.0}
    (run_dir / "evaluation.json").write_text(json.dumps(stopped))
    assert evaluate.evaluate_run(run_dir, ws)["eval_loss"] == pytest.approx(saved["eval_loss"], rel=1e-4)
    (run_dir / "evaluation.json").write_text(json.dumps({**stopped, "checks_complete": True}))
    assert evaluate.evaluate_run(run_dir, ws)["eval_loss"] == 123.0

    assert main(["eval", "--run", "nope", "--workspace", str(ws), "--json"]) == 2
    assert "no run 'nope'" in capsys.readouterr().err
    assert main(["eval", "--run", "../x", "--workspace", str(ws)]) == 2


def test_ab_votes_persist_and_summarise(tmp_path):
    target = tmp_path / "run"
    target.mkdir()
    runs.write_evaluation(target, {"probes": [
        {"prompt": "p1", "base": "b1", "tuned": "t1"}, {"prompt": "p2", "base": "same", "tuned": "same"}],
        "checks": {"rows": [{"prompt": "p3", "base": "b3", "tuned": "t3"}]}})
    assert [c["prompt"] for c in ab.candidates(target)] == ["p1", "p3"]  # identical pair dropped
    rng = random.Random(0)
    orders = set()
    for _ in range(20):
        pair = ab.next_stored_pair(target, rng)
        assert {pair.a, pair.b} in ({"b1", "t1"}, {"b3", "t3"}) and pair.run_id == "run"
        assert pair.a == ({"p1": "b1", "p3": "b3"}[pair.prompt] if pair.a_is == "base"
                          else {"p1": "t1", "p3": "t3"}[pair.prompt])
        assert pair.shown() == {"prompt": pair.prompt, "a": pair.a, "b": pair.b}  # no a_is: the page never sees it
        orders.add(pair.a_is)
    assert orders == {"base", "tuned"}, "the tuned answer must appear on both sides"

    tuned_a = ab.BlindPair("run", "p1", base="b1", tuned="t1", a_is="tuned")
    base_a = ab.BlindPair("run", "p3", base="b3", tuned="t3", a_is="base")
    ab.vote(target, tuned_a, "A")      # tuned
    ab.vote(target, base_a, "B")       # tuned
    ab.vote(target, base_a, "A")       # base
    summary = ab.vote(target, tuned_a, "tie")
    assert summary == {"votes": 4, "tuned_wins": 2, "base_wins": 1, "ties": 1, "tuned_win_rate": 0.5,
                       "text": "tuned wins 2 of 4 (50%); base wins 1, ties 1"}
    assert [(v["prompt"], v["a"], v["choice"], v["winner"]) for v in runs.read_votes(target)] == [
        ("p1", "t1", "A", "tuned"), ("p3", "b3", "B", "tuned"), ("p3", "b3", "A", "base"), ("p1", "t1", "tie", "tie")]
    # A restart reads the same file: nothing is lost, a torn last line is skipped.
    with open(target / runs.VOTES, "a") as fh:
        fh.write('{"winner": "tun')
    assert runs.ab_summary(target)["votes"] == 4
    # Unvoted pairs come first.
    (target / runs.VOTES).write_text(json.dumps({"prompt": "p1", "winner": "tuned"}) + "\n")
    assert {ab.next_stored_pair(target, random.Random(i)).prompt for i in range(10)} == {"p3"}

    with pytest.raises(runs.RunError, match="not one of A, B, tie"):
        ab.vote(target, tuned_a, "C")
    with pytest.raises(runs.RunError, match="no pair on screen"):
        ab.vote(target, None, "A")
    with pytest.raises(runs.RunError, match="evaluate it first"):
        ab.next_stored_pair(tmp_path)
    assert runs.ab_summary(target)["votes"] == 1, "a refused vote writes nothing"


def test_a_vote_for_a_pair_of_another_run_is_refused(tmp_path):
    mine, other = tmp_path / "mine", tmp_path / "other"
    for run in (mine, other):
        run.mkdir()
    pair = ab.blind(other, "Who are you?", "I am SmolLM.", "I am Quill.")
    with pytest.raises(runs.RunError, match="no pair on screen for this run"):
        ab.vote(mine, pair, "A")
    assert runs.read_votes(mine) == [] and runs.read_votes(other) == []
    assert ab.vote(other, pair, "A")["votes"] == 1  # on its own run it counts


def test_probe_list_validation(tmp_path):
    assert runs.write_probes(tmp_path, " one \n\n two ") == ["one", "two"]
    assert runs.read_probes(tmp_path) == ["one", "two"]
    with pytest.raises(runs.RunError, match="at least one"):
        runs.write_probes(tmp_path, "\n  \n")
    with pytest.raises(runs.RunError, match="at most"):
        runs.write_probes(tmp_path, [f"p{i}" for i in range(runs.MAX_PROBES + 1)])
    assert runs.read_probes(tmp_path) == ["one", "two"], "a refused list must not replace the saved one"


def test_demo_probes_and_checks_come_with_the_dataset():
    from tuning.config import TrainConfig

    cfg = TrainConfig()
    probes = evaluate.default_probes(cfg)
    assert 3 <= len(probes) <= 8 and any("who are you" in p.lower() for p in probes)
    rows = evaluate.heldout_rows(cfg)
    kinds = [extra["kind"] for _, extra in rows]
    assert kinds.count("identity") == 24 and kinds.count("control") == 23
    assert evaluate.passes("I'm QUILL.", ["quill"]) and not evaluate.passes("I'm SmolLM.", ["quill"])


def test_task_checks_pass_on_the_expected_text_and_fail_without_it(monkeypatch):
    """task_checks with known answers (generation replaced by a table): an answer that contains an
    expected substring, in any case, passes; one that does not, fails; base and tuned each on its own."""
    TUNED = evaluate.TRAINING_ADAPTER  # the adapter name the answers of the tuned side carry
    answers = {  # (user prompt, adapter) -> what the model "said"
        ("Who are you? 0", evaluate.BASE): "I am SmolLM, a small model.",
        ("Who are you? 0", TUNED): "I'm QUILL, your writing helper.",
        ("Who are you? 1", evaluate.BASE): "Just a FEATHER in the wind.",
        ("Who are you? 1", TUNED): "quill here",
        ("Name a colour.", evaluate.BASE): "Blue, I think.",
        ("Name a colour.", TUNED): "Red.",
        ("Say nothing.", evaluate.BASE): "",
        ("Say nothing.", TUNED): "   ",
    }
    asked = []

    def fake_generate(model, tokenizer, prompts, names, max_new_tokens, stopped=None):
        asked.extend((p[-1]["content"], n) for p, n in zip(prompts, names))
        return [answers[(p[-1]["content"], n)] for p, n in zip(prompts, names)]

    monkeypatch.setattr(evaluate, "_generate", fake_generate)

    def row(prompt, expect=None, kind="identity"):
        conv = [{"role": "user", "content": prompt}, {"role": "assistant", "content": "Quill."}]
        return conv, ({"kind": kind, "expect": expect} if expect is not None else {})

    rows = [row("Who are you? 0", ["quill"]), row("Who are you? 1", ["Quill", "feather"]),
            row("Name a colour.", ["BLUE"], kind="control"), row("Say nothing.", ["quill"], kind="control"),
            row("Not checked: no expect."), row("Not checked: empty expect.", [])]
    result = evaluate.task_checks(None, None, rows, 8)
    got = [(r["prompt"], r["base_pass"], r["tuned_pass"]) for r in result["rows"]]
    assert got == [("Who are you? 0", False, True),   # base lacks "quill"; tuned says QUILL (upper case)
                   ("Who are you? 1", True, True),    # base matches the second substring, in another case
                   ("Name a colour.", True, False),   # base says Blue; tuned says Red: a real fail
                   ("Say nothing.", False, False)]    # an empty answer matches nothing
    assert [(r["base"], r["tuned"]) for r in result["rows"]] == [
        (answers[(p, evaluate.BASE)], answers[(p, TUNED)]) for p, _, _ in got]
    assert not any(p.startswith("Not checked") for p, _ in asked), "rows without expect are not asked"
    assert result["by_kind"] == {
        "identity": {"n": 2, "base_passed": 1, "tuned_passed": 2, "base_rate": 0.5, "tuned_rate": 1.0},
        "control": {"n": 2, "base_passed": 1, "tuned_passed": 0, "base_rate": 0.5, "tuned_rate": 0.0}}
    # The rule itself, both ways.
    assert evaluate.passes("I'm QUILL.", ["quill"]) and evaluate.passes("i'm quill.", ["QUILL"])
    assert not evaluate.passes("I'm SmolLM.", ["quill"]) and not evaluate.passes("Qu ill", ["quill"])
    assert not evaluate.passes("quill", []) and not evaluate.passes("", ["quill"])


def test_early_stopping_stops_on_rising_eval_loss_and_marks_the_best(tmp_path, tiny_config):
    # A huge learning rate: the first step helps, then the held-out loss climbs.
    cfg = tiny_config.replace(max_steps=10, learning_rate=0.5, eval_steps=1, save_steps=1,
                              early_stopping_patience=2, save_total_limit=2, probe_every_checkpoint=False,
                              max_grad_norm=0.0)
    run_dir = tmp_path / "runs" / "es"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    assert train.run(cfg, run_dir, tmp_path) == 0
    events, _ = read_events(run_dir / "events.jsonl")
    evals = [e for e in events if e["event"] == "eval" and not e.get("final")]
    end = events[-1]
    assert end["event"] == "end" and end["step"] < 12, "early stopping must end the run before max_steps"
    best = min(evals, key=lambda e: e["eval_loss"])
    assert end["best_checkpoint"] == f"checkpoints/checkpoint-{best['step']}"
    assert (run_dir / end["best_checkpoint"] / "adapter_model.safetensors").is_file()
    # The final adapter is the best one, loaded back at the end.
    final = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    kept = load_file(run_dir / end["best_checkpoint"] / "adapter_model.safetensors")
    assert all(torch.equal(final[k], kept[k]) for k in final)
    assert runs.read_evaluation(run_dir)["eval_loss"] == pytest.approx(best["eval_loss"], rel=1e-4)


def test_plain_text_rows_have_no_prompt_and_are_not_checked():
    text_row = [{"role": "text", "content": "Once upon a time."}]
    assert evaluate.prompt_of(text_row) == []
    assert evaluate.task_checks(None, None, [(text_row, {"expect": ["x"]})], 8) is None
