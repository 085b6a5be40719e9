"""`vlforget attack`: every attack moves the number it reports, on the built-in tiny model.

One saved run (idknll, 30 steps, the first request of a small benchmark) is shared by
the module; each attack is checked on it or on the original model.
"""

from __future__ import annotations

import json
import random
from contextlib import contextmanager
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from vlforget.cli import app
from vlforget.data.benchmark import Benchmark, BenchmarkConfig
from vlforget.evaluation.attacks import crossmodal, membership, perturbations, pgd, quantisation, relearning
from vlforget.evaluation.attacks.runner import ATTACKS, parse_attack_names
from vlforget.evaluation.attacks.scoring import deployed_logprobs, teacher_forced_logprobs
from vlforget.evaluation.attacks.tables import robustness_markdown, robustness_row
from vlforget.evaluation.attacks.target import AttackConfig, BaseModel, load_target
from vlforget.evaluation.judge import make_judge
from vlforget.evaluation.runner import ContinualRun
from vlforget.models.backbone import Backbone

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = BenchmarkConfig(seed=3, n_forget_train=12, n_forget_test=8, n_retain_train=8, n_retain_test=4, n_utility=10)
SETTINGS = {"pairs_per_request": 6, "retain_pairs_per_request": 2, "utility_pairs": 6, "judge": "lexical",
            "pgd_steps": 3, "relearn_steps": [5, 20]}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("attacked") / "idknll"
    ContinualRun("idknll", Benchmark(SMALL), out, Backbone.load, {"steps": 30}, make_judge("lexical"), limit=1).run()
    return out


@pytest.fixture(scope="module")
def target(run_dir):
    return load_target(run_dir, None, AttackConfig(**SETTINGS))


def _flat(pairs):
    return [s for samples in pairs.values() for s in samples]


def test_forced_decoding_scores_the_answer_tokens_exactly(target):
    base = target.base()
    samples = _flat(target.forget_test())[:4]
    answers = [s.meta["original_answer"] for s in samples]
    scored = deployed_logprobs(base, [s.image for s in samples], [s.instruction for s in samples], answers)
    backbone = base.backbone
    batch = backbone.build_batch([s.image for s in samples], [s.instruction for s in samples], answers)
    labels = batch.pop("labels")[:, 1:]
    with torch.no_grad():
        logp = torch.log_softmax(backbone.model(**batch).logits[:, :-1].float(), -1)
    for row, (tokens, answer) in enumerate(zip(scored, answers)):
        positions = (labels[row] != -100).nonzero().squeeze(1)[:-1]  # the answer's tokens, eos left out
        expected = logp[row, positions, labels[row, positions]]
        assert len(tokens) == len(backbone.encode_text([answer])[0]) == len(expected)
        assert torch.allclose(tokens, expected, atol=1e-4)


class NoGradHooked:
    """A method like CORE: its connector hook computes the replacement under torch.no_grad()."""

    def __init__(self, backbone):
        self.backbone = backbone

    @contextmanager
    def _hooked(self):
        def hook(module, args, output):
            with torch.no_grad():
                return output * 0.5
        handle = self.backbone.connector.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def generate(self, images, instructions, **kwargs):
        with self._hooked():
            return self.backbone.generate(images, instructions, **kwargs)


def test_gradients_reach_the_pixels_through_no_grad_hooks_only_when_lifted(target):
    samples = _flat(target.forget_test())[:2]
    images, instructions = [s.image for s in samples], [s.instruction for s in samples]
    answers = [s.meta["original_answer"] for s in samples]
    method = NoGradHooked(target.base().backbone)
    grads = {}
    for lift in (False, True):
        pixels = pgd.to_unit_pixels(images, 48).requires_grad_(True)
        with pgd.pixels_replaced(method.backbone, images, pixels):
            logp, _ = teacher_forced_logprobs(method, images, instructions, answers, lift_no_grad=lift)
        grads[lift] = torch.autograd.grad(logp.sum(), pixels, allow_unused=True)[0]
    assert grads[False] is None
    assert grads[True] is not None and grads[True].abs().sum() > 0
    assert torch.no_grad.__name__ == "no_grad"  # restored


def test_pgd_raises_the_likelihood_of_its_target_answer(target):
    base = target.base()
    samples = _flat(target.forget_test())[:4]
    # Aim at another pair's answer, which the original model finds unlikely for this image.
    wrong = [replace(s, meta={**s.meta, "original_answer": "yellow"}) for s in samples]
    adv = pgd.pgd(base, [s.image for s in wrong], [s.instruction for s in wrong], ["yellow"] * len(wrong),
                  epsilon=16 / 255, step_size=4 / 255, steps=4)
    clean = pgd.to_unit_pixels([s.image for s in wrong], 48)
    assert (adv - clean).abs().max() <= 16 / 255 + 1e-6
    attacked = [replace(s, image=im) for s, im in zip(wrong, pgd.to_images(adv))]
    assert pgd.mean_logprob(base, attacked) > pgd.mean_logprob(base, wrong) + 0.5


def test_perturbations_change_the_images_and_some_answers(target):
    base = target.base()
    samples = _flat(target.forget_test())
    clean = base.generate([s.image for s in samples], [s.instruction for s in samples])
    changed = 0
    for name in ("noise-24", "crop-0.75", "blur-1.0"):
        moved = perturbations.perturbed(samples, name, seed=0)
        assert moved[0].image.tobytes() != samples[0].image.tobytes()
        assert moved[0].image.tobytes() == perturbations.perturbed(samples, name, seed=0)[0].image.tobytes()
        answers = base.generate([s.image for s in moved], [s.instruction for s in moved])
        changed += sum(a != b for a, b in zip(answers, clean))
    assert changed > 0
    assert len(perturbations.PERTURBATIONS) == 10  # five families, two strengths each
    rows = perturbations.run(target)["perturbations"]
    assert rows["noise-8"]["base_leak"] >= 50.0  # mild noise keeps the content: the original model still answers
    assert all(r["n_preserved"] <= 6 for r in rows.values())


def test_relearning_brings_the_forgotten_answers_back_and_restores_the_weights(target):
    forget, retain = relearning.attack_pairs(target)
    assert len(forget) == 3 and len(retain) == 3  # 25% of 12 forget-train pairs; as many retain pairs
    evaluated = target.forget_test()
    before = {n: p.detach().clone() for n, p in target.method.backbone.language_model.named_parameters()}
    curve = relearning.relearn_curve(target.method, forget, [5, 20], lr=3e-4, batch_size=8, seed="t",
                                     measure=lambda: target.forget_metrics(target.method, evaluated))
    assert curve[0]["leak"] <= 20.0  # the unlearned state does not answer
    assert curve[20]["leak"] >= curve[0]["leak"] + 30.0
    after = dict(target.method.backbone.language_model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_int8_changes_the_logits_and_the_float_model_comes_back(target):
    base = target.base()
    samples = _flat(target.forget_test())[:4]
    args = ([s.image for s in samples], [s.instruction for s in samples], [s.meta["original_answer"] for s in samples])
    float_lp = torch.cat(deployed_logprobs(base, *args))
    with quantisation.int8_linears(base.backbone.language_model) as n:
        int8_lp = torch.cat(deployed_logprobs(base, *args))
    again = torch.cat(deployed_logprobs(base, *args))
    assert n > 0
    assert (int8_lp - float_lp).abs().max() > 1e-5
    assert torch.equal(again, float_lp)


def test_membership_scores_come_from_the_answers_losses(target):
    members = _flat(target.forget_train())
    before = membership.pair_scores(target.base(), members, 0.2)
    after = membership.pair_scores(target.method, members, 0.2)
    # idknll trained these pairs to a refusal: their original answers became much less likely.
    assert sum(after["loss"]) / len(members) > sum(before["loss"]) / len(members) + 1.0
    assert all(len(v) == len(members) for v in after.values())
    assert membership.auc([3.0, 4.0], [1.0, 2.0]) == 1.0 and membership.auc([1.0], [2.0]) == 0.0
    result = membership.run(target)
    assert 0.0 <= result["after"]["loss"]["auc"] <= 1.0
    assert result["n_members"] == 6 and result["n_nonmembers"] == 6
    # v2: the non-members are the test pairs in the members' phrasing group, same images and answers
    same = _flat(target.forget_test("request"))
    assert [s.meta["original_answer"] for s in same] == [s.meta["original_answer"] for s in _flat(target.forget_test())]
    assert {s.instruction for s in same} != {s.instruction for s in _flat(target.forget_test())}
    assert "request phrasings" in result["nonmembers"]


def test_crossmodal_probes_name_the_concept_outside_the_scope(target):
    request = target.applied[0]  # star-identity: identify / describe stars
    sample = _flat(target.forget_test())[0]
    instruction, truth = crossmodal.other_intent_probe(sample, request, random.Random(0))
    assert "star" in instruction and truth == "yes"
    flat = crossmodal.flat_image(sample.image)
    assert len(flat.getcolors()) == 1
    result = crossmodal.run(target)
    assert result["other_intent"]["n"] > 0
    assert result["other_intent"]["base"]["concept_leak"] >= 50.0  # the original model still sees stars
    assert result["no_image_base"]["leak"] < 50.0  # nothing to see, nothing to leak


def test_robustness_row_reads_saved_records():
    records = {"perturbations": {"step": 2, "clean": {"crr": 90.0, "leak": 5.0}, "worst_crr_vs_clean": 80.0,
                                 "worst_crr_preserved_vs_clean": 95.0, "headline": {"max leak": 12.5}},
               "membership": {"step": 2, "after": {"loss": {"auc": 0.61}}, "max_abs_auc_minus_half_after": 0.2}}
    row = robustness_row("core", records)
    assert row[:4] == ["core", "2", "90.0 / 5.0", "80.0 (95.0) / 12.5"] and "0.610 / 0.200" in row
    assert row[4] == "n/a / n/a"  # no pgd record
    assert robustness_markdown([row]).count("\n") == 3


def test_attack_names_are_checked():
    assert parse_attack_names(None) == list(ATTACKS) == parse_attack_names("all")
    with pytest.raises(ValueError, match="did you mean 'pgd'"):
        parse_attack_names("pgx")


def test_cli_attack_writes_results_and_the_report_table(run_dir, tmp_path):
    config = tmp_path / "attack.yaml"
    config.write_text(json.dumps(SETTINGS))
    runner = CliRunner()
    result = runner.invoke(app, ["attack", str(run_dir), "--attack", "quantisation,membership", "--config", str(config)])
    assert result.exit_code == 0, result.output
    saved = json.loads((run_dir / "attacks" / "quantisation.json").read_text())
    assert saved["step"] == 1 and saved["method"] == "idknll" and saved["int8"]["crr"] is not None
    assert saved["answer_logprob_change_mean"] > 0
    assert (run_dir / "attacks" / "membership.json").exists()
    report = (run_dir / "report.html").read_text()
    assert "Attacks: does the forgetting hold?" in report and "membership" in report
    for args, message in ((["--attack", "pgx"], "unknown attack 'pgx'"), (["--step", "5"], "step 5 is not available"),
                          (["--step", "0"], "at least one applied request")):
        bad = runner.invoke(app, ["attack", str(run_dir), *args])
        assert bad.exit_code == 2 and message in bad.output
    missing = runner.invoke(app, ["attack", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "no run in" in missing.output


def test_robustness_table_over_runs_reuses_saved_attacks(run_dir, tmp_path):
    from vlforget.cli import _robustness

    config = tmp_path / "attack.yaml"
    config.write_text(json.dumps(SETTINGS))
    _robustness(["idknll"], run_dir.parent, ["crossmodal"], config, None, "cpu")
    saved = run_dir / "attacks" / "crossmodal.json"
    first = saved.read_text()
    table = (run_dir.parent / "robustness.md").read_text()
    assert table.startswith("| method | step |") and "| idknll | 1 |" in table
    _robustness(["idknll"], run_dir.parent, ["crossmodal"], config, None, "cpu")
    assert saved.read_text() == first  # same step and settings: not recomputed
    bad = CliRunner().invoke(app, ["compare", "--methods", "idknll", "--out", str(tmp_path), "--attack-config",
                                   str(config)])
    assert bad.exit_code == 2 and "--attack-config needs --attacks" in bad.output


def test_attacks_on_a_loaded_benchmark_need_it_again(tmp_path):
    from pathlib import Path

    from vlforget.data.loaders.sequence import LoadedSequence

    data = Path(__file__).parent / "fixtures" / "loaders" / "table" / "pairs.jsonl"
    out = tmp_path / "loaded"
    ContinualRun("idknll", LoadedSequence("jsonl", data), out, Backbone.load, {"steps": 5}, make_judge("lexical"),
                 limit=1).run()
    runner = CliRunner()
    missing = runner.invoke(app, ["attack", str(out), "--attack", "crossmodal"])
    assert missing.exit_code == 2 and "pass --dataset FORMAT --data PATH" in missing.output
    config = tmp_path / "attack.yaml"
    config.write_text(json.dumps({"judge": "lexical"}))
    done = runner.invoke(app, ["attack", str(out), "--attack", "crossmodal,membership", "--config", str(config),
                               "--dataset", "jsonl", "--data", str(data)])
    assert done.exit_code == 0, done.output
    saved = json.loads((out / "attacks" / "crossmodal.json").read_text())
    assert saved["other_intent"]["n"] == 0 and saved["other_intent"]["skipped"] > 0  # no scene annotations
    assert saved["no_image"]["n_forget"] > 0
