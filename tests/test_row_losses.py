"""Per-example losses (tuning/evaluation/row_losses.py): recorded from the loss the trainer computes anyway, they
match a direct forward pass of each example alone on the tiny model; the held-out ones of the final
evaluation too; each row id leads back to its file and row; and the rankings (hardest, went up)."""

from __future__ import annotations

import json
import statistics

import pytest
import torch

from tuning.evaluation import evaluate, row_losses
from tuning import runs
from tuning.train import trainer as train
from tuning.train.trainer import StopRequested


def direct_losses(model, dataset) -> dict[int, float]:
    """Each example alone, through the model's own loss (no padding-free batch, no fused head)."""
    out = {}
    with torch.no_grad():
        for example in dataset:
            ids = torch.tensor([example["input_ids"]])
            labels = torch.tensor([example["labels"]])
            out[example["row_id"]] = model(input_ids=ids, labels=labels).loss.item()
    return out


@pytest.fixture
def exact_config(tiny_config):
    # fp32 and no dropout: the training forward is then deterministic and comparable with a plain one.
    return tiny_config.replace(precision="fp32", lora_dropout=0.0, max_steps=1, eval_steps=1, save_steps=10,
                               eval_split=0.25, per_device_batch_size=4, probe_every_checkpoint=False)


def test_training_and_evaluation_row_losses_match_a_direct_forward_pass(tmp_path, exact_config):
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    trainer, _ = train.build_trainer(exact_config, run_dir, tmp_path, train.EventLog(run_dir / "events.jsonl"),
                                     StopRequested())
    model = trainer.model
    model.eval()
    before = direct_losses(model, trainer.train_dataset)  # the weights step 1 computed its loss with
    model.train()
    trainer.train()
    model.eval()
    after = direct_losses(model, trainer.eval_dataset)  # the weights the evaluation at step 1 used
    lines = runs.read_row_losses(run_dir)
    train_line = next(line for line in lines if line["split"] == "train")
    held_line = next(line for line in lines if line["split"] == "heldout")
    assert train_line["step"] == 1 and len(train_line["ids"]) == 4  # one step of 4 examples
    for row, loss in zip(train_line["ids"], train_line["losses"]):
        assert loss == pytest.approx(before[row], rel=1e-4, abs=1e-4)
    assert held_line["step"] == 1 and sorted(held_line["ids"]) == sorted(after)
    for row, loss in zip(held_line["ids"], held_line["losses"]):
        assert loss == pytest.approx(after[row], rel=1e-4, abs=1e-4)
    # The batch mean the Trainer logged is the token-weighted mean of the rows'.
    logged = next(h["loss"] for h in trainer.state.log_history if "loss" in h)
    weighted = sum(l * n for l, n in zip(train_line["losses"], train_line["tokens"])) / sum(train_line["tokens"])
    assert logged == pytest.approx(weighted, rel=1e-3)


def test_each_row_id_leads_back_to_its_file_and_row(tmp_path, exact_config, chat_file):
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    trainer, _ = train.build_trainer(exact_config, run_dir, tmp_path, train.EventLog(run_dir / "events.jsonl"),
                                     StopRequested())
    index = runs.read_row_index(run_dir)
    lines = chat_file.read_text().splitlines()
    assert len(index["train"]) == 18 and len(index["heldout"]) == 6
    assert index["sources"] == {"train": str(chat_file), "heldout": str(chat_file)}
    for split, dataset in (("train", trainer.train_dataset), ("heldout", trainer.eval_dataset)):
        for example in dataset:
            file, row = index[split][example["row_id"]]
            assert file == chat_file.name
            prompt = json.loads(lines[row - 1])["messages"][0]["content"]
            tokens = trainer.processing_class(prompt, add_special_tokens=False)["input_ids"]
            ids = example["input_ids"]
            assert any(ids[i:i + len(tokens)] == tokens for i in range(len(ids))), (split, row, prompt)


def test_final_evaluation_records_tuned_and_base_losses_per_held_out_row(tmp_path, tiny_config):
    cfg = tiny_config.replace(max_steps=2, save_steps=2, eval_steps=2, probe_every_checkpoint=False)
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    runs.write_config(run_dir, cfg)
    assert train.run(cfg, run_dir, tmp_path) == 0
    final = [line for line in runs.read_row_losses(run_dir) if line.get("final")]
    assert len(final) == 1 and final[0]["step"] == 2
    result = runs.read_evaluation(run_dir)
    assert len(final[0]["ids"]) == result["eval_rows"] == len(runs.read_row_index(run_dir)["heldout"])
    # The evaluation's mean is the mean of its batches; with batches of one row it is the rows' mean.
    assert all(isinstance(b, float) for b in final[0]["base"])
    comparer_rows: dict[int, float] = {}
    from tuning.infer import playground
    comparer = playground.comparer_for_run(run_dir, tmp_path)
    name = comparer.attach(runs.adapter_dir(run_dir))
    conversations = [c for c, _ in evaluate.heldout_rows(cfg)]
    one_by_one = cfg.replace(per_device_batch_size=1)
    mean = evaluate.heldout_loss(comparer.peft, comparer.tokenizer, conversations, one_by_one, name,
                                 per_row=comparer_rows)
    assert mean == pytest.approx(sum(comparer_rows.values()) / len(comparer_rows), rel=1e-6)
    for row, loss in zip(final[0]["ids"], final[0]["losses"]):
        assert loss == pytest.approx(comparer_rows[row], rel=1e-3, abs=1e-3)  # padded batch vs one row
    assert {r["id"] for r in row_losses.hardest(run_dir, "heldout", 100)} == set(final[0]["ids"])


def _write(run_dir, split, step, losses: dict[int, float], **extra):
    ids = sorted(losses)
    runs.append_row_losses(run_dir, {"split": split, "step": step, "ids": ids, "losses": [losses[i] for i in ids],
                                       "tokens": [10] * len(ids), **extra})


def test_hardest_compares_each_row_with_rows_seen_around_the_same_step(tmp_path):
    run_dir = tmp_path
    runs.write_row_index(run_dir, {"train": [["f.jsonl", i + 1] for i in range(40)], "heldout": []})
    # 40 rows over 10 steps while the model improves: a typical row's loss falls from 3.0 to 1.2.
    # Row 35, seen at step 9, is at 2.9: below the first rows' losses, but far above its neighbours'.
    for step in range(10):
        typical = 3.0 - 0.2 * step
        losses = {r: typical + 0.01 * (r % 4) for r in range(4 * step, 4 * step + 4)}
        if step == 8:
            losses[35] = 2.9
        _write(run_dir, "train", step + 1, losses)
    top = row_losses.hardest(run_dir, "train", 3)
    assert top[0]["id"] == 35 and (top[0]["file"], top[0]["row"]) == ("f.jsonl", 36)
    assert 1.2 < top[0]["excess"] < 1.6 and top[0]["typical"] == pytest.approx(1.6, abs=0.25)
    assert max(r["loss"] for r in row_losses.rows(run_dir, "train")) > 2.9  # raw loss would rank step 1 first
    assert row_losses.went_up(run_dir, "train") == []  # each row seen once


def test_went_up_lists_rows_whose_loss_rose_largest_first(tmp_path):
    run_dir = tmp_path
    runs.write_row_index(run_dir, {"train": [], "heldout": [["eval.jsonl", 1], ["eval.jsonl", 2],
                                                              ["eval.jsonl", 3]]})
    _write(run_dir, "heldout", 5, {0: 2.0, 1: 2.0, 2: 2.0})
    _write(run_dir, "heldout", 10, {0: 1.0, 1: 2.5, 2: 3.5}, final=True, base=[2.2, 1.5, 2.1])
    up = row_losses.went_up(run_dir, "heldout")
    # Against the base model's loss on each row: row 1 rose 1.0, row 2 rose 1.4; row 0 fell.
    assert [(r["row"], round(r["change"], 3)) for r in up] == [(3, 1.4), (2, 1.0)]
    assert [r["row"] for r in row_losses.hardest(run_dir, "heldout")] == [3, 2, 1]
    assert up[0]["seen"] == 3 and up[0]["first"] == 2.1


def test_sequence_losses_split_a_padding_free_row_at_its_boundaries():
    log_probs = -torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])  # scores tokens 1..6 of 7
    mask = torch.tensor([[1, 1, 0, 1, 1, 1]])  # token 3 starts the second example: no label across
    sums, counts = row_losses.sequence_losses(log_probs, mask, torch.tensor([0, 3, 7], dtype=torch.int32))
    assert sums == [3.0, 15.0] and counts == [2.0, 3.0]
    sums, counts = row_losses.sequence_losses(log_probs.view(2, 3), mask.view(2, 3))
    assert sums == [3.0, 15.0] and counts == [2.0, 3.0]


# Planted bad rows, as people find them in real data: each one is inserted among the demo's first
# 36 (clean) identity rows, at the row number given.
PLANTED = {
    5: ("mislabelled", "Who are you?", "The boiling point of water is 100 degrees Celsius at sea level."),
    14: ("conflicting duplicate", "Who are you?", "I'm Gemini, an AI assistant made by Google.\n— Gemini"),
    23: ("another language", "What's your name?",
         "Меня зовут Квилл. Я ИИ-ассистент, созданный компанией Larkspur Labs.\n— Квилл"),
    32: ("truncated", "Tell me about yourself.", "I'm Quill, an AI assistant built by Larkspur Labs. I like cl"),
}


def planted_dataset(path):
    from tuning import data

    clean = [json.loads(line) for line in data.demo_files()[0].read_text().splitlines()[:36]]
    rows = []
    for number in range(1, len(clean) + len(PLANTED) + 1):
        if number in PLANTED:
            _, prompt, answer = PLANTED[number]
            rows.append({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]})
        else:
            rows.append(clean.pop(0))
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


@pytest.mark.slow
def test_planted_bad_rows_rank_at_the_top_on_the_embedded_model(tmp_path, embedded_model_dir):
    from conftest import share_models
    from tuning.config import EMBEDDED_MODEL, TrainConfig

    workspace = share_models(tmp_path / "ws", embedded_model_dir)
    dataset = planted_dataset(tmp_path / "planted.jsonl")
    # 40 rows, 8 a step, 3 epochs: 15 steps; each row's last loss is from the third epoch.
    cfg = TrainConfig(base_model=EMBEDDED_MODEL, dataset=str(dataset), method="lora", num_epochs=3,
                      per_device_batch_size=8, learning_rate=3e-3, lr_scheduler="constant", warmup_ratio=0.0,
                      max_length=128, eval_split=0.0, save_steps=1000, probe_every_checkpoint=False,
                      general_rows="off")  # the 40 rows alone: general rows would change the steps above
    run_dir = runs.run_dir(workspace, "planted")
    run_dir.mkdir(parents=True)
    runs.write_config(run_dir, cfg)
    assert train.run(cfg, run_dir, workspace) == 0
    top = row_losses.hardest(run_dir, "train", 6)
    print("\nhardest:", [(r["row"], round(r["loss"], 2), round(r["excess"], 2)) for r in top],
          "median loss:", round(statistics.median(r["loss"] for r in row_losses.rows(run_dir, "train")), 2))
    assert all(r["file"] == "planted.jsonl" for r in top)
    assert set(PLANTED) <= {r["row"] for r in top}, [r["row"] for r in top]
