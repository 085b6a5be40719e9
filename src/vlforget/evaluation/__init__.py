"""Evaluation: the refusal judge, the metrics and (in `runner`) the continual runner.

Only the light modules are re-exported here; import `vlforget.evaluation.runner`
and `vlforget.evaluation.run_state` (a saved run's method state) explicitly (they pull
in torch and the methods).
"""

from vlforget.evaluation.judge import Judge, LexicalJudge, MiniLMJudge, RuleJudge, Verdict, make_judge
from vlforget.evaluation.metrics import METRICS, Metric, contains_answer, exact_match, step_metrics, summarize
from vlforget.text import GENERIC_PATTERNS, REFUSAL_PATTERNS, normalise_answer

__all__ = ["GENERIC_PATTERNS", "REFUSAL_PATTERNS", "Judge", "LexicalJudge", "MiniLMJudge", "RuleJudge", "Verdict",
           "make_judge", "METRICS", "Metric", "contains_answer", "exact_match", "normalise_answer", "step_metrics",
           "summarize"]
