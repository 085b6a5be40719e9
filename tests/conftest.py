"""Fixtures shared by several test modules."""

from __future__ import annotations

import os

import pytest
import torch

# Under pytest-xdist (`make test` runs two workers, one per core) each worker keeps torch to
# one thread: two workers of two threads each on two cores thrash (measured: a 2-thread job
# beside the suite ran ~15x slower).
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine: two threads mostly wait on each other.
    A module opts in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
