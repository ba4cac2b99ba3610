"""The model: towers, save/load, bad input, the MoE core, and a tiny training run whose loss falls."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.utils._pytree as pytree
from PIL import Image
from safetensors.torch import load_file
from torch.overrides import TorchFunctionMode

from mmodal.config import ModelConfig, tiny_config
from mmodal.encoders.errors import TowerInputError
from mmodal.encoders.language import MoEConfig, MoELanguageModel
from mmodal.encoders.tokenizer import build_tokenizer
from mmodal.model import MModalModel, resolve_model_path

CORPUS = [
    "a large red circle left of a blue square",
    "two green stars and a white hexagon",
    "how many objects are there?",
]


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    config = tiny_config()
    return MModalModel(config, build_tokenizer(CORPUS * 20, vocab_size=300)).eval()


def _images():
    return [Image.new("RGB", (120, 80), (200, 30, 30)), Image.new("L", (50, 90), 128), Image.new("RGBA", (64, 64))]


def test_round_trip_gives_identical_embeddings(tiny_model, tmp_path):
    clips = [
        (np.sin(np.linspace(0, 900, 16000)).astype(np.float32), 16000),
        (np.random.default_rng(0).normal(size=30000), 22050),
    ]
    before = (tiny_model.encode_image(_images()), tiny_model.encode_text(CORPUS), tiny_model.encode_audio(clips))
    match_before = tiny_model.match(_images()[:2], CORPUS[:2])
    tiny_model.save_pretrained(tmp_path / "m")
    loaded = MModalModel.from_pretrained(tmp_path / "m")
    after = (loaded.encode_image(_images()), loaded.encode_text(CORPUS), loaded.encode_audio(clips))
    for a, b in zip(before, after):
        assert torch.equal(a, b)
    assert torch.equal(match_before, loaded.match(_images()[:2], CORPUS[:2]))
    assert ModelConfig.load(tmp_path / "m") == tiny_model.config
    from mmodal.indexes.atomic import default_file_mode

    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "m" / name).stat().st_mode & 0o777 == default_file_mode()


def test_embeddings_are_normalised_on_request(tiny_model):
    assert torch.allclose(tiny_model.encode_text(CORPUS).norm(dim=-1), torch.ones(3), atol=1e-5)
    raw = tiny_model.encode_image(_images(), normalize=False)
    assert raw.shape == (3, tiny_model.config.embed_dim) and not torch.allclose(raw.norm(dim=-1), torch.ones(3))


def test_loading_is_strict(tiny_model, tmp_path):
    from safetensors.torch import load_file, save_file

    tiny_model.save_pretrained(tmp_path / "m")
    weights = load_file(str(tmp_path / "m" / "model.safetensors"))
    weights.pop(next(iter(weights)))
    weights["surprise.weight"] = torch.zeros(2)
    save_file(weights, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(ValueError, match="does not fit its config: missing .* unexpected .*surprise"):
        MModalModel.from_pretrained(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
        MModalModel.from_pretrained(tmp_path / "nowhere")


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: m.encode_image(torch.zeros(2, 3, 10, 10)), r"expects pixels of shape \(B, 3, 32, 32\)"),
        (lambda m: m.encode_image([]), "no images"),
        (lambda m: m.encode_image(["not an image"]), "expected a PIL image"),
        (lambda m: m.encode_text([""]), "empty text"),
        (lambda m: m.encode_text(["   "]), "empty text"),
        (lambda m: m.encode_text(["x" * 10_000]), "too long"),
        (lambda m: m.encode_text("a red circle"), "a list of texts"),
        (lambda m: m.encode_audio([(np.zeros(0, dtype=np.float32), 16000)]), "empty audio"),
        (lambda m: m.encode_audio([(np.zeros(16000 * 10, dtype=np.float32), 16000)]), "at most 4 s"),
        (lambda m: m.encode_audio([(np.full(1600, np.nan, dtype=np.float32), 16000)]), "NaN"),
        (lambda m: m.encode_audio([(np.zeros((2, 3, 4)), 16000)]), "waveform"),
        (lambda m: m.match(_images()[:2], ["a red circle"]), "pairs images with texts"),
    ],
)
def test_towers_reject_bad_input_clearly(tiny_model, call, message):
    with pytest.raises(TowerInputError, match=message):
        call(tiny_model)


def test_long_text_is_truncated_and_other_scripts_encode(tiny_model):
    long = " ".join(["a red circle"] * 50)
    ids, mask = tiny_model.tokenize([long, "a red circle"])
    assert ids.shape[1] == tiny_model.config.text.max_text_tokens and mask[0].all()
    # Words past the cut change nothing: the two texts differ only there.
    a, b = tiny_model.encode_text([long + " and a blue star", long + " and a green hexagon"])
    assert torch.allclose(a, b, atol=1e-5)
    assert tiny_model.encode_text([long, "ein rotes Quadrat", "красный круг"]).shape == (3, 32)


def test_stereo_and_other_rates_are_resampled_to_mono(tiny_model):
    mono = np.sin(np.linspace(0, 500, 8000)).astype(np.float32)
    a = tiny_model.encode_audio([(np.stack([mono, mono], axis=1), 8000)])
    b = tiny_model.encode_audio([(mono, 8000)])
    assert torch.allclose(a, b, atol=1e-5)


# ------------------------------------------------------------------------------------------- MoE core


def _core(**overrides):
    settings = dict(
        vocab_size=40,
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        n_routed_experts=4,
        experts_per_token=2,
        expert_hidden_size=32,
        max_position_embeddings=32,
    )
    config = MoEConfig(**{**settings, **overrides})
    torch.manual_seed(0)
    return MoELanguageModel(config)


def test_moe_core_routes_every_token_and_reports_load():
    core = _core()
    out = core(torch.randint(3, 40, (4, 9)))
    assert out.logits.shape == (4, 9, 40) and out.aux_loss > 0
    load = core.expert_load()
    assert torch.isclose(load.sum(), torch.tensor(1.0)) and (load > 0).all()
    counts = sum(s.tokens_per_expert for s in core.router_stats)
    assert counts.sum() == 2 * 4 * 9 * 2  # layers × tokens × experts_per_token


def test_router_entropy_is_a_share_of_its_maximum():
    core = _core().eval()
    tokens = torch.randint(3, 40, (4, 9))
    with torch.no_grad():
        for layer in core.layers:  # routers that cannot tell experts apart spread every token evenly
            layer.moe.router.weight.zero_()
        core(tokens)
        assert core.router_entropy() == pytest.approx(1.0, abs=1e-6)
        for layer in core.layers:  # sharp routers: each token's choice is all but certain
            torch.nn.init.normal_(layer.moe.router.weight, std=1e3)
        core(tokens)
        assert core.router_entropy() < 0.05


def test_a_dense_core_sends_every_token_through_the_shared_experts():
    dense = _core(n_routed_experts=0, experts_per_token=0, n_shared_experts=3)
    out = dense(torch.randint(3, 40, (4, 9)))
    assert out.logits.shape == (4, 9, 40) and out.aux_loss == 0
    assert math.isnan(dense.router_entropy())
    moe_active = _core().config.expert_hidden_size * (1 + 2)  # shared + experts_per_token
    assert dense.layers[0].moe.shared.down.in_features == moe_active


def test_moe_core_generates_deterministically_after_a_prefix():
    core = _core().eval()
    prefix = torch.randn(2, 5, 32)
    start = torch.full((2, 1), 1)
    kwargs = dict(prefix_embeds=prefix, max_new_tokens=4, do_sample=False, use_cache=False, pad_token_id=0)
    first, second = core.generate(input_ids=start, **kwargs), core.generate(input_ids=start, **kwargs)
    assert first.shape == (2, 5) and torch.equal(first, second)
    torch.manual_seed(3)
    sampled = core.generate(
        input_ids=start, prefix_embeds=prefix, max_new_tokens=4, do_sample=True, use_cache=False, pad_token_id=0
    )
    torch.manual_seed(3)
    again = core.generate(
        input_ids=start, prefix_embeds=prefix, max_new_tokens=4, do_sample=True, use_cache=False, pad_token_id=0
    )
    assert torch.equal(sampled, again)


def test_moe_config_checks_its_routing():
    with pytest.raises(ValueError, match="experts_per_token must be in 1..n_routed_experts=4"):
        MoEConfig(n_routed_experts=4, experts_per_token=5)
    with pytest.raises(ValueError, match="sequence of 40 tokens exceeds"):
        _core()(torch.randint(3, 40, (1, 40)))


class _TensorsSeen(TorchFunctionMode):
    """Records every tensor that any torch function is handed while it is on."""

    def __init__(self):
        super().__init__()
        self.seen: set[int] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        for value in pytree.tree_leaves((args, kwargs or {})):
            if isinstance(value, torch.Tensor):
                self.seen.add(id(value))
        return func(*args, **(kwargs or {}))


def test_the_shipped_model_has_no_parameter_that_inference_never_uses(model, dataset):
    """Search (image slots, the pooled vector, the text's vector and reading, the re-rank), answers and voice
    queries, run once: every weight of the checkpoint takes part."""
    pictures = [Image.open(dataset.image_path(record)).convert("RGB") for record in dataset.images[:3]]
    clip = (np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32), 16000)
    with _TensorsSeen() as mode:
        _, slots = model.encode_image_slots(pictures)
        _, parses = model.encode_and_read(["a red circle left of a blue square", "two stars and a hexagon"])
        model.decide(parses[0], slots)
        model.ask(pictures[:2], ["what color is the circle?", "what is left of the blue square?"])
        model.encode_audio([clip])
        if model.transcribes:
            model.transcribe([clip])
    unused = [name for name, p in model.named_parameters() if id(p) not in mode.seen]
    assert unused == []
    assert model.state_dict().keys() == load_file(str(resolve_model_path("shapes") / "model.safetensors")).keys() | {
        "language.lm_head.weight"  # tied to the token embedding, stored once
    }


def test_a_retrained_voice_tower_keeps_the_identity_that_indexes_check(tiny_model):
    def identity_after(change) -> str:
        copy = MModalModel(tiny_model.config, tiny_model.tokenizer)
        copy.load_state_dict(tiny_model.state_dict())
        with torch.no_grad():
            change(copy)
        return copy.identity.weights_hash

    unchanged = identity_after(lambda m: None)
    assert unchanged == tiny_model.identity.weights_hash
    # A new voice tower lands on the same text space: indexes of the model it came from stay readable.
    assert identity_after(lambda m: m.audio_tower.norm.weight.add_(1.0)) == unchanged
    assert identity_after(lambda m: m.audio_adapter.project.weight.add_(1.0)) == unchanged
    # Anything that makes image vectors or reads typed queries is the model's identity.
    assert identity_after(lambda m: m.slot_pooler.project.weight.add_(1.0)) != unchanged
    assert identity_after(lambda m: m.text_adapter.project.weight.add_(1.0)) != unchanged
