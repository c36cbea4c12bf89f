"""The elastic and affine distortions: what every augmentation must keep (shape, dtype, device,
value range, seeding, per-image draws, identity at zero strength) and that each moves pixels the
way its docstring says, checked on synthetic dots and blobs whose destination is known."""

from __future__ import annotations

import math

import pytest
import torch

from sweeplab.config import ConfigError
from sweeplab.training.augment import (
    Augmentations,
    ElasticDistortion,
    RandomAffine,
    RandomShift,
    gaussian_kernel,
)

MNIST = (28, 28)
ODD = (20, 24)  # rows != cols: a mix-up of x and y, or of rows and cols, shows
MNIST_BACKGROUND = -0.4242  # a blank pixel after MNIST's usual normalisation

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA on this machine"),
    ),
]


def make_elastic(shape, background, device="cpu"):
    return ElasticDistortion(shape, 8.0, 4.0, background, device)


def make_affine(shape, background, device="cpu"):
    return RandomAffine(shape, 20.0, 0.15, 15.0, background, device)


def make_chain(shape, background, device="cpu"):
    return Augmentations(
        [
            RandomShift(shape, 2, background, device),
            None,
            make_elastic(shape, background, device),
            make_affine(shape, background, device),
        ]
    )


MAKERS = [
    pytest.param(make_elastic, id="elastic"),
    pytest.param(make_affine, id="affine"),
    pytest.param(make_chain, id="chain"),
]


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_images(n: int, shape: tuple[int, int], seed: int = 0) -> torch.Tensor:
    return torch.rand((n, shape[0] * shape[1]), generator=seeded(seed))


def blob(shape: tuple[int, int], row: float, col: float, width: float = 1.2) -> torch.Tensor:
    """A Gaussian spot centred at (row, col), flattened: smooth enough that bilinear resampling
    moves its centre of mass with the transform, to a small fraction of a pixel."""
    r = torch.arange(shape[0], dtype=torch.float32).view(-1, 1)
    c = torch.arange(shape[1], dtype=torch.float32).view(1, -1)
    return torch.exp(-((r - row) ** 2 + (c - col) ** 2) / (2 * width**2)).flatten()


def centre_of_mass(images: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """(n, 2) intensity-weighted (row, col) of each image (background 0)."""
    weights = images.view(-1, *shape).double()
    r = torch.arange(shape[0], dtype=torch.float64).view(1, -1, 1)
    c = torch.arange(shape[1], dtype=torch.float64).view(1, 1, -1)
    total = weights.sum((1, 2))
    return torch.stack([(weights * r).sum((1, 2)) / total, (weights * c).sum((1, 2)) / total], 1)


# ---------------------------------------------------------------- what every augmentation keeps


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("make", MAKERS)
def test_shape_dtype_device_and_value_range_are_kept(make, device):
    augment = make(ODD, MNIST_BACKGROUND, device)
    images = random_images(16, ODD).to(device)
    out = augment(images, seeded(1))
    assert out.shape == images.shape and out.dtype == images.dtype
    assert out.device == images.device
    # bilinear samples are convex combinations of the image's pixels and the background
    low = torch.minimum(images.min(1).values, torch.tensor(MNIST_BACKGROUND, device=device))
    high = torch.maximum(images.max(1).values, torch.tensor(MNIST_BACKGROUND, device=device))
    assert (out >= low[:, None] - 1e-6).all() and (out <= high[:, None] + 1e-6).all()


@pytest.mark.parametrize("make", MAKERS)
def test_same_seed_same_output_other_seed_other_output(make):
    augment = make(MNIST, 0.0)
    images = random_images(8, MNIST)
    first, again = augment(images, seeded(7)), augment(images, seeded(7))
    other = augment(images, seeded(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("make", MAKERS)
def test_each_image_of_a_batch_gets_its_own_distortion(make):
    augment = make(MNIST, 0.0)
    images = blob(MNIST, 10.0, 16.0).expand(2, -1).contiguous()
    out = augment(images, seeded(3))
    assert not torch.allclose(out[0], out[1], atol=1e-3)


@pytest.mark.parametrize(
    "augment",
    [
        pytest.param(ElasticDistortion(MNIST, 0.0, 4.0, 0.0), id="elastic"),
        pytest.param(RandomAffine(MNIST, 0.0, 0.0, 0.0, 0.0), id="affine"),
        pytest.param(Augmentations(), id="empty-chain"),
        pytest.param(Augmentations([None]), id="none-chain"),
    ],
)
def test_zero_strength_returns_the_input_and_draws_nothing(augment):
    images = random_images(4, MNIST)
    generator = seeded(5)
    state = generator.get_state()
    out = augment(images, generator)
    assert torch.equal(out, images)
    # the trainer's batch order shares this generator: it must not move
    assert torch.equal(generator.get_state(), state)


@pytest.mark.parametrize("make", MAKERS)
def test_a_batch_of_128_mnist_images_runs_through(make):
    augment = make(MNIST, MNIST_BACKGROUND)
    out = augment(random_images(128, MNIST), seeded(0))
    assert out.shape == (128, 28 * 28) and torch.isfinite(out).all()


def test_a_chain_applies_its_augmentations_in_turn():
    shift, elastic = RandomShift(MNIST, 2, 0.0), make_elastic(MNIST, 0.0)
    images = random_images(4, MNIST)
    by_hand_generator = seeded(9)
    by_hand = elastic(shift(images, by_hand_generator), by_hand_generator)
    assert torch.equal(Augmentations([shift, None, elastic])(images, seeded(9)), by_hand)


@pytest.mark.parametrize(
    "make",
    [
        lambda: ElasticDistortion(MNIST, -1.0, 4.0, 0.0),
        lambda: ElasticDistortion(MNIST, 8.0, 0.0, 0.0),
        lambda: RandomAffine(MNIST, -5.0, 0.0, 0.0, 0.0),
        lambda: RandomAffine(MNIST, 0.0, 1.0, 0.0, 0.0),
        lambda: RandomAffine(MNIST, 0.0, 0.0, 90.0, 0.0),
    ],
)
def test_impossible_strengths_are_refused(make):
    with pytest.raises(ValueError):
        make()


# ---------------------------------------------------------------- elastic distortion


@pytest.mark.parametrize("sigma", [0.5, 1.0, 4.0])
def test_gaussian_kernel_is_normalised_symmetric_and_three_sigmas_wide(sigma):
    kernel = gaussian_kernel(sigma)
    assert kernel.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(kernel, kernel.flip(0))
    assert len(kernel) == 2 * max(1, round(3 * sigma)) + 1
    assert kernel.argmax().item() == len(kernel) // 2


def test_a_constant_displacement_translates_the_image():
    elastic = ElasticDistortion(ODD, 1.0, 4.0, background=-1.0)
    images = random_images(3, ODD)
    displacement = torch.zeros(3, 2, *ODD)
    displacement[:, 0], displacement[:, 1] = 1.0, 2.0  # read from 1 column right, 2 rows down
    out = elastic.warp(images, displacement).view(3, *ODD)
    source = images.view(3, *ODD)
    torch.testing.assert_close(out[:, :-2, :-1], source[:, 2:, 1:], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[:, -2:, :], torch.full((3, 2, ODD[1]), -1.0), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[:, :, -1], torch.full((3, ODD[0]), -1.0), atol=1e-5, rtol=0)


def test_the_field_is_bounded_by_alpha_and_scales_with_it():
    small, large = ElasticDistortion(MNIST, 2.0, 4.0, 0.0), ElasticDistortion(MNIST, 8.0, 4.0, 0.0)
    field_small, field_large = small.draw(64, seeded(2)), large.draw(64, seeded(2))
    assert field_large.abs().max() <= 8.0
    torch.testing.assert_close(field_large, 4 * field_small)
    assert field_large.shape == (64, 2, *MNIST)


def neighbour_correlation(field: torch.Tensor) -> float:
    """Correlation of each displacement with the one a column to its right."""
    a, b = field[..., :-1].flatten(), field[..., 1:].flatten()
    return torch.corrcoef(torch.stack([a, b]))[0, 1].item()


def test_sigma_decides_how_smooth_the_field_is():
    smooth = ElasticDistortion(MNIST, 8.0, 4.0, 0.0).draw(32, seeded(4))
    rough = ElasticDistortion(MNIST, 8.0, 0.3, 0.0).draw(32, seeded(4))
    assert neighbour_correlation(smooth) > 0.9
    assert abs(neighbour_correlation(rough)) < 0.1


def test_a_constant_image_stays_constant():
    elastic = ElasticDistortion(MNIST, 3.0, 4.0, background=0.25)
    # background equal to the constant: exact everywhere, border included
    same = torch.full((16, 28 * 28), 0.25)
    assert torch.equal(elastic(same, seeded(0)), same)
    # otherwise constant wherever no displaced position can leave the image (|d| <= alpha)
    other = torch.full((16, 28 * 28), 0.75)
    inner = elastic(other, seeded(0)).view(16, *MNIST)[:, 3:-3, 3:-3]
    torch.testing.assert_close(inner, torch.full_like(inner, 0.75), atol=1e-6, rtol=0)


def test_a_blob_moves_against_its_displacement():
    """Output pixel p shows input p + d(p), so a blob at q shows up near q - d(q): to first
    order only, as d varies across the blob (its centre of mass lands some 15 % short)."""
    elastic = ElasticDistortion(MNIST, 8.0, 4.0, 0.0)
    images = blob(MNIST, 13.0, 14.0).expand(64, -1).contiguous()
    field = elastic.draw(64, seeded(6))
    moved = centre_of_mass(elastic.warp(images, field), MNIST) - torch.tensor([13.0, 14.0])
    expected = -torch.stack([field[:, 1, 13, 14], field[:, 0, 13, 14]], 1).double()
    assert (moved - expected).norm() < 0.3 * expected.norm()
    assert (moved - expected).abs().max() < 0.3
    assert expected.abs().max() > 0.5  # the moves are large enough for the check to mean much


def test_the_mean_move_grows_with_alpha_and_stays_below_it():
    images = blob(MNIST, 13.5, 13.5).expand(256, -1).contiguous()
    mean_move = {}
    for alpha in (2.0, 8.0):
        out = ElasticDistortion(MNIST, alpha, 4.0, 0.0)(images, seeded(11))
        moved = centre_of_mass(out, MNIST) - torch.tensor([13.5, 13.5])
        mean_move[alpha] = moved.norm(dim=1).mean().item()
        assert mean_move[alpha] < alpha
    assert mean_move[8.0] > 3 * mean_move[2.0] > 0.05


# ---------------------------------------------------------------- random affine


def test_draws_cover_their_ranges():
    affine = RandomAffine(MNIST, 20.0, 0.15, 10.0, 0.0)
    angle, scale, shear = affine.draw(4000, seeded(0))
    for values, low, high in [(angle, -20, 20), (scale, 0.85, 1.15), (shear, -10, 10)]:
        assert values.shape == (4000,)
        assert low <= values.min() < low + 0.02 * (high - low)
        assert high - 0.02 * (high - low) < values.max() <= high


def test_a_call_warps_by_what_it_draws():
    affine = make_affine(ODD, MNIST_BACKGROUND)
    images = random_images(8, ODD)
    by_parts = affine.warp(images, *affine.draw(8, seeded(12)))
    assert torch.equal(affine(images, seeded(12)), by_parts)


def dot(shape: tuple[int, int], row: int, col: int) -> torch.Tensor:
    image = torch.zeros(1, shape[0] * shape[1])
    image.view(*shape)[row, col] = 1.0
    return image


def test_a_quarter_turn_is_counter_clockwise_and_exact():
    affine = RandomAffine(MNIST, 90.0, 0.0, 0.0, 0.0)
    # centre (13.5, 13.5): the upper right (row 4, col 20) turns to the upper left (row 7, col 4)
    out = affine.warp(dot(MNIST, 4, 20), *[torch.tensor([v]) for v in (90.0, 1.0, 0.0)])
    torch.testing.assert_close(out, dot(MNIST, 7, 4), atol=1e-5, rtol=0)


def test_a_half_turn_of_a_non_square_image_is_exact():
    affine = RandomAffine(ODD, 180.0, 0.0, 0.0, 0.0)
    out = affine.warp(dot(ODD, 3, 5), *[torch.tensor([v]) for v in (180.0, 1.0, 0.0)])
    torch.testing.assert_close(out, dot(ODD, ODD[0] - 1 - 3, ODD[1] - 1 - 5), atol=1e-5, rtol=0)


def forward_affine(angle: float, scale: float, shear: float) -> torch.Tensor:
    """The docstring's A = scale * rotation(angle) @ x_shear(shear) in (x, y) = (col, row)."""
    a, t = math.radians(angle), math.tan(math.radians(shear))
    rotation = torch.tensor(
        [[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]], dtype=torch.float64
    )
    return scale * rotation @ torch.tensor([[1.0, t], [0.0, 1.0]], dtype=torch.float64)


@pytest.mark.parametrize("shape", [MNIST, ODD])
def test_a_blob_lands_where_the_drawn_transform_puts_it(shape):
    affine = RandomAffine(shape, 30.0, 0.2, 20.0, 0.0)
    n = 16
    angle, scale, shear = affine.draw(n, seeded(13))
    centre = torch.tensor([(shape[1] - 1) / 2, (shape[0] - 1) / 2], dtype=torch.float64)  # (x, y)
    start = centre + torch.tensor([4.0, -3.0], dtype=torch.float64)
    images = blob(shape, start[1].item(), start[0].item()).expand(n, -1).contiguous()
    landed = centre_of_mass(affine.warp(images, angle, scale, shear), shape).flip(1)  # (x, y)
    for i in range(n):
        matrix = forward_affine(angle[i].item(), scale[i].item(), shear[i].item())
        expected = centre + matrix @ (start - centre)
        assert (landed[i] - expected).abs().max() < 0.1, (i, landed[i], expected)


def test_random_shift_moves_each_image_by_its_own_offset():
    rows, cols, background = 5, 6, -1.0
    images = torch.arange(1.0, 1 + 8 * rows * cols).view(8, rows * cols)
    shift = RandomShift((rows, cols), 1, background)
    moved = shift(images, torch.Generator().manual_seed(0))
    assert moved.shape == images.shape
    seen = set()
    for before, after in zip(images.view(8, rows, cols), moved.view(8, rows, cols), strict=True):
        matches = []
        for d_row in (-1, 0, 1):
            for d_col in (-1, 0, 1):
                expected = torch.full((rows, cols), background)
                src = before[
                    max(0, -d_row) : rows - max(0, d_row), max(0, -d_col) : cols - max(0, d_col)
                ]
                expected[
                    max(0, d_row) : rows - max(0, -d_row), max(0, d_col) : cols - max(0, -d_col)
                ] = src
                if torch.equal(after, expected):
                    matches.append((d_row, d_col))
        assert len(matches) == 1, "each output is exactly one translate of its input"
        seen.add(matches[0])
    assert len(seen) > 1  # offsets are drawn per image, not per batch
    again = shift(images, torch.Generator().manual_seed(0))
    assert torch.equal(moved, again)  # the batch-order generator makes it reproducible


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("trainer.shift_pixels=2", "trainer.shift_pixels=2: distorts images; data=synthetic"),
        ("trainer.elastic_alpha=8", "trainer.elastic_alpha=8.0: distorts images; data=synthetic"),
        ("trainer.affine_shear=5", "trainer.affine_shear=5.0: distorts images; data=synthetic"),
        ("trainer.shift_pixels=-1", "trainer.shift_pixels=-1: must be in [0, 8]"),
        ("trainer.elastic_alpha=-1", "trainer.elastic_alpha=-1.0: must be in [0, 100]"),
        ("trainer.elastic_sigma=0", "trainer.elastic_sigma=0.0: must be > 0"),
        ("trainer.affine_degrees=200", "trainer.affine_degrees=200.0: must be in [0, 180]"),
        ("trainer.affine_scale=1", "trainer.affine_scale=1.0: must be in [0, 0.9]"),
        ("trainer.affine_shear=-3", "trainer.affine_shear=-3.0: must be in [0, 60]"),
    ],
)
def test_bad_distortions_are_refused_naming_the_key(make_config, override, named):
    """Before any run: the synthetic task has no images; a strength out of its range."""
    with pytest.raises(ConfigError) as err:
        make_config(override)
    assert str(err.value).startswith(named)
