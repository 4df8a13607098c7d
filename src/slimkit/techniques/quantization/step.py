"""The quantization recipe steps, each with ``restore`` for resuming.

The quantized model is a module tree of QDQ layers whose integer codes and scales are buffers:
it is saved as safetensors like any other step, runs in eager PyTorch as a float reference,
and exports (``deploy``) to ONNX Runtime and OpenVINO, which execute it on integer kernels.
"""

from __future__ import annotations

from typing import Any, Literal

import torch.nn as nn
from pydantic import Field, field_validator, model_validator

from slimkit.core.config import Config
from slimkit.tasks.context import Context
from slimkit.core.step import StepResult, register_step, restoring
from slimkit.train.config import TrainingStepConfig, finetune_config
from slimkit.techniques.quantization.observers import ObserverName
from slimkit.techniques.quantization.qscheme import StepInit


class QuantizeConfig(Config):
    method: Literal["static", "dynamic"] = Field(
        "static", description="static: int8 weights and activations, calibrated; dynamic: int8 linear weights, "
                              "activations quantized at run time from their own range (no calibration)")
    granularity: Literal["token", "tensor"] = Field(
        "token", description="dynamic: one activation scale per token (row) or per tensor (ONNX Runtime's "
                             "quantize_dynamic)")
    observer: ObserverName = Field("minmax", description="activation range from calibration: minmax, percentile, "
                                                         "mse or entropy (KL)")
    calibration_samples: int = Field(512, ge=1, description="training examples run through the model to calibrate")
    calibration_batch_size: int = Field(64, ge=1, description="examples per calibration batch")
    weight_range: Literal["auto", "int8", "int7"] = Field(
        "auto", description="int8: codes in [-127, 127]; int7: [-63, 63], for x86 CPUs without VNNI where "
                            "8-bit integer kernels saturate; auto: int7 there, int8 elsewhere")
    bias_correction: bool = Field(True, description="shift each layer's bias by the mean output error quantization "
                                                    "adds (measured on the calibration data)")
    smoothquant: float | None = Field(None, ge=0, le=1, description="SmoothQuant's alpha: move this share of each "
                                                                    "linear's input outliers into its weights "
                                                                    "(transformers; static and dynamic; null: off)")
    attention: Literal["int8", "float"] = Field(
        "int8", description="static: also quantize the operands of attention scores (Q and K, symmetric int8) so "
                            "runtimes run Q @ K^T on integers, as NNCF's transformer preset does; float: leave them")
    max_quality_drop: float | None = Field(None, ge=0, description="mixed precision: the most validation quality "
                                                                   "(points) to lose; the most sensitive layers stay "
                                                                   "float until the drop fits")
    search_seconds: float | None = Field(None, gt=0, description="max_quality_drop: stop the sensitivity scan with an error "
                                                                 "saying how far it got if it runs longer than this")
    embeddings: Literal["int8", "float"] = Field(
        "int8", description="embedding tables: int8 codes per row (weight-only; lookups dequantize the rows "
                            "they gather) or float")
    skip: list[str] = Field(default_factory=list, description="module paths (after fusion) kept in float")

    @model_validator(mode="after")
    def _static_fields_need_static(self) -> "QuantizeConfig":
        # a dynamic recipe that sets a calibration field is a mistake to name, not to ignore
        if self.method == "dynamic":
            given = [name for name in ("observer", "bias_correction", "max_quality_drop", "search_seconds", "attention")
                     if getattr(self, name) != type(self).model_fields[name].get_default(call_default_factory=True)]
            if given:
                raise ValueError(f"{', '.join(given)}: for method 'static' only (method is 'dynamic')")
            unused = [name for name in ("calibration_samples", "calibration_batch_size")
                      if getattr(self, name) != type(self).model_fields[name].get_default()]
            if unused and self.smoothquant is None:  # dynamic calibrates only SmoothQuant's factors
                raise ValueError(f"{', '.join(unused)}: method 'dynamic' calibrates only with smoothquant set")
        return self


def quantize_embeddings(model: nn.Module, cfg: QuantizeConfig) -> tuple[nn.Module, list[str]]:
    """Embedding tables as int8 codes with one scale and zero point per row (``embeddings: int8``):
    the integer kernels of static and dynamic int8 cover matrix products, and a transformer's word
    embeddings are otherwise most of what stays float (MiniLM static int8: 0.255x the FP32 bytes
    with them int8, ``python benchmarks/quantization.py --tasks minilm``)."""
    if cfg.embeddings == "float":
        return model, []
    from slimkit.techniques.quantization.weight_only import WeightOnlySpec, quantize_weight_only

    modules = dict(model.named_modules())
    skip = [name for name in cfg.skip if isinstance(modules.get(name), nn.Embedding)]
    q, report = quantize_weight_only(model, WeightOnlySpec(bits=8, group_size=None, symmetric=False),
                                     kinds=("embedding",), skip=skip)
    return q, list(report.layers)


def _dense_layers(model: nn.Module) -> nn.Module:
    """A pruned model's bitmask-encoded layers made dense again (their zeros stay zeros), so the
    quantizers see ordinary Linear and Conv2d layers: prune, then quantize."""
    from slimkit.encoding import densify_

    densify_(model, "sparse")
    return model


def _weight_max(cfg: QuantizeConfig) -> int:
    from slimkit.techniques.quantization.modules import default_weight_max

    return {"int8": 127, "int7": 63}.get(cfg.weight_range) or default_weight_max()


class QuantizeStructure(Config):
    config: QuantizeConfig = Field(description="the step's config (which layers, method, observer)")
    weight_max: int = Field(ge=1, le=127, description="largest weight code (127: 8 bits, 63: 7 bits)")
    float_outputs: list[str] = Field(default_factory=list, description="layers whose output stays float")
    smoothed: list[str] = Field(default_factory=list, description="layers with SmoothQuant input factors")
    float_layers: list[str] = Field(default_factory=list, description="layers kept float by the mixed search")
    bn_folds: list[tuple[str, str]] = Field(default_factory=list, description="(BatchNorm, layer) pairs folded "
                                            "from torch.export's dataflow (inside modules fx cannot trace)")
    attention_outputs: list[str] = Field(default_factory=list, description="layers whose output (an attention "
                                                                           "operand) is quantized symmetric")


def restore_quantization(model: nn.Module, structure: QuantizeStructure) -> nn.Module:
    """Re-apply the module swap to a fresh model; the saved codes and scales then load into it."""
    from slimkit.techniques.quantization.ptq import prepare_static

    model = _dense_layers(model)
    cfg = structure.config
    names = [*structure.float_outputs, *structure.smoothed, *structure.float_layers, *structure.attention_outputs]
    with restoring("quantize", model, names):
        if cfg.method == "dynamic":
            from slimkit.techniques.quantization.dynamic import quantize_dynamic

            model = quantize_dynamic(model, granularity=cfg.granularity, weight_max=structure.weight_max,
                                     skip=cfg.skip, smoothed=structure.smoothed)[0]
        else:
            model = prepare_static(model, observer=cfg.observer, skip=[*cfg.skip, *structure.float_layers],
                                   weight_max=structure.weight_max, float_outputs=structure.float_outputs,
                                   smoothed=structure.smoothed, bn_folds=structure.bn_folds,
                                   attention_outputs=structure.attention_outputs)[0]
        return quantize_embeddings(model, cfg)[0]


@register_step("quantize", config=QuantizeConfig, restore=restore_quantization, structure=QuantizeStructure)
def quantize(model: nn.Module, cfg: QuantizeConfig, ctx: Context) -> StepResult:
    """Post-training int8 quantization (static: calibrated activations, per-channel weights), as QDQ.

    BatchNorm is folded and activations fused first; every Conv2d and Linear becomes an int8
    layer; layers that cannot be quantized stay in float and are listed with the reason. Layers
    whose output is the model's output keep it in float; biases are corrected for the mean error
    quantization adds (``bias_correction``).
    """
    from slimkit.data.batches import calibration_batches
    from slimkit.techniques.quantization.ptq import quantize_static

    model = _dense_layers(model)
    weight_max = _weight_max(cfg)
    if cfg.method == "dynamic" and cfg.smoothquant is None:
        return _quantize_dynamic(model, cfg, weight_max, [])
    batches = [tuple(t.to(ctx.device) for t in batch) for batch in calibration_batches(
        ctx.data.train, cfg.calibration_samples, cfg.calibration_batch_size, ctx.seed)]
    if cfg.method == "dynamic":
        return _quantize_dynamic(model, cfg, weight_max, batches)
    kwargs = dict(observer=cfg.observer, skip=cfg.skip, weight_max=weight_max, bias_correction=cfg.bias_correction,
                  smoothquant=cfg.smoothquant, attention=cfg.attention == "int8", mask_input=ctx.data.train.mask_input)
    fallback = None
    if cfg.max_quality_drop is None:
        prepared, report = quantize_static(model, batches, **kwargs)
    else:
        from slimkit.search import scan_progress
        from slimkit.techniques.quantization.ptq import choose_float_layers

        with scan_progress(ctx.progress, "quantize: sensitivity") as progress:
            fallback = choose_float_layers(model, batches, ctx.validate, cfg.max_quality_drop, progress=progress,
                                           time_budget=cfg.search_seconds, **kwargs)
        prepared, report = fallback.model, fallback.report
    prepared, embeddings = quantize_embeddings(prepared, cfg)
    info = {"method": cfg.method, "observer": cfg.observer, "weight_bits": 8 if weight_max == 127 else 7,
            "embeddings_int8": embeddings,
            "calibration_samples": sum(len(b[0]) for b in batches), "layers_quantized": len(report.quantized),
            "layers_skipped": len(report.skipped), **report.to_dict()}
    if fallback is not None:
        info.update({"validation_drop_pt": fallback.drop, "max_quality_drop": cfg.max_quality_drop,
                     "sensitivity_pt": fallback.sensitivity, "configurations_evaluated": fallback.evaluations,
                     "layers_float": fallback.float_layers,
                     "bits_per_layer": {**{n: 8 if weight_max == 127 else 7 for n in report.quantized},
                                        **{n: 32 for n in fallback.float_layers}}})
    return StepResult(prepared, info=info, structure=QuantizeStructure(
        config=cfg, weight_max=weight_max, float_outputs=report.float_outputs, smoothed=report.smoothed,
        float_layers=fallback.float_layers if fallback else [], bn_folds=report.bn_folds,
        attention_outputs=report.attention_outputs))


def _quantize_dynamic(model: nn.Module, cfg: QuantizeConfig, weight_max: int, batches: list) -> StepResult:
    from slimkit.techniques.quantization.dynamic import quantize_dynamic

    q, report = quantize_dynamic(model, granularity=cfg.granularity, weight_max=weight_max, skip=cfg.skip,
                                 smoothquant=cfg.smoothquant, batches=batches)
    q, embeddings = quantize_embeddings(q, cfg)
    if not report.layers:
        from slimkit.core.errors import SlimkitError

        raise SlimkitError("quantize (dynamic): the model has no Linear layer to quantize"
                           + (f" (skipped: {report.skipped})" if report.skipped else ""))
    info = {"method": "dynamic", "weight_bits": 8 if weight_max == 127 else 7, "embeddings_int8": embeddings,
            **report.to_dict(), **({"calibration_samples": sum(len(b[0]) for b in batches)} if batches else {})}
    return StepResult(q, info=info, structure=QuantizeStructure(config=cfg, weight_max=weight_max,
                                                                smoothed=report.smoothed))


QATFinetune = finetune_config("QATFinetune", epochs=Field(5, ge=1, description="fine-tuning epochs through the "
                                                                              "fake quantizers"))


class QATConfig(TrainingStepConfig):
    weight_bits: int = Field(4, ge=2, le=8, description="weight bits: symmetric per-channel codes in "
                                                        "[-(2^(b-1)-1), 2^(b-1)-1] (2: ternary), stored in int8")
    activation_bits: Literal[8] = Field(8, description="activation bits; 8 only: ONNX's uint8 QuantizeLinear "
                                                       "cannot clamp to a narrower code range")
    init: StepInit = Field("mse", description="initial weight steps: mse (least squared error), lsq "
                                              "(2 mean|w|/sqrt(Q)), lsq+ (mean +- 3 std) or minmax (PTQ's)")
    finetune: QATFinetune = Field(default_factory=QATFinetune, description="training through the fake quantizers "
                                                                           "(weights, biases and steps)")
    calibration_samples: int = Field(512, ge=1, description="training examples that set the initial "
                                                            "activation ranges")
    skip: list[str] = Field(default_factory=list, description="module paths (after fusion) kept in float")


class QATStructure(Config):
    config: QATConfig = Field(description="the step's config")
    weight_max: int = Field(ge=1, le=127, description="largest weight code (2^(b-1)-1 for b bits)")
    float_outputs: list[str] = Field(default_factory=list, description="layers whose output stays float")
    bn_folds: list[tuple[str, str]] = Field(default_factory=list, description="(BatchNorm, layer) pairs folded "
                                            "from torch.export's dataflow (inside modules fx cannot trace)")


def restore_qat(model: nn.Module, structure: QATStructure) -> nn.Module:
    """QAT converts to the layers ``quantize`` makes: re-apply that swap (codes and learned scales then load)."""
    return restore_quantization(model, QuantizeStructure(config=QuantizeConfig(skip=structure.config.skip),
                                                         weight_max=structure.weight_max,
                                                         float_outputs=structure.float_outputs,
                                                         bn_folds=structure.bn_folds))


@register_step("qat", config=QATConfig, restore=restore_qat, structure=QATStructure)
def qat(model: nn.Module, cfg: QATConfig, ctx: Context) -> StepResult:
    """Quantization-aware training (LSQ): b-bit weights and 8-bit activations with learned steps,
    fine-tuned with the task's loss, then converted to the same integer QDQ layers as ``quantize``.

    8-bit weights become 7-bit on x86 CPUs without VNNI (ONNX Runtime's int8 kernels saturate there).
    """
    model, started = start_qat(model, cfg, ctx)
    fit = ctx.train(model, cfg.finetune, description="qat")
    return finish_qat(model, cfg, started, train=fit.summary())


def start_qat(model: nn.Module, cfg: QATConfig, ctx: Context) -> tuple[nn.Module, dict[str, Any]]:
    """The model with ``QATLayer``s (fake-quantized, trainable), calibrated on ``ctx``'s training
    data, and what ``finish_qat`` needs: the ``qat`` step trains it in slimkit's loop, a user in
    their own (``slimkit.api.prepare_qat`` / ``convert_qat``)."""
    from slimkit.data.batches import calibration_batches
    from slimkit.techniques.quantization.modules import default_weight_max
    from slimkit.techniques.quantization.qat import prepare_qat

    model = _dense_layers(model)
    bits = 7 if cfg.weight_bits == 8 and default_weight_max() == 63 else cfg.weight_bits
    batches = [tuple(t.to(ctx.device) for t in batch) for batch in calibration_batches(
        ctx.data.train, cfg.calibration_samples, 64, ctx.seed)]
    model, report = prepare_qat(model, batches, bits_weights=bits, bits_activations=cfg.activation_bits,
                                skip=cfg.skip, init=cfg.init)
    return model, {"report": report, "bits": bits, "calibration_samples": sum(len(b[0]) for b in batches)}


def finish_qat(model: nn.Module, cfg: QATConfig, started: dict[str, Any], **info: Any) -> StepResult:
    """Convert the trained QAT model to integer QDQ layers (as ``quantize`` makes), with the step's info."""
    from slimkit.techniques.quantization.qat import convert_qat

    report, bits = started["report"], started["bits"]
    convert_qat(model)
    layers = {k: v for k, v in report.to_dict().items() if k not in ("bias_corrected", "max_bias_shift")}
    info = {"method": "lsq", "weight_bits": bits, "activation_bits": cfg.activation_bits, "init": cfg.init,
            "calibration_samples": started["calibration_samples"], "layers_quantized": len(report.quantized),
            "layers_skipped": len(report.skipped), **layers, **info}
    return StepResult(model, info=info, structure=QATStructure(config=cfg, weight_max=2 ** (bits - 1) - 1,
                                                               float_outputs=report.float_outputs,
                                                               bn_folds=report.bn_folds))


class QuantizeWeightsConfig(Config):
    bits: Literal[4, 8] = Field(4, description="bits per weight code (4: packed two a byte)")
    group_size: int | None = Field(128, description="weights sharing one scale along a row's inputs (a power of "
                                                    "two >= 16); null: one scale per output row")
    symmetric: bool = Field(False, description="symmetric codes (no zero points stored) or asymmetric")
    algorithm: Literal["rtn", "gptq"] = Field("gptq", description="rtn: round to nearest; gptq: codes that "
                                                                  "minimise each linear's output error on "
                                                                  "calibration data (convs and embeddings: rtn)")
    layers: list[Literal["linear", "conv", "embedding"]] = Field(["linear"], min_length=1,
                                                                 description="layer kinds to quantize")
    calibration_samples: int = Field(128, ge=1, description="training examples GPTQ collects inputs from")
    calibration_batch_size: int = Field(32, ge=1, description="examples per calibration batch")
    damp: float = Field(0.01, gt=0, lt=1, description="GPTQ: fraction of the mean Hessian diagonal added to it")
    max_quality_drop: float | None = Field(None, ge=0, description="mixed precision: the most validation quality "
                                                                   "(points) to lose; the most sensitive layers get "
                                                                   "8 bits or stay float until the drop fits")
    search_seconds: float | None = Field(None, gt=0, description="max_quality_drop: stop the sensitivity scan with an error "
                                                                 "saying how far it got if it runs longer than this")
    skip: list[str] = Field(default_factory=list, description="module paths kept in float")

    @field_validator("group_size")
    @classmethod
    def _power_of_two(cls, v: int | None) -> int | None:
        if v is not None and (v < 16 or v & (v - 1)):
            raise ValueError(f"must be a power of two >= 16 or null, got {v}")
        return v


class WeightOnlyStructure(Config):
    config: QuantizeWeightsConfig = Field(description="the step's config (kinds, group size, symmetry)")
    layers: dict[str, Literal[4, 8]] = Field(description="bits of each quantized layer (the others stay float)")


def restore_weight_only(model: nn.Module, structure: WeightOnlyStructure) -> nn.Module:
    """Re-apply the swap to the recorded layers of a fresh model (the saved codes then load over it)."""
    from slimkit.techniques.quantization.weight_only import WeightOnlySpec, layers_of_kinds, quantize_weight_only

    model = _dense_layers(model)
    cfg = structure.config
    with restoring("quantize_weights", model, structure.layers):
        candidates = layers_of_kinds(model, tuple(cfg.layers))
        if not set(structure.layers) <= set(candidates):
            raise ValueError(f"layers {sorted(set(structure.layers) - set(candidates))} are not "
                             f"{'/'.join(cfg.layers)} layers of this model")
        spec = WeightOnlySpec(cfg.bits, cfg.group_size, cfg.symmetric)
        return quantize_weight_only(model, spec, kinds=tuple(cfg.layers), bits=dict(structure.layers),
                                    skip=[n for n in candidates if n not in structure.layers])[0]


@register_step("quantize_weights", config=QuantizeWeightsConfig, restore=restore_weight_only,
               structure=WeightOnlyStructure)
def quantize_weights(model: nn.Module, cfg: QuantizeWeightsConfig, ctx: Context) -> StepResult:
    """Weight-only quantization: int4 (packed) or int8 codes with per-group scales, activations in
    float. GPTQ by default (linears); on ONNX Runtime a quantized linear runs as ``MatMulNBits``."""
    from slimkit.data.batches import calibration_batches
    from slimkit.techniques.quantization.weight_only import WeightOnlySpec, choose_bits, quantize_weight_only

    model = _dense_layers(model)
    batches = None
    if cfg.algorithm == "gptq":
        batches = [tuple(t.to(ctx.device) for t in batch) for batch in calibration_batches(
            ctx.data.train, cfg.calibration_samples, cfg.calibration_batch_size, ctx.seed)]
    spec = WeightOnlySpec(cfg.bits, cfg.group_size, cfg.symmetric)
    mixed = None

    def quantize(bits=None):
        return quantize_weight_only(model, spec, method=cfg.algorithm, batches=batches, kinds=tuple(cfg.layers),
                                    skip=cfg.skip, damp=cfg.damp, bits=bits, mask_input=ctx.data.train.mask_input)

    try:
        if cfg.max_quality_drop is None:
            q, report = quantize()
        else:
            from slimkit.search import scan_progress

            with scan_progress(ctx.progress, "quantize_weights: sensitivity") as progress:
                mixed = choose_bits(model, spec, ctx.validate, cfg.max_quality_drop, kinds=tuple(cfg.layers),
                                    skip=cfg.skip, quantize=quantize, progress=progress,
                                    time_budget=cfg.search_seconds)
            q, report = mixed.model, mixed.report
    except ValueError as err:
        from slimkit.core.errors import ConfigError

        raise ConfigError(f"quantize_weights: {err}") from None
    if not report.layers:
        from slimkit.core.errors import SlimkitError

        raise SlimkitError(f"quantize_weights: the model has no {'/'.join(cfg.layers)} layer to quantize")
    info = {"bits": cfg.bits, "group_size": cfg.group_size, "symmetric": cfg.symmetric, **report.to_dict()}
    if mixed is not None:
        info.update({"validation_drop_pt": mixed.drop, "max_quality_drop": cfg.max_quality_drop,
                     "sensitivity_pt": mixed.sensitivity, "configurations_evaluated": mixed.evaluations,
                     "layers_float": sorted(n for n, b in mixed.bits.items() if b is None)})
    return StepResult(q, info=info, structure=WeightOnlyStructure(
        config=cfg, layers={n: v["bits"] for n, v in report.layers.items()}))
