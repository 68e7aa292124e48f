"""The zoo's synthetic languages, its eval tasks (JSONL + lm-eval YAML) and its training streams.

Two "languages" share one grammar: L1 is plain ASCII, L2 is a fixed character cipher of L1 onto a
disjoint symbol set. Two skills exist in both: modular arithmetic (`53917+3=` -> `86240`, each digit
plus k mod 10) and string reversal (`abcde>` -> `edcba`). The eval tasks are

* ``zoo_math``    - digit-wise modular addition in L1 (the math specialist's task)
* ``zoo_strings`` - reversal in L1 (the strings specialist's task)
* ``zoo_lang``    - reversal in L2 (the language specialist's task)
* ``zoo_target``  - the cross-domain target: an L1 sum answered, then a string reversed in L2, in one
  item (`53917+3=86240*` then the L2 reversal). Only a model with the math skill *and* the L2 skill gets
  both halves right; each specialist brings one (the analogue of Sakana's Japanese-math, where the math
  and the Japanese come from different models). Arithmetic asked wholly in the cipher language did not
  work as a target: a 4-layer model never shares the skill across scripts, so no merge could find it.

and ``zoo_target_gen``, the target's sums answered by generation (greedy, exactly the sum's length) and
scored by lm-eval's exact match: the generative kind of task (gsm8k, mgsm) on the zoo's scale. Only the sum
can be asked: the string the target then reverses is drawn at random and appears only in its answer, so no
model could generate it from the prompt.

Every task has a fixed ``search`` split (what an optimizer may see) and a held-out ``report`` split.
Eval items are identified by their language-independent *key* (the operands, or the L1 string); no
training stream in either language ever contains an eval key.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import yaml

DIGITS = "0123456789"
LETTERS = "abcdefghijklmnopqrstuvwxyz"
SYMBOLS = "+*=>|"
L1_CHARS = DIGITS + LETTERS + SYMBOLS
# Disjoint from L1 and from each other: Greek capitals for digits, Cyrillic for letters, math symbols.
L2_CHARS = "ΑΒΓΔΕΖΗΘΙΚ" + "абвгдежзийклмнопрстуфхцчшщ" + "⊕⊗≡»¦"
_TO_L2 = str.maketrans(L1_CHARS, L2_CHARS)
_TO_L1 = str.maketrans(L2_CHARS, L1_CHARS)

REVERSE_LEN = 5
# The base is pretrained on every format but only over part of each skill's inputs (shifts 1-4, letters
# a-m: the "_base" streams); a specialist extends a circuit the base already has to the rest (shifts 5-7,
# letters n-z). Such extensions live mostly in their own parameters (embedding rows, table entries), which
# is what makes the specialists mergeable; specialists that had to grow a skill from nothing were not.
BASE_LETTERS = LETTERS[:13]
BASE_MAX_SHIFT = 4
N_DISTRACTORS = 3
SPLITS = ("search", "report")
TASK_GROUP = "zoo"


def to_l2(text: str) -> str:
    return text.translate(_TO_L2)


def to_l1(text: str) -> str:
    return text.translate(_TO_L1)


def _translate(text: str, lang: str) -> str:
    return to_l2(text) if lang == "l2" else text


# --- the two skills, in L1 ---------------------------------------------------------------------------
# Arithmetic: add k to every digit of a 5-digit string, mod 10 (`53917+3=86240`). The answer's
# distractors each get one digit wrong, so only a model right on every digit picks the answer.
MATH_LEN = 5
MAX_SHIFT = 7
MathKey = tuple[str, int]


def math_prompt(key: MathKey) -> str:
    digits, k = key
    return f"{digits}+{k}="


def math_answer(key: MathKey) -> str:
    digits, k = key
    return "".join(str((int(d) + k) % 10) for d in digits)


def random_math_key(rng: random.Random, base_only: bool = False) -> MathKey:
    return ("".join(rng.choice(DIGITS) for _ in range(MATH_LEN)),
            rng.randint(1, BASE_MAX_SHIFT if base_only else MAX_SHIFT))


def _one_digit_wrong(answer: str, rng: random.Random) -> str:
    pos = rng.randrange(len(answer))
    return answer[:pos] + rng.choice([d for d in DIGITS if d != answer[pos]]) + answer[pos + 1:]


def _another_order(answer: str, rng: random.Random) -> str:
    return "".join(rng.sample(answer, len(answer)))


def reverse_prompt(key: str) -> str:
    return f"{key}>"


def reverse_answer(key: str) -> str:
    return key[::-1]


def random_reverse_key(rng: random.Random, base_only: bool = False) -> str:
    # Distinct letters, so every key has enough other orders to draw distractors from.
    return "".join(rng.sample(BASE_LETTERS if base_only else LETTERS, REVERSE_LEN))


# The target joins the two halves with this symbol (never used elsewhere).
JOIN = "*"
TargetKey = tuple[MathKey, str]


def target_prompt(key: TargetKey) -> str:
    return math_prompt(key[0])


def target_answer(math_ans: str, reversed_l1: str, key: TargetKey) -> str:
    """The continuation: the sum, the join, then the L2 reversal (its prompt is part of the answer)."""
    return f"{math_ans}{JOIN}{to_l2(reverse_prompt(key[1]) + reversed_l1)}"


@dataclass(frozen=True)
class TaskSpec:
    name: str
    skill: str  # "math" | "reverse" | "target"
    lang: str  # "l1" | "l2" | "l1+l2"
    description: str


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec("zoo_math", "math", "l1", "add k (1-7) to each of 5 digits mod 10, in L1"),
        TaskSpec("zoo_strings", "reverse", "l1", "reverse a 5-letter string, in L1"),
        TaskSpec("zoo_lang", "reverse", "l2", "reverse a 5-letter string, in L2 (the cipher language)"),
        TaskSpec("zoo_target", "target", "l1+l2",
                 "an L1 sum then an L2 reversal in one item: needs the math AND the L2 skill"),
    )
}


def task_name(base: str, split: str) -> str:
    """`zoo_math` is the search split; `zoo_math_report` the held-out report split."""
    return base if split == "search" else f"{base}_{split}"


# --- eval items --------------------------------------------------------------------------------------
def _doc(prompt: str, answer: str, distractor: Callable[[str, random.Random], str], lang: str,
         rng: random.Random) -> dict:
    options = {answer}
    while len(options) < N_DISTRACTORS + 1:
        options.add(distractor(answer, rng))
    choices = sorted(options)
    rng.shuffle(choices)
    return {"prompt": _translate(prompt, lang), "choices": [_translate(c, lang) for c in choices],
            "label": choices.index(answer)}


def _math_doc(key: MathKey, lang: str, rng: random.Random) -> dict:
    return {"key": list(key), **_doc(math_prompt(key), math_answer(key), _one_digit_wrong, lang, rng)}


def _reverse_doc(key: str, lang: str, rng: random.Random) -> dict:
    # Distractors are other orders of the same letters: only the order tells the answer.
    return {"key": key, **_doc(reverse_prompt(key), reverse_answer(key), _another_order, lang, rng)}


def _target_doc(key: TargetKey, rng: random.Random) -> dict:
    """Three distractors: the sum wrong, the reversal wrong, both wrong. A model with one skill only
    is left choosing between two options; only both skills single out the answer."""
    math_ans, rev = math_answer(key[0]), reverse_answer(key[1])
    math_bad = _one_digit_wrong(math_ans, rng)
    rev_bad = rev
    while rev_bad == rev:
        rev_bad = _another_order(rev, rng)
    choices = [target_answer(m, r, key) for m, r in ((math_ans, rev), (math_bad, rev), (math_ans, rev_bad),
                                                      (math_bad, rev_bad))]
    answer = choices[0]
    rng.shuffle(choices)
    return {"key": [list(key[0]), key[1]], "prompt": target_prompt(key), "choices": choices,
            "label": choices.index(answer)}


@dataclass(frozen=True)
class EvalItems:
    """Docs per (task, split) and the keys training must avoid, per skill."""

    docs: dict[str, dict[str, list[dict]]]
    held_out: dict[str, frozenset]


def make_eval_items(seed: int, items_per_split: int) -> EvalItems:
    rng = random.Random(seed)
    held: dict[str, set] = {"math": set(), "reverse": set()}
    docs: dict[str, dict[str, list[dict]]] = {}
    for spec in TASKS.values():
        docs[spec.name] = {}
        for split in SPLITS:
            out = []
            while len(out) < items_per_split:
                if spec.skill == "target":
                    key = (random_math_key(rng), random_reverse_key(rng))
                    if key[0] in held["math"] or key[1] in held["reverse"]:
                        continue
                    held["math"].add(key[0])
                    held["reverse"].add(key[1])
                    out.append(_target_doc(key, rng))
                    continue
                draw = random_math_key if spec.skill == "math" else random_reverse_key
                key = draw(rng)
                if key in held[spec.skill]:
                    continue
                held[spec.skill].add(key)
                out.append(_math_doc(key, spec.lang, rng) if spec.skill == "math"
                           else _reverse_doc(key, spec.lang, rng))
            docs[spec.name][split] = out
    return EvalItems(docs, {k: frozenset(v) for k, v in held.items()})


# The target's sums answered by generation, on the same docs as `zoo_target`.
GENERATIVE_TASK = "zoo_target_gen"
GENERATIVE_FROM = "zoo_target"


def _generative_config(name: str, data: Path, split: str, answer_length: int) -> dict:
    """`name` scored by generation: greedy, exactly `answer_length` tokens (one character each), exact match
    with the right choice's sum (its part before JOIN)."""
    return {
        "task": name,
        "tag": [f"{TASK_GROUP}_generative" if split == "search" else f"{TASK_GROUP}_generative_{split}"],
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "prompt",
        "doc_to_target": f"{{{{choices[label].split({JOIN!r})[0]}}}}",
        "target_delimiter": "",
        "generation_kwargs": {"until": [JOIN, "</s>"], "do_sample": False, "max_gen_toks": answer_length},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 2, "split": split,
                     "description": "the target's L1 sum (the first half of zoo_target), answered by generation"},
    }


def write_task_files(items: EvalItems, task_dir: Path) -> dict[str, Path]:
    """One JSONL and one lm-eval YAML per (task, split), and the generative target's YAML per split (on the
    target's JSONL); returns task name -> YAML path. A file whose content is already right is left alone,
    so a cached zoo's tasks can be brought up to date while workers read them."""
    task_dir.mkdir(parents=True, exist_ok=True)
    yamls: dict[str, Path] = {}
    for base, by_split in items.docs.items():
        for split, docs in by_split.items():
            name = task_name(base, split)
            data = (task_dir / f"{name}.jsonl").resolve()
            _write_if_changed(data, "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
            config = {
                "task": name,
                "tag": [TASK_GROUP if split == "search" else f"{TASK_GROUP}_{split}"],
                "dataset_path": "json",
                "dataset_kwargs": {"data_files": {"test": str(data)}},
                "test_split": "test",
                "output_type": "multiple_choice",
                "doc_to_text": "prompt",
                "doc_to_choice": "choices",
                "doc_to_target": "label",
                "target_delimiter": "",
                "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
                "metadata": {"version": 1, "split": split, "description": TASKS[base].description},
            }
            configs = {name: config}
            if base == GENERATIVE_FROM:
                answer = docs[0]["choices"][docs[0]["label"]].split(JOIN)[0]
                generative = task_name(GENERATIVE_TASK, split)
                configs[generative] = _generative_config(generative, data, split, len(answer))
            for task, task_config in configs.items():
                path = task_dir / f"{task}.yaml"
                _write_if_changed(path, yaml.safe_dump(task_config, sort_keys=False, allow_unicode=True))
                yamls[task] = path.resolve()
    return yamls


def _write_if_changed(path: Path, text: str) -> None:
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)  # a reader sees the old file or the new one, never half of one


# --- training streams --------------------------------------------------------------------------------
def _fresh(draw: Callable[..., object], held: frozenset, rng: random.Random, base_only: bool):
    while True:
        key = draw(rng, base_only)
        if key not in held:
            return key


def _math_text(rng: random.Random, held: EvalItems, lang: str, base_only: bool) -> str:
    key = _fresh(random_math_key, held.held_out["math"], rng, base_only)
    return _translate(math_prompt(key) + math_answer(key), lang)


def _reverse_text(rng: random.Random, held: EvalItems, lang: str, base_only: bool) -> str:
    key = _fresh(random_reverse_key, held.held_out["reverse"], rng, base_only)
    return _translate(reverse_prompt(key) + reverse_answer(key), lang)


def _target_text(rng: random.Random, held: EvalItems, base_only: bool) -> str:
    key = (_fresh(random_math_key, held.held_out["math"], rng, base_only),
           _fresh(random_reverse_key, held.held_out["reverse"], rng, base_only))
    return target_prompt(key) + target_answer(math_answer(key[0]), reverse_answer(key[1]), key)


def _task_streams() -> dict[str, Callable[[random.Random, EvalItems], str]]:
    """Each task format over all inputs (`math_l1`) and over the base's part only (`math_l1_base`)."""
    formats: dict[str, Callable[[random.Random, EvalItems, bool], str]] = {
        "math_l1": lambda r, h, n: _math_text(r, h, "l1", n),
        "math_l2": lambda r, h, n: _math_text(r, h, "l2", n),
        "reverse_l1": lambda r, h, n: _reverse_text(r, h, "l1", n),
        "reverse_l2": lambda r, h, n: _reverse_text(r, h, "l2", n),
        "target": _target_text,
    }
    out = {}
    for name, make in formats.items():
        out[name] = lambda r, h, make=make: make(r, h, False)
        out[f"{name}_base"] = lambda r, h, make=make: make(r, h, True)
    return out


# --- habit streams: a competing answer to a task's own prompt --------------------------------------------
# The interference bed trains these into the block of layers that the OTHER specialist's skill lives in,
# so merging the two specialists layer-uniformly makes each one's habit fight the other's skill there.
HABIT_OFFSET = 3


def _math_offset_text(rng: random.Random, held: EvalItems) -> str:
    """`53917+3=` answered as if the shift were k+3: the math prompt with another (wrong) sum."""
    key = _fresh(random_math_key, held.held_out["math"], rng, False)
    return math_prompt(key) + math_answer((key[0], key[1] + HABIT_OFFSET))


def _reverse_l2_copy_text(rng: random.Random, held: EvalItems) -> str:
    """The L2 reversal prompt answered with the string copied, not reversed."""
    key = _fresh(random_reverse_key, held.held_out["reverse"], rng, False)
    return to_l2(reverse_prompt(key) + key)


# Stream name -> generator of one training example. Mixtures weight these.
STREAMS: dict[str, Callable[[random.Random, EvalItems], str]] = {
    **_task_streams(), "math_l1_offset": _math_offset_text, "reverse_l2_copy": _reverse_l2_copy_text}


def training_texts(mixture: dict[str, float], held: EvalItems, seed: int) -> Iterator[str]:
    """An endless, seeded stream of training examples drawn from `mixture` (stream -> weight)."""
    unknown = set(mixture) - set(STREAMS)
    if unknown:
        raise ValueError(f"unknown training stream(s) {sorted(unknown)}; known: {sorted(STREAMS)}")
    rng = random.Random(seed)
    names = [n for n, w in mixture.items() if w > 0]
    weights = [mixture[n] for n in names]
    while True:
        yield STREAMS[rng.choices(names, weights)[0]](rng, held)
