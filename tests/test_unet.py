import pytest
import torch

from p2core.unet import create_model

PAPER_FLAGS = dict(
    image_size=256,
    num_channels=128,
    num_res_blocks=1,
    attention_resolutions="16",
    num_head_channels=64,
    resblock_updown=True,
    use_scale_shift_norm=True,
    learn_sigma=True,
)


def count(model):
    return sum(p.numel() for p in model.parameters())


def test_paper_configuration_has_the_authors_parameter_count():
    assert count(create_model(**PAPER_FLAGS)) == 93_563_910


def test_authors_state_dict_names():
    names = set(create_model(**PAPER_FLAGS).state_dict())
    for name in (
        "time_embed.0.weight",
        "input_blocks.0.0.weight",
        "middle_block.1.qkv.weight",
        "output_blocks.3.1.qkv.weight",
        "output_blocks.3.2.in_layers.2.weight",
        "out.2.weight",
    ):
        assert name in names


TABLE3 = {
    "a": {},
    "b": {"resblock_updown": False},
    "c": {"attention_resolutions": "lowest"},
    "d": {"num_res_blocks": 2},
}


@pytest.mark.parametrize(
    "image_size, channel_mult, attention",
    [(8, "1,2", "4"), (16, "", "8"), (32, "1,2,2,2", "16"), (64, "1,2,2,2", "16")],
)
@pytest.mark.parametrize("variant", sorted(TABLE3))
def test_table3_variants_build_and_run(image_size, channel_mult, attention, variant):
    knobs = dict(
        image_size=image_size,
        num_channels=32,
        channel_mult=channel_mult,
        attention_resolutions=attention,
        num_head_channels=32,
        in_channels=3,
    )
    knobs.update(TABLE3[variant])
    if knobs["attention_resolutions"] == "lowest":
        levels = len(channel_mult.split(",")) if channel_mult else 3
        knobs["attention_resolutions"] = str(image_size // 2 ** (levels - 1))
    model = create_model(**knobs)
    out = model(torch.randn(2, 3, image_size, image_size), torch.tensor([0, 999]))
    assert out.shape == (2, 6, image_size, image_size)


def test_attention_changes_output_and_gets_gradients():
    torch.manual_seed(0)
    model = create_model(
        image_size=8, num_channels=32, channel_mult="1,2", attention_resolutions="4", num_head_channels=32
    )
    for p in model.parameters():  # undo zero-init so every path contributes
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(2, 3, 8, 8)
    model(x, torch.tensor([1, 2])).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_bad_knobs_name_the_problem():
    with pytest.raises(ValueError, match="attention_resolutions"):
        create_model(image_size=32, num_channels=32, channel_mult="1,2", attention_resolutions="4")
    with pytest.raises(ValueError, match="no default channel_mult"):
        create_model(image_size=48, num_channels=32)
    with pytest.raises(ValueError, match="multiples of 32"):
        create_model(image_size=16, num_channels=40, channel_mult="1,2", attention_resolutions="8")
