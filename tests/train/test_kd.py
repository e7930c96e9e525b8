import math

import pytest
import torch

from lamini_serve.errors import LaminiError
from lamini_serve.train.kd import divergence


def _mask(shape):
    return torch.ones(shape, dtype=torch.bool)


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_zero_for_identical_logits(kind):
    x = torch.randn(2, 5, 11)
    assert divergence(x, x.clone(), _mask((2, 5)), kind).item() == pytest.approx(0.0, abs=1e-6)
    assert divergence(x + 0.1, x + 3.0 - 2.9, _mask((2, 5)), kind).item() == pytest.approx(0.0, abs=1e-6)  # shift-invariant


def test_directions_of_the_two_kls():
    p_teacher = torch.tensor([0.7, 0.2, 0.1])
    q_student = torch.tensor([0.1, 0.3, 0.6])
    t, s = p_teacher.log()[None], q_student.log()[None]
    forward = sum(p * math.log(p / q) for p, q in zip(p_teacher.tolist(), q_student.tolist()))
    reverse = sum(q * math.log(q / p) for p, q in zip(p_teacher.tolist(), q_student.tolist()))
    assert divergence(s, t, _mask((1,)), "forward_kl").item() == pytest.approx(forward, rel=1e-5)
    assert divergence(s, t, _mask((1,)), "reverse_kl").item() == pytest.approx(reverse, rel=1e-5)
    assert forward != pytest.approx(reverse)


def test_jsd_is_symmetric_at_half_and_bounded():
    a, b = torch.randn(4, 7), torch.randn(4, 7) * 3
    m = _mask((4,))
    assert divergence(a, b, m, "jsd", beta=0.5).item() == pytest.approx(divergence(b, a, m, "jsd", beta=0.5).item(), rel=1e-5)
    assert 0 < divergence(a, b, m, "jsd").item() <= math.log(2) + 1e-6


def test_mask_and_temperature():
    s, t = torch.randn(1, 3, 5), torch.randn(1, 3, 5)
    only_first = torch.tensor([[True, False, False]])
    assert divergence(s, t, only_first).item() == pytest.approx(divergence(s[:, :1], t[:, :1], _mask((1, 1))).item(), rel=1e-5)
    hot = divergence(s, t, _mask((1, 3)), temperature=2.0).item()
    assert hot == pytest.approx(4 * divergence(s / 2, t / 2, _mask((1, 3))).item(), rel=1e-5)


def test_unknown_divergence():
    with pytest.raises(LaminiError, match="unknown divergence"):
        divergence(torch.zeros(1, 2), torch.zeros(1, 2), _mask((1,)), "tv")
