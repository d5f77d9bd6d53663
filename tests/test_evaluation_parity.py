"""Parity with the tools whose names the encoders and modes carry, with no network and no torchvision.

Each reference pipeline's preprocessing is written here as its own spec, from the tool's source:
clean-fid ``mode="clean"`` (PIL bicubic on float32, clip to [0, 255], (x − 128)/128), torch-fidelity / the TF FID
graph (TF1 bilinear, (x − 128)/128), pytorch-fid (``F.interpolate`` bilinear, x/127.5 − 1), dgm-eval (uint8 PIL
bicubic, or ``--clean_resize``; ImageNet or CLIP normalisation) and open_clip's CLIP tower. diffrep's registered
encoders, given the same random weights, must give the same features to float32 rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from test_evaluation_encoder_inception import randomize
from torch import nn

from diffrep.data import load_builtin
from diffrep.evaluation import metrics
from diffrep.evaluation.encoders import clip as clip_module
from diffrep.evaluation.encoders import get_encoder
from diffrep.evaluation.encoders.dinov2 import DINOV2_CONFIGS, DinoV2ViT
from diffrep.evaluation.encoders.inception import FIDInceptionV3
from diffrep.errors import DiffrepError

TOL = 1e-5


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def images() -> dict[str, torch.Tensor]:
    """Two 32×32 grey digits (repeated to RGB, as every tool does) and two smooth 64×64 RGB images."""
    digits = load_builtin("mnist5k", "test").images[:2]
    rng = np.random.default_rng(0)
    smooth = F.interpolate(torch.tensor(rng.random((2, 3, 8, 8)), dtype=torch.float32), 64, mode="bicubic")
    rgb = (smooth.clamp(0, 1) * 255).round().to(torch.uint8)
    return {"digits": digits.expand(-1, 3, -1, -1).contiguous(), "rgb": rgb}


def _hwc(images: torch.Tensor) -> np.ndarray:
    return images.permute(0, 2, 3, 1).numpy()


def clean_fid_resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """clean-fid ``make_resizer("PIL", False, "bicubic")`` (= dgm-eval ``pil_resize`` × 255): 0–255 floats."""
    out = []
    for img in _hwc(images):
        channels = [np.asarray(Image.fromarray(img[..., c].astype(np.float32), mode="F")
                               .resize((size, size), Image.BICUBIC)).clip(0, 255) for c in range(3)]
        out.append(np.stack(channels))
    return torch.tensor(np.stack(out), dtype=torch.float32)


def tf1_bilinear(images: torch.Tensor, size: int) -> torch.Tensor:
    """TF1 ``resize_bilinear(align_corners=False)`` on 0–255 floats: source ``dst·in/out``, clamped neighbours."""
    x = images.double()
    h = x.shape[-1]
    src = np.arange(size) * h / size
    i0 = np.floor(src).astype(int)
    i1, frac = np.minimum(i0 + 1, h - 1), torch.tensor(src - i0)
    rows = x[:, :, i0] * (1 - frac[:, None]) + x[:, :, i1] * frac[:, None]
    return (rows[..., i0] * (1 - frac) + rows[..., i1] * frac).float()


def pil_uint8_resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """torchvision ``Resize((size, size), BICUBIC)`` on a PIL RGB image, then ``ToTensor``: dgm-eval's default."""
    out = [np.asarray(Image.fromarray(img).resize((size, size), Image.BICUBIC)) for img in _hwc(images)]
    return torch.tensor(np.stack(out)).permute(0, 3, 1, 2).float() / 255


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory) -> tuple[str, FIDInceptionV3]:
    torch.manual_seed(0)
    net = FIDInceptionV3().eval()
    randomize(net)
    with torch.no_grad():
        net.fc.bias.normal_(0, 5.0)   # a large bias, so that keeping it would show in IS
    path = tmp_path_factory.mktemp("w") / "inception.safetensors"
    save_file(net.state_dict(), path)
    return str(path), net


@pytest.mark.parametrize("mode", ["clean", "bilinear-tf", "bilinear"])
def test_inception_modes_reproduce_their_namesakes(images, inception_file, mode):
    path, net = inception_file
    spec = {"clean": lambda x: (clean_fid_resize(x, 299) - 128) / 128,        # clean-fid mode="clean"
            "bilinear-tf": lambda x: (tf1_bilinear(x, 299) - 128) / 128,       # torch-fidelity, TF FID, ADM
            "bilinear": lambda x: 2 * F.interpolate(x.float() / 255, (299, 299), mode="bilinear",
                                                    align_corners=False) - 1}[mode]   # pytorch-fid
    encoder = get_encoder("inception", path, resize_mode=mode)
    for x in images.values():
        with torch.no_grad():
            ours, (want, _) = encoder(x).features, net(spec(x))
            off_by_scaling, _ = net(spec(x) * 128 / 127.5 + 0.5 / 127.5)   # the other scaling convention
        assert _rel(ours, want) < TOL
        assert _rel(off_by_scaling, want) > 100 * TOL, "the spec tells the two scalings apart"
    assert encoder.spec.reference.split()[0] == {"clean": "clean-fid", "bilinear-tf": "TF",
                                                 "bilinear": "pytorch-fid"}[mode]


def test_inception_score_logits_leave_the_classifier_bias_out(images, inception_file):
    path, net = inception_file
    x = images["digits"]
    out = get_encoder("inception", path, resize_mode="bilinear")(x)
    torch.testing.assert_close(out.logits, out.features @ net.fc.weight.T, rtol=1e-5, atol=1e-4)
    from diffrep.evaluation.encoders import inception_encoder

    biased = inception_encoder(path, "bilinear", logits_bias=True)
    assert "with bias" in biased.spec.layer and "without bias" in get_encoder("inception", path).spec.layer
    torch.testing.assert_close(biased(x).logits, out.logits + net.fc.bias, rtol=1e-5, atol=1e-4)


def prdc_spec(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    """The ``prdc`` package (Naeem et al. 2020): strict ``<`` against k-NN radii (self included as the 1st)."""
    d_rr = np.linalg.norm(real[:, None] - real[None], axis=-1)
    d_ff = np.linalg.norm(fake[:, None] - fake[None], axis=-1)
    d_rf = np.linalg.norm(real[:, None] - fake[None], axis=-1)
    r_real, r_fake = np.sort(d_rr, 1)[:, k], np.sort(d_ff, 1)[:, k]
    return {"precision": (d_rf < r_real[:, None]).any(0).mean(), "recall": (d_rf < r_fake[None]).any(1).mean(),
            "density": (d_rf < r_real[:, None]).sum(0).mean() / k, "coverage": (d_rf.min(1) < r_real).mean()}


def test_prdc_ties_follow_the_prdc_package():
    rng = np.random.default_rng(0)
    real = rng.integers(0, 3, (60, 2)).astype(float)     # a 3×3 grid: many duplicates and equal distances
    fake = rng.integers(0, 3, (50, 2)).astype(float)
    ours = metrics.prdc(fake, real, k_pr=5, k_dc=5).values
    for key, value in prdc_spec(real, fake, 5).items():
        assert ours[key] == pytest.approx(value, abs=1e-12), key
    distinct = rng.normal(size=(40, 3))
    assert metrics.prdc(distinct, distinct.copy(), k_dc=5).values["density"] == pytest.approx(1.0, abs=1e-12)


@pytest.fixture(scope="module")
def dinov2_file(tmp_path_factory) -> tuple[str, DinoV2ViT]:
    torch.manual_seed(0)
    cfg = {k: DINOV2_CONFIGS["dinov2-s14"][k] for k in ("embed_dim", "depth", "num_heads")}
    net = DinoV2ViT(**cfg).eval()
    path = tmp_path_factory.mktemp("w") / "vits14.safetensors"
    save_file(net.state_dict(), path)
    return str(path), net


IMAGENET = (torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))


@pytest.mark.parametrize("mode", ["pil-bicubic", "clean"])
def test_dinov2_matches_dgm_eval_default_and_clean_resize(images, dinov2_file, mode):
    path, net = dinov2_file
    resized = {"pil-bicubic": lambda x: pil_uint8_resize(x, 224),
               "clean": lambda x: clean_fid_resize(x, 224) / 255}[mode]
    encoder = get_encoder("dinov2-s14", path, resize_mode=None if mode == "pil-bicubic" else mode)
    assert encoder.spec.resize == mode
    for x in images.values():
        with torch.no_grad():
            want = net((resized(x) - IMAGENET[0]) / IMAGENET[1])
        assert _rel(encoder(x).features, want) < TOL


def to_transformers_dinov2(state: dict[str, torch.Tensor], new_names: bool) -> dict[str, torch.Tensor]:
    """The official DINOv2 names as transformers writes them (v5 q_proj/o_proj, or v4 attention.query/output)."""
    out = {"embeddings.cls_token": state["cls_token"], "embeddings.mask_token": state["mask_token"],
           "embeddings.position_embeddings": state["pos_embed"], "layernorm.weight": state["norm.weight"],
           "layernorm.bias": state["norm.bias"],
           "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
           "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"]}
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    for i in range(depth):
        b, e = f"blocks.{i}.", f"encoder.layer.{i}."
        for part in ("weight", "bias"):
            q, k, v = state[f"{b}attn.qkv.{part}"].chunk(3)
            names = ("q_proj", "k_proj", "v_proj", "o_proj") if new_names else \
                ("attention.query", "attention.key", "attention.value", "output.dense")
            for name, t in zip(names, (q, k, v, state[f"{b}attn.proj.{part}"])):
                out[f"{e}attention.{name}.{part}"] = t
            for name in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                out[f"{e}{name}.{part}"] = state[f"{b}{name}.{part}"]
        out[e + "layer_scale1.lambda1"], out[e + "layer_scale2.lambda1"] = state[b + "ls1.gamma"], state[b + "ls2.gamma"]
    return out


@pytest.mark.parametrize("new_names", [True, False])
def test_dinov2_loads_transformers_files(images, dinov2_file, tmp_path, new_names):
    path, net = dinov2_file
    (tmp_path / "hf").mkdir()
    save_file(to_transformers_dinov2(net.state_dict(), new_names), tmp_path / "hf" / "model.safetensors")
    x = images["rgb"]
    official = get_encoder("dinov2-s14", path)(x).features
    torch.testing.assert_close(get_encoder("dinov2-s14", tmp_path / "hf")(x).features, official, rtol=0, atol=0)


CLIP_TINY = {"width": 64, "layers": 2, "heads": 4, "patch_size": 14, "image_size": 224, "output_dim": 32}
CLIP_NORM = (torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1),
             torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1))


def open_clip_visual(state: dict[str, torch.Tensor], x: torch.Tensor, quick_gelu: bool, heads: int) -> torch.Tensor:
    """open_clip's ``VisionTransformer`` forward as dgm-eval calls it (class token, ``ln_post``, no projection),
    with torch's ``nn.MultiheadAttention``."""
    d = state["class_embedding"].shape[0]
    act = (lambda t: t * torch.sigmoid(1.702 * t)) if quick_gelu else F.gelu
    tokens = F.conv2d(x, state["conv1.weight"], stride=14).flatten(2).transpose(1, 2)
    tokens = torch.cat([state["class_embedding"].expand(len(x), 1, -1), tokens], 1) + state["positional_embedding"]
    tokens = F.layer_norm(tokens, (d,), state["ln_pre.weight"], state["ln_pre.bias"])
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("transformer.resblocks."))
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        mha = nn.MultiheadAttention(d, heads, batch_first=True)
        mha.load_state_dict({k[len(p + "attn."):]: v for k, v in state.items() if k.startswith(p + "attn.")})
        h = F.layer_norm(tokens, (d,), state[p + "ln_1.weight"], state[p + "ln_1.bias"])
        tokens = tokens + mha(h, h, h, need_weights=False)[0]
        h = F.layer_norm(tokens, (d,), state[p + "ln_2.weight"], state[p + "ln_2.bias"])
        h = F.linear(act(F.linear(h, state[p + "mlp.c_fc.weight"], state[p + "mlp.c_fc.bias"])),
                     state[p + "mlp.c_proj.weight"], state[p + "mlp.c_proj.bias"])
        tokens = tokens + h
    return F.layer_norm(tokens[:, 0], (d,), state["ln_post.weight"], state["ln_post.bias"])


@pytest.fixture
def clip_state(monkeypatch) -> dict[str, torch.Tensor]:
    """A tiny CLIP tower (ViT-L/14's layout at width 64, depth 2) as an open_clip full-model state dict."""
    monkeypatch.setattr(clip_module, "VIT_L14", CLIP_TINY)
    torch.manual_seed(0)
    net = clip_module.ClipViT(**CLIP_TINY, quick_gelu=False)
    with torch.no_grad():
        for param in net.parameters():
            param.normal_(0, 0.5 if param.ndim == 1 else 0.05)
    state = {f"visual.{k}": v for k, v in net.state_dict().items()}
    state["token_embedding.weight"] = torch.zeros(10, 8)     # the text tower's keys are ignored
    return state


@pytest.mark.parametrize("name", ["clip", "clip-openai"])
def test_clip_matches_dgm_eval_with_the_activation_of_its_weights(images, clip_state, tmp_path, name):
    torch.save(clip_state, tmp_path / "open_clip_pytorch_model.bin")
    encoder = get_encoder(name, tmp_path / "open_clip_pytorch_model.bin")
    visual = {k[len("visual."):]: v for k, v in clip_state.items() if k.startswith("visual.")}
    assert encoder.spec.resize == "pil-bicubic" and encoder.spec.layer == "cls"
    for x in images.values():
        inputs = (pil_uint8_resize(x, 224) - CLIP_NORM[0]) / CLIP_NORM[1]
        with torch.no_grad():
            want = open_clip_visual(visual, inputs, name == "clip-openai", heads=4)
            other = open_clip_visual(visual, inputs, name != "clip-openai", heads=4)
        ours = encoder(x).features
        assert ours.shape == (2, 64) and _rel(ours, want) < TOL
        assert _rel(other, want) > 100 * TOL, "GELU and QuickGELU are told apart"
    projected = get_encoder(f"{name}:projected", tmp_path / "open_clip_pytorch_model.bin")
    torch.testing.assert_close(projected(x).features, ours @ visual["proj"], rtol=1e-5, atol=1e-5)


def to_transformers_clip(visual: dict[str, torch.Tensor], projection: bool) -> dict[str, torch.Tensor]:
    """open_clip's visual names as transformers' ``CLIPVisionModel[WithProjection]`` writes them."""
    p = "vision_model."
    out = {p + "embeddings.class_embedding": visual["class_embedding"],
           p + "embeddings.patch_embedding.weight": visual["conv1.weight"],
           p + "embeddings.position_embedding.weight": visual["positional_embedding"],
           p + "embeddings.position_ids": torch.arange(len(visual["positional_embedding"]))[None]}
    for ours, theirs in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):
        for part in ("weight", "bias"):
            out[f"{p}{theirs}.{part}"] = visual[f"{ours}.{part}"]
    layers = 1 + max(int(k.split(".")[2]) for k in visual if k.startswith("transformer.resblocks."))
    for i in range(layers):
        o, t = f"transformer.resblocks.{i}.", f"{p}encoder.layers.{i}."
        for part in ("weight", "bias"):
            for name, tensor in zip("qkv", visual[f"{o}attn.in_proj_{part}"].chunk(3)):
                out[f"{t}self_attn.{name}_proj.{part}"] = tensor
            for ours, theirs in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                                 ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                out[f"{t}{theirs}.{part}"] = visual[f"{o}{ours}.{part}"]
    if projection:
        out["visual_projection.weight"] = visual["proj"].T.contiguous()
    return out


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # torch.jit.trace, used to write the archive
def test_clip_loads_transformers_and_torchscript_files(images, clip_state, tmp_path):
    torch.save(clip_state, tmp_path / "open_clip.pth")
    x = images["rgb"]
    want = get_encoder("clip-openai:projected", tmp_path / "open_clip.pth")(x).features
    visual = {k[len("visual."):]: v for k, v in clip_state.items() if k.startswith("visual.")}
    (tmp_path / "hf").mkdir()
    save_file(to_transformers_clip(visual, projection=True), tmp_path / "hf" / "model.safetensors")
    (tmp_path / "hf" / "config.json").write_text('{"vision_config": {"hidden_act": "quick_gelu"}}')
    torch.testing.assert_close(get_encoder("clip-openai:projected", tmp_path / "hf")(x).features, want,
                               rtol=1e-6, atol=1e-6)
    with pytest.raises(DiffrepError, match="use the clip-openai encoder"):
        get_encoder("clip", tmp_path / "hf")
    save_file(to_transformers_clip(visual, projection=False), tmp_path / "vision.safetensors")
    assert get_encoder("clip-openai", tmp_path / "vision.safetensors")(x).features.shape == (2, 64)
    with pytest.raises(DiffrepError, match="no projection"):
        get_encoder("clip-openai:projected", tmp_path / "vision.safetensors")

    class Holder(nn.Module):      # OpenAI ships ViT-L-14.pt as a TorchScript archive of the whole model
        def __init__(self):
            super().__init__()
            self.visual = clip_module.ClipViT(**CLIP_TINY, quick_gelu=True)
            self.visual.load_state_dict(visual)

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return self.visual.conv1(t)

    torch.jit.trace(Holder(), torch.zeros(1, 3, 14, 14)).save(str(tmp_path / "ViT-L-14.pt"))
    torch.testing.assert_close(get_encoder("clip-openai:projected", tmp_path / "ViT-L-14.pt")(x).features, want,
                               rtol=0, atol=0)
