#!/usr/bin/env bash
# The committed results, one command: tune every method on the validation sequence, then
# the comparison (all methods + `none`, tuned, on the test sequence) and the robustness
# table. Everything resumes: interrupt it and run it again, finished grid points and
# finished runs are kept (runs/ holds the run folders; results/ gets the tables).
#
#   bash benchmarks/reproduce_results.sh            # everything (many hours on 2 CPU cores)
#   STAGES=tune bash benchmarks/reproduce_results.sh
#   METHODS=core,idknll STAGES=tune,compare bash benchmarks/reproduce_results.sh
#
# Each stage reads only what the one before wrote: `tune` reads only the validation
# sequence, `compare` runs every method at its chosen settings (results/tuned) on the
# test sequence, `attacks` attacks those test runs' last states.
set -euo pipefail
cd "$(dirname "$0")/.."
VLFORGET=${VLFORGET:-.venv/bin/vlforget}
STAGES=${STAGES:-tune,compare,attacks}
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
  cp "$RUNS/cmp-v2/comparison.md" results/comparison.md
fi
if [[ ",$STAGES," == *",attacks,"* ]]; then
  $VLFORGET compare --methods "$METHODS" --tuned results/tuned --out "$RUNS/cmp-v2" \
      --attacks all --attack-config examples/attacks/robustness.yaml
  cp "$RUNS/cmp-v2/robustness.md" results/robustness.md
fi
