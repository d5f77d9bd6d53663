"""Parity of diffrep's evaluation with the tools whose names its modes and encoders carry.

Every network gets the same seeded weights (saved once, loaded by each tool from the file); nothing is downloaded.
For each (encoder, mode, data): the largest feature difference relative to the peer's largest feature
(``feat_rel``), and FD/KID/IS/PRDC relative differences (``|ours − peer| / |peer|``) on the same images. FD is
diffrep's with scipy's ``sqrtm`` as the peers compute it (``fd_rel``, the parity number) and with diffrep's default
exact path (``fd_exact_rel``: with n < d, what separates the two is scipy's own error).

- Inception ``clean`` against clean-fid 0.1.35 (its ``make_resizer`` and (x − 128)/128 before the same net);
  ``bilinear-tf`` against torch-fidelity 0.4.0's feature extractor; ``bilinear`` against pytorch-fid 0.3.0's
  ``InceptionV3``. IS (``logits_unbiased``, 1 split) and KID (one subset of all n) against torch-fidelity and
  clean-fid; PRDC (k = 5) against ``prdc`` 0.2.
- DINOv2 ViT-L/14 (official facebookresearch code, via torch.hub from a local checkout) and CLIP ViT-L/14 (open_clip
  2.20.0, GELU and QuickGELU) through dgm-eval's own ``transform`` and ``forward`` (default and ``--clean_resize``).
  dgm-eval's CLIP forward needs an open_clip of its time (``visual.global_average_pool``, sequence-first blocks):
  2.20.0, the release that brought its default DataComp weights.
- transformers-layout files (``Dinov2Model``, ``CLIPVisionModelWithProjection``, transformers 5) against
  transformers' own outputs; bf16 deviation of the ViT encoders beside (never their default).

The peers need torchvision, which does not import beside the CPU torch of the README. A separate environment:

    python -m venv /work/peers/venv && P=/work/peers/venv/bin/pip
    $P install torch==2.14.1 torchvision==0.29.1
    $P install pytorch-fid==0.3.0 torch-fidelity==0.4.0 clean-fid==0.1.35 prdc==0.2 open-clip-torch==2.20.0 \\
        transformers==5.24.0 scipy && $P install -e .        # diffrep and its dependencies; torch stays
    git clone https://github.com/layer6ai-labs/dgm-eval /work/peers/dgm-eval          # 74c79f7 (2025-03-03)
    git clone https://github.com/facebookresearch/dinov2 /work/peers/dinov2           # b8931f7 (2025-08-14)
    PYTHONPATH=src /work/peers/venv/bin/python benchmarks/parity_eval.py \\
        --dgm-eval /work/peers/dgm-eval --dinov2 /work/peers/dinov2 [--n 50]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from _common import table, write_result
from diffrep.data import load_builtin
from diffrep.evaluation import metrics
from diffrep.evaluation.encoders import get_encoder
from diffrep.evaluation.features import extract_features


def rel(ours: float, peer: float) -> float:
    return abs(ours - peer) / abs(peer)


def feat_rel(ours: torch.Tensor, peer: torch.Tensor) -> float:
    return float((ours.double() - peer.double()).abs().max() / peer.double().abs().max())


def image_sets(n: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(gen, ref) pairs of n uint8 images: 28×28 grey MNIST digits, and smooth 64×64 RGB images."""
    digits = load_builtin("mnist5k", "test").images[: 2 * n, :, 2:30, 2:30].contiguous()
    rng = np.random.default_rng(0)
    smooth = F.interpolate(torch.tensor(rng.random((2 * n, 3, 6, 6)), dtype=torch.float32), 64, mode="bicubic")
    rgb = (smooth.clamp(0, 1) * 255).round().to(torch.uint8)
    return {"digits28": (digits[:n], digits[n:]), "rgb64": (rgb[:n], rgb[n:])}


def pil_images(images: torch.Tensor) -> list[Image.Image]:
    """As dgm-eval's NpzDataset reads them: ``Image.fromarray(...).convert("RGB")``."""
    hwc = images.permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).convert("RGB") for a in hwc]


def rgb_hwc(images: torch.Tensor) -> np.ndarray:
    return images.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).numpy()


def perturb(net: nn.Module, seed: int) -> nn.Module:
    """Seeded, non-trivial values for every tensor (so a swapped or skipped one would show)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in net.named_parameters():
            if param.ndim == 1 and ("weight" in name or "gamma" in name or "lambda" in name):
                param.copy_(1 + 0.2 * torch.randn_like(param))
            elif param.ndim == 1:
                param.copy_(0.1 * torch.randn_like(param))
            else:
                param.copy_(torch.randn_like(param) * param.shape[-1] ** -0.5 * (0.3 if param.ndim == 2 else 1))
    return net.eval()


def ours(encoder, images: torch.Tensor, dtype: str = "fp32"):
    """diffrep's features, through the path ``diffrep eval`` runs (no cache)."""
    return extract_features(encoder, images, batch_size=25, dtype=dtype, progress=False)


def fds(gen: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """diffrep's FD with scipy's ``sqrtm`` (the peers' algorithm: the parity number) and with its default exact
    eigenvalue path (with n < d, scipy's ``sqrtm`` is itself off by about 1e-5 relative)."""
    return (metrics.fd(gen, ref, reference_sqrtm=True).values["fd"], metrics.fd(gen, ref).values["fd"])


def bf16_deviation(encoder, gen: torch.Tensor, ref: torch.Tensor, fp32_gen: torch.Tensor,
                   fp32_fd: float) -> dict[str, float]:
    """The same encoder under bf16 autocast: mean per-sample relative L2 change of the features, FD change."""
    bg, br = ours(encoder, gen, "bf16"), ours(encoder, ref, "bf16")
    per_sample = (bg.features - fp32_gen).norm(dim=1) / fp32_gen.norm(dim=1)
    return {"bf16_sample_rel": float(per_sample.mean()), "bf16_fd_rel": rel(fds(bg.features, br.features)[1], fp32_fd)}


@torch.no_grad()
def batched(fn, items, size: int = 25) -> torch.Tensor:
    return torch.cat([fn(items[i:i + size]) for i in range(0, len(items), size)])


def inception_rows(sets: dict, tmp: Path) -> list[dict]:
    import prdc as prdc_package
    import pytorch_fid.inception as pfi
    from cleanfid.fid import frechet_distance as cf_fd, kernel_distance as cf_kid
    from cleanfid.resize import make_resizer
    from pytorch_fid.fid_score import calculate_frechet_distance as pf_fd
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric

    from diffrep.evaluation.encoders.inception import FIDInceptionV3

    net = FIDInceptionV3()
    torch.manual_seed(0)
    for module in net.modules():       # scale-preserving weights, non-trivial BatchNorm statistics
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        elif hasattr(module, "running_var"):
            for t, lo, hi in ((module.weight, .5, 1.5), (module.bias, -.1, .1), (module.running_mean, -.1, .1),
                              (module.running_var, .5, 1.5)):
                nn.init.uniform_(t, lo, hi)
    nn.init.normal_(net.fc.bias, 0, 1.0)
    state = net.state_dict()
    path = tmp / "pt_inception-seeded.pth"
    torch.save(state, path)
    pfi.load_state_dict_from_url = lambda *a, **k: state      # pytorch-fid's loader, given the seeded weights
    pf_net = pfi.InceptionV3([3], resize_input=True, normalize_input=True).eval()
    raw_net = pfi.InceptionV3([3], resize_input=False, normalize_input=False).eval()
    tf_net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                         feature_extractor_weights_path=str(path)).eval()
    resizer = make_resizer("PIL", False, "bicubic", (299, 299))

    def clean_fid(x: torch.Tensor) -> torch.Tensor:
        arr = np.stack([resizer(a) for a in rgb_hwc(x)])
        return raw_net((torch.from_numpy(arr).permute(0, 3, 1, 2) - 128) / 128)[0].flatten(1)

    peers = {"clean": (clean_fid, "clean-fid 0.1.35"),
             "bilinear-tf": (lambda x: tf_net(x.expand(-1, 3, -1, -1))[0], "torch-fidelity 0.4.0"),
             "bilinear": (lambda x: pf_net(x.expand(-1, 3, -1, -1).float() / 255)[0].flatten(1), "pytorch-fid 0.3.0")}
    rows = []
    for data, (gen, ref) in sets.items():
        n = len(gen)
        for mode, (peer_fn, peer_name) in peers.items():
            start = time.perf_counter()
            encoder = get_encoder("inception", path, resize_mode=mode)
            og, orf = ours(encoder, gen), ours(encoder, ref)
            pg, pr = batched(peer_fn, gen), batched(peer_fn, ref)
            fd_ours, fd_exact = fds(og.features, orf.features)
            kid_ours = metrics.kid(og.features, orf.features, num_subsets=1, subset_size=n).values["kid"]
            a, b = pg.double().numpy(), pr.double().numpy()
            if mode == "clean":
                fd_peer = cf_fd(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
                kid_peer = cf_kid(a, b, num_subsets=1, max_subset_size=n)
            elif mode == "bilinear-tf":
                fd_peer = fid_statistics_to_metric(fid_features_to_statistics(pg), fid_features_to_statistics(pr),
                                                   False)["frechet_inception_distance"]
                kid_peer = kid_features_to_metric(pg, pr, kid_subsets=1, kid_subset_size=n, verbose=False,
                                                  kid_degree=3, kid_gamma=None, kid_coef0=1, rng_seed=0,
                                                  kid_kernel="poly")["kernel_inception_distance_mean"]
            else:
                fd_peer = pf_fd(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
                kid_peer = None
            row = {"encoder": "inception", "mode": mode, "data": data, "reference": peer_name, "n": n,
                   "feat_rel": max(feat_rel(og.features, pg), feat_rel(orf.features, pr)),
                   "fd": fd_ours, "fd_rel": rel(fd_ours, fd_peer), "fd_exact_rel": rel(fd_exact, fd_peer),
                   "kid_rel": None if kid_peer is None else rel(kid_ours, kid_peer)}
            if mode == "bilinear-tf":
                logits = batched(lambda x: tf_net(x.expand(-1, 3, -1, -1))[1], gen)
                is_peer = isc_features_to_metric(logits, splits=1, shuffle=False)["inception_score_mean"]
                row["is_rel"] = rel(metrics.inception_score(og.logits, splits=1).values["is"], is_peer)
                row["logits_rel"] = feat_rel(og.logits, logits)
            if mode == "clean":
                row.update(bf16_deviation(encoder, gen, ref, og.features, fd_exact))
            if mode == "bilinear":
                peer = prdc_package.compute_prdc(real_features=pr.numpy(), fake_features=pg.numpy(), nearest_k=5)
                mine = metrics.prdc(og.features, orf.features, k_pr=5, k_dc=5).values
                row["prdc_max_abs"] = max(abs(mine[k] - peer[k]) for k in peer)
            row["seconds"] = round(time.perf_counter() - start, 1)
            rows.append(row)
            print(table([row], list(row)), flush=True)
    return rows


def dgm_eval_pipelines(tmp: Path, dinov2_repo: Path, parts: list[str]) -> list[tuple]:
    """(encoder, weights file, mode, dgm-eval encoder) with the same seeded weights: DINOv2 ViT-L/14 from the
    official hub code, CLIP ViT-L/14 from open_clip (GELU; QuickGELU as OpenAI's weights need)."""
    from safetensors.torch import save_file

    pipelines = []
    if "dinov2" in parts:
        from dgm_eval.models.dinov2 import DINOv2Encoder

        hub = perturb(torch.hub.load(str(dinov2_repo), "dinov2_vitl14", source="local", pretrained=False), 1)
        save_file({k: v.contiguous() for k, v in hub.state_dict().items()}, tmp / "dinov2_vitl14.safetensors")
        for clean in (False, True):
            enc = DINOv2Encoder.__new__(DINOv2Encoder)     # setup() would download: the seeded model instead
            nn.Module.__init__(enc)
            enc.model, enc.clean_resize = hub, clean
            pipelines.append(("dinov2-l14", str(tmp / "dinov2_vitl14.safetensors"), "clean" if clean else None, enc))
    if "clip" in parts:
        import open_clip
        from dgm_eval.models.clip import CLIPEncoder

        for name in ("clip", "clip-openai"):
            torch.manual_seed(2)
            model = open_clip.create_model("ViT-L-14", pretrained=None, force_quick_gelu=name == "clip-openai")
            torch.save(model.eval().state_dict(), tmp / f"{name}.bin")
            enc = CLIPEncoder.__new__(CLIPEncoder)
            nn.Module.__init__(enc)
            enc.model, enc.clean_resize, enc.depth = model, False, 0
            pipelines.append((name, str(tmp / f"{name}.bin"), None, enc))
    return pipelines


def vit_rows(sets: dict, pipelines: list[tuple]) -> list[dict]:
    """dgm-eval's DINOv2 and CLIP pipelines (its own transform, forward and FD) against diffrep's encoders."""
    from dgm_eval.metrics.fd import compute_FD_with_reps

    rows = []
    for name, weights, mode, enc in pipelines:
        for data, (gen, ref) in sets.items():
            if mode == "clean" and data != "digits28":
                continue                                   # the clean resize row on the digits only, for time
            start = time.perf_counter()
            encoder = get_encoder(name, weights, resize_mode=mode)
            og, orf = ours(encoder, gen), ours(encoder, ref)
            peer = [batched(lambda ims: enc(torch.stack([enc.transform(im) for im in ims])).float(), pil_images(x))
                    for x in (gen, ref)]
            fd_ours, fd_exact = fds(og.features, orf.features)
            fd_peer = compute_FD_with_reps(peer[0].double().numpy(), peer[1].double().numpy())
            row = {"encoder": name, "mode": mode or "pil-bicubic", "data": data,
                   "reference": "dgm-eval 74c79f7" + (" --clean_resize" if mode else ""), "n": len(gen),
                   "feat_rel": max(feat_rel(og.features, peer[0]), feat_rel(orf.features, peer[1])),
                   "fd": fd_ours, "fd_rel": rel(fd_ours, fd_peer), "fd_exact_rel": rel(fd_exact, fd_peer)}
            if mode is None:
                row.update(bf16_deviation(encoder, gen, ref, og.features, fd_exact))
            row["seconds"] = round(time.perf_counter() - start, 1)
            rows.append(row)
            print(table([row], list(row)), flush=True)
    return rows


@torch.no_grad()
def transformers_rows(tmp: Path) -> list[dict]:
    """Files written by transformers' ``save_pretrained`` loaded by diffrep, against transformers' own outputs."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, Dinov2Config, Dinov2Model

    from diffrep.evaluation.encoders.clip import load_clip
    from diffrep.evaluation.encoders.dinov2 import load_dinov2

    rows = []
    torch.manual_seed(3)
    hf = perturb(CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=224,
        patch_size=14, projection_dim=768, hidden_act="quick_gelu")), 3)
    hf.save_pretrained(tmp / "hf-clip")
    x = torch.randn(4, 3, 224, 224)
    out = hf(pixel_values=x)
    cls = hf.vision_model(pixel_values=x).pooler_output       # post_layernorm of the class token
    for layer, want in (("cls", cls), ("projected", out.image_embeds)):
        got = load_clip("clip-openai", tmp / "hf-clip", layer)(x)
        rows.append({"encoder": f"clip-openai:{layer}", "mode": "tensor 224²", "data": "randn",
                     "reference": "transformers 5 CLIPVisionModelWithProjection", "n": 4, "feat_rel": feat_rel(got, want)})
    hf = perturb(Dinov2Model(Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                                          image_size=518, patch_size=14)), 4)
    hf.save_pretrained(tmp / "hf-dinov2")
    net = load_dinov2("dinov2-s14", tmp / "hf-dinov2")
    for size in (518, 224):
        x = torch.randn(2, 3, size, size)
        got, want = net(x), hf(pixel_values=x).pooler_output
        rows.append({"encoder": "dinov2-s14", "mode": f"tensor {size}²", "data": "randn",
                     "reference": "transformers 5 Dinov2Model" + (" (its own pos-embed interpolation)" * (size != 518)),
                     "n": 2, "feat_rel": feat_rel(got, want)})
    for row in rows:
        print(table([row], list(row)), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dgm-eval", type=Path, required=True, help="a checkout of layer6ai-labs/dgm-eval")
    p.add_argument("--dinov2", type=Path, required=True, help="a checkout of facebookresearch/dinov2")
    p.add_argument("--n", type=int, default=50, help="images per set (gen and ref each)")
    p.add_argument("--parts", default="inception,dinov2,clip,transformers")
    p.add_argument("--name", default="parity-eval")
    a = p.parse_args()
    sys.path.insert(0, str(a.dgm_eval))
    torch.set_grad_enabled(False)
    sets, rows = image_sets(a.n), []
    with tempfile.TemporaryDirectory() as tmp:
        parts = a.parts.split(",")
        if "inception" in parts:
            rows += inception_rows(sets, Path(tmp))
        if "dinov2" in parts or "clip" in parts:
            rows += vit_rows(sets, dgm_eval_pipelines(Path(tmp), a.dinov2, parts))
        if "transformers" in parts:
            rows += transformers_rows(Path(tmp))
    import importlib.metadata as md

    versions = {pkg: md.version(pkg) for pkg in ("torch", "torchvision", "pytorch-fid", "torch-fidelity", "clean-fid",
                                                 "prdc", "open-clip-torch", "transformers", "pillow")}
    path = write_result(a.name, {"command": "python " + " ".join(sys.argv), "versions": versions, "rows": rows})
    cols = ["encoder", "mode", "data", "reference", "feat_rel", "fd_rel", "fd_exact_rel", "kid_rel", "is_rel",
            "prdc_max_abs",
            "bf16_sample_rel", "bf16_fd_rel"]
    print(table(rows, cols))
    print(f"→ {path}")


if __name__ == "__main__":
    main()
