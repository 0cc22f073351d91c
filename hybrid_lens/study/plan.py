"""The study's plan: the named conditions of the component-ablation protocol, derived from the
model's layout.

Each `StudyCondition` names, groups and describes one `interventions.Condition` (the general,
composable intervention that does the ablating) for the store, the statistics and the report.

Every generator reads the model's `Layout` (`model.layout`); nothing is hard-coded per checkpoint. The default
ablation method follows the paper: sequential skip for one-mixer-per-layer models (Qwen3.5,
Qwen2.5) and parallel zeroing for models with several mixers per block (Falcon-H1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..interventions import THIRDS, Condition, ablation_of, layer_thirds
from ..layout import Layout
from ..vocabulary import KIND_NAMES as VOCABULARY_NAMES
from .spec import GROUPS, METHODS


@dataclass(frozen=True)
class StudyCondition:
    """A named condition with the metadata the statistics and figures need.

    Attributes:
        name: unique within a study, e.g. `L3_ssm_off` (the store's key).
        group: one of `GROUPS` (`baseline`, `group`, `layer`, `positional`, `random`, `transformer`).
        condition: the `interventions.Condition` that is applied.
        kind: the component kind it ablates (None for the baseline and layer removal).
        layers: the layers it ablates.
        third: `early` / `middle` / `late` for positional conditions.
        trial: the draw of a random condition.
        matches: for random controls, the name of the targeted condition they are matched to.
        method: the ablation method applied (`skip`, `zero`, `mixer_off`; None for the baseline).
        label: what is removed and how, in words (`describe`).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> ssm_off = group_ablations(model.layout)[0]
        >>> ssm_off.name, ssm_off.group, ssm_off.kind, ssm_off.layers[:3]
        ('ssm_off', 'group', 'ssm', (0, 1, 2))
        >>> with ssm_off.condition.apply(model):
        ...     logits = model("In the beginning")
    """

    name: str
    group: str
    condition: Condition = field(compare=False)
    kind: str | None = None
    layers: tuple[int, ...] = ()
    third: str | None = None
    trial: int | None = None
    matches: str | None = None  # for random controls: the targeted condition they are matched to
    method: str | None = None  # resolved ablation method: skip, zero or mixer_off (None: the baseline)
    label: str = "nothing removed"  # what is removed and how, in words (see `describe`)

    def to_dict(self) -> dict:
        """A JSON-ready dict of the metadata, the label and the condition (as the study store keeps it).

        Examples:
            >>> spec = baseline().to_dict()
            >>> spec["name"], spec["group"], spec["label"], spec["condition"]
            ('baseline', 'baseline', 'nothing removed', {'name': 'baseline', 'items': []})
        """
        return {"name": self.name, "group": self.group, "kind": self.kind, "layers": list(self.layers),
                "third": self.third, "trial": self.trial, "matches": self.matches, "method": self.method,
                "label": self.label, "condition": self.condition.to_dict()}


KIND_NAMES = {**VOCABULARY_NAMES, None: "block"}


def layer_list(layers: Sequence[int]) -> str:
    """Layers as a short readable list: runs of consecutive layers become ranges.

    Examples:
        >>> layer_list([0, 1, 2, 4, 5, 6]), layer_list([3]), layer_list([])
        ('layers 0-2, 4-6', 'layer 3', 'no layers')
    """
    if not layers:
        return "no layers"
    runs, start = [], layers[0]
    for previous, current in zip(layers, [*layers[1:], None]):
        if current != previous + 1:
            runs.append(f"{start}-{previous}" if previous > start else str(start))
            start = current
    return ("layer " if len(layers) == 1 else "layers ") + ", ".join(runs)


def describe(method: str | None, kind: str | None, layers: Sequence[int]) -> str:
    """One line saying what a condition removes and by which method.

    `method`: `skip` (the whole decoder layer becomes the identity, MLP included), `zero` (the
    `kind` path is zeroed; other paths and the MLP stay) or `mixer_off` (every mixer of the layer
    is zeroed, the MLP stays); None for the baseline.

    Examples:
        >>> describe("skip", "attn", [0])
        'sequential skip: whole layer 0 removed (attention and MLP)'
        >>> describe("zero", "ssm", range(12))
        'parallel zeroing: SSM path of layers 0-11 zeroed (other path and MLP kept)'
        >>> describe("mixer_off", "attn", [3, 7])
        'mixer-only zeroing: attention output of layers 3, 7 zeroed (MLP kept)'
    """
    layers = list(layers)
    if method is None:
        return "nothing removed"
    if method == "skip":
        what = f"{KIND_NAMES.get(kind, kind)} and MLP" if kind else "mixer and MLP"
        return f"sequential skip: whole {layer_list(layers)} removed ({what})"
    if method == "mixer_off":
        return f"mixer-only zeroing: {KIND_NAMES.get(kind, kind)} output of {layer_list(layers)} zeroed (MLP kept)"
    return f"parallel zeroing: {KIND_NAMES.get(kind, kind)} path of {layer_list(layers)} zeroed (other path and MLP kept)"


def resolve_method(layout: Layout, method: str) -> str:
    """The ablation method to use: `auto` becomes `zero` on parallel models and `skip` otherwise.

    Raises `ValueError` for a method not in `METHODS`.

    Examples:
        >>> resolve_method(Layout.of([("ssm", "attn")] * 4), "auto"), resolve_method(Layout.of([("attn",)] * 4), "auto")
        ('zero', 'skip')
        >>> resolve_method(Layout.of([("attn",)] * 4), "mixer_off")
        'mixer_off'
    """
    if method not in METHODS:
        raise ValueError(f"Unknown ablation method {method!r}; choose one of {METHODS}.")
    if method == "auto":
        return "zero" if layout.parallel else "skip"
    return method


def ablation(name: str, group: str, kind: str | None, layers: Sequence[int], method: str, parallel: bool,
             **metadata) -> StudyCondition:
    """A `StudyCondition` that ablates `kind` in `layers` by `method`, with its label.

    `parallel`: whether the model is a parallel hybrid; zeroing the only mixer of a sequential
    layer is labelled mixer-only zeroing. `metadata`: `third`, `trial`, `matches`.

    Examples:
        >>> c = ablation("L0_attn_off", "layer", "attn", [0], "skip", parallel=False)
        >>> c.method, c.label
        ('skip', 'sequential skip: whole layer 0 removed (attention and MLP)')
    """
    shown = "mixer_off" if method == "zero" and not parallel else method
    return StudyCondition(name, group, ablate(kind or "block", layers, method, name), kind, tuple(layers),
                          method=shown, label=describe(shown, kind, layers), **metadata)


def ablate(kind: str, layers: Sequence[int], method: str, name: str) -> Condition:
    """Ablate `kind` in `layers`: skip the whole blocks, zero the component, or zero the mixers.

    `method` is a resolved method (`skip`, `zero` or `mixer_off`; see `resolve_method`).

    Examples:
        >>> ablate("attn", [3, 7], "skip", "attn_off").items
        ((Selector(kind='block', layers=(3, 7), positions=None, point=None), SkipLayer()),)
        >>> ablate("ssm", [0], "zero", "L0_ssm_off").items
        ((Selector(kind='ssm', layers=(0,), positions=None, point=None), Zero()),)
    """
    return ablation_of({"skip": "block", "mixer_off": "mixer"}.get(method, kind), tuple(layers), name)


def baseline() -> StudyCondition:
    """The clean model: the condition every score drop is measured against.

    Examples:
        >>> baseline().name, baseline().condition.items
        ('baseline', ())
    """
    return StudyCondition("baseline", "baseline", Condition(name="baseline"))


def group_ablations(layout: Layout, method: str = "auto") -> list[StudyCondition]:
    """All instances of one mixer kind off at once (`linear_attn_off`, `attn_off`, `ssm_off`).

    Empty for a model with a single mixer kind (a pure transformer).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
        >>> [(c.name, c.layers) for c in group_ablations(model.layout)]
        [('linear_attn_off', (0, 1, 2, 4, 5, 6)), ('attn_off', (3, 7))]
    """
    method = resolve_method(layout, method)
    kinds = layout.kinds(mixers_only=True)
    if len(kinds) < 2:
        return []  # a pure transformer has no component groups; see transformer_control
    parallel = layout.parallel
    return [ablation(f"{kind}_off", "group", kind, layout.layers_with(kind), method, parallel) for kind in kinds]


def mixer_only_groups(layout: Layout) -> list[StudyCondition]:
    """Every mixer of one kind zeroed, MLPs kept (`attn_mixer_off`, ...): the finer group ablation
    the paper lacks, for models whose default group ablation skips whole layers (sequential hybrids),
    and the group ablation of a pure transformer (which has one mixer kind).

    Empty for parallel hybrids, whose default group ablation already zeroes one path.

    Examples:
        >>> [(c.name, c.label) for c in mixer_only_groups(HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5").layout)]
        [('attn_mixer_off', 'mixer-only zeroing: attention output of layers 0-7 zeroed (MLP kept)')]
    """
    if layout.parallel:
        return []
    return [ablation(f"{kind}_mixer_off", "group", kind, layout.layers_with(kind), "mixer_off", False)
            for kind in layout.kinds(mixers_only=True)]


def layer_sweep(layout: Layout, method: str = "auto") -> list[StudyCondition]:
    """One component of one layer, for every component of every layer (`L3_ssm_off`, ...).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> sweep = layer_sweep(model.layout)
        >>> len(sweep), [c.name for c in sweep[:3]]
        (24, ['L0_ssm_off', 'L0_attn_off', 'L1_ssm_off'])
    """
    method = resolve_method(layout, method)
    parallel = layout.parallel
    return [ablation(f"L{layer.index}_{kind}_off", "layer", kind, [layer.index], method, parallel)
            for layer in layout for kind in layer.mixers]


def positional_thirds(layout: Layout, method: str = "auto") -> list[StudyCondition]:
    """One mixer kind off in the early / middle / late third of the layers.

    Thirds without that kind are left out.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> [(c.name, c.layers) for c in positional_thirds(model.layout)][:3]
        [('ssm_off_early', (0, 1, 2, 3)), ('ssm_off_middle', (4, 5, 6, 7)), ('ssm_off_late', (8, 9, 10, 11))]
    """
    method = resolve_method(layout, method)
    thirds = layer_thirds(len(layout))
    found = []
    for kind in layout.kinds(mixers_only=True):
        for third in THIRDS:
            layers = [i for i in thirds[third] if kind in layout[i].mixers]
            if layers:
                found.append(ablation(f"{kind}_off_{third}", "positional", kind, layers, method,
                                      layout.parallel, third=third))
    return found


def random_controls(layout: Layout, targeted: Sequence[StudyCondition], trials: int = 3, seed: int = 0,
                    method: str = "auto") -> list[StudyCondition]:
    """Matched random controls: for each targeted condition that covers fewer than all layers, `trials`
    draws of the same number of layers (without replacement, seeded with `default_rng(seed + 1)` as
    the paper's code does). Sequential models skip the drawn layers; parallel ones zero the same
    component kind in them.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
        >>> targeted = group_ablations(model.layout)
        >>> controls = random_controls(model.layout, targeted, trials=2, seed=0)
        >>> [(c.name, c.layers, c.matches) for c in controls][2:]
        [('random_attn_off_t0', (4, 5), 'attn_off'), ('random_attn_off_t1', (2, 3), 'attn_off')]
    """
    method = resolve_method(layout, method)
    rng = np.random.default_rng(seed + 1)
    n_layers = len(layout)
    found = []
    for target in targeted:
        if not target.layers or len(target.layers) >= n_layers or target.kind is None:
            continue
        candidates = layout.layers_with(target.kind) if method == "zero" else list(range(n_layers))
        for trial in range(trials):
            layers = tuple(sorted(int(i) for i in rng.choice(candidates, size=len(target.layers), replace=False)))
            found.append(ablation(f"random_{target.name}_t{trial}", "random",
                                  target.kind if method != "skip" else None, layers, method,
                                  layout.parallel, trial=trial, matches=target.name))
    return found


def transformer_control(layout: Layout, fractions: Sequence[float] = (0.25, 0.75), trials: int = 3,
                        seed: int = 0) -> list[StudyCondition]:
    """Random layer removal (sequential skip) at the given fractions of the layers (the paper's
    6/24 and 18/24), for any model; the paper runs it on the pure transformer.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> [(c.name, c.layers) for c in transformer_control(model.layout, trials=2)][:2]
        [('remove2of8_t0', (3, 4)), ('remove2of8_t1', (0, 6))]
    """
    rng = np.random.default_rng(seed + 1)
    n_layers = len(layout)
    found = []
    for fraction in fractions:
        count = max(1, round(fraction * n_layers))
        for trial in range(trials):
            layers = tuple(sorted(int(i) for i in rng.choice(n_layers, size=count, replace=False)))
            found.append(ablation(f"remove{count}of{n_layers}_t{trial}", "transformer", None, layers, "skip",
                                  False, trial=trial))
    return found


def study_conditions(layout: Layout, groups: Sequence[str] = GROUPS, method: str = "auto", trials: int = 3,
                     seed: int = 0) -> list[StudyCondition]:
    """All conditions of the requested groups for a model with these layer kinds (baseline first).

    Positional thirds are generated for parallel models only, and random layer removal
    (`transformer`) for pure transformers only, as in the paper.

    Examples:
        >>> from collections import Counter
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> conditions = study_conditions(model.layout)
        >>> conditions[0].name, Counter(c.group for c in conditions)
        ('baseline', Counter({'layer': 24, 'random': 18, 'positional': 6, 'group': 2, 'baseline': 1}))
        >>> [c.name for c in study_conditions(model.layout, groups=("group",))]
        ['baseline', 'ssm_off', 'attn_off']
    """
    unknown = set(groups) - set(GROUPS)
    if unknown:
        raise ValueError(f"Unknown condition group(s) {sorted(unknown)}; choose from {GROUPS}.")
    found = [baseline()]
    group = group_ablations(layout, method)
    positional = positional_thirds(layout, method) if layout.parallel else []
    if "group" in groups:
        found += group + mixer_only_groups(layout)
    if "layer" in groups:
        found += layer_sweep(layout, method)
    if "positional" in groups:
        found += positional
    if "random" in groups:
        found += random_controls(layout, group + positional, trials, seed, method)
    if "transformer" in groups and not layout.parallel and len(layout.kinds(mixers_only=True)) == 1:
        found += transformer_control(layout, trials=trials, seed=seed)
    return found
