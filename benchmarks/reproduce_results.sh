#!/usr/bin/env bash
# The committed results, one command: tune every method on the validation sequence, then
# the comparison (all methods + `none`, tuned, on the test sequence), the robustness
# table and CORE's ablations. Everything resumes: interrupt it and run it again, finished grid points and
# finished runs are kept (runs/ holds the run folders; results/ gets the tables).
#
#   bash benchmarks/reproduce_results.sh            # everything (many hours on 2 CPU cores)
#   (VLFORGET= and PYTHON= name other executables, e.g. another worktree's venv)
#   STAGES=tune bash benchmarks/reproduce_results.sh
#   METHODS=core,idknll STAGES=tune,compare bash benchmarks/reproduce_results.sh
#
# Each stage reads only what the one before wrote: `tune` reads only the validation
# sequence, `compare` runs every method at its chosen settings (results/tuned) on the
# test sequence, `attacks` attacks those test runs' last states.
set -euo pipefail
cd "$(dirname "$0")/.."
VLFORGET=${VLFORGET:-.venv/bin/vlforget}
PYTHON=${PYTHON:-.venv/bin/python}
STAGES=${STAGES:-tune,compare,attacks,ablations}
RUNS=${RUNS:-runs}
ALL=$($VLFORGET methods --names)
METHODS=${METHODS:-$(echo "$ALL" | tr '\n' ',' | sed 's/,$//')}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

if [[ ",$STAGES," == *",tune,"* ]]; then
  for method in ${METHODS//,/ }; do
    $VLFORGET tune --method "$method" --out results/tuned --work "$RUNS/tune"
  done
fi
if [[ ",$STAGES," == *",compare,"* ]]; then
  $VLFORGET compare --methods "$METHODS" --tuned results/tuned --out "$RUNS/cmp-v2"
  # CORE once more with concepts mined from the model instead of the written descriptions
  if [[ ",$METHODS," == *",core,"* ]]; then
    $VLFORGET compare --methods core --tuned results/tuned --config examples/compare/core-mined-concepts.yaml \
        --out "$RUNS/cmp-v2-mined"
  fi
  {
    echo "# Benchmark v2, test sequence: every method at its validation-tuned settings"
    echo
    echo "Produced by \`bash benchmarks/reproduce_results.sh\` (stage \`compare\`; settings chosen by"
    echo "\`vlforget tune\` on the validation sequence only, records in \`results/tuned/\`, rule in"
    echo "\`docs/tuning.md\`). Built-in model, seed 0, CPU, MiniLM judge. Headline columns: evaluation"
    echo "phrasings (no method trained on them); the second table asks the same test pairs in the"
    echo "request phrasings and inside sentences pressing for an answer. \`reads\`: what each method"
    echo "reads (docs/methods.md). CRR and dRR are n/a for methods that never refuse by design."
    echo
    cat "$RUNS/cmp-v2/comparison.md"
    echo
    echo "## CORE with concepts mined from the model (no written descriptions)"
    echo
    echo "Same command with \`--config examples/compare/core-mined-concepts.yaml\` (\`concept_source: model\`)."
    echo
    cat "$RUNS/cmp-v2-mined/comparison.md" 2>/dev/null || echo "(not run: core is not in METHODS)"
  } > results/comparison.md
fi
if [[ ",$STAGES," == *",attacks,"* ]]; then
  $VLFORGET compare --methods "$METHODS" --tuned results/tuned --out "$RUNS/cmp-v2" \
      --attacks all --attack-config examples/attacks/robustness.yaml
  {
    echo "# Robustness: does the forgetting hold under attack? (benchmark v2, test sequence)"
    echo
    echo "Produced by \`bash benchmarks/reproduce_results.sh\` (stage \`attacks\`): every method's state after"
    echo "the last of the 16 test requests, at its validation-tuned settings (the \`compare\` stage's runs),"
    echo "attacked with \`examples/attacks/robustness.yaml\`: a seeded subsample of 4 forget-test pairs per"
    echo "request (64 in all; membership inference: 4 forget-train members vs 4 forget-test pairs per"
    echo "request, both in the request phrasings), 3 retain pairs per request and 60 utility pairs for"
    echo "int8; relearning on 25% of each"
    echo "request's forget-train pairs. One pair moves a rate by about 1.6 points. Attacks and formulas:"
    echo "\`docs/metrics.md\`, \"Attacks\"."
    echo
    cat "$RUNS/cmp-v2/robustness.md"
  } > results/robustness.md
fi
if [[ ",$STAGES," == *",ablations,"* ]]; then
  # CORE at its tuned settings with one part switched off (after `compare`, whose core and mined runs it reuses)
  for part in no-modulator no-concept-routing no-calibration; do
    $VLFORGET compare --methods core --tuned results/tuned --config "examples/compare/core-$part.yaml" \
        --out "$RUNS/ablate-v2/$part"
  done
  {
    echo "# CORE and its ablations (benchmark v2, test sequence)"
    echo
    echo "Produced by \`bash benchmarks/reproduce_results.sh\` (stage \`ablations\`): CORE at its validation-tuned"
    echo "settings (\`results/tuned/core.md\`) with one part switched off (\`examples/compare/core-no-modulator.yaml\` and its two siblings),"
    echo "on the 16 test requests, evaluation phrasings; \`core\` and \`concepts from model\` are the rows of"
    echo "\`results/comparison.md\`. The v1 ablations are in \`results/core_ablations.md\`."
    echo
    $PYTHON benchmarks/summary_table.py "core=$RUNS/cmp-v2/core" \
        "no modulator=$RUNS/ablate-v2/no-modulator/core" \
        "no concept routing=$RUNS/ablate-v2/no-concept-routing/core" \
        "no calibration=$RUNS/ablate-v2/no-calibration/core" \
        "concepts from model=$RUNS/cmp-v2-mined/core"
  } > results/core_ablations_v2.md
fi
