"""Loss terms against hand-computed values."""

import math

import torch

from emgroup.models import losses


def test_gaussian_kl_matches_closed_form_by_hand():
    # KL(N(1, 0.5^2) || N(0, 2^2)) = log(2/0.5) + (0.25 + 1) / (2 * 4) - 1/2
    kl = losses.gaussian_kl(torch.tensor(1.0), torch.tensor(math.log(0.5)), 0.0, 2.0)
    assert math.isclose(kl.item(), math.log(4) + 1.25 / 8 - 0.5, rel_tol=1e-6)
    assert losses.gaussian_kl(torch.tensor(0.3), torch.tensor(0.0), 0.3, 1.0).item() == 0.0


def test_angle_kl_without_mean_ignores_the_mean():
    # the modified term is the KL at mu = prior mean, whatever the mean
    logstd = torch.tensor([math.log(0.2), math.log(3.0)])
    expected = losses.gaussian_kl(torch.zeros(2), logstd, 0.0, math.pi)
    assert torch.allclose(losses.angle_kl_without_mean(logstd, math.pi), expected)
    assert math.isclose(losses.angle_kl_without_mean(torch.tensor(math.log(math.pi)), math.pi).item(), 0.0,
                        abs_tol=1e-6)
    # eq. 3 by hand for sigma = 0.5, s = pi: -log(0.5) + log(pi) + 0.25 / (2 pi^2) - 1/2
    by_hand = math.log(2 * math.pi) + 0.25 / (2 * math.pi**2) - 0.5
    assert math.isclose(losses.angle_kl_without_mean(torch.tensor(math.log(0.5)), math.pi).item(), by_hand,
                        rel_tol=1e-6)


def test_bernoulli_and_gaussian_nll_by_hand():
    logits = torch.tensor([[0.0, 2.0]])
    images = torch.tensor([[1.0, 0.0]])
    expected = math.log(2) + math.log(1 + math.exp(2))
    assert math.isclose(losses.bernoulli_nll(logits, images).item(), expected, rel_tol=1e-6)
    mean, x = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 1.0]])
    log_sigma = torch.tensor(math.log(2.0))
    expected = 0.5 * 1 / 4 + 2 * (math.log(2.0) + 0.5 * math.log(2 * math.pi))
    assert math.isclose(losses.gaussian_nll(mean, x, log_sigma).item(), expected, rel_tol=1e-6)
