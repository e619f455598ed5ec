"""The per-step cosine schedule (against torch's own CosineAnnealingLR), its budget hook, and the Charbonnier loss."""

import pytest
import torch

from deblur_exp.runtime import TimeBudget
from deblur_exp.training.losses import LOSSES, charbonnier_loss
from deblur_exp.training.schedules import WarmupCosine, schedule_hook


def adam(lr=1e-3):
    return torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def lr_of(optimizer):
    return optimizer.param_groups[0]["lr"]


def test_without_warmup_it_is_torchs_cosine_annealing_at_the_same_share_of_the_run():
    ours, theirs = adam(), adam()
    schedule = WarmupCosine(ours, eta_min=1e-5)
    reference = torch.optim.lr_scheduler.CosineAnnealingLR(theirs, T_max=10, eta_min=1e-5)
    for step in range(11):
        schedule.set_progress(step / 10)
        assert lr_of(ours) == pytest.approx(lr_of(theirs), rel=1e-9), step
        theirs.step()
        reference.step()


def test_warmup_rises_linearly_then_the_cosine_starts_from_the_full_rate():
    optimizer = adam()
    schedule = WarmupCosine(optimizer, warmup=0.1, eta_min=1e-5)
    expected = {0.0: 0.0, 0.05: 5e-4, 0.1: 1e-3, 0.55: (1e-3 + 1e-5) / 2, 1.0: 1e-5, 1.7: 1e-5}
    for progress, lr in expected.items():
        schedule.set_progress(progress)
        assert lr_of(optimizer) == pytest.approx(lr, abs=1e-12), progress


def test_state_dict_restores_the_rate_in_a_fresh_optimizer():
    first = WarmupCosine(adam(), warmup=0.05)
    first.set_progress(0.3)
    optimizer = adam(lr=123.0)  # a resumed run rebuilds the optimizer from the config, then loads the state
    second = WarmupCosine(optimizer, warmup=0.05)
    second.load_state_dict(first.state_dict())
    assert second.progress == 0.3 and lr_of(optimizer) == pytest.approx(lr_of(first.optimizer))


@pytest.mark.parametrize("warmup", [-0.1, 1.0, 2.0])
def test_a_warmup_that_is_not_a_share_of_the_run_is_refused(warmup):
    with pytest.raises(ValueError, match="scheduler.warmup"):
        WarmupCosine(adam(), warmup=warmup)


def test_the_hook_follows_epochs_or_the_time_budget_whichever_is_further_along():
    schedule = WarmupCosine(adam())
    schedule_hook(schedule, epoch=2, epochs=6, budget=TimeBudget(None))(5, 10)
    assert schedule.progress == pytest.approx(1.5 / 6)  # no budget: one and a half of six epochs
    half_spent = TimeBudget(100.0, spent_before=50.0)
    schedule_hook(schedule, epoch=1, epochs=6, budget=half_spent)(1, 10)
    assert 0.5 <= schedule.progress < 0.6  # half the time gone after a sixtieth of the epochs: time leads
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(adam())
    assert schedule_hook(plateau, 1, 6, half_spent) is None  # stepped once per epoch on the val loss instead


def test_paused_time_is_not_spent(monkeypatch):
    """eval.every's scoring runs inside budget.paused(): a run with it trains as long as one without."""
    import deblur_exp.runtime as runtime

    clock = iter([0.0, 10.0, 40.0, 54.0, 55.0])  # start; paused from 10 s to 40 s; then read at 54 s and 55 s
    monkeypatch.setattr(runtime.time, "perf_counter", lambda: next(clock))
    budget = TimeBudget(30.0, spent_before=5.0)
    with budget.paused():
        pass
    assert budget.spent() == 5.0 + 54.0 - 30.0  # 29 s: the 30 paused seconds left out
    assert budget.expired()  # 30 s at 55 s


def test_charbonnier_is_a_smooth_l1():
    torch.manual_seed(0)
    restored, sharp = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    expected = torch.sqrt((restored - sharp) ** 2 + 1e-6)
    assert charbonnier_loss(restored, sharp).item() == pytest.approx(expected.mean().item(), rel=1e-6)
    assert charbonnier_loss(restored, sharp, reduction="none").shape == restored.shape
    assert charbonnier_loss(sharp, sharp).item() == pytest.approx(1e-3)  # eps where L1 has its kink
    far = sharp + 0.5
    assert charbonnier_loss(far, sharp).item() == pytest.approx(LOSSES["l1"](far, sharp).item(), rel=1e-5)
