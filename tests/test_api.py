"""The public Python API: the README's example runs as written, and bad examples are named."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import vlforget
from vlforget.data.scenes import Scene, SceneObject, render

pytestmark = pytest.mark.usefixtures("one_thread")
README = Path(__file__).resolve().parents[1] / "README.md"


def readme_python_example() -> str:
    section = README.read_text().split("## Python API and the deletion-request service", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(readme_python_example(), "README.md", "exec"), namespace)
    method, request = namespace["method"], namespace["request"]
    assert method.applied == [request.name]
    assert (tmp_path / "my-state" / "method.json").exists()
    # the state that was saved answers as the one in memory
    image = namespace["picture"]("star", "red", 4)
    assert namespace["again"].generate([image], ["what colour is the star?"]) == \
        method.generate([image], ["what colour is the star?"])
    numbers = namespace["numbers"]
    assert numbers["n_forget"] == 2 and numbers["n_retain"] == 1
    assert 0 <= numbers["crr"] <= 100 and numbers["ar"] is not None


def picture(shape="star"):
    return render(Scene((SceneObject(shape, "red", "large", "solid", 4),), "black"))


def test_from_examples_forms_and_targets(tmp_path):
    path = tmp_path / "star.png"
    picture().save(path)
    request = vlforget.DeletionRequest.from_examples(
        "r", forget=[(path, "what colour is the star?", "red"), {"image": picture(), "instruction": "colour?"}],
        retain=[(picture("square"), "what colour is the square?", "red")], refusals="sorry, i cannot say.")
    first = request.forget_train[0]
    assert first.answer == "sorry, i cannot say." and first.meta["original_answer"] == "red"
    assert request.forget_test == request.forget_train and request.retain_test[0].answer == "red"
    assert request.concepts is None and request.description == "r"


@pytest.mark.parametrize("kwargs, message", [
    ({"forget": []}, "empty forget set"),
    ({"forget": [(picture(), "")]}, "forget example 0: instruction must be a non-empty string"),
    ({"forget": [("missing.png", "what?")]}, "forget example 0: image file missing.png not found"),
    ({"forget": [{"image": picture(), "question": "x"}]}, "unknown field(s) ['question']"),
    ({"forget": [(picture(), "what?")], "retain": ["just text"]}, "retain example 0: expected"),
])
def test_from_examples_names_the_bad_example(kwargs, message):
    with pytest.raises((ValueError, FileNotFoundError), match=re.escape(message)):
        vlforget.DeletionRequest.from_examples("r", refusals=["no."], **kwargs)


def test_evaluate_needs_requests():
    with pytest.raises(ValueError, match="at least one deletion request"):
        vlforget.evaluate(None, [])
