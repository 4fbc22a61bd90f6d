"""Adversarial examples on the demo model: the attacked image is classified as the target within the budget and
stays a valid image; the bisection's budget is minimal to its tolerance; an independent plain PGD written here
agrees on the same image and budget; results are deterministic; the target rule and its spec errors."""

from importlib import resources

import pytest
import torch
import torch.nn.functional as F

from reportgen.analyses.adversarial import TARGETS, target_rule
from reportgen.analyses.pgd import join, logits_of, pgd, smallest_budget, targeted, untargeted
from reportgen.demo import fashion_cnn
from reportgen.errors import SpecError
from reportgen.idx import FASHION_MNIST_CLASSES, load_idx_split
from tests.helpers.tiny import FASHION_DIR

MEAN, STD = [0.2860], [0.3530]
STEPS, MAX_BUDGET, TOL = 10, 0.1, 1 / 255     # 10 steps: the analysis' default 20 doubles the time


@pytest.fixture(scope="module")
def demo():
    model = fashion_cnn.build()
    model.load_state_dict(torch.load(resources.files("reportgen.demo") / "fashion_cnn.pt", map_location="cpu"))
    images, _ = load_idx_split(FASHION_DIR, "test")
    x = torch.from_numpy(images[:3]).float()[:, None] / 255                      # (3, 1, 28, 28) in [0, 1]
    model.eval()
    with torch.no_grad():
        probs = model((x - MEAN[0]) / STD[0]).softmax(1)
    return model, x, probs


def plain_pgd(model, x, label, eps, steps, target: bool):
    """Madry et al.'s PGD from the clean image, written out: sign steps of 2.5 eps / steps on the cross-entropy
    (down for a target, up away from a label), clipped to the eps-ball and [0, 1]. Returns (image, loss)."""
    adv = x.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = F.cross_entropy(model((adv - MEAN[0]) / STD[0]), label, reduction="sum")
        (g,) = torch.autograd.grad(loss, adv)
        adv = adv.detach() + (-1 if target else 1) * 2.5 * eps / steps * g.sign()
        adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0, 1)
    with torch.no_grad():
        logits = model((adv - MEAN[0]) / STD[0])
    return adv, F.cross_entropy(logits, label, reduction="none"), logits.argmax(1)


@pytest.fixture(scope="module")
def searched(demo):
    model, x, probs = demo
    goals = {"untargeted": untargeted(probs.argmax(1)), "targeted": targeted(probs.argsort(1, descending=True)[:, 1])}
    return {k: (g, *smallest_budget(model, x, g, STEPS, MAX_BUDGET, TOL, MEAN, STD)) for k, g in goals.items()}


@pytest.mark.parametrize("kind", ["untargeted", "targeted"])
def test_the_attacked_image_reaches_the_goal_within_the_budget(demo, searched, kind):
    model, x, probs = demo
    goal, budget, flipped = searched[kind]
    assert flipped.all()                # every one of these demo images flips well below 0.1
    adv = pgd(model, x, goal, budget, STEPS, MEAN, STD)
    with torch.no_grad():
        top = model((adv - MEAN[0]) / STD[0]).argmax(1)
    if kind == "targeted":
        assert torch.equal(top, probs.argsort(1, descending=True)[:, 1])
    else:
        assert (top != probs.argmax(1)).all()
    linf = (adv - x).abs().flatten(1).max(1).values
    assert (linf <= budget + 1e-6).all() and adv.min() >= 0 and adv.max() <= 1
    assert (budget <= MAX_BUDGET).all() and (budget > 0).all()


@pytest.mark.parametrize("kind", ["untargeted", "targeted"])
def test_the_bisection_budget_is_minimal_to_its_tolerance(demo, searched, kind):
    """PGD at (budget − tolerance) does not reach the goal, by the independent PGD."""
    model, x, probs = demo
    goal, budget, _ = searched[kind]
    for n in range(len(x)):
        _, _, top = plain_pgd(model, x[n:n + 1], goal.labels[n:n + 1], float(budget[n]) - TOL, STEPS,
                              kind == "targeted")
        assert (int(top) == int(goal.labels[n])) != (kind == "targeted"), (kind, n, float(budget[n]))


@pytest.mark.parametrize("kind", ["untargeted", "targeted"])
@pytest.mark.parametrize("eps", [0.01, 0.1])
def test_pgd_agrees_with_a_plain_implementation(demo, searched, kind, eps):
    model, x, _ = demo
    goal = searched[kind][0]
    ours = pgd(model, x, goal, torch.full((len(x),), eps), STEPS, MEAN, STD)
    theirs, loss, top = plain_pgd(model, x, goal.labels, eps, STEPS, kind == "targeted")
    assert torch.equal(goal.reached(logits_of(model, ours, MEAN, STD)), (top == goal.labels) == (kind == "targeted"))
    ours_loss = F.cross_entropy(logits_of(model, ours, MEAN, STD), goal.labels, reduction="none")
    torch.testing.assert_close(ours_loss, loss, rtol=1e-3, atol=1e-4)
    assert (ours - theirs).abs().max() < 1e-5


def test_no_budget_flips_below_max_budget_is_reported_as_such(demo):
    model, x, probs = demo
    budget, flipped = smallest_budget(model, x, untargeted(probs.argmax(1)), STEPS, 0.005, TOL, MEAN, STD)
    assert not flipped.any() and torch.equal(budget, torch.full((3,), 0.005))


def test_results_are_deterministic(demo):
    model, x, probs = demo
    goal = targeted(probs.argmin(1))
    a, b = (smallest_budget(model, x, goal, 3, MAX_BUDGET, TOL, MEAN, STD) for _ in range(2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(pgd(model, x, goal, a[0], 3, MEAN, STD), pgd(model, x, goal, a[0], 3, MEAN, STD))


def test_both_attacks_in_one_batch_equal_each_alone(demo, searched):
    """The analysis runs both attacks as one batch: each image's budget is what it gets alone."""
    model, x, _ = demo
    goals = [searched["untargeted"][0], searched["targeted"][0]]
    budget, flipped = smallest_budget(model, x.repeat(2, 1, 1, 1), join(goals), STEPS, MAX_BUDGET, TOL, MEAN, STD)
    assert torch.equal(budget, torch.cat([searched["untargeted"][1], searched["targeted"][1]]))
    assert torch.equal(flipped, torch.cat([searched["untargeted"][2], searched["targeted"][2]]))


def test_target_rules():
    probs = torch.tensor([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]])
    assert TARGETS["next"](probs).tolist() == [2, 2]
    assert TARGETS["least_likely"](probs).tolist() == [0, 1]
    assert target_rule("Bag", FASHION_MNIST_CLASSES)(probs).tolist() == [8, 8]
    with pytest.raises(SpecError) as err:
        target_rule("nope", ["a", "b"])
    assert str(err.value) == "adversarial.target: 'nope' is neither 'next', 'least_likely' nor a class of the " \
                             "model ('a', 'b')"
