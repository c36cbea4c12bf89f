"""Random distortions of batches of training images: a shift of a few pixels, Simard's elastic
distortion, and a random rotation, scaling and shear (`image_distortions` builds what the
trainer's config asks for). Each one distorts every image of a batch in its own way,
draws its random numbers from the trainer's generator (so a seed repeats an epoch exactly) and
fills whatever it moves in from outside the image with the background value.

Images arrive as the trainer holds them, flattened rows of shape (batch, rows * cols):

    augment = Augmentations([RandomShift(shape, 2, bg), ElasticDistortion(shape, 8.0, 4.0, bg)])
    xb = augment(xb, generator)         # same shape, dtype and device

Both distortions resample the image bilinearly (`grid_sample`, align_corners=True, so pixel i of
a row of n sits at -1 + 2i / (n - 1)); a distorted pixel is a convex combination of input pixels
and the background, so it never leaves their range (but for rounding).

Random numbers are drawn on the CPU from the (CPU) generator and only then moved to the images'
device: the same seed then gives the same distortions on every device. At zero strength a
distortion returns its input as it is and draws nothing, so a run with a zero-strength
distortion sees the same batch order as a run without one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from sweeplab.config import TrainerConfig
from sweeplab.training.data import Dataset

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class Augmentations(list):
    """A chain of augmentations applied in turn, each to the output of the one before; None
    entries and an empty chain change nothing, so the trainer can build the list from the
    config's options without branching on which of them are on."""

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for augment in self:
            if augment is not None:
                images = augment(images, generator)
        return images


class RandomShift:
    """Moves each image of a batch by its own random offset of up to `max_pixels` rows and
    columns, filling the uncovered border with the background value: the cheapest of the input
    distortions, it teaches a fully connected network that a digit may sit a little off-centre.

    Each offset is a precomputed index map into the flattened image (plus one background pixel),
    so a batch costs one concatenation and one gather, on any device.
    """

    def __init__(
        self,
        image_shape: tuple[int, int],
        max_pixels: int,
        background: float,
        device: torch.device | str = "cpu",
    ) -> None:
        rows, cols = image_shape
        row = torch.arange(rows).view(-1, 1)
        col = torch.arange(cols).view(1, -1)
        maps = []
        for d_row in range(-max_pixels, max_pixels + 1):
            for d_col in range(-max_pixels, max_pixels + 1):
                src_row, src_col = row - d_row, col - d_col  # output (r, c) shows (r-dr, c-dc)
                inside = (src_row >= 0) & (src_row < rows) & (src_col >= 0) & (src_col < cols)
                maps.append(torch.where(inside, src_row * cols + src_col, rows * cols).flatten())
        self.maps = torch.stack(maps).to(device)  # (offsets, rows * cols)
        self.background = background

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        which = torch.randint(len(self.maps), (images.shape[0],), generator=generator)
        padded = torch.cat([images, images.new_full((images.shape[0], 1), self.background)], 1)
        return torch.gather(padded, 1, self.maps[which.to(images.device)])


class ElasticDistortion:
    """Simard, Steinkraus & Platt (2003), "Best practices for convolutional neural networks
    applied to visual document analysis": each pixel's displacement is uniform noise in [-1, 1]
    smoothed by a Gaussian of `sigma` pixels and scaled by `alpha` pixels, and the image is
    resampled at the displaced positions. A large sigma moves neighbouring pixels together (the
    strokes bend like a hand's wobble); a small one would tear the digit apart.

    The smoothing is separable: a banded matrix of the kernel multiplies the whole batch's fields
    from each side (one batched product each: on a 28 x 28 image far cheaper than a convolution);
    outside the image the noise counts as 0 (as scipy's `gaussian_filter` with mode="constant"
    does in the usual implementations), which calms the field near the border.
    """

    def __init__(
        self,
        image_shape: tuple[int, int],
        alpha: float,
        sigma: float,
        background: float,
        device: torch.device | str = "cpu",
    ) -> None:
        if alpha < 0 or sigma <= 0:
            raise ValueError(f"alpha must be >= 0 and sigma > 0, not {alpha=}, {sigma=}")
        self.image_shape = image_shape
        self.alpha = float(alpha)
        self.background = background
        kernel = gaussian_kernel(sigma)
        rows, cols = image_shape
        self.down_rows = _smoothing_matrix(rows, kernel).to(device)  # (rows, rows)
        self.along_cols = _smoothing_matrix(cols, kernel).T.to(device)  # (cols, cols)
        self.identity = _pixel_grid(image_shape, device)
        self.device = self.identity.device

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n displacement fields (n, 2, rows, cols) in pixels on this object's device: channel 0
        moves along the columns (x), channel 1 along the rows (y); |displacement| <= alpha, since
        the kernel is normalised and the noise lies in [-1, 1]."""
        noise = torch.rand((n, 2, *self.image_shape), generator=generator) * 2 - 1
        smooth = self.down_rows @ noise.to(self.device) @ self.along_cols
        return self.alpha * smooth

    def warp(self, images: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
        """Image i resampled so that output pixel (x, y) shows input position
        (x + dx, y + dy), with (dx, dy) = displacement[i, :, y, x]."""
        rows, cols = self.image_shape
        per_pixel = displacement.to(images.device, images.dtype).permute(0, 2, 3, 1)
        to_grid = per_pixel.new_tensor([2 / max(cols - 1, 1), 2 / max(rows - 1, 1)])
        grid = self.identity.to(images.device, images.dtype) + per_pixel * to_grid
        return _resample(images, grid, self.image_shape, self.background)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.alpha == 0:
            return images
        return self.warp(images, self.draw(images.shape[0], generator))


class RandomAffine:
    """Rotates each image by an angle uniform in [-degrees, degrees] (counter-clockwise as
    displayed, rows running down), scales it by a factor uniform in [1 - scale, 1 + scale] and
    shears it along x by an angle uniform in [-shear, shear] degrees, all around the image's
    centre: the slant, size and tilt by which handwriting varies and which a fully connected
    network does not learn from unaltered images.
    """

    def __init__(
        self,
        image_shape: tuple[int, int],
        degrees: float,
        scale: float,
        shear: float,
        background: float,
        device: torch.device | str = "cpu",
    ) -> None:
        if degrees < 0 or not 0 <= scale < 1 or not 0 <= shear < 90:
            raise ValueError(
                f"need degrees >= 0, 0 <= scale < 1, 0 <= shear < 90, not {degrees=}, "
                f"{scale=}, {shear=}"
            )
        self.image_shape = image_shape
        self.degrees, self.scale, self.shear = float(degrees), float(scale), float(shear)
        self.background = background
        rows, cols = image_shape
        # pixel offsets from the centre -> grid units, which differ along x and y if rows != cols
        self.to_grid = torch.tensor(
            [2 / max(cols - 1, 1), 2 / max(rows - 1, 1)], dtype=torch.float64
        )

    def draw(
        self, n: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """n (angle in degrees, scale factor, shear angle in degrees), as three (n,) tensors on
        the CPU; all three are drawn even when one range is zero, so that the stream of random
        numbers does not depend on which ranges are."""
        u = torch.rand((n, 3), generator=generator, dtype=torch.float64) * 2 - 1
        return u[:, 0] * self.degrees, 1 + u[:, 1] * self.scale, u[:, 2] * self.shear

    def warp(
        self, images: torch.Tensor, angle: torch.Tensor, scale: torch.Tensor, shear: torch.Tensor
    ) -> torch.Tensor:
        """Image i moved by A = scale * rotation(angle) @ x_shear(shear) about the centre: the
        input point at centre + q lands at centre + A q."""
        # grid_sample asks where each output pixel came from: A^-1, conjugated by the pixel ->
        # grid scaling D, theta = D A^-1 D^-1
        inverse = _inverse_affine(angle, scale, shear)
        theta = self.to_grid[:, None] * inverse / self.to_grid[None, :]
        theta = torch.cat([theta, theta.new_zeros(len(theta), 2, 1)], dim=2)
        rows, cols = self.image_shape
        size = (images.shape[0], 1, rows, cols)
        theta = theta.to(images.device, images.dtype)
        grid = F.affine_grid(theta, size, align_corners=True)
        return _resample(images, grid, self.image_shape, self.background)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.degrees == 0 and self.scale == 0 and self.shear == 0:
            return images
        return self.warp(images, *self.draw(images.shape[0], generator))


def gaussian_kernel(sigma: float, truncate: float = 3.0) -> torch.Tensor:
    """The normalised 1-D Gaussian of standard deviation `sigma`, cut off at `truncate` sigmas
    (the tails beyond hold under 0.3 % of its weight)."""
    radius = max(1, int(truncate * sigma + 0.5))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return (kernel / kernel.sum()).float()


def _smoothing_matrix(size: int, kernel: torch.Tensor) -> torch.Tensor:
    """(size, size): row i holds the kernel centred on i, cut at the edges (zero padding), so
    that M @ field convolves each column of the field with the kernel."""
    radius = len(kernel) // 2
    offsets = torch.arange(size)[None, :] - torch.arange(size)[:, None]  # j - i
    inside = offsets.abs() <= radius
    return torch.where(inside, kernel[(offsets + radius).clamp(0, len(kernel) - 1)], 0.0)


def _inverse_affine(angle: torch.Tensor, scale: torch.Tensor, shear: torch.Tensor) -> torch.Tensor:
    """(n, 2, 2) inverses of scale * rotation(angle) @ x_shear(shear), in closed form:
    x_shear(-shear) @ rotation(-angle) / scale. With rows running down, [[cos, sin], [-sin, cos]]
    turns a point counter-clockwise as the image is displayed."""
    a, t = torch.deg2rad(angle), torch.tan(torch.deg2rad(shear))
    cos, sin = torch.cos(a), torch.sin(a)
    inverse_rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    inverse_shear = torch.zeros_like(inverse_rotation)
    inverse_shear[:, 0, 0] = inverse_shear[:, 1, 1] = 1
    inverse_shear[:, 0, 1] = -t
    return inverse_shear @ inverse_rotation / scale[:, None, None]


def _pixel_grid(image_shape: tuple[int, int], device: torch.device | str) -> torch.Tensor:
    """(1, rows, cols, 2) grid coordinates (x, y) of every pixel, as `grid_sample` reads them."""
    rows, cols = image_shape
    y = torch.linspace(-1, 1, rows, device=device) if rows > 1 else torch.zeros(1, device=device)
    x = torch.linspace(-1, 1, cols, device=device) if cols > 1 else torch.zeros(1, device=device)
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    return torch.stack([xx, yy], dim=-1).unsqueeze(0)


def _resample(
    images: torch.Tensor, grid: torch.Tensor, image_shape: tuple[int, int], background: float
) -> torch.Tensor:
    """Bilinear samples of each image at its grid; positions outside the image read as the
    background (grid_sample pads with zeros, so the background is taken off and put back)."""
    n = images.shape[0]
    shifted = (images - background).view(n, 1, *image_shape)
    sampled = F.grid_sample(
        shifted, grid, mode="bilinear", padding_mode="zeros", align_corners=True
    )
    return sampled.view(n, -1) + background


def image_distortions(
    trainer: TrainerConfig, data: Dataset, device: torch.device | str
) -> Augmentations | None:
    """The distortions `trainer` asks for, in turn: affine, elastic, shift (None: none)."""
    if not trainer.distorts_images:
        return None
    assert data.image_shape is not None  # (the config's checks refuse distortions without)
    shape = data.image_shape
    background = float(data.x_train.min())  # a blank pixel, normalised or not
    return Augmentations(
        [
            RandomAffine(
                shape,
                trainer.affine_degrees,
                trainer.affine_scale,
                trainer.affine_shear,
                background,
                device,
            ),
            ElasticDistortion(
                shape, trainer.elastic_alpha, trainer.elastic_sigma, background, device
            ),
            RandomShift(shape, trainer.shift_pixels, background, device)
            if trainer.shift_pixels
            else None,
        ]
    )
