"""Does ``torch.compile`` give the gradients of eager mode?  One row per net × memory layout × Inductor layout pass.

With torch 2.13 on the CPU under bf16 autocast, Inductor's layout optimisation zeroed the gradients
of every U-Net level below the top one (docs/benchmarks.md → "`--compile` trained only the U-Net's outer
level"), and channels-last memory did the same with the pass off.  This check runs the same
comparison on any device: a net of the preset with every weight perturbed (so that the zero-initialised
output layers pass gradients on), one bf16-autocast forward and backward in eager mode and one
compiled, and for each parameter the relative difference ‖g_compiled − g_eager‖ / ‖g_eager‖.
A row passes when every parameter is within 5% (bf16 rounding gives < 1%).

    python benchmarks/compile_grads.py                    # CPU → results/compile_grads.json
    python benchmarks/compile_grads.py --device cuda      # → results/compile_grads_cuda.json
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch._dynamo
from _common import table, write_result

from diffrep.config import make_config, preset
from diffrep.runs import build_model

TOLERANCE = 0.05


def gradient_errors(preset_name: str, device: torch.device, channels_last: bool, layout_optimization: bool) -> dict:
    """Relative gradient differences, compiled vs eager, for one configuration."""
    torch.manual_seed(0)
    net = build_model(make_config(preset(preset_name), {}), (1, 32, 32), 10).to(device)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    x = torch.randn(8, 1, 32, 32, device=device)
    if channels_last:
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    t, y = torch.rand(8, device=device), torch.randint(0, 10, (8,), device=device)

    def gradients(forward) -> dict[str, torch.Tensor]:
        net.zero_grad()
        with torch.autocast(device.type, torch.bfloat16):
            forward(x, t, y)[0].float().pow(2).mean().backward()
        return {k: p.grad.float().clone() for k, p in net.named_parameters() if p.requires_grad}

    torch._dynamo.reset()
    eager = gradients(net)
    compiled = gradients(torch.compile(net, options={"layout_optimization": layout_optimization}))
    errors = {k: ((compiled[k] - g).norm() / g.norm().clamp_min(1e-30)).item() for k, g in eager.items()}
    worst = max(errors, key=errors.get)
    return {"net": preset_name, "channels_last": channels_last, "layout_optimization": layout_optimization,
            "parameters": len(errors), "wrong": sum(e > TOLERANCE for e in errors.values()),
            "zero_in_compiled": sum(bool(compiled[k].abs().max() == 0 and eager[k].abs().max() > 0) for k in errors),
            "worst_error": errors[worst], "worst_parameter": worst, "ok": errors[worst] <= TOLERANCE}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--presets", default="quickstart,dit-tiny", help="comma-separated presets whose nets are checked")
    p.add_argument("--name", help="result name (default: compile_grads, or compile_grads_cuda on a GPU)")
    a = p.parse_args()
    device = torch.device(a.device)
    rows = []
    for name in a.presets.split(","):
        is_unet = preset(name)["model"].startswith("UNet")
        for channels_last in (False, True) if is_unet else (False,):
            for layout_optimization in (False, True):
                rows.append(gradient_errors(name, device, channels_last, layout_optimization))
                print(f"{name} channels_last={channels_last} layout_optimization={layout_optimization}: "
                      f"{rows[-1]['wrong']} of {rows[-1]['parameters']} wrong", file=sys.stderr)
    print(table(rows, ["net", "channels_last", "layout_optimization", "parameters", "wrong", "zero_in_compiled",
                       "worst_error", "worst_parameter", "ok"]))
    name = a.name or ("compile_grads_cuda" if device.type == "cuda" else "compile_grads")
    print(f"→ {write_result(name, {'tolerance': TOLERANCE, 'rows': rows, 'command': 'python ' + ' '.join(sys.argv)})}")


if __name__ == "__main__":
    main()
