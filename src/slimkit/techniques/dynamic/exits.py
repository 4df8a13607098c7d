"""Early exits (BranchyNet, Teerapittayanon et al. 2016): classifier heads after chosen segments of
a backbone, and inference that stops at the first head confident enough.

``EarlyExitNetwork`` holds the backbone as the chain of segments its forward pass already was
(the children of an ``nn.Sequential``) and a head after some of them; the last segment ends in the
backbone's own classifier, the final exit.

- Training (``model.train()``): every segment and head runs; the final logits are returned (the
  task's loss trains them) and the heads' logits are kept in ``exit_outputs`` for ``ExitLoss``
  (weighted cross-entropy per head, optionally distilled from the final exit).
- Inference: each exit has a threshold on its confidence (the largest softmax probability, or one
  minus the normalised entropy). Rows whose confidence reaches it take that head's logits and
  leave the batch; the others continue on the remaining rows only, so at batch 1 the network
  returns at the first confident exit and computes nothing after it. A threshold of infinity never
  exits and its head is not even run: every threshold at infinity is the backbone, bit for bit.
  ``last_exits`` records which exit each row of the last call took.

``calibrate`` picks one threshold shared by the exits: the lowest (most rows leave early) whose
validation quality stays within a budget of the full network's; with ``costs`` (each exit's MACs,
``exit_costs``) it then moves each exit's own threshold, greedily, to the move that saves the most
cost per unit of quality spent while the budget holds (per-exit thresholds: a weak early head
gets a strict threshold, a nearly-final one a loose one).

Written here: BranchyNet's and MSDNet's code is research code for their own architectures, and
Distiller's early exit only computed statistics (its docs: it does not actually take the exits).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.train.objectives import Batch

Criterion = Literal["confidence", "entropy", "patience"]


class TokenMean(nn.Module):
    """Mean over the token dimension of ``[rows, tokens, features]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(1)


HeadKind = Literal["conv", "strided", "spatial", "pool"]


def exit_head(features: torch.Tensor, num_classes: int, kind: HeadKind = "strided") -> nn.Module:
    """A classifier for a segment's output (one example row). Feature maps, by ``kind``:

    - ``conv``: a 3x3 conv-BN-ReLU of the same width (BranchyNet's branches carry convolutions:
      early features are too local for a linear read-out), global average pooling, a Linear;
    - ``strided``: the same conv at stride 2 (a quarter of its MACs), then 2x2 average pooling, so
      the Linear still sees where in the image the features are;
    - ``spatial``: 4x4 average pooling and a Linear (no conv: the cheapest head that keeps layout);
    - ``pool``: global average pooling and a Linear.

    Token sequences: a token mean then a Linear; vectors: a Linear."""
    if features.dim() == 4:
        c = features.shape[1]
        if kind == "conv":
            return nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))
        if kind == "strided":
            return nn.Sequential(nn.Conv2d(c, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * c, num_classes))
        if kind == "spatial":
            return nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(16 * c, num_classes))
        if kind == "pool":
            return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))
        raise ValueError(f"unknown exit head kind {kind!r} (known: conv, strided, spatial, pool)")
    if features.dim() == 3:
        return nn.Sequential(TokenMean(), nn.Linear(features.shape[-1], num_classes))
    if features.dim() == 2:
        return nn.Linear(features.shape[-1], num_classes)
    raise ValueError(f"no exit head for a segment output of shape {tuple(features.shape)}")


def confidence(logits: torch.Tensor, criterion: Criterion) -> torch.Tensor:
    """Per row: the largest softmax probability, or 1 - entropy / log(classes)."""
    p = logits.float().softmax(-1)
    if criterion == "confidence":
        return p.max(-1).values
    entropy = -(p * p.clamp_min(1e-12).log()).sum(-1)
    return 1.0 - entropy / math.log(p.shape[-1])


State = tuple[torch.Tensor, torch.Tensor] | None


def exit_score(logits: torch.Tensor, criterion: Criterion, previous: State = None) -> tuple[torch.Tensor, State]:
    """Per row, the score a threshold compares at an exit, and what the next exit's score needs.
    ``confidence`` / ``entropy``: ``confidence()`` (no state). ``patience`` (PABEE, Zhou et al.
    2020): how many exits in a row before this one predicted the class this one predicts (0 at the
    first head; ``previous`` holds the last exit's predictions and counts), so a threshold of ``t``
    lets a row leave once ``t + 1`` consecutive heads agree."""
    if criterion != "patience":
        return confidence(logits, criterion), None
    pred = logits.argmax(-1)
    if previous is None:
        streak = torch.zeros(pred.shape, device=pred.device)
    else:
        streak = torch.where(pred == previous[0], previous[1] + 1, torch.zeros_like(previous[1]))
    return streak, (pred, streak)


def exit_scores(logits: Sequence[torch.Tensor], criterion: Criterion) -> list[torch.Tensor]:
    """``exit_score`` at every head, in order (``logits``: the heads' logits, for the same rows)."""
    scores, state = [], None
    for o in logits:
        score, state = exit_score(o, criterion, state)
        scores.append(score)
    return scores


def heads_running(thresholds: Sequence[float], criterion: Criterion) -> list[bool]:
    """Which heads run: those with a finite threshold; under ``patience`` every head once any threshold
    is finite (each head's count needs the one before it)."""
    finite = [t != math.inf for t in thresholds]
    return [any(finite)] * len(finite) if criterion == "patience" else finite


class EarlyExitNetwork(nn.Module):
    """Segments run in order, with exit heads after some of them (``heads``: {segment index:
    head}); the last segment's output is the final exit. See the module docstring."""

    input_dependent_cost = True  # the measurement takes MACs and batch-1 latency row by row

    def __init__(self, segments: Sequence[nn.Module], heads: dict[int, nn.Module],
                 criterion: Criterion = "confidence") -> None:
        super().__init__()
        if not heads or max(heads) >= len(segments) - 1 or min(heads) < 0:
            raise ValueError(f"exits must follow segments 0..{len(segments) - 2}, got {sorted(heads)}")
        self.segments = nn.ModuleList(segments)
        self.heads = nn.ModuleDict({str(i): heads[i] for i in sorted(heads)})
        self.points = sorted(heads)
        self.criterion = criterion
        self.register_buffer("thresholds", torch.full((len(heads),), math.inf))
        self.exit_outputs: list[torch.Tensor] = []
        self.last_exits: torch.Tensor | None = None

    @property
    def exits(self) -> int:
        """Exits including the final one."""
        return len(self.points) + 1

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self._all_exits(inputs)
        return self._exiting(inputs)

    def _all_exits(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        *self.exit_outputs, final = self._every_exit(inputs)
        return final

    def _every_exit(self, inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        """Every segment and every head on every row: the heads' logits, then the final output."""
        h: torch.Tensor = self.segments[0](*inputs)
        outputs = []
        for i in range(len(self.segments)):
            if i > 0:
                h = self.segments[i](h)
            if str(i) in self.heads:
                outputs.append(self.heads[str(i)](h))
        return outputs + [h]

    @torch.no_grad()
    def exit_logits(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        """Every exit's logits for every row (the heads', then the final), in evaluation mode: for
        calibration."""
        was = self.training
        self.eval()
        try:
            return self._every_exit(inputs)
        finally:
            self.train(was)

    def stages(self) -> tuple[list[nn.Module], list[nn.Module]]:
        """(bodies, heads): body ``k`` runs the segments after exit ``k - 1`` up to exit ``k`` (the
        last body up to the final output), head ``k`` reads body ``k``'s output. Each is a
        one-input, one-output module, so a runtime compiles each as a graph of its own and
        ``run_stages`` takes the exit decisions between them (``Backend.compile`` does this)."""
        bodies, start = [], 0
        for end in [*self.points, len(self.segments) - 1]:
            bodies.append(_Chain(list(self.segments[start:end + 1])))
            start = end + 1
        return bodies, [self.heads[str(p)] for p in self.points]

    def _exiting(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        bodies, heads = self.stages()
        return self.run_stages(bodies, heads, inputs)

    def export_graph(self) -> nn.Module:
        """The exit logic as one graph with data-dependent branches (``torch.cond``, which the ONNX
        exporter writes as ``If`` nodes), for exporters and runtimes that run control flow: after
        each exit the rest of the network runs only if some row of the batch is not yet confident,
        and each row takes the logits of the first exit confident for it. Per row this is exactly
        ``run_stages``'s output; a batch-1 row that exits computes nothing after its exit, while a
        larger batch stops only once every row has exited (``run_stages`` lets rows leave one by
        one). Thresholds are baked in as constants, and an infinite one leaves its head out."""
        return _ExitGraph(self)

    def run_stages(self, bodies: Sequence[Callable[..., torch.Tensor]], heads: Sequence[Callable[..., torch.Tensor]],
                   inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The exit logic over ``stages()`` (eager modules or their compiled graphs): rows whose
        confidence reaches exit ``k``'s threshold take head ``k``'s logits and leave; the rest
        continue on the remaining rows only. ``last_exits`` records each row's exit."""
        rows = inputs[0].shape[0]
        if rows == 1:
            return self._run_one_row(bodies, heads, inputs)
        device = inputs[0].device
        taken = torch.full((rows,), len(heads), dtype=torch.long, device=device)
        active = torch.arange(rows, device=device)
        out: torch.Tensor | None = None
        thresholds = self.thresholds.tolist()
        runs, state = heads_running(thresholds, self.criterion), None
        h = bodies[0](*inputs)
        for k, head in enumerate(heads):
            if runs[k]:
                logits = head(h)
                score, state = exit_score(logits, self.criterion, state)
                done = (score >= thresholds[k]).to(device)
                if bool(done.any()):
                    if out is None:
                        out = logits.new_zeros((rows, *logits.shape[1:]))
                    out[active[done]] = logits[done]
                    taken[active[done]] = k
                    keep = ~done
                    if not bool(keep.any()):
                        self.last_exits = taken
                        return out
                    h, active = h[keep], active[keep]
                    state = None if state is None else (state[0][keep], state[1][keep])
            h = bodies[k + 1](h)
        self.last_exits = taken
        if out is None:  # nobody left early: the backbone's own output, untouched
            return h
        out[active] = h.to(out.dtype)
        return out

    def _run_one_row(self, bodies: Sequence[Callable[..., torch.Tensor]],
                     heads: Sequence[Callable[..., torch.Tensor]], inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """``run_stages`` for a batch of one row, without its bookkeeping: what a batch-1 call costs
        is the stages it runs and the decisions between them."""
        thresholds = self.thresholds.tolist()
        runs, state = heads_running(thresholds, self.criterion), None
        h = bodies[0](*inputs)
        for k, head in enumerate(heads):
            if runs[k]:
                logits = head(h)
                score, state = exit_score(logits, self.criterion, state)
                if float(score[0]) >= thresholds[k]:
                    self.last_exits = torch.tensor([k], device=logits.device)
                    return logits
            h = bodies[k + 1](h)
        self.last_exits = torch.tensor([len(heads)], device=h.device)
        return h


class _ExitGraph(nn.Module):
    """``EarlyExitNetwork.export_graph()``: the network's exit decisions as nested ``torch.cond``."""

    def __init__(self, net: EarlyExitNetwork) -> None:
        super().__init__()
        bodies, heads = net.stages()
        self.bodies = nn.ModuleList(bodies)
        self.heads = nn.ModuleList(heads)
        self.thresholds = [float(t) for t in net.thresholds]
        self.criterion = net.criterion
        self.runs = heads_running(self.thresholds, self.criterion)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self._from(0, self.bodies[0](*inputs), ())

    def _from(self, k: int, h: torch.Tensor, state: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The output for rows that reached exit ``k`` with features ``h`` (``state``: what the
        criterion carries from the exit before, as a tuple of tensors: ``torch.cond`` operands)."""
        if k == len(self.heads):
            return h
        if not self.runs[k]:
            return self._from(k + 1, self.bodies[k + 1](h), state)
        logits = self.heads[k](h)
        score, new = exit_score(logits, self.criterion, state or None)
        done = score >= self.thresholds[k]

        def stop(h: torch.Tensor, logits: torch.Tensor, done: torch.Tensor, *state: torch.Tensor) -> torch.Tensor:
            return logits.clone()

        def go_on(h: torch.Tensor, logits: torch.Tensor, done: torch.Tensor, *state: torch.Tensor) -> torch.Tensor:
            rest = self._from(k + 1, self.bodies[k + 1](h), state)
            return torch.where(done.view(-1, *[1] * (logits.dim() - 1)), logits, rest.to(logits.dtype))

        return torch.cond(done.all(), stop, go_on, (h, logits, done, *(new or ())))


class _Chain(nn.Module):
    """Segments run in order (the first may take several inputs): a transient view that
    ``stages()`` builds, not held by the network (its state dict is unchanged)."""

    def __init__(self, segments: list[nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(segments)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        h = self.parts[0](*inputs)
        for part in self.parts[1:]:
            h = part(h)
        return h


def attach_exits(model: nn.Module, example_inputs: Sequence[torch.Tensor], num_classes: int,
                 after: Sequence[str] | None = None, exits: int = 2,
                 criterion: Criterion = "confidence", head: HeadKind = "strided") -> EarlyExitNetwork:
    """An ``EarlyExitNetwork`` over ``model``'s children (``model`` must be an ``nn.Sequential``,
    whose forward is the chain of its children) with heads after the children named in ``after``,
    or by default after the children where the cumulative MACs first pass 1/(exits+1), 2/(exits+1)...
    of the total (the cheap exits come early)."""
    from slimkit.measure.macs import count_macs_by_module

    if not isinstance(model, nn.Sequential):
        raise ValueError(f"early exits need a model whose forward is a chain of children (an nn.Sequential); "
                         f"{type(model).__name__} is not one")
    names = [n for n, _ in model.named_children()]
    if len(names) < 3:
        raise ValueError(f"early exits need at least 3 children to cut between, the model has {len(names)}")
    outputs = _child_outputs(model, example_inputs)
    if after is None:
        macs = count_macs_by_module(model, example_inputs)
        per_child = [macs.get(n, 0) for n in names]
        total = sum(per_child)
        cumulative = [sum(per_child[:i + 1]) for i in range(len(names))]
        points = []
        for j in range(1, exits + 1):
            target = total * j / (exits + 1)
            i = next(i for i, c in enumerate(cumulative) if c >= target)
            while i < len(names) - 1 and (outputs[i].dim() < 2 or i in points):
                i += 1
            if i < len(names) - 1:
                points.append(i)
        points = sorted(set(points))
    else:
        unknown = [a for a in after if a not in names]
        if unknown:
            raise ValueError(f"early exits: 'after' names no child of the model: {unknown} (children: {names})")
        points = sorted({names.index(a) for a in after})
        if points and points[-1] == len(names) - 1:
            raise ValueError(f"early exits: {names[-1]!r} is the model's last child, already the final exit")
    if not points:
        raise ValueError("early exits: no child to put an exit after")
    heads = {i: exit_head(outputs[i][:1], num_classes, head) for i in points}
    device = next(model.parameters()).device
    return EarlyExitNetwork(list(model.children()), {i: h.to(device) for i, h in heads.items()}, criterion)


class TokenHead(nn.Module):
    """An exit head on token features ``[rows, tokens, features]``: the mean over real tokens (the
    attention mask's ones; all tokens without a mask), a dense layer with tanh (BERT's pooler, as
    DeeBERT's off-ramps carry), and a Linear classifier."""

    def __init__(self, features: int, num_classes: int) -> None:
        super().__init__()
        self.dense = nn.Linear(features, features)
        self.classifier = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            pooled = x.mean(1)
        else:
            m = mask[:, :x.shape[1]].unsqueeze(-1).to(x.dtype)
            pooled = (x * m).sum(1) / m.sum(1).clamp_min(1e-9)
        return self.classifier(torch.tanh(self.dense(pooled)))


class _AllExited(Exception):
    """Raised by an exit hook once every row of the call has left: the model's forward stops."""


class HookedExitNetwork(nn.Module):
    """Exit heads on the outputs of named submodules of any model (a ``transformers`` encoder's
    layers, a ResNet's blocks, a user's module list), attached by forward hooks for the duration
    of each call, so the model's own forward runs unchanged (DeeBERT, Xin et al. 2020).

    Training: every head runs on its submodule's output (``exit_outputs``, as for
    ``EarlyExitNetwork``) and the model's output is returned. Inference: after each exit the rows
    confident there take its logits; once every row of the call has left, the forward pass stops
    (an exception out of the hook, caught here), so a batch-1 row that exits runs no layer after
    its exit. Unlike ``EarlyExitNetwork`` the rows of a larger batch do not leave it one by one:
    the model's own forward (attention masks, position ids) is not cut up, so the rows still
    running carry the finished ones along; each row's output is still its own first confident
    exit's. Runs in eager PyTorch: no exporter follows the hooks, and ``export_graph`` says so."""

    input_dependent_cost = True

    def __init__(self, model: nn.Module, heads: dict[str, nn.Module], criterion: Criterion = "confidence",
                 mask_input: int | None = None) -> None:
        super().__init__()
        order = [n for n, _ in model.named_modules()]
        unknown = [n for n in heads if n not in order]
        if unknown or not heads:
            raise ValueError(f"exit points must name submodules of the model, got {unknown or list(heads)}")
        self.model = model
        self.points = sorted(heads, key=order.index)  # module names, in the model's order
        self.heads = nn.ModuleDict({_key(n): heads[n] for n in self.points})
        self.criterion = criterion
        self.mask_input = mask_input
        self.register_buffer("thresholds", torch.full((len(heads),), math.inf))
        self.exit_outputs: list[torch.Tensor] = []
        self.last_exits: torch.Tensor | None = None
        self._call: dict | None = None

    @property
    def exits(self) -> int:
        return len(self.points) + 1

    def _head(self, k: int, output) -> torch.Tensor:
        h = output if isinstance(output, torch.Tensor) else next(t for t in output if isinstance(t, torch.Tensor))
        head = self.heads[_key(self.points[k])]
        return head(h, self._call["mask"]) if isinstance(head, TokenHead) else head(h)

    def _hook(self, k: int):
        def hook(module: nn.Module, args, output) -> None:
            call = self._call
            if call["every"]:
                call["outputs"].append(self._head(k, output))
                return
            thresholds = self.thresholds.tolist()
            if not heads_running(thresholds, self.criterion)[k]:
                return
            logits = self._head(k, output)
            score, call["state"] = exit_score(logits, self.criterion, call["state"])
            new = (score >= thresholds[k]) & ~call["done"]
            if bool(new.any()):
                if call["out"] is None:
                    call["out"] = logits.new_zeros(logits.shape)
                call["out"][new] = logits[new]
                call["taken"][new] = k
                call["done"] |= new
                if bool(call["done"].all()):
                    raise _AllExited
        return hook

    def _run(self, inputs: tuple[torch.Tensor, ...], every: bool):
        rows = inputs[0].shape[0]
        device = inputs[0].device
        mask = inputs[self.mask_input] if self.mask_input is not None else None
        self._call = {"every": every, "outputs": [], "mask": mask, "out": None, "state": None,
                      "done": torch.zeros(rows, dtype=torch.bool, device=device),
                      "taken": torch.full((rows,), len(self.points), dtype=torch.long, device=device)}
        handles = [self.model.get_submodule(n).register_forward_hook(self._hook(k)) for k, n in enumerate(self.points)]
        try:
            final = self.model(*inputs)
            stopped = False
        except _AllExited:
            final, stopped = None, True
        finally:
            for handle in handles:
                handle.remove()
        call, self._call = self._call, None
        return final, stopped, call

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.training:
            final, _, call = self._run(inputs, every=True)
            self.exit_outputs = call["outputs"]
            return final
        final, stopped, call = self._run(inputs, every=False)
        self.last_exits = call["taken"]
        if call["out"] is None:
            return final  # nobody left early: the model's own output, untouched
        if not stopped:
            rest = ~call["done"]
            call["out"][rest] = final[rest].to(call["out"].dtype)
        return call["out"]

    @torch.no_grad()
    def exit_logits(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        """Every exit's logits for every row (the heads', then the final), in evaluation mode."""
        was = self.training
        self.eval()
        try:
            final, _, call = self._run(inputs, every=True)
            return call["outputs"] + [final]
        finally:
            self.train(was)

    def export_graph(self) -> nn.Module:
        from slimkit.core.errors import UnsupportedModelError

        raise UnsupportedModelError("early exits placed by hooks inside a model that is not a chain of children "
                                    "run in eager PyTorch only: an exported graph would not stop at an exit")


def _key(name: str) -> str:
    return name.replace(".", "/")  # ModuleDict keys cannot hold dots


def layer_lists(model: nn.Module) -> list[list[str]]:
    """The entries' names of every ``nn.ModuleList`` of 2 or more modules of one class in the model
    (a transformer's layers, a stage's blocks), longest first: where exits go by default in a
    model that is not a chain of children."""
    found = [[f"{name}.{i}" if name else str(i) for i in range(len(module))]
             for name, module in model.named_modules()
             if isinstance(module, nn.ModuleList) and len(module) >= 2 and len({type(m) for m in module}) == 1]
    return sorted(found, key=len, reverse=True)


def layer_list(model: nn.Module) -> list[str]:
    """The longest of ``layer_lists`` (empty when there is none)."""
    lists = layer_lists(model)
    return lists[0] if lists else []


def attach_hooked_exits(model: nn.Module, example_inputs: Sequence[torch.Tensor], num_classes: int,
                        after: Sequence[str] | None = None, exits: int = 2, criterion: Criterion = "confidence",
                        head: HeadKind = "strided", mask_input: int | None = None) -> HookedExitNetwork:
    """A ``HookedExitNetwork`` with heads after the submodules named in ``after``, or by default after
    the entries of the model's layer list (``layer_list``) where the cumulative MACs first pass
    1/(exits+1), 2/(exits+1)... of the total (never after the list's last entry)."""
    from slimkit.measure.macs import count_macs_by_module

    names = dict(model.named_modules())
    rows = example_inputs[0].shape[0]
    if after is None:
        # the longest list whose entries output one row per input row (MobileViT's transformer
        # layers run on patches: [rows x patches, ...], which no head can classify per row)
        layers = next((lst for lst in layer_lists(model) if _one_row_each(model, example_inputs, lst)), [])
        if not layers:
            raise ValueError(f"early exits: {type(model).__name__} is not a chain of children and has no list of "
                             "layers (with one output row per input row) to put exits after; name the submodules "
                             "in 'after'")
        macs = count_macs_by_module(model, example_inputs)
        total = macs[""]
        # MACs up to the end of each layer: the layer's own plus what ran before it (the layers'
        # shares of the total are what a row that leaves there saves)
        before = total - sum(macs.get(n, 0) for n in layers)  # embeddings, stems: counted as coming first
        cumulative, run = [], before
        for n in layers[:-1]:
            run += macs.get(n, 0)
            cumulative.append(run)
        points: list[str] = []
        for j in range(1, exits + 1):
            i = next((i for i, c in enumerate(cumulative) if c >= total * j / (exits + 1)), None)
            if i is not None and layers[i] not in points:
                points.append(layers[i])
        if not points:
            raise ValueError("early exits: the layer list leaves no point to put an exit after")
    else:
        unknown = [a for a in after if a not in names or a == ""]
        if unknown:
            raise ValueError(f"early exits: 'after' names no submodule of the model: {unknown}")
        points = list(dict.fromkeys(after))
    outputs = _module_outputs(model, example_inputs, points)
    batched = [n for n in points if outputs[n].shape[0] != rows]
    if batched:
        raise ValueError(f"early exits: {batched} output {outputs[batched[0]].shape[0]} rows for {rows} input rows "
                         "(not one per input row): no head can classify there")
    heads = {}
    for n in points:
        h = outputs[n]
        heads[n] = TokenHead(h.shape[-1], num_classes) if h.dim() == 3 else exit_head(h[:1], num_classes, head)
    device = next(model.parameters()).device
    return HookedExitNetwork(model, {n: h.to(device) for n, h in heads.items()}, criterion, mask_input)


def _one_row_each(model: nn.Module, example_inputs: Sequence[torch.Tensor], names: Sequence[str]) -> bool:
    try:
        outputs = _module_outputs(model, example_inputs, names)
    except ValueError:  # an entry that does not run, or returns no tensor
        return False
    return all(o.shape[0] == example_inputs[0].shape[0] for o in outputs.values())


@torch.no_grad()
def _module_outputs(model: nn.Module, example_inputs: Sequence[torch.Tensor], names: Sequence[str]) -> dict:
    outputs: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(module, args, output):
            t = output if isinstance(output, torch.Tensor) else next(
                (o for o in output if isinstance(o, torch.Tensor)), None) if isinstance(output, (tuple, list)) else None
            if t is None:
                raise ValueError(f"early exits: {name!r} returns {type(output).__name__}, not a tensor")
            outputs.setdefault(name, t)
        return hook

    was = model.training
    model.eval()
    handles = [model.get_submodule(n).register_forward_hook(keep(n)) for n in names]
    try:
        model(*example_inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    missing = [n for n in names if n not in outputs]
    if missing:
        raise ValueError(f"early exits: {missing} did not run in the model's forward pass")
    return outputs


@torch.no_grad()
def _child_outputs(model: nn.Sequential, example_inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    was = model.training
    model.eval()
    try:
        outputs, h = [], None
        for i, child in enumerate(model.children()):
            h = child(*example_inputs) if i == 0 else child(h)
            if not isinstance(h, torch.Tensor):
                raise ValueError(f"early exits: child {i} returns {type(h).__name__}, not a tensor")
            outputs.append(h)
        return outputs
    finally:
        model.train(was)


@dataclass
class ExitLoss:
    """The heads' objective: ``weights[k]`` x cross-entropy of exit ``k`` (the final exit is the
    task loss's), plus ``distill`` x the KL from the final exit's softened, detached prediction
    (self-distillation; ``temperature`` T, scaled by T^2)."""

    weights: list[float]
    distill: float = 0.0
    temperature: float = 1.0
    weight: float = 1.0
    name: str = "exits"

    def __call__(self, batch: Batch) -> torch.Tensor:
        net = getattr(batch.model, "module", batch.model)  # a DistributedDataParallel wrapper
        heads = net.exit_outputs
        if len(heads) != len(self.weights):
            raise RuntimeError(f"ExitLoss: {len(heads)} exit outputs for {len(self.weights)} weights")
        loss = sum(w * F.cross_entropy(o, batch.targets) for w, o in zip(self.weights, heads))
        if self.distill:
            t = self.temperature
            teacher = F.softmax(batch.outputs.detach() / t, -1)
            loss = loss + self.distill * t * t * sum(
                F.kl_div(F.log_softmax(o / t, -1), teacher, reduction="batchmean") for o in heads)
        return loss


@dataclass
class Calibration:
    threshold: float  # the shared threshold (the per-exit search starts from it)
    quality: float  # on the calibration rows, with exits
    full_quality: float  # without
    exit_shares: list[float]  # rows per exit (the final last)
    thresholds: list[float] = field(default_factory=list)  # per exit, as written into the network
    cost: float | None = None  # mean cost per row relative to the final exit's (with ``costs``)


def exits_taken(scores: Sequence[torch.Tensor], thresholds: Sequence[float]) -> torch.Tensor:
    """Per row, the first exit whose score reaches its threshold (``len(scores)``: the final exit)."""
    taken = torch.full(scores[0].shape, len(scores), dtype=torch.long, device=scores[0].device)
    for k in reversed(range(len(scores))):
        taken = torch.where(scores[k] >= thresholds[k], torch.full_like(taken, k), taken)
    return taken


@torch.no_grad()
def exit_shares(net: nn.Module, logits: list[torch.Tensor]) -> list[float]:
    """The share of rows leaving at each exit (the final last) under ``net``'s thresholds, from
    every exit's logits for those rows (``exit_logits``)."""
    taken = exits_taken(exit_scores(logits[:-1], net.criterion), net.thresholds.tolist())
    return [float((taken == k).float().mean()) for k in range(len(logits))]


_NEVER = 1e9  # a finite threshold no score reaches: the head runs, nobody leaves there


@torch.no_grad()
def exit_costs(net: nn.Module, example_inputs: Sequence[torch.Tensor]) -> list[int]:
    """MACs of a row of ``example_inputs``'s shape (one row) leaving at each exit (the final last),
    every head before it running: counted by forcing that exit, thresholds restored after."""
    from slimkit.measure.macs import count_macs

    saved, was = net.thresholds.clone(), net.training
    n = len(saved)
    costs = []
    try:
        net.eval()
        for k in range(n + 1):
            forced = [_NEVER] * k + ([-math.inf] if k < n else []) + [math.inf] * (n - k - 1)
            net.thresholds.copy_(torch.tensor(forced, dtype=saved.dtype))
            costs.append(count_macs(net, example_inputs))
    finally:
        net.thresholds.copy_(saved)
        net.train(was)
    return costs


@torch.no_grad()
def calibrate(net: EarlyExitNetwork, logits: list[torch.Tensor], targets: torch.Tensor, budget: float,
              candidates: int = 200, costs: Sequence[float] | None = None) -> Calibration:
    """Thresholds whose accuracy on these rows (``logits``: every exit's, from ``exit_logits``)
    stays within ``budget`` of the final exit's, written into ``net.thresholds``.

    First the lowest shared threshold (most rows leave early). With ``costs`` (a row's cost at
    each exit, the final last: ``exit_costs``), then per-exit thresholds: from the shared ones,
    each round tries every exit at every candidate value (its scores' quantiles, and infinity)
    and takes the move that lowers the mean cost most per unit of accuracy it loses (moves that
    lose none first), while the budget holds; it stops when no move lowers the cost. Greedy, on
    the calibration rows: a budget spent exactly there may be overspent on other rows."""
    scores = exit_scores(logits[:-1], net.criterion)
    correct = torch.stack([o.argmax(-1) == targets for o in logits]).float()
    rows = torch.arange(len(targets), device=targets.device)
    full = float(correct[-1].mean())
    values = torch.cat(scores).float()
    grid = torch.quantile(values, torch.linspace(0, 1, candidates)).unique().tolist() + [math.inf]
    n = len(scores)
    if costs is not None and (len(costs) != n + 1 or costs[-1] <= 0):
        raise ValueError(f"calibrate: costs needs one positive cost per exit, the final last ({n + 1}), got "
                         f"{list(costs)}")
    weights = None if costs is None else torch.tensor([c / costs[-1] for c in costs], device=targets.device)

    def evaluate(thresholds: Sequence[float]) -> tuple[float, float | None, torch.Tensor]:
        taken = exits_taken(scores, thresholds)
        quality = float(correct[taken, rows].mean())
        return quality, None if weights is None else float(weights[taken].mean()), taken

    def result(threshold: float, thresholds: list[float]) -> Calibration:
        quality, cost, taken = evaluate(thresholds)
        return Calibration(threshold, quality, full, [float((taken == k).float().mean()) for k in range(n + 1)],
                           list(thresholds), cost)

    best = result(math.inf, [math.inf] * n)
    for threshold in sorted(grid, reverse=True):  # from never exiting towards exiting most
        if evaluate([threshold] * n)[0] < full - budget:
            break  # lower thresholds only let more uncertain rows out
        best = result(threshold, [threshold] * n)
    if weights is not None:
        best = _per_exit(best, scores, evaluate, result, full - budget, candidates)
    net.thresholds.copy_(torch.tensor(best.thresholds, dtype=net.thresholds.dtype))
    return best


def _per_exit(start: Calibration, scores: list[torch.Tensor], evaluate, result, floor: float,
              candidates: int) -> Calibration:
    """``calibrate``'s greedy per-exit search from the shared thresholds of ``start``."""
    grids = [torch.quantile(s.float(), torch.linspace(0, 1, candidates)).unique().tolist() + [math.inf]
             for s in scores]
    thresholds, quality, cost = list(start.thresholds), start.quality, start.cost
    while True:
        move = None
        for k, grid in enumerate(grids):
            for value in grid:
                if value == thresholds[k]:
                    continue
                trial = thresholds[:k] + [value] + thresholds[k + 1:]
                q, c, _ = evaluate(trial)
                if q < floor or c >= cost - 1e-12:
                    continue
                rate = (cost - c) / max(quality - q, 1e-9)  # cost saved per accuracy lost
                if move is None or rate > move[0]:
                    move = (rate, trial, q, c)
        if move is None:
            break
        _, thresholds, quality, cost = move
    return result(start.threshold, thresholds)
