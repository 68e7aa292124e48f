#!/usr/bin/env bash
# The README's first command, end to end on CPU: install, build the offline model zoo (cached after the
# first run), score it, calibrate the reduced fitness, search merge recipes on a local Ray, show the
# Pareto front, export the best model (re-measured on the held-out split), plot the search, and load the
# export with plain transformers. Everything it writes is under runs/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1
es=.venv/bin/evosearch
step() { printf '\n== %s  (%ss since start)\n' "$1" "$SECONDS"; }

step "1. model zoo: base + math, strings, lang specialists (CPU, deterministic, cached)"
$es zoo build runs/zoo
step "2. every zoo model on every zoo task (held-out report split), and how well they merge"
$es zoo report runs/zoo
step "3. a mergekit-style TIES recipe, merged and written as a plain Hugging Face directory"
$es merge examples/merge_zoo_ties.yaml runs/merged-ties --force

rm -rf runs/demo  # the demo's store: a fresh calibration and search every time
step "4. calibration: sources, base and random merges scored on the full target task; IRT fit"
$es calibrate examples/demo_calibrate.yaml
step "5. how well the reduced fitness predicts held-out merges (estimators x anchor sizes)"
$es fitness report examples/demo_calibrate.yaml --out runs/demo/fitness_report.json
step "6. CMA-ES search over per-block task-arithmetic weights, on IRT anchors, 2 Ray workers"
$es run examples/demo_job.yaml
step "7. the Pareto front: search-split estimate beside the held-out report-split score"
$es front examples/demo_job.yaml --by report
step "8. export the best candidate (chosen on the report split), re-measured on the exported directory"
$es export examples/demo_job.yaml runs/demo/best --best zoo_target --verify --force
sed -n '/^## Evosearch/,$p' runs/demo/best/README.md
step "9. plot: fronts per generation and convergence"
$es plot examples/demo_job.yaml runs/demo/search.png
step "10. the export loads with plain transformers (no evosearch, no custom code)"
.venv/bin/python - <<'PY'
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("runs/demo/best")
tok = AutoTokenizer.from_pretrained("runs/demo/best")
print(f"  {type(model).__name__}, {sum(p.numel() for p in model.parameters()):,} parameters")
# Greedy answers next to the right ones (the zoo's tasks score choices, not generations).
for prompt, answer in (("53917+3=", "86240"), ("20461+6=", "86027"), ("world>", "dlrow"), ("quick>", "kciuq")):
    ids = tok(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    print(f"  {prompt!r} -> {tok.decode(out[0, ids['input_ids'].shape[1]:], skip_special_tokens=True)!r}"
          f" (right answer {answer!r})")
PY
step "done: runs/demo/best (model), runs/demo/search.png (plot), runs/demo/evosearch.db (store)"
