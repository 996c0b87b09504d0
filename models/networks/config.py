"""Network configuration: the reference layer sizes and the fast shipped configuration."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

__all__ = [
    "NetworkConfig",
    "reference_config",
    "fast_config",
    "curves_config",
    "window_curves_config",
    "head_curves_config",
    "landmark_curves_config",
    "restoring_curves_config",
    "get_config",
]


@dataclass(frozen=True)
class NetworkConfig:
    """Widths, depths and the input/output scheme of the five DISARM networks.

    ``io_downsample``: the encoders and the generator see the input average-pooled by this
    factor (1 = full resolution, as the reference; 2 = half, the fast configuration).
    ``output``: ``"image"`` = the generator draws the image (tanh, the reference);
    ``"detail"`` = it draws the image at the networks' resolution (linear output), and the
    detail that resolution loses is added back from the input (``y = up(G) + x - up(down(x))``);
    ``"affine"`` = it draws a smooth per-voxel gain and offset, upsampled and applied to the
    full-resolution input (``y = exp(g) * x + b``; the identity solves L_rec and L_cc);
    ``"curves"`` = it draws, at the networks' resolution, a piecewise-linear intensity curve
    per voxel (``curve_knots`` values at fixed, evenly spaced input levels), upsampled and
    applied to the full-resolution input: ``y = curve(x)``. A curve can give every tissue its
    own level (it is not one gain), varies smoothly in space (it undoes a bias field), and
    cannot move an edge or invent one. To draw the curve of *this* input G also sees the input
    itself: pooled to the content code's grid (its local mean and spread: the canvas), and
    the ``curve_quantiles`` quantiles of its head's intensities (where its tissues lie).
    ``curve_grid``: ``"voxel"`` = a curve per voxel of G's grid, as above; ``"window"`` = G's
    knot maps are averaged into one *monotone* curve per window (a training patch, a window
    of windowed inference): the curve cannot map one tissue two ways inside a window, nor
    invert an edge, and neighbouring windows blend into a curve that varies over centimetres
    (a bias field's scale), never voxel to voxel. ``"head"`` = one monotone curve per *head*,
    drawn from the quantiles of the whole head (a 1-in-4 subsample), the label and the code
    only, so every window of a head gets the same tissue mapping, composed with a bounded gain
    per window (``y = curve((x + 1) g - 1)``: a smooth bias field, blended across windows).
    ``curve_levels`` (head curves): where a head's curve has its knots on the input axis:
    ``"even"`` = ``curve_knots`` evenly spaced levels over the normalized range;
    ``"quantiles"`` = the head's own ``curve_quantiles`` quantiles (its landmarks, as in Nyul
    and Udupa's standardization) and the two ends of the range, so the knots sit where the
    head's tissues are and G draws the value each landmark takes (a learned standard scale,
    per head and scanner code) rather than a curve over levels no tissue may occupy.
    ``restore_channels`` (head curves): > 0 adds R after the curve of the scanner-free
    output (label and code zero), a small full-resolution convolutional restorer
    (``models.networks.restorer``) for what a curve cannot map: blur and noise. At inference
    it runs once on the blended whole image.
    ``upsample``: how G doubles its size: ``"resize"`` (trilinear x2, then a 3x3x3 conv: no
    checkerboard) or ``"transpose"`` (the reference's ConvTranspose3d(k=3, stride=2), whose
    kernel overlaps unevenly and prints a period-2 grid; Odena et al., Distill 2016) or
    ``"reference"`` (the reference's exact layers, for imported models: the stride-2
    ConvTranspose3d without output padding gives 2n - 1 voxels and a 2x2x2 transposed head
    restores 2n).
    ``stem_slope``: negative slope of the LeakyReLU after E_b's 7x7x7 stem (the reference's
    layer has PyTorch's default, 0.01; models trained here use 0.2).
    ``detail_gate``: with ``output="detail"``, G also draws a gate in [0, 1] that scales the
    input's detail band (``y = up(G) + up(gate) * (x - up(down(x)))``), so noise in flat
    tissue need not pass through untouched while edges keep their detail.
    ``up_norm``: instance norm after G's upsampling convolutions (the reference). It sets each
    channel's mean over the volume to zero, so G cannot set the output's mean level from its
    input: on whole heads the layout of head and air tells it, on a patch inside the brain
    nothing does. ``False`` keeps the norm in G's residual blocks only.
    """

    name: str = "reference"
    n_scanners: int = 5
    io_downsample: int = 1
    output: str = "image"
    stem_channels: int = 4  #: E_b's 7x7x7 stem
    content_channels: int = 8  #: channels of the content code z_b
    n_content_blocks: int = 4  #: residual blocks of E_b
    content_noise: bool = True  #: add N(0, 1) to z_b in training (ref)
    z_dim: int = 8  #: scanner code size
    scanner_channels: tuple[int, ...] = (8, 16, 24, 32)  #: E_s stem + three blocks
    n_gen_blocks: int = 3  #: G's residual blocks after the concatenation
    disc_channels: tuple[int, ...] = (8, 16, 32, 64, 128)  #: image discriminator trunk
    content_disc_channels: tuple[int, ...] = (16, 16, 32)  #: D_b
    clip_max: float = 1.0  #: upper clip of normalized intensities ([-1, clip_max])
    upsample: str = "resize"  #: "resize" (trilinear + conv), "transpose" or "reference"
    stem_slope: float = 0.2  #: E_b's stem LeakyReLU slope (the reference's layer: 0.01)
    detail_gate: bool = False  #: learn a gate on the detail band (only with output="detail")
    up_norm: bool = True  #: instance norm in G's upsampling layers (ref); see below
    curve_knots: int = 12  #: with output="curves": knots of each voxel's intensity curve
    curve_quantiles: int = 16  #: with output="curves": G sees this many input quantiles
    curve_grid: str = "voxel"  #: with output="curves": one curve per "voxel", "window", "head"
    curve_levels: str = "even"  #: head curves: knots at "even" levels or the head's "quantiles"
    restore_channels: int = 0  #: head curves: width of the full-resolution restorer (0 = none)

    def __post_init__(self) -> None:
        if self.n_scanners < 2:
            raise ValueError("DISARM needs at least two training scanners")
        if self.io_downsample not in (1, 2, 4):
            raise ValueError("io_downsample must be 1, 2 or 4")
        if self.output not in ("image", "detail", "affine", "curves"):
            raise ValueError("output must be 'image', 'detail', 'affine' or 'curves'")
        if self.curve_knots < 2:
            raise ValueError("curve_knots must be at least 2")
        if self.curve_grid not in ("voxel", "window", "head"):
            raise ValueError("curve_grid must be 'voxel', 'window' or 'head'")
        if self.curve_levels not in ("even", "quantiles"):
            raise ValueError("curve_levels must be 'even' or 'quantiles'")
        if self.restore_channels and self.curve_grid != "head":
            raise ValueError("restore_channels needs one curve per head")
        if self.curve_levels == "quantiles" and self.curve_grid != "head":
            raise ValueError("curve_levels='quantiles' needs one curve per head")
        if self.upsample not in ("resize", "transpose", "reference"):
            raise ValueError("upsample must be 'resize', 'transpose' or 'reference'")
        if self.output == "image" and self.clip_max != 1.0:
            raise ValueError("output='image' ends in tanh: clip_max must be 1.0")

    @property
    def canvas_channels(self) -> int:
        """Channels of the input G sees besides the codes (2 with curves, else 0)."""
        return 2 if self.output == "curves" else 0

    @property
    def curves_per_window(self) -> bool:
        """G draws one curve per window (``output="curves"``, ``curve_grid`` ``"window"`` or
        ``"head"``: the head's curve times the window's gain)."""
        return self.output == "curves" and self.curve_grid in ("window", "head")

    @property
    def curves_per_head(self) -> bool:
        """G draws one curve per head and a gain per window (``curve_grid="head"``): it needs
        the quantiles of the whole head, not only of the window."""
        return self.output == "curves" and self.curve_grid == "head"

    @property
    def head_knots(self) -> int:
        """Knots of a head's curve: ``curve_knots`` even levels, or the head's
        ``curve_quantiles`` landmarks and the two ends of the range."""
        return self.curve_quantiles + 2 if self.curve_levels == "quantiles" else self.curve_knots

    @property
    def source_quantiles(self) -> int:
        """Quantiles of the input's head intensities G sees (``curve_quantiles`` with curves,
        else 0)."""
        return self.curve_quantiles if self.output == "curves" else 0

    @property
    def factor(self) -> int:
        """Spatial sizes are padded to a multiple of this (io downsampling x E_b's stride)."""
        return self.io_downsample * 2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> NetworkConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown network configuration field(s): {', '.join(unknown)}")
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        # cards written before these fields existed: transposed convolutions, no gate
        d.setdefault("upsample", "transpose")
        d.setdefault("up_norm", True)
        return cls(**d)


def reference_config(n_scanners: int = 5) -> NetworkConfig:
    """The reference code's layer sizes (1.08 M parameters for five scanners), upsampling by
    resize-convolution (``upsample="transpose"`` restores the reference's own layers)."""
    return NetworkConfig(name="reference", n_scanners=n_scanners)


def fast_config(n_scanners: int = 5) -> NetworkConfig:
    """The shipped configuration: reference widths, run at half resolution, gated detail
    output, resize-convolution upsampling, no instance norm after G's upsampling (it trains
    on patches, where that norm hides the level of the tissue a patch holds)."""
    return NetworkConfig(
        name="fast",
        n_scanners=n_scanners,
        io_downsample=2,
        output="detail",
        clip_max=2.0,
        detail_gate=True,
        up_norm=False,
    )


def curves_config(n_scanners: int = 5) -> NetworkConfig:
    """The fast configuration's networks drawing intensity curves applied to the input
    (``output="curves"``): anatomy and edges come from the input, contrast from G."""
    return replace(fast_config(n_scanners), name="curves", output="curves", detail_gate=False)


def window_curves_config(n_scanners: int = 5) -> NetworkConfig:
    """The curves configuration with one monotone curve per window (``curve_grid="window"``)."""
    return replace(curves_config(n_scanners), name="window-curves", curve_grid="window")


def head_curves_config(n_scanners: int = 5) -> NetworkConfig:
    """The curves configuration with one monotone curve per head and a gain per window
    (``curve_grid="head"``)."""
    return replace(curves_config(n_scanners), name="head-curves", curve_grid="head")


def landmark_curves_config(n_scanners: int = 5) -> NetworkConfig:
    """The head-curves configuration with its knots at the head's own quantiles
    (``curve_levels="quantiles"``)."""
    return replace(
        head_curves_config(n_scanners), name="landmark-curves", curve_levels="quantiles"
    )


def restoring_curves_config(n_scanners: int = 5) -> NetworkConfig:
    """The landmark-curves configuration with an 8-channel full-resolution restorer after the
    curve (``restore_channels=8``)."""
    return replace(landmark_curves_config(n_scanners), name="restoring-curves", restore_channels=8)


def get_config(name: str, n_scanners: int = 5, **overrides) -> NetworkConfig:
    """``"reference"``, ``"fast"``, ``"curves"``, ``"window-curves"``, ``"head-curves"`` or
    ``"landmark-curves"`` or ``"restoring-curves"``, with optional field overrides."""
    presets = {
        "reference": reference_config,
        "fast": fast_config,
        "curves": curves_config,
        "window-curves": window_curves_config,
        "head-curves": head_curves_config,
        "landmark-curves": landmark_curves_config,
        "restoring-curves": restoring_curves_config,
    }
    if name not in presets:
        raise ValueError(f"unknown network configuration {name!r}; known: {', '.join(presets)}")
    return replace(presets[name](n_scanners), **overrides)
