"""The plug-in contract: how a training-time method attaches to the one training loop.

A plug-in may declare taps (hidden states of the student it needs), transform the
batch, own trainable heads (optimised with the net, checkpointed with the run,
never part of the exported sampling model), add named loss terms whose weight
follows a schedule over steps, initialise weights before training, read the EMA
model, hook into the student's forward pass, ask for an architecture option of the
net (:meth:`Plugin.net_options`), and keep checkpointed state.  The trainer calls
``setup`` once, ``initialize`` once on a fresh run, then each step
``transform_batch`` → base loss (with ``taps``) → ``loss_terms``.

Plug-ins are named and configured on the command line (``--plugin repa:depth=2,weight=0.5``)
or in a config file (``plugins: ["repa:depth=2"]``); :data:`PLUGINS` maps each name to its
class and options dataclass (defaults from its paper, scaled to the embedded data where the
paper's value does not apply, as each docstring says).
"""

from __future__ import annotations

import dataclasses

from diffrep.errors import DiffrepError
from diffrep.plugins.base import Plugin, WarmStart, schedule_factor
from diffrep.plugins.cep import CEP, CepOptions
from diffrep.plugins.context import Context, ContextOptions
from diffrep.plugins.erw import ERW, ErwOptions
from diffrep.plugins.repa import REPA, RepaOptions
from diffrep.plugins.selfcond import SelfCond, SelfCondOptions
from diffrep.plugins.sra import SRA, SraOptions
from diffrep.plugins.tokens import as_tokens, match_token_grid
from diffrep.plugins.umd import UMD, UmdOptions

PLUGINS: dict[str, tuple[type[Plugin], type]] = {
    "repa": (REPA, RepaOptions), "sra": (SRA, SraOptions), "erw": (ERW, ErwOptions), "cep": (CEP, CepOptions),
    "selfcond": (SelfCond, SelfCondOptions), "umd": (UMD, UmdOptions), "context": (Context, ContextOptions),
}


def plugin_net_options(specs: list[str]) -> dict:
    """The net constructor options the plug-ins of ``specs`` ask for (no plug-in is built)."""
    options: dict = {}
    for spec in specs:
        name, parsed = parse_plugin(spec)
        options.update(PLUGINS[name][0].net_options(parsed))
    return options


def parse_plugin(spec: str) -> tuple[str, object]:
    """``"repa:encoder=reference,depth=2"`` → ``("repa", RepaOptions(...))``, with clear errors."""
    name, _, rest = spec.partition(":")
    if name not in PLUGINS:
        raise DiffrepError(f"unknown plug-in {name!r}: choose from {', '.join(PLUGINS)} (see `diffrep plugins`)")
    options_cls = PLUGINS[name][1]
    fields = {f.name: f for f in dataclasses.fields(options_cls)}
    values = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if key in fields and not sep:
            raise DiffrepError(f"{name}: option {key!r} needs a value, e.g. {key}={fields[key].default}")
        if key not in fields:
            raise DiffrepError(f"{name}: unknown option {item!r}; options: "
                               + ", ".join(f"{k}={f.default}" for k, f in fields.items()))
        kind = type(fields[key].default)
        try:
            values[key] = kind(value)
        except ValueError:
            what = {int: "an integer", float: "a number"}.get(kind, kind.__name__)
            raise DiffrepError(f"{name}: option {key}={value} must be {what}") from None
    options = options_cls(**values)
    if hasattr(options, "schedule"):
        schedule_factor(options.schedule, 0)
    return name, options


def build_plugins(specs: list[str], data: str | None = None) -> list[Plugin]:
    """Plug-ins from their specs, in order; a name may appear once.  ``data`` (the training data's spec) fills the
    ``data`` option of plug-ins that have one and were not given it: the ``reference`` encoder is that data's."""
    parsed = [parse_plugin(s) for s in specs]
    names = [n for n, _ in parsed]
    if len(set(names)) != len(names):
        raise DiffrepError(f"a plug-in is given twice: {', '.join(specs)}")
    return [PLUGINS[name][0](_with_data(options, data)) for name, options in parsed]


def setup_plugins(plugins, net, ema, process, x0_shape: tuple[int, ...], image_shape: tuple[int, ...]) -> None:
    """Set every plug-in up on the run's net (``Plugin.setup``), then let each check its taps against the others'."""
    for p in plugins:
        p.setup(net, ema, process, x0_shape, image_shape)
    for p in plugins:
        p.check_taps({t for other in plugins if other is not p for t in other.taps})


def _with_data(options, data: str | None):
    if data and "data" in {f.name for f in dataclasses.fields(options)} and not options.data:
        return dataclasses.replace(options, data=data)
    return options


def describe_plugins() -> str:
    """One paragraph per plug-in: its paper line and its options with defaults."""
    lines = []
    for name, (cls, options_cls) in PLUGINS.items():
        lines.append(f"{name}: {cls.__doc__.strip().splitlines()[0]}")
        lines += [f"    {f.name}={f.default!r}" for f in dataclasses.fields(options_cls)]
    return "\n".join(lines)


__all__ = ["CEP", "ERW", "PLUGINS", "REPA", "SRA", "UMD", "CepOptions", "Context", "ContextOptions", "ErwOptions",
           "Plugin", "RepaOptions", "SelfCond", "SelfCondOptions", "SraOptions", "UmdOptions", "WarmStart", "as_tokens",
           "build_plugins", "describe_plugins", "match_token_grid", "parse_plugin", "plugin_net_options",
           "schedule_factor", "setup_plugins"]
