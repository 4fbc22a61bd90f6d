"""Feature visualization: objectives rise, seeds reproduce, batching changes nothing, hooks never leak.

Models are the seeded tiny nets of `tests/helpers/featvis_models.py` at 24 px, 40 steps (a second or less
per call), plus torchvision's resnet18 (random weights) to exercise truncation on a residual model.
Reference values come from running the models directly (plain forward passes, `torch.fft`, numpy),
never from the code under test.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from reportgen.analyses.featvis import (Objective, Optimizer, Parameterization, RandomAffine, fourier_image,
                                        pixel_image, synthesize)
from reportgen.analyses.featvis.hooks import frozen, truncated_model
from reportgen.analyses.featvis.objectives import diversity_penalty
from reportgen.analyses.featvis.param import frequency_scale
from reportgen.errors import ModelError, SpecError
from tests.helpers.featvis_models import conv_net

SIZE, STEPS = 24, 40


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # The tiny models are faster on one thread, and one thread keeps the suite's timing stable on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pixels(channels: int, size: int = SIZE, fourier: bool = True) -> Parameterization:
    return Parameterization(channels, mean=[0.5] * channels, std=[0.25] * channels, size=size, fourier=fourier)


def run(model, layer, units, channels=3, objective="channel", plain=False, variants=1, diversity=0.0,
        progress=None, steps=STEPS, **optimizer):
    """Regularized synthesis at SIZE px (plain: raw pixels, no warps); `optimizer`: Optimizer's fields."""
    return synthesize(model, Objective(layer, units, objective, variants, diversity),
                      pixels(channels, fourier=not plain), None if plain else RandomAffine(),
                      Optimizer(steps=steps, **optimizer), progress=progress)


def direct_objective(model, layer, objective, images_uint8, units, channels):
    """The objective recomputed with an ordinary forward hook (a clone, before any in-place op) on the images."""
    x = torch.from_numpy(images_uint8).float().permute(0, 3, 1, 2) / 255
    x = (x - 0.5) / 0.25
    kept = {}
    if layer is None:
        handle = None
    else:
        module = dict(model.named_modules())[layer]
        handle = module.register_forward_hook(lambda m, i, o: kept.update(out=o.clone()))  # returns None
    with torch.no_grad():
        out = model(x)
    if handle:
        handle.remove()
    acts = kept.get("out", out)
    idx = torch.arange(len(units))
    picked = acts[idx, torch.tensor(units)]
    if objective == "neuron":
        return picked[:, picked.shape[1] // 2, picked.shape[2] // 2].numpy()
    return picked.reshape(len(units), -1).mean(1).numpy()


CASES = [("conv2", "channel"), ("relu2", "channel"), ("conv2", "neuron"), (None, "logit")]


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("layer,objective", CASES)
def test_optimization_raises_objective_far_above_random_images(layer, objective, channels):
    model = conv_net(channels)
    units = [0, 1, 2, 3, 4]
    result = run(model, layer, units, channels, objective=objective)
    noise = (torch.rand(64, SIZE, SIZE, channels, generator=torch.Generator().manual_seed(5)) * 255).byte()
    random = np.stack([direct_objective(model, layer, objective, noise.numpy(), [u] * 64, channels)
                       for u in units])                                                          # (units, 64)
    best_random, typical = random.max(1), np.median(random, 1)
    assert (result.activation > best_random).all()
    # "well above": the optimized images gain at least twice what the luckiest of 64 noise images gain.
    assert (result.activation - typical).mean() > 2 * (best_random - typical).mean()
    # The reported activation is the objective of the returned (uint8) image, unwarped.
    direct = direct_objective(model, layer, objective, result.images, units, channels)
    np.testing.assert_allclose(result.activation, direct, rtol=1e-4, atol=1e-5)
    assert result.images.shape == (5, SIZE, SIZE, channels) and result.images.dtype == np.uint8
    assert result.curve.shape == (5, STEPS)
    np.testing.assert_array_equal(result.units, units)


def test_a_relu_that_is_off_on_the_starting_image_still_turns_on():
    # Shift conv2's biases so relu2 is zero everywhere on the grey image the optimization starts from:
    # the ReLU's output has no gradient there, so only climbing its input can get it going.
    model = conv_net(3)
    units = [0, 1, 2, 3]
    with torch.no_grad():
        on_grey = model[:4](torch.zeros(1, 3, SIZE, SIZE))[0]                    # conv2 output (8, 12, 12)
        model.conv2.bias -= on_grey.flatten(1).max(1).values + 0.1
    grey = np.full((1, SIZE, SIZE, 3), 128, np.uint8)
    assert all(direct_objective(model, "relu2", "channel", grey, [u], 3)[0] == 0 for u in units)
    result = run(model, "relu2", units)
    noise = (torch.rand(64, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(5)) * 255).byte().numpy()
    best_random = [direct_objective(model, "relu2", "channel", noise, [u] * 64, 3).max() for u in units]
    assert (result.activation > best_random).all()


def test_plain_ascent_also_rises_but_is_noisier():
    model = conv_net(3)
    smooth = run(model, "conv2", range(8))
    plain = run(model, "conv2", range(8), plain=True)
    assert (plain.curve[:, -1] > plain.curve[:, 0]).all()
    assert (plain.curve[:, -1] - plain.curve[:, 0]).mean() > 0.2

    def roughness(images):  # mean |difference| between horizontally adjacent pixels
        return np.abs(np.diff(images.astype(float), axis=2)).mean()

    # 2.1x at the Fourier gain 4, 1.8x at 8 (the default since the lucent comparison): plain stays the rougher
    assert roughness(plain.images) > 1.5 * roughness(smooth.images)


def test_same_seed_gives_identical_images_and_another_seed_does_not():
    model = conv_net(3)
    a, b = run(model, "conv2", [1, 3], seed=7), run(model, "conv2", [1, 3], seed=7)
    assert a.images.tobytes() == b.images.tobytes()
    np.testing.assert_array_equal(a.curve, b.curve)
    c = run(model, "conv2", [1, 3], seed=8)
    assert np.abs(a.images.astype(int) - c.images.astype(int)).mean() > 5


@pytest.mark.parametrize("channels,layer,objective", [(3, "conv2", "channel"), (1, "conv2", "channel"),
                                                      (3, "relu2", "neuron"), (1, None, "logit")])
def test_batched_and_one_at_a_time_agree(channels, layer, objective):
    model = conv_net(channels)
    units = [4, 0, 2, 2, 1]
    batched = run(model, layer, units, channels, objective=objective)
    alone = [run(model, layer, [u], channels, objective=objective) for u in units]
    chunked = run(model, layer, units, channels, objective=objective, batch_size=2)
    single_images = np.concatenate([r.images for r in alone])
    # Different batch shapes round differently in the convolutions; Adam can amplify that a little.
    assert np.abs(batched.images.astype(int) - single_images.astype(int)).mean() < 2
    np.testing.assert_allclose(batched.activation, [r.activation[0] for r in alone], rtol=0.01, atol=1e-3)
    np.testing.assert_allclose(batched.activation, chunked.activation, rtol=0.01, atol=1e-3)
    assert batched.images[2].tobytes() == batched.images[3].tobytes()   # same unit, same seed


def test_one_channel_images_are_grey_and_three_channel_ones_are_not():
    grey = run(conv_net(1), "conv2", [0, 1], channels=1)
    colour = run(conv_net(3), "conv2", [0, 1])
    assert grey.images.shape == (2, SIZE, SIZE, 1)
    assert colour.images.shape == (2, SIZE, SIZE, 3)
    # the colour model's filters are not grey, so its images are not grey either
    assert np.abs(np.diff(colour.images.astype(int), axis=3)).mean() > 5


def test_variants_with_diversity_differ_more():
    model = conv_net(3)
    kw = dict(variants=3, steps=60)
    plain = run(model, "relu2", [1, 2], **kw)
    diverse = run(model, "relu2", [1, 2], diversity=1.0, **kw)
    assert diverse.images.shape == (6, SIZE, SIZE, 3)
    np.testing.assert_array_equal(diverse.units, [1, 1, 1, 2, 2, 2])

    def gram_similarity(result):
        x = torch.from_numpy(result.images).float().permute(0, 3, 1, 2) / 255
        with torch.no_grad():
            acts = model[:5]((x - 0.5) / 0.25)                                 # relu2's output
        return diversity_penalty(acts, 3).mean().item()

    assert gram_similarity(diverse) < gram_similarity(plain) - 0.02
    # ... at a small cost in the objective (the penalty is weighted relative to it)
    assert diverse.activation.mean() > 0.8 * plain.activation.mean()


def test_diversity_penalty_matches_numpy():
    acts = torch.randn(6, 4, 5, 5, generator=torch.Generator().manual_seed(0))
    a = acts.numpy().reshape(6, 4, 25)
    grams = np.einsum("nkl,njl->nkj", a, a).reshape(6, -1)
    grams /= np.linalg.norm(grams, axis=1, keepdims=True)
    expected = []
    for i in range(6):
        group = range(i // 3 * 3, i // 3 * 3 + 3)
        expected.append(np.mean([grams[i] @ grams[j] for j in group if j != i]))
    np.testing.assert_allclose(diversity_penalty(acts, 3).numpy(), expected, rtol=1e-5)


def test_truncation_stops_the_forward_and_captures_before_inplace_relu():
    model = conv_net(3)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = model.conv2(model.pool1(model.relu1(model.conv1(x))))    # before relu2 (in place)
    with truncated_model(model, "conv2") as truncated:
        got = truncated(x)
    assert model.after.calls == 0                                           # nothing after conv2 ran
    torch.testing.assert_close(got, expected)
    assert (got < 0).any()                                                   # relu2 did not overwrite it


def test_truncation_on_a_residual_model_matches_a_full_forward():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 32, 32)
    kept = {}
    handle = model.layer2[0].register_forward_hook(lambda m, i, o: kept.update(out=o.clone()))
    with torch.no_grad():
        model(x)
    handle.remove()
    with torch.no_grad(), truncated_model(model, "layer2.0") as truncated:
        torch.testing.assert_close(truncated(x), kept["out"])
    result = synthesize(model, Objective("layer2.0.conv1", [3, 9]), pixels(3, size=32), optimizer=Optimizer(steps=3))
    assert result.images.shape == (2, 32, 32, 3)


def hooks_left(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_no_hook_remains_and_model_state_is_restored_even_on_error():
    model = conv_net(3)
    model.train()
    model.conv1.weight.requires_grad_(True)
    model.fc.weight.requires_grad_(False)
    run(model, "relu2", [0], steps=2)
    with pytest.raises(ModelError, match="layer 'conv2' has 8 channels; unit 8 is out of range"):
        run(model, "conv2", [0, 8], steps=2)
    with pytest.raises(ModelError, match=r"^no layer 'nope' in the model \(run 'reportgen layers SPEC'"):
        run(model, "nope", [0], steps=2)
    assert hooks_left(model) == 0
    assert all(m.training for m in model.modules())
    assert model.conv1.weight.requires_grad and not model.fc.weight.requires_grad


def test_frozen_switches_to_eval_without_weight_gradients():
    model = conv_net(3).train()
    with frozen(model):
        assert not any(m.training for m in model.modules())
        assert not any(p.requires_grad for p in model.parameters())
    assert all(m.training for m in model.modules())


def test_argument_errors_name_the_argument():
    model = conv_net(3)
    with pytest.raises(SpecError, match="^objective: 'max' is not one of 'channel', 'neuron', 'logit'.$"):
        Objective("conv2", [0], "max")
    with pytest.raises(SpecError, match="^units: units must be non-negative channel or class indices; "
                                        r"got \[0, -1\].$"):
        Objective("conv2", [0, -1])
    with pytest.raises(SpecError, match="^diversity: a diversity term needs at least 2 variants per unit.$"):
        Objective("conv2", [0], diversity=1.0)
    with pytest.raises(SpecError, match=r"^mean: mean and std need one value per input channel \(3\); "
                                        "got 1 and 1.$"):
        Parameterization(3, mean=[0.5], std=[0.25])
    with pytest.raises(SpecError, match=r"^std: std values must be positive; got \[0.0\].$"):
        Parameterization(1, mean=[0.5], std=[0])
    with pytest.raises(SpecError, match="^size: must be at least 8; got 4.$"):
        Parameterization(1, mean=[0.5], std=[0.25], size=4)
    with pytest.raises(SpecError, match="^seed: must be at least 0; got -1.$"):
        Optimizer(seed=-1)
    with pytest.raises(SpecError, match="^steps: must be at least 1; got 0.$"):
        Optimizer(steps=0)
    with pytest.raises(ModelError, match="the 'logit' objective needs \\(N, classes\\) outputs"):
        run(model, "conv2", [0], objective="logit", steps=1)


# Pixel sums and objectives of images made by `synthesize` before its settings became dataclasses (commit
# 6794570, 1 thread, 24 px, 12 steps, every step warped: settle=0; the Fourier gain then 4): the same settings must give the same images. The new code gave
# bit-identical arrays on the machine that pinned them; the tolerances only absorb another CPU's rounding.
PINNED = [
    ((3, "conv2", [0, 3, 3], "channel", 1, 0.0), dict(gain=4.0), RandomAffine(), Optimizer(settle=0, steps=12),
     [238408, 242801, 242801], [0.09069780260324478, 0.35668155550956726, 0.35668155550956726]),
    ((3, "relu2", [1, 2], "channel", 1, 0.0), dict(fourier=False), None, Optimizer(settle=0, steps=12, lr=0.1),
     [219856, 221958], [0.5225787162780762, 0.8369852304458618]),
    ((1, "conv2", [5, 0], "neuron", 1, 0.0), dict(gain=4.0), RandomAffine(), Optimizer(settle=0, steps=12, seed=4, batch_size=1),
     [78733, 78268], [1.2464442253112793, 0.16864687204360962]),
    ((3, None, [2], "logit", 1, 0.0), dict(gain=4.0), RandomAffine(), Optimizer(settle=0, steps=12), [220046], [0.1764930933713913]),
    ((3, "relu2", [1], "channel", 3, 0.5), dict(gain=4.0), RandomAffine(translate=0.1, scale=(0.8, 1.2), degrees=20.0),
     Optimizer(settle=0, steps=12), [226169, 222724, 223291], [0.06196107342839241, 0.06607896089553833, 0.0739705041050911]),
]


@pytest.mark.parametrize("objective,param,transforms,optimizer,sums,activation", PINNED)
def test_settings_give_the_images_pinned_before_the_split(objective, param, transforms, optimizer, sums,
                                                          activation):
    channels, layer, units, kind, variants, diversity = objective
    result = synthesize(conv_net(channels), Objective(layer, units, kind, variants, diversity),
                        Parameterization(channels, [0.5] * channels, [0.25] * channels, size=SIZE, **param),
                        transforms, optimizer)
    got = result.images.reshape(len(result.images), -1).astype(np.int64).sum(1)
    np.testing.assert_allclose(got, sums, atol=20, rtol=0)       # 20 ≈ a pixel level on 20 of 1728 values
    np.testing.assert_allclose(result.activation, activation, rtol=1e-4)


def test_no_units_give_an_empty_result():
    result = run(conv_net(1), "conv2", [], channels=1)
    assert result.images.shape == (0, SIZE, SIZE, 1) and result.curve.shape == (0, STEPS)
    assert result.activation.shape == (0,) and result.units.shape == (0,)


def test_progress_counts_every_image_step():
    seen = []
    run(conv_net(3), "conv2", range(5), steps=3, batch_size=2, progress=seen.append)
    assert seen == [2] * 3 + [2] * 3 + [1] * 3


def test_fourier_image_is_grey_at_zero_and_valid_everywhere():
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    param = fourier_image(gens, 3, 16)
    with torch.no_grad():
        param.params[0].zero_()
        torch.testing.assert_close(param.image(), torch.full((2, 3, 16, 16), 0.5))
        param.params[0].normal_(0, 100)
        image = param.image()
    assert image.min() >= 0 and image.max() <= 1


def test_fourier_image_follows_its_spectrum():
    # One coefficient, one channel, no colour mixing: the logit image is a cosine of that frequency.
    param = fourier_image([torch.Generator()], 1, 16, decorrelate=False, gain=1.0)
    with torch.no_grad():
        param.params[0].zero_()
        param.params[0][0, 0, 0, 2, 0] = 1.0                                  # real part, fx = 2/16
        logits = torch.logit(param.image()[0, 0].double())
    scale = frequency_scale(16)[0, 2].item()
    expected = np.fft.irfft2(np.pad([[1.0]], ((0, 15), (2, 6))) * scale, s=(16, 16), norm="ortho")
    np.testing.assert_allclose(logits.numpy(), expected, atol=1e-4)
    assert scale > frequency_scale(16)[0, 6].item()                          # low frequencies weigh more


def test_pixel_image_stays_in_range_after_projection():
    param = pixel_image([torch.Generator()], 1, 8)
    with torch.no_grad():
        param.params[0].add_(3.0)
    param.project()
    assert param.image().max() == 1.0


def test_random_affine_identity():
    image = torch.randn(1, 2, 16, 16)
    same = RandomAffine(translate=0.0, scale=(1.0, 1.0), degrees=0.0)(image, [torch.Generator()])
    torch.testing.assert_close(same, image, atol=1e-5, rtol=0)


def test_random_affine_shifts_by_the_drawn_amount_and_fills_with_zero():
    ramp = torch.arange(16.0).expand(1, 1, 16, 16)                           # value = column index
    warp = RandomAffine(translate=0.25, scale=(1.0, 1.0), degrees=0.0)
    seed = next(s for s in range(100) if abs(warp.matrices([torch.Generator().manual_seed(s)])[0, 0, 2]) > 0.2)
    theta = warp.matrices([torch.Generator().manual_seed(seed)])[0]
    torch.testing.assert_close(theta[:, :2], torch.eye(2))
    shift, shift_y = theta[:, 2].tolist()
    shift, shift_y = shift * 16 / 2, shift_y * 16 / 2                        # in pixels, at most 4
    assert 0.8 < abs(shift) <= 4 and abs(shift_y) <= 4
    out = warp(ramp, [torch.Generator().manual_seed(seed)])[0, 0]
    rows = [r for r in range(16) if 0 <= r + shift_y <= 15]
    inside = [c for c in range(16) if 0 <= c + shift <= 15]
    outside = [c for c in range(16) if not -1 < c + shift < 16]
    np.testing.assert_allclose(out[rows][:, inside].numpy(),
                               np.broadcast_to(np.add(inside, shift), (len(rows), len(inside))), atol=1e-4)
    assert outside and (out[:, outside] == 0).all()


def test_random_affine_rotations_and_zooms_stay_in_range():
    warp = RandomAffine(translate=0.0, scale=(0.8, 1.25), degrees=20.0)
    theta = warp.matrices([torch.Generator().manual_seed(s) for s in range(200)])[:, :, :2]   # (200, 2, 2)
    zoom = 1 / theta[:, 0].norm(dim=1)
    angle = torch.rad2deg(torch.atan2(theta[:, 1, 0], theta[:, 0, 0]))
    assert zoom.min() >= 0.8 - 1e-5 and zoom.max() <= 1.25 + 1e-5 and zoom.max() - zoom.min() > 0.3
    assert angle.abs().max() <= 20 + 1e-4 and angle.abs().max() > 15
    torch.testing.assert_close(theta[:, 0, 0], theta[:, 1, 1])               # a rotation times a zoom


def test_random_affine_draws_do_not_depend_on_batch_neighbours():
    warp = RandomAffine()
    alone = warp.matrices([torch.Generator().manual_seed(3)])
    together = warp.matrices([torch.Generator().manual_seed(s) for s in (1, 3, 2)])
    torch.testing.assert_close(together[1], alone[0])


# -- non-square images: (H, W) = (24, 16), every step per axis ---------------------------------------------------
TALL = (24, 16)


def test_frequency_scale_of_a_non_square_image_takes_each_axis_frequencies():
    h, w = TALL
    f = np.sqrt(np.fft.fftfreq(h)[:, None] ** 2 + np.fft.rfftfreq(w)[None, :] ** 2)    # cycles per pixel, per axis
    expected = 1 / np.maximum(f, 1 / max(h, w))
    expected /= np.sqrt((expected ** 2).mean())
    np.testing.assert_allclose(frequency_scale(TALL).numpy(), expected, rtol=1e-5)
    torch.testing.assert_close(frequency_scale((16, 16)), frequency_scale(16), rtol=0, atol=0)


def test_fourier_image_of_a_non_square_size_follows_its_spectrum():
    # One coefficient: 3 cycles down the 24 rows and 2 across the 16 columns.
    param = fourier_image([torch.Generator()], 1, TALL, decorrelate=False, gain=1.0)
    assert param.params[0].shape == (1, 1, 24, 16 // 2 + 1, 2)
    with torch.no_grad():
        param.params[0].zero_()
        param.params[0][0, 0, 3, 2, 0] = 1.0
        logits = torch.logit(param.image()[0, 0].double())
    spectrum = np.zeros((24, 9))
    spectrum[3, 2] = frequency_scale(TALL)[3, 2].item()
    np.testing.assert_allclose(logits.numpy(), np.fft.irfft2(spectrum, s=TALL, norm="ortho"), atol=1e-4)


def test_random_affine_rotates_a_non_square_image_in_pixels():
    # affine_grid's coordinates span 2 along each axis: in pixels (scaled by W/2, H/2) the matrix must be a
    # rotation times a zoom, whatever the aspect
    gens = [torch.Generator().manual_seed(i) for i in range(4)]
    theta = RandomAffine(degrees=40).matrices(gens, aspect=24 / 16)[:, :, :2].double()
    to_pixels = torch.diag(torch.tensor([16.0, 24.0], dtype=torch.float64))
    rotation = to_pixels @ theta @ torch.linalg.inv(to_pixels)
    torch.testing.assert_close(rotation[:, 0, 0], rotation[:, 1, 1])
    torch.testing.assert_close(rotation[:, 0, 1], -rotation[:, 1, 0])
    assert (rotation[:, 0, 1].abs() > 0.01).all()                       # the draws did rotate


def test_synthesis_at_a_non_square_size():
    model = conv_net(3)
    param = Parameterization(3, mean=[0.5] * 3, std=[0.25] * 3, size=list(TALL))
    assert param.hw == TALL and param.size == TALL
    result = synthesize(model, Objective("conv2", [0, 3]), param, RandomAffine(), Optimizer(steps=5))
    assert result.images.shape == (2, 24, 16, 3)
    direct = direct_objective(model, "conv2", "channel", result.images, [0, 3], 3)
    np.testing.assert_allclose(result.activation, direct, rtol=1e-4, atol=1e-5)
    with pytest.raises(SpecError, match=r"^size: must be at least 8 on each side; got \(24, 4\).$"):
        Parameterization(3, mean=[0.5] * 3, std=[0.25] * 3, size=(24, 4))


# -- coarse to fine: smaller images first, then the full size ----------------------------------------------------
def test_a_smaller_fourier_image_is_the_full_one_low_passed_and_sampled():
    # Only frequencies the 16 px grid holds (|f| < 8 cycles per 32 px): the 16 px image is every other pixel.
    param = fourier_image([torch.Generator()], 1, 32, decorrelate=False, gain=1.0)
    spectrum = np.zeros((32, 17), complex)
    for (fy, fx), c in {(0, 0): 0.3, (3, 2): 1.0, (-5, 4): 0.5 - 0.7j, (7, 7): -0.4j}.items():
        spectrum[fy % 32, fx] = c
    with torch.no_grad():
        param.params[0].zero_()
        param.params[0][0, 0, ..., 0] = torch.from_numpy(spectrum.real)
        param.params[0][0, 0, ..., 1] = torch.from_numpy(spectrum.imag)
        small = torch.logit(param.image(16)[0, 0].double()).numpy()
        full = torch.logit(param.image()[0, 0].double()).numpy()
    expected = np.fft.irfft2(spectrum * frequency_scale(32).numpy(), s=(32, 32), norm="ortho")
    np.testing.assert_allclose(full, expected, atol=1e-4)
    np.testing.assert_allclose(small, expected[::2, ::2], atol=1e-4)
    assert param.image((12, 20)).shape == (1, 1, 12, 20)


def test_a_smaller_pixel_image_averages_the_full_one():
    param = pixel_image([torch.Generator()], 1, 16)
    with torch.no_grad():
        param.params[0].copy_(torch.arange(16.0).repeat(16, 1) / 15)            # a horizontal ramp
    small = param.image(8)[0, 0]
    # each 2-pixel-wide antialiased sample lies between its neighbours' values; the ramp stays a ramp
    assert small.shape == (8, 8) and (small[:, 1:] > small[:, :-1]).all()
    np.testing.assert_allclose(small.mean().item(), 0.5, atol=1e-6)
    assert param.image() is param.params[0]


def test_optimizer_stages_sizes_and_steps():
    opt = Optimizer(steps=12, sizes=(0.5, 0.75, 1))
    assert [opt.size_at(t, (128, 64)) for t in (0, 3, 4, 7, 8, 11)] == \
        [(64, 32), (64, 32), (96, 48), (96, 48), (128, 64), (128, 64)]
    assert opt.work((128, 64)) == pytest.approx(4 * (0.25 + 0.5625 + 1))
    assert Optimizer(steps=5).work((24, 24)) == 5
    assert Optimizer(steps=2, sizes=(0.5, 1)).size_at(0, (10, 10)) == (8, 8)        # never below 8 px
    with pytest.raises(SpecError, match=r"^sizes: must grow to 1 \(fractions of the final size\); got \[1.0, 0.5\].$"):
        Optimizer(sizes=(1, 0.5))


@pytest.mark.parametrize("layer,objective", [("conv2", "channel"), ("relu2", "neuron")])
def test_coarse_to_fine_synthesis_rises_and_reproduces(layer, objective):
    model = conv_net(3)
    units = [0, 1, 2, 3]
    result = run(model, layer, units, objective=objective, sizes=(0.5, 0.75, 1.0))
    noise = (torch.rand(64, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(5)) * 255).byte().numpy()
    best_random = [direct_objective(model, layer, objective, noise, [u] * 64, 3).max() for u in units]
    assert (result.activation > best_random).all()
    direct = direct_objective(model, layer, objective, result.images, units, 3)
    np.testing.assert_allclose(result.activation, direct, rtol=1e-4, atol=1e-5)
    again = run(model, layer, units, objective=objective, sizes=(0.5, 0.75, 1.0))
    assert result.images.tobytes() == again.images.tobytes()


class CountingWarp(RandomAffine):
    """The default warp, counting the steps it warped."""

    def __init__(self):
        super().__init__()
        object.__setattr__(self, "calls", 0)

    def __call__(self, images, generators):
        object.__setattr__(self, "calls", self.calls + 1)
        return super().__call__(images, generators)


@pytest.mark.parametrize("steps,settle,warped", [(40, 0.25, 30), (40, 0.0, 40), (7, 0.5, 3), (12, 1.0, 0)])
def test_the_settling_steps_optimize_the_unwarped_image(steps, settle, warped):
    warp = CountingWarp()
    synthesize(conv_net(3), Objective("conv2", [0, 1]), pixels(3), warp, Optimizer(steps=steps, settle=settle))
    assert warp.calls == warped


def test_settling_differs_from_warping_every_step():
    model, objective = conv_net(3), Objective("conv2", [0, 1, 2])
    settled, warped = (synthesize(model, objective, pixels(3), RandomAffine(), Optimizer(steps=STEPS, settle=s))
                       for s in (0.25, 0.0))
    # the same warped steps first: the curves agree until the settling begins, then part
    np.testing.assert_array_equal(settled.curve[:, :30], warped.curve[:, :30])
    assert not np.array_equal(settled.curve[:, 30:], warped.curve[:, 30:])


def test_bfloat16_steps_and_a_float32_final_measure():
    model = conv_net(3)
    dtypes = []
    handle = model.conv2.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    try:
        result = synthesize(model, Objective("conv2", [0, 3]), pixels(3), RandomAffine(),
                            Optimizer(steps=6, autocast=torch.bfloat16))
    finally:
        handle.remove()
    assert dtypes == [torch.bfloat16] * 6 + [torch.float32]        # the steps, then the final measure
    assert result.activation.dtype == np.float32 and result.curve.dtype == np.float32
    direct = direct_objective(model, "conv2", "channel", result.images, [0, 3], 3)
    np.testing.assert_allclose(result.activation, direct, rtol=1e-5, atol=1e-6)


def test_settle_must_be_a_share_of_the_steps():
    with pytest.raises(SpecError, match="settle"):
        Optimizer(settle=1.5)
