#!/usr/bin/env bash
# The README's first command: installs evosearch, builds the offline model zoo (cached after the first
# run), scores it through lm-eval, merges two specialists and loads the result with plain transformers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1
es=.venv/bin/evosearch

echo "== 1. model zoo (base + math, strings, lang specialists; CPU, deterministic)"
$es zoo build runs/zoo
echo "== 2. every zoo model on every zoo task (held-out report split), and how well they merge"
$es zoo report runs/zoo
echo "== 3. a mergekit-style TIES recipe, merged and exported as a plain Hugging Face directory"
$es merge examples/merge_zoo_ties.yaml runs/merged-ties --force
.venv/bin/python - <<'PY'
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("runs/merged-ties")
tok = AutoTokenizer.from_pretrained("runs/merged-ties")
# Greedy answers of the merged model next to the right ones (the zoo's tasks score choices, not generations).
for prompt, answer in (("53917+3=", "86240"), ("20461+6=", "86027"), ("world>", "dlrow"), ("quick>", "kciuq")):
    ids = tok(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    print(f"  {prompt!r} -> {tok.decode(out[0, ids['input_ids'].shape[1]:], skip_special_tokens=True)!r}"
          f" (right answer {answer!r})")
PY
