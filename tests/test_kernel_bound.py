"""benchmarks/kernel.py --bound: the native pass it times does the work it claims (the per-frame softmax and
both head-sum accumulations), so its time is a bound on that work and not on something cheaper."""

import shutil

import pytest
import torch
from benchmark_scripts import load_benchmark

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="--bound compiles with g++")


@pytest.fixture(scope="module")
def bound_library(tmp_path_factory):
    lib, _ = load_benchmark("kernel").compile_bound_library(tmp_path_factory.mktemp("bound"))
    return lib


@pytest.mark.parametrize("cheapest, rtol", [(0, 1e-5), (1, 1e-4)])
def test_native_pass_is_the_softmax_and_both_accumulations(bound_library, cheapest, rtol):
    rows, tokens = 3, 48
    logits = torch.randn(rows, tokens, generator=torch.Generator().manual_seed(0)) * 4
    scores, cost, joint = logits.clone(), torch.full((rows, tokens), 0.25), torch.zeros(rows, tokens)
    bound_library.softmax_accumulate(scores.data_ptr(), cost.data_ptr(), joint.data_ptr(), rows, tokens, 1, cheapest)
    probabilities = torch.softmax(logits.double(), -1)
    torch.testing.assert_close(cost.double(), 0.25 + probabilities / 30, rtol=rtol, atol=1e-8)
    torch.testing.assert_close(joint.double(), probabilities * 0.5, rtol=rtol, atol=1e-8)


def test_native_exp_sum_matches_torch(bound_library):
    logits = torch.linspace(-60, 8, 2 * 64).view(2, 64)
    total = bound_library.exp_sum(logits.data_ptr(), 2, 64, 3)
    torch.testing.assert_close(torch.tensor(total, dtype=torch.float64), 3 * torch.exp(logits.double()).sum(),
                               rtol=1e-5, atol=0)
