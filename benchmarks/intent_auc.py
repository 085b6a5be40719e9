"""How well CORE's instruction encoder side tells each intent from the others (JSON out).

For every intent of the built-in benchmark: AUC of the textual score a request on that
intent alone would give (mean of the top `textual_share` of its descriptions'
similarities, through MiniLM and the intent projection fitted on the general train
pool), that intent's
held-out general test questions (evaluation phrasings, which the projection never saw)
against every other intent's. Twice: with the projection CORE uses (choice questions a
kind of their own, `text_side.pairs_projection`) and with answer kinds only. The default
gate reads queries through answer-state neighbours whose rows are these similarities, so
an intent confused here is one the neighbours must rescue.

    python benchmarks/intent_auc.py [--questions 600]
"""

from __future__ import annotations

import argparse
import json

from sklearn.metrics import roc_auc_score

from vlforget.data.benchmark import Benchmark, BenchmarkConfig
from vlforget.data.requests import describe_textual
from vlforget.methods.core.concept_layer import top_mean
from vlforget.methods.core.config import CoreConfig
from vlforget.methods.core.text_side import InstructionSide, intent_projection, minilm, pairs_projection


def main() -> None:
    parser = argparse.ArgumentParser(description="intent-vs-rest AUC of CORE's instruction encoder side (JSON)")
    parser.add_argument("--questions", type=int, default=600, help="held-out general test questions")
    args = parser.parse_args()
    bench = Benchmark(BenchmarkConfig(sequence="validation", n_general_test=args.questions))
    train, test = bench.general_pool(3000, "core-intents"), bench.general_test("evaluation")
    encode = minilm()
    instructions, answers = [s.instruction for s in train], [s.answer for s in train]
    projections = {"choice split": pairs_projection(encode, instructions, answers),
                   "answer kinds only": intent_projection(encode(instructions), encode(answers))}
    share = CoreConfig().textual_share  # the share of descriptions CORE's textual score averages
    intents = sorted({s.intent for s in test})
    report = {"questions": len(test)}
    for name, projection in projections.items():
        side = InstructionSide(encode, projection, encode(list(dict.fromkeys(instructions))))
        queries = side.instructions([s.instruction for s in test])[:, 0]
        aucs = {}
        for intent in intents:
            score = top_mean(queries @ side.texts(describe_textual([intent])).T, share)
            aucs[intent] = round(float(roc_auc_score([s.intent == intent for s in test], score.numpy())), 3)
        aucs["mean"] = round(sum(aucs.values()) / len(intents), 3)
        report[name] = aucs
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
