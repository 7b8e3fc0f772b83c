"""The diagonal SSM layer: every scan equals the step recurrence; long sequences stay bounded."""

import pytest
import torch

from metarl_ray.policies.ssm import SCANS, DiagonalSSM


@pytest.mark.parametrize("scan", sorted(SCANS))
def test_forward_sequence_equals_repeated_step_with_resets_and_carried_state(scan):
    torch.manual_seed(0)
    layer = DiagonalSSM(hidden_size=6, state_size=5, scan=scan).double()
    x = torch.randn(3, 37, 6, dtype=torch.float64)
    starts = torch.rand(3, 37) < 0.1
    state0 = torch.randn(3, 5, dtype=torch.float64)
    y_seq, last = layer.forward_sequence(x, state0, starts)
    state, outputs = state0, []
    for t in range(37):
        y, state = layer.step(x[:, t], state, starts[:, t])
        outputs.append(y)
    assert (y_seq - torch.stack(outputs, 1)).abs().max() < 1e-10
    assert (last - state).abs().max() < 1e-10


def test_zoh_input_factor_is_right_for_tiny_eigenvalues():
    layer = DiagonalSSM(hidden_size=2, state_size=3)
    with torch.no_grad():
        layer.log_neg_lambda.fill_(-30.0)  # lambda ~ -1e-13: (exp(dt lambda) - 1) / lambda -> dt
        layer.log_dt.fill_(-3.0)
        layer.B.fill_(1.0)
    _, b_bar = layer.discretise()
    torch.testing.assert_close(b_bar, torch.full((3, 2), torch.exp(torch.tensor(-3.0)).item()))


def test_real_part_of_eigenvalues_is_negative_by_construction():
    layer = DiagonalSSM(hidden_size=4, state_size=8)
    with torch.no_grad():
        layer.log_neg_lambda.normal_(0, 5)
    a_bar, _ = layer.discretise()
    assert torch.all(a_bar < 1.0) and torch.all(a_bar >= 0.0)


@pytest.mark.parametrize("scan", sorted(SCANS))
def test_5000_step_sequences_keep_outputs_and_gradients_finite_and_bounded(scan):
    torch.manual_seed(1)
    layer = DiagonalSSM(hidden_size=16, state_size=8, scan=scan)
    x = torch.randn(2, 5000, 16)
    starts = torch.zeros(2, 5000, dtype=torch.bool)
    y, _ = layer.forward_sequence(x, layer.initial_state(2), starts)
    y.pow(2).mean().backward()
    assert torch.isfinite(y).all() and y.abs().max() < 1e3
    for name, p in layer.named_parameters():
        assert torch.isfinite(p.grad).all() and p.grad.abs().max() < 1e3, name
