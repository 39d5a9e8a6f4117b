"""The ADM UNet (Dhariwal & Nichol 2021) with the knobs the P2 paper's Table 3 ablates.

Module and parameter names follow the authors' code, so their released ``state_dict`` files load unchanged.
``create_model(**knobs)`` takes the authors' command-line flag names; with their README flags at 256 px it
builds 93,563,910 parameters.

Input ``x`` (B, in_channels, H, W) in [-1, 1] and timesteps ``t`` (B,) (original indices, not rescaled);
output (B, out_channels, H, W), ``out_channels = 2 * in_channels`` with learned sigma.
"""

from __future__ import annotations

import math
from abc import abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

from p2core.diffusion import LEARN_SIGMA
from p2core.errors import P2Error

# channel multipliers per resolution used by ADM for 64 px and up; smaller sizes are this project's choice
DEFAULT_CHANNEL_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
    32: (1, 2, 2, 2),
    16: (1, 2, 2),
    8: (1, 2),
}


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (B,) -> (B, dim): cosines then sines of ``t * max_period^(-i / half)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with 32 groups computed in float32 whatever the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def normalization(channels: int) -> nn.Module:
    return GroupNorm32(32, channels)


def zero_module(module: nn.Module) -> nn.Module:
    """Initialise every parameter of ``module`` to zero (ADM's zero-init of residual outputs)."""
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


class TimestepBlock(nn.Module):
    @abstractmethod
    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Apply the block to ``x`` conditioned on the timestep embedding ``emb``."""


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    """A sequence whose timestep-aware children also receive the embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling, optionally followed by a 3x3 conv."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """2x downsampling: strided 3x3 conv, or 2x2 average pooling."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        self.op = (
            nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)
            if use_conv
            else nn.AvgPool2d(kernel_size=2, stride=2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(TimestepBlock):
    """Residual block conditioned on the timestep; ``up``/``down`` make it a BigGAN-style resampling block.

    With ``use_scale_shift_norm`` the embedding gives a scale and shift applied after the second GroupNorm
    (``h = norm(h) * (1 + scale) + shift``); otherwise it is added before it.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_scale_shift_norm: bool = False,
        up: bool = False,
        down: bool = False,
    ):
        super().__init__()
        self.out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            normalization(channels), nn.SiLU(), nn.Conv2d(channels, self.out_channels, 3, padding=1)
        )
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels)
        )
        self.out_layers = nn.Sequential(
            normalization(self.out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1)),
        )
        self.skip_connection = (
            nn.Identity() if self.out_channels == channels else nn.Conv2d(channels, self.out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            norm_act, conv = self.in_layers[:-1], self.in_layers[-1]
            h = conv(self.h_upd(norm_act(x)))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[..., None, None]
        if self.use_scale_shift_norm:
            norm, rest = self.out_layers[0], self.out_layers[1:]
            scale, shift = emb_out.chunk(2, dim=1)
            h = rest(norm(h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Spatial self-attention over all H*W positions, with ADM's (legacy) per-head qkv channel layout."""

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1):
        super().__init__()
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(f"{channels} channels are not divisible by num_head_channels={num_head_channels}")
            self.num_heads = channels // num_head_channels
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, *spatial = x.shape
        flat = x.reshape(batch, channels, -1)
        qkv = self.qkv(self.norm(flat))  # (B, 3C, L), laid out as heads x (q, k, v) x head_dim
        head_dim = channels // self.num_heads
        # contiguous (B, heads, L, head_dim) operands: on the CPU SDPA's fused kernel takes only those, and its
        # fallback for strided views ran the small config's attention 2.4x slower than this copy plus the kernel
        q, k, v = qkv.reshape(batch, self.num_heads, 3, head_dim, -1).transpose(-1, -2).contiguous().unbind(dim=2)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, L, head_dim)
        out = out.transpose(-1, -2).reshape(batch, channels, -1)
        return (flat + self.proj_out(out)).reshape(batch, channels, *spatial)


class UNetModel(nn.Module):
    """ADM UNet. See :func:`create_model` for the knobs in the authors' flag names."""

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: tuple[int, ...],
        dropout: float = 0.0,
        channel_mult: tuple[float, ...] = (1, 2, 4, 8),
        conv_resample: bool = True,
        num_heads: int = 1,
        num_head_channels: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
    ):
        super().__init__()
        self.image_size = image_size
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.model_channels = model_channels
        time_embed_dim = model_channels * 4
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, time_embed_dim), nn.SiLU(), nn.Linear(time_embed_dim, time_embed_dim)
        )

        def res_block(channels, out, **updown):
            return ResBlock(channels, time_embed_dim, dropout, out, use_scale_shift_norm, **updown)

        def attention(channels):
            return AttentionBlock(channels, num_heads, num_head_channels)

        ch = input_ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        skip_channels = [ch]
        downsample_factor = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [res_block(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if downsample_factor in attention_resolutions:
                    layers.append(attention(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                down = res_block(ch, ch, down=True) if resblock_updown else Downsample(ch, conv_resample, ch)
                self.input_blocks.append(TimestepEmbedSequential(down))
                skip_channels.append(ch)
                downsample_factor *= 2

        self.middle_block = TimestepEmbedSequential(res_block(ch, ch), attention(ch), res_block(ch, ch))

        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers = [res_block(ch + skip_channels.pop(), int(model_channels * mult))]
                ch = int(model_channels * mult)
                if downsample_factor in attention_resolutions:
                    layers.append(attention(ch))
                if level and i == num_res_blocks:
                    layers.append(res_block(ch, ch, up=True) if resblock_updown else Upsample(ch, conv_resample, ch))
                    downsample_factor //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(
            normalization(ch), nn.SiLU(), zero_module(nn.Conv2d(input_ch, out_channels, 3, padding=1))
        )

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(x.dtype))
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)


def parse_channel_mult(channel_mult: str | tuple | list, image_size: int) -> tuple[float, ...]:
    """``"1,1,2,2,4,4"`` or a sequence; empty means ADM's default for ``image_size``."""
    if isinstance(channel_mult, str):
        channel_mult = [float(part) if "." in part else int(part) for part in channel_mult.split(",") if part.strip()]
    if not channel_mult:
        if image_size not in DEFAULT_CHANNEL_MULT:
            raise ValueError(
                f"no default channel_mult for image_size {image_size}; sizes: {sorted(DEFAULT_CHANNEL_MULT)}"
            )
        return DEFAULT_CHANNEL_MULT[image_size]
    return tuple(channel_mult)


def create_model(
    image_size: int,
    num_channels: int = 128,
    num_res_blocks: int = 1,
    attention_resolutions: str | tuple = "16",
    num_heads: int = 4,
    num_head_channels: int = 64,
    channel_mult: str | tuple = "",
    resblock_updown: bool = True,
    use_scale_shift_norm: bool = True,
    dropout: float = 0.0,
    learn_sigma: bool = LEARN_SIGMA,
    in_channels: int = 3,
) -> UNetModel:
    """Build an ADM UNet from the authors' flag names (defaults: the P2 paper's 256 px configuration).

    ``attention_resolutions`` lists feature-map sizes in pixels ("32,16,8"); each must be reachable by halving
    ``image_size`` within the levels of ``channel_mult``. ``num_head_channels = -1`` uses ``num_heads`` heads.
    """
    mult = parse_channel_mult(channel_mult, image_size)
    if isinstance(attention_resolutions, str):
        attention_resolutions = [int(part) for part in attention_resolutions.split(",") if part.strip()]
    reachable = {image_size // 2**level for level in range(len(mult))}
    unreachable = sorted(set(attention_resolutions) - reachable)
    if unreachable:
        raise ValueError(
            f"attention_resolutions {unreachable} not among the feature-map sizes {sorted(reachable)} "
            f"of a {image_size} px UNet with channel_mult {mult}"
        )
    if image_size % 2 ** (len(mult) - 1):
        raise ValueError(f"image_size {image_size} cannot be halved {len(mult) - 1} times (channel_mult {mult})")
    widths = {int(m * num_channels) for m in mult}
    if any(width % 32 for width in widths):
        raise ValueError(f"channel widths {sorted(widths)} must be multiples of 32 (GroupNorm with 32 groups)")
    return UNetModel(
        image_size=image_size,
        in_channels=in_channels,
        model_channels=num_channels,
        out_channels=in_channels * (2 if learn_sigma else 1),
        num_res_blocks=num_res_blocks,
        attention_resolutions=tuple(image_size // res for res in attention_resolutions),
        dropout=dropout,
        channel_mult=mult,
        num_heads=num_heads,
        num_head_channels=num_head_channels,
        use_scale_shift_norm=use_scale_shift_norm,
        resblock_updown=resblock_updown,
    )


def with_geometry(flags: dict, resolution: int, channels: int, learn_sigma: bool) -> dict:
    """:func:`create_model` arguments: ``flags`` with the data's ``image_size`` (px) and ``in_channels`` filled in, and
    ``learn_sigma`` as the diffusion has it unless given; a flag that conflicts with the data is a :class:`P2Error`."""
    kwargs = dict(flags)
    for key, actual in (("image_size", resolution), ("in_channels", channels)):
        if kwargs.setdefault(key, actual) != actual:
            raise P2Error(f"model {key}={kwargs[key]} but the dataset has {actual}")
    kwargs.setdefault("learn_sigma", learn_sigma)
    return kwargs
