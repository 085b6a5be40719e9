"""How well CORE's aligned scorer sees each visual concept (the ceiling of the visual gate).

For every shape and colour of the built-in benchmark: image-level AUC of the scorer's
similarity (max over patches) with a phrase naming it ("a star", "something red"),
images that contain such an object against images that do not, on held-out general
test images, and the share of images without the concept that score at least as
high as the 10% (1%) lowest-scoring images with it (FPR at TPR 90 / 99); for shapes also
scored as CORE scores a request's visual concept (`descriptions`: the request phrasings
of the shape, mean of the top quarter, max over patches). CORE's visual
concept scores are these similarities, so a concept the scorer confuses is one whose
requests get false gates and misses. Prints JSON.

    python benchmarks/scorer_auc.py [--images 600]
"""

from __future__ import annotations

import argparse
import json

import torch
from sklearn.metrics import roc_auc_score

from vlforget.data.benchmark import general_samples
from vlforget.data.requests import SHAPE_PHRASES, VISUAL_FRAMES
from vlforget.data.scenes import CATEGORIES, COLOURS
from vlforget.evaluation.separation import fpr_at_tpr
from vlforget.methods.core.concept_layer import top_mean
from vlforget.methods.core.encoders import load_heads, vision_features
from vlforget.models.backbone import Backbone


def shape_probe(backbone, n_images: int = 2500, steps: int = 1500, seed: int = 0):
    """A linear patch classifier over CATEGORIES + empty; returns features -> [B, P, C+1] log-probs."""
    torch.manual_seed(seed)
    samples = general_samples(n_images, "scorer-auc-probe", "train")
    features = vision_features(backbone, [s.image for s in samples])
    n, p, d = features.shape
    labels = torch.full((n, p), len(CATEGORIES), dtype=torch.long)
    for i, sample in enumerate(samples):
        for obj in sample.meta["scene"].objects:
            if obj.cell < p:
                labels[i, obj.cell] = CATEGORIES.index(obj.shape)
    x, y = features.reshape(-1, d), labels.reshape(-1)
    mean, std = x.mean(0), x.std(0) + 1e-6
    linear = torch.nn.Linear(d, len(CATEGORIES) + 1)
    optimiser = torch.optim.Adam(linear.parameters(), lr=1e-2, weight_decay=1e-5)
    for _ in range(steps):
        idx = torch.randint(len(x), (1024,))
        loss = torch.nn.functional.cross_entropy(linear((x[idx] - mean) / std), y[idx])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return lambda f: torch.log_softmax(linear((f - mean) / std), -1)


def scores_entry(scores: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    return {"auc": round(float(roc_auc_score(labels.numpy(), scores.numpy())), 4),
            "fpr_at_tpr90": round(fpr_at_tpr(scores, labels, 0.9), 4),
            "fpr_at_tpr99": round(fpr_at_tpr(scores, labels, 0.99), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--probe", action="store_true", help="also train and score a supervised shape probe")
    args = parser.parse_args()
    backbone = Backbone.load()
    scorer = load_heads(backbone)
    samples = general_samples(args.images, "scorer-auc", "test")
    features = vision_features(backbone, [s.image for s in samples])
    out: dict[str, dict[str, float]] = {}
    probe = shape_probe(backbone) if args.probe else None
    with torch.no_grad():
        probe_logp = probe(features) if probe else None
        for attr, values, phrase in (("shape", CATEGORIES, "a {}"), ("colour", COLOURS, "something {}")):
            out[attr] = {}
            for value in values:
                labels = torch.tensor([any(getattr(o, attr) == value for o in s.meta["scene"].objects)
                                       for s in samples])
                if labels.sum() < 5 or (~labels).sum() < 5:
                    continue
                text = scorer.texts([phrase.format(value)])
                scores = (scorer.patches(features) @ text.T)[..., 0].amax(1)
                out[attr][value] = scores_entry(scores, labels)
                if attr == "shape":
                    # what CORE's visual score reads: a request's descriptions of the shape,
                    # the mean of their top quarter per patch, max over patches
                    texts = scorer.texts([f.format(p=p) for f in VISUAL_FRAMES for p in SHAPE_PHRASES[value]])
                    top = top_mean(scorer.patches(features) @ texts.T).amax(1)
                    out[attr][value]["descriptions"] = scores_entry(top, labels)
                if probe_logp is not None and attr == "shape":
                    out[attr][value]["probe"] = scores_entry(probe_logp[..., CATEGORIES.index(value)].amax(1), labels)
    print(json.dumps({"images": len(samples), "concepts": out}, indent=1))


if __name__ == "__main__":
    main()
