"""Distillation objectives as loss terms of the one training loop (no second loop).

Each term holds a frozen teacher (eval mode, no gradients) and compares it with the student on
the batch the loop is training on: logits (Hinton et al. 2015), hidden features through learned
adapters (FitNets, Romero et al. 2015), spatial attention maps (Zagoruyko & Komodakis 2017),
self-attention relations of transformers (MiniLMv2, Wang et al. 2021) and sentence embeddings.
Terms that read intermediate layers hook them by module path; terms with learned parts (the
FitNets adapters) expose ``trainable_parameters()``, which the loop adds to its optimizer.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.core.outputs import primary_output
from slimkit.core.errors import ConfigError
from slimkit.train.objectives import Batch


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's soft-target term: ``T² · KL(softmax(t/T) || softmax(s/T))``, averaged over the batch
    (the T² keeps its gradients on the scale of the hard-label loss as T changes)."""
    t = temperature
    log_p_student = F.log_softmax(student_logits / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / t, dim=-1)
    return F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean") * t * t


def attention_map(features: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Zagoruyko & Komodakis' spatial attention: mean over channels of |F|^p, flattened and
    L2-normalised per example. (N, C, H, W) -> (N, H*W)."""
    return F.normalize(features.abs().pow(p).mean(1).flatten(1), dim=1)


def attention_relation(x: torch.Tensor, heads: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """MiniLMv2's self-attention relation of one of q, k or v: split into ``heads`` relation heads,
    ``log softmax(x_h x_hᵀ / sqrt(d_h))`` over the keys. (N, L, D) -> (N, heads, L, L)
    log-probabilities; ``mask`` (N, L), 1 for real tokens, keeps padding out of the keys."""
    n, length, dim = x.shape
    if dim % heads:
        raise ConfigError(f"attention relation: width {dim} does not split into {heads} relation heads")
    xh = x.reshape(n, length, heads, dim // heads).transpose(1, 2)
    scores = xh @ xh.transpose(-1, -2) / math.sqrt(dim // heads)
    if mask is not None:
        scores = scores.masked_fill(~mask.bool()[:, None, None, :], torch.finfo(scores.dtype).min)
    return F.log_softmax(scores, dim=-1)


TEACHER_OUTPUTS = "teacher_outputs"  # Batch.extras key of a teacher's precomputed outputs


class Teacher:
    """A teacher that never trains: eval mode, gradients off, run under ``no_grad``. Terms built on
    one ``Teacher`` share its forward pass: a second ``run`` on the same batch (the same inputs
    tuple) returns the first one's outputs, and every term's layer hooks have fired by then."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self._last: tuple[Any, Any] | None = None
        self.forwards = 0

    @torch.no_grad()
    def run(self, inputs: Sequence[torch.Tensor]) -> Any:
        if self._last is not None and self._last[0] is inputs:
            return self._last[1]
        self.model.eval()
        out = primary_output(self.model(*inputs))
        self.forwards += 1
        self._last = (inputs, out)
        return out


class _Frozen:
    """A term holding a ``Teacher`` (built here from a module, or shared with other terms)."""

    def __init__(self, teacher: nn.Module | Teacher) -> None:
        self.frozen = teacher if isinstance(teacher, Teacher) else Teacher(teacher)
        self.teacher = self.frozen.model

    def run(self, inputs: Sequence[torch.Tensor]) -> Any:
        return self.frozen.run(inputs)

    def outputs(self, batch: Batch) -> torch.Tensor:
        """The teacher's outputs for the batch: precomputed (``batch.extras``) or run now."""
        cached = batch.extras.get(TEACHER_OUTPUTS)
        return cached if cached is not None else self.run(batch.inputs)


class LogitDistillation(_Frozen):
    """``weight · soft_target_loss(student, teacher, temperature)``; the task's hard-label loss is a
    separate term (its weight sets Hinton's soft/hard balance)."""

    name = "kd_logits"

    def __init__(self, teacher: nn.Module | Teacher, temperature: float = 4.0, weight: float = 1.0) -> None:
        super().__init__(teacher)
        if temperature <= 0:
            raise ConfigError(f"distillation temperature must be > 0, got {temperature}")
        self.temperature, self.weight = temperature, weight

    def __call__(self, batch: Batch) -> torch.Tensor:
        return soft_target_loss(batch.outputs, self.outputs(batch), self.temperature)


class EmbeddingDistillation(_Frozen):
    """Sentence-embedding distillation: ``1 - cos(student, teacher)`` or the MSE, batch mean."""

    name = "kd_embedding"

    def __init__(self, teacher: nn.Module | Teacher, loss: Literal["cosine", "mse"] = "cosine",
                 weight: float = 1.0) -> None:
        super().__init__(teacher)
        self.loss, self.weight = loss, weight

    def __call__(self, batch: Batch) -> torch.Tensor:
        target = self.outputs(batch)
        if batch.outputs.shape != target.shape:
            raise ConfigError(f"embedding distillation: student outputs {tuple(batch.outputs.shape)} and teacher "
                              f"outputs {tuple(target.shape)} differ in shape")
        if self.loss == "mse":
            return F.mse_loss(batch.outputs, target)
        return (1 - F.cosine_similarity(batch.outputs, target, dim=-1)).mean()


class _Hooks:
    """Captures the outputs of named modules on every forward pass."""

    def __init__(self, model: nn.Module, names: Sequence[str], role: str) -> None:
        modules = dict(model.named_modules())
        unknown = [n for n in names if n not in modules]
        if unknown:
            raise ConfigError(f"distillation: the {role} has no module named {unknown}")
        self.captured: dict[str, torch.Tensor] = {}
        self.handles = [modules[n].register_forward_hook(self._saver(n)) for n in names]

    def _saver(self, name: str):
        def save(module, args, output):
            self.captured[name] = output[0] if isinstance(output, (tuple, list)) else output
        return save

    def take(self, name: str) -> torch.Tensor:
        return self.captured.pop(name)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class _LayerPairs(_Frozen):
    """A term comparing student layers with teacher layers, pair by pair ({student: teacher})."""

    def __init__(self, student: nn.Module, teacher: nn.Module | Teacher, pairs: dict[str, str]) -> None:
        super().__init__(teacher)
        if not pairs:
            raise ConfigError("distillation: name at least one {student layer: teacher layer} pair")
        self.pairs = dict(pairs)
        self.student_hooks = _Hooks(student, list(self.pairs), "student")
        self.teacher_hooks = _Hooks(self.teacher, list(self.pairs.values()), "teacher")

    def features(self, batch: Batch) -> list[tuple[str, str, torch.Tensor, torch.Tensor]]:
        self.run(batch.inputs)
        return [(s, t, self.student_hooks.take(s), self.teacher_hooks.take(t)) for s, t in self.pairs.items()]

    def remove(self) -> None:
        self.student_hooks.remove()
        self.teacher_hooks.remove()


class FeatureDistillation(_LayerPairs):
    """FitNets hints: ``MSE(adapter(student feature), teacher feature)`` summed over the pairs. The
    adapter is a learned 1x1 conv (4-D features) or linear map from the student's channels to the
    teacher's (created even when the widths agree, as FitNets' regressor is), sized on
    ``example_inputs``; spatial sizes and ranks must match. ``adapter="none"`` compares the
    features directly (TinyBERT's hidden-state term for a student as wide as its teacher, such as
    a factorized or pruned copy of it): the widths must agree. With ``mask_input`` set, sequence
    features (N, L, C) count only the real tokens of that attention-mask input."""

    name = "kd_features"

    def __init__(self, student: nn.Module, teacher: nn.Module | Teacher, pairs: dict[str, str],
                 example_inputs: Sequence[torch.Tensor], weight: float = 1.0,
                 adapter: Literal["linear", "none"] = "linear", mask_input: int | None = None) -> None:
        super().__init__(student, teacher, pairs)
        if adapter not in ("linear", "none"):
            raise ConfigError(f"feature distillation: adapter must be 'linear' or 'none', got {adapter!r}")
        self.weight, self.mask_input = weight, mask_input
        was_training = student.training
        with torch.no_grad():
            student.eval()(*example_inputs)
        student.train(was_training)
        self.adapters = nn.ModuleDict()
        for s, t, fs, ft in self.features(Batch(student, tuple(example_inputs), torch.empty(0), torch.empty(0))):
            self._check(s, t, fs, ft)
            conv = fs.dim() == 4
            if adapter == "none":
                if fs.shape != ft.shape:
                    raise ConfigError(f"feature distillation: adapter 'none' compares features directly, but student "
                                      f"layer {s!r} gives {tuple(fs.shape)} and teacher layer {t!r} gives "
                                      f"{tuple(ft.shape)}; use adapter: linear")
                self.adapters[s.replace(".", "/")] = nn.Identity()
            else:
                self.adapters[s.replace(".", "/")] = (nn.Conv2d(fs.shape[1], ft.shape[1], 1, bias=False) if conv
                                                      else nn.Linear(fs.shape[-1], ft.shape[-1], bias=False))

    @staticmethod
    def _check(s: str, t: str, fs: torch.Tensor, ft: torch.Tensor) -> None:
        channel_dim = 1 if fs.dim() == 4 else -1
        same = fs.dim() == ft.dim() and all(a == b for i, (a, b) in enumerate(zip(fs.shape, ft.shape))
                                            if i != channel_dim % fs.dim())
        if not same:
            raise ConfigError(f"feature distillation: student layer {s!r} gives {tuple(fs.shape)} and teacher layer "
                              f"{t!r} gives {tuple(ft.shape)}; only the channel widths may differ")

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.adapters.parameters())

    def __call__(self, batch: Batch) -> torch.Tensor:
        mask = None if self.mask_input is None else batch.inputs[self.mask_input].bool()
        total = 0.0
        for s, t, fs, ft in self.features(batch):
            adapter = self.adapters[s.replace(".", "/")].to(fs.device)
            predicted = adapter(fs)
            if mask is not None and predicted.dim() == 3 and predicted.shape[:2] == mask.shape:
                total = total + F.mse_loss(predicted[mask], ft[mask])  # real tokens only
            else:
                total = total + F.mse_loss(predicted, ft)
        return total


class AttentionTransfer(_LayerPairs):
    """Zagoruyko & Komodakis: ``|| a(student) - a(teacher) ||₂`` of the spatial attention maps,
    batch mean, summed over the pairs (channel widths may differ, spatial sizes must agree)."""

    name = "kd_attention"

    def __init__(self, student: nn.Module, teacher: nn.Module | Teacher, pairs: dict[str, str], p: float = 2.0,
                 weight: float = 1.0) -> None:
        super().__init__(student, teacher, pairs)
        self.p, self.weight = p, weight

    def __call__(self, batch: Batch) -> torch.Tensor:
        total = 0.0
        for s, t, fs, ft in self.features(batch):
            if fs.dim() != 4 or ft.dim() != 4 or fs.shape[-2:] != ft.shape[-2:]:
                raise ConfigError(f"attention transfer: student layer {s!r} gives {tuple(fs.shape)} and teacher layer "
                                  f"{t!r} gives {tuple(ft.shape)}; both must be (N, C, H, W) with the same H, W")
            total = total + (attention_map(fs, self.p) - attention_map(ft, self.p)).norm(dim=1).mean()
        return total


class AttentionRelationDistillation(_LayerPairs):
    """MiniLMv2 (Wang et al. 2021): for each pair of attention modules ({student: teacher}) and each
    of q, k and v, ``KL(teacher relation || student relation)`` over the query rows of real tokens
    (``attention_relation`` with ``relation_heads`` heads, so student and teacher widths and head
    counts may differ), averaged. The q/k/v projections are found as structured pruning finds them.
    ``mask_input``: which model input is the attention mask (None: no padding)."""

    name = "kd_attention_relation"

    def __init__(self, student: nn.Module, teacher: nn.Module | Teacher, pairs: dict[str, str], relation_heads: int = 12,
                 mask_input: int | None = 1, weight: float = 1.0) -> None:
        from slimkit.techniques.pruning.structured import find_attention

        def projections(model: nn.Module, role: str) -> dict[str, list[str]]:
            names = {id(m): n for n, m in model.named_modules()}
            found = {a.name: [names[id(p)] for p in a.projections] for a in find_attention(model)}
            missing = [n for n in (pairs if role == "student" else pairs.values()) if n not in found]
            if missing:
                raise ConfigError(f"attention relation distillation: {missing} in the {role} are not attention "
                                  f"modules with q/k/v projections (found: {sorted(found)})")
            return found

        model = teacher.model if isinstance(teacher, Teacher) else teacher
        s_proj, t_proj = projections(student, "student"), projections(model, "teacher")
        flat = {sp: tp for s, t in pairs.items() for sp, tp in zip(s_proj[s], t_proj[t])}
        super().__init__(student, teacher, flat)
        self.relation_heads, self.mask_input, self.weight = relation_heads, mask_input, weight

    def __call__(self, batch: Batch) -> torch.Tensor:
        mask = None if self.mask_input is None else batch.inputs[self.mask_input]
        total, count = 0.0, 0
        for s, t, fs, ft in self.features(batch):
            log_s = attention_relation(fs, self.relation_heads, mask)
            log_t = attention_relation(ft, self.relation_heads, mask)
            kl = (log_t.exp() * (log_t - log_s)).sum(-1)  # (N, heads, L): one KL per query row
            if mask is not None:
                rows = mask.bool()[:, None, :].expand_as(kl)
                total = total + kl[rows].mean()
            else:
                total = total + kl.mean()
            count += 1
        return total / count
