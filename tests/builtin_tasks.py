"""Tiny datasets in the schema of lm-eval's own gsm8k, mgsm_direct_ja and arc_easy, and the `tasks.overrides`
that point those shipped configs (loaded by name, never copied) at them.

The questions are the zoo's digit-wise sums (`53917+3=` -> `86240`), so its math model can answer some; the
prompt is overridden to the bare question because the zoo's character vocabulary has no `Question:`. Every
other field (filters, metrics, generation settings, splits) is lm-eval's own.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from evosearch.zoo.tasks import math_answer, math_prompt

MAX_GEN_TOKS = 6  # a 5-digit answer and one more: seconds per task on the tiny zoo


def _keys(n: int, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    return [("".join(rng.choice("0123456789") for _ in range(5)), rng.randint(1, 4)) for _ in range(n)]


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def gsm8k_rows(n: int, seed: int) -> list[dict]:
    return [{"question": math_prompt(k), "answer": f"{math_prompt(k)}{math_answer(k)}\n#### {math_answer(k)}"}
            for k in _keys(n, seed)]


def mgsm_rows(n: int, seed: int) -> list[dict]:
    return [{"question": math_prompt(k), "answer": None, "answer_number": int(math_answer(k)),
             "equation_solution": None} for k in _keys(n, seed)]


def arc_rows(n: int, seed: int) -> list[dict]:
    rows = []
    for i, k in enumerate(_keys(n, seed)):
        answer = math_answer(k)
        wrong = [answer[:p] + str((int(answer[p]) + 1) % 10) + answer[p + 1:] for p in (0, 2, 4)]
        choices = [answer, *wrong]
        random.Random(seed + i).shuffle(choices)
        rows.append({"id": f"zoo-{i}", "question": math_prompt(k),
                     "choices": {"text": choices, "label": ["A", "B", "C", "D"]},
                     "answerKey": "ABCD"[choices.index(answer)]})
    return rows


def _files(root: Path, task: str, rows_of, n: int) -> dict[str, str]:
    return {split: _write(root / f"{task}_{split}.jsonl", rows_of(n, seed)) for split, seed in
            (("train", 1), ("test", 2))}


def overrides(root: Path, n: int = 8) -> dict[str, dict]:
    """`tasks.overrides` for the three built-in tasks, each on `n` train and `n` test items written under
    `root`, plus `gsm8k_search`: gsm8k made to score its train split (what a search may see)."""
    root.mkdir(parents=True, exist_ok=True)
    short = {"max_gen_toks": MAX_GEN_TOKS}
    return {
        "gsm8k": {"dataset_path": "json", "dataset_name": None, "num_fewshot": 0, "doc_to_text": "{{question}}",
                  "dataset_kwargs": {"data_files": _files(root, "gsm8k", gsm8k_rows, n)},
                  "generation_kwargs": short},
        "gsm8k_search": {"from": "gsm8k", "test_split": "train"},
        "mgsm_direct_ja": {"dataset_path": "json", "dataset_name": None, "doc_to_text": "{{question}}",
                           "dataset_kwargs": {"data_files": _files(root, "mgsm", mgsm_rows, n)},
                           "generation_kwargs": short},
        "arc_easy": {"dataset_path": "json", "dataset_name": None, "doc_to_text": "{{question}}",
                     "dataset_kwargs": {"data_files": _files(root, "arc", arc_rows, n)},
                     "validation_split": None},
    }
