"""GPTQ (Frantar et al., 2022): Hessian-aware quantization of Linear weights, in the RTN format.

:class:`GPTQ` quantizes one layer from calibration inputs fed to :meth:`GPTQ.add_batch` (the caller installs a
forward hook). :func:`gptq_quantize_model` does that for every Linear of any ``nn.Module`` in execution order:
one calibration pass per group of layers that read the same input tensor (q/k/v share one pass), each pass
stopped right after that group has seen its input, and every quantized layer's weight replaced by its
dequantized value so later layers calibrate on the outputs of the quantized earlier ones.

Output is a :class:`quant.rtn.QuantizedTensor` (groups along the input dimension, float16 scales, uint8 zero
points): the same :func:`quant.rtn.dequantize` reads it. With ``act_order`` columns are processed in order of
decreasing Hessian diagonal but group parameters are computed up front on the original column order
("static groups"), so the stored format keeps contiguous groups.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from quant.errors import CalibrationError, QuantOptionError, QuantShapeError
from quant.packing import pack
from quant.rtn import QuantizedTensor, _check_bits_group, compute_qparams, quantize, quantize_codes

__all__ = ["GPTQ", "GPTQConfig", "gptq_quantize_blocks", "gptq_quantize_model"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GPTQConfig:
    """GPTQ settings: bit width, group size (0 = per output channel), dampening as a fraction of the mean
    Hessian diagonal, columns per lazy-update block, act-order, symmetric and range clipping of the groups.

    ``static_groups=True`` computes every group's scale and zero point up front from the original weights;
    ``False`` computes them when the solver reaches the group, from the weights as already updated by the error
    of earlier columns (the original GPTQ behaviour, usually more accurate). ``act_order`` needs static groups
    (the stored format keeps contiguous groups), so it overrides ``static_groups=False``.
    """

    bits: int = 4
    group_size: int = 128
    percdamp: float = 0.01
    block_size: int = 128
    act_order: bool = False
    symmetric: bool = False
    clip: str = "minmax"
    static_groups: bool = True

    def __post_init__(self) -> None:
        _check_bits_group(self.bits, self.group_size, "GPTQConfig")
        if self.clip not in ("minmax", "mse"):
            raise QuantOptionError(f"GPTQConfig: clip={self.clip!r} is not supported; use 'minmax' or 'mse'")
        if not 0.0 < self.percdamp <= 1.0:
            raise QuantOptionError(f"GPTQConfig: percdamp={self.percdamp} must lie in (0, 1]; the usual value is 0.01")
        if self.block_size < 1:
            raise QuantOptionError(f"GPTQConfig: block_size={self.block_size} must be >= 1; the usual value is 128")


class GPTQ:
    """Hessian accumulator and solver for one Linear weight ``[out, in]``."""

    def __init__(self, weight: torch.Tensor, config: GPTQConfig | None = None, *, name: str = "weight") -> None:
        if weight.dim() != 2:
            raise QuantShapeError(f"{name}: GPTQ needs a 2-D weight [out, in], got shape {list(weight.shape)}")
        self.weight, self.config, self.name = weight, config or GPTQConfig(), name
        self.columns = weight.shape[1]
        self.hessian = torch.zeros(self.columns, self.columns, dtype=torch.float32)
        self.nsamples = 0
        self.output_error = 0.0  # set by quantize(): mean squared output error ||dW x||^2 per calibration row
        self.relative_output_error = 0.0  # set by quantize(): sqrt(output error / mean ||W x||^2)

    def add_batch(self, inputs: torch.Tensor) -> None:
        """Accumulate ``H = 2/n * sum x x^T`` over the rows of ``inputs`` ``[..., in]`` (a running mean)."""
        if inputs.shape[-1] != self.columns:
            raise CalibrationError(
                f"{self.name}: calibration inputs have {inputs.shape[-1]} features, the layer expects {self.columns}"
            )
        x = inputs.detach().reshape(-1, self.columns).float()
        n = x.shape[0]
        if n == 0:
            return
        self.hessian *= self.nsamples / (self.nsamples + n)
        self.nsamples += n
        x = x * math.sqrt(2.0 / self.nsamples)
        self.hessian.addmm_(x.t(), x)

    def _group_params(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scales and zeros ``[out, groups]`` on the original column order (zero-padded last group)."""
        cfg = self.config
        glen = cfg.group_size or self.columns
        groups = -(-self.columns // glen)
        padded = nn.functional.pad(w, (0, groups * glen - self.columns))
        return compute_qparams(padded.view(w.shape[0], groups, glen), cfg.bits, symmetric=cfg.symmetric, clip=cfg.clip)

    def quantize(self) -> QuantizedTensor:
        """Run the GPTQ solver and return the quantized weight (the layer's weight is not modified)."""
        cfg = self.config
        if self.nsamples == 0:
            raise CalibrationError(f"{self.name}: no calibration inputs were added; call add_batch() before quantize()")
        w = self.weight.detach().float().clone()
        rows, cols = w.shape
        h = self.hessian.clone()
        dead = torch.diag(h) == 0  # inputs that are always 0: their weights cannot matter
        h[dead, dead] = 1.0
        w[:, dead] = 0.0
        scales, zeros = self._group_params(w)
        glen = cfg.group_size or cols
        col_group = torch.arange(cols) // glen
        perm = torch.argsort(torch.diag(h), descending=True) if cfg.act_order else torch.arange(cols)
        w, h, col_group = w[:, perm], h[perm][:, perm], col_group[perm]
        h.diagonal().add_(cfg.percdamp * torch.mean(torch.diag(h)))
        try:
            hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
        except torch.linalg.LinAlgError as exc:
            raise CalibrationError(
                f"{self.name}: the calibration Hessian is not positive definite even after dampening "
                f"(percdamp={cfg.percdamp}); raise percdamp or add more calibration data"
            ) from exc
        dynamic = not (cfg.static_groups or cfg.act_order) and cfg.group_size > 0
        block = cfg.block_size
        if dynamic and block % glen:  # a group must lie inside one lazy-update block to see its updated weights
            block = max(glen, block - block % glen)
        codes = torch.zeros_like(w)
        for i1 in range(0, cols, block):
            i2 = min(i1 + block, cols)
            w1, hinv1 = w[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
            err1 = torch.zeros_like(w1)
            for i in range(i2 - i1):
                g = col_group[i1 + i]
                if dynamic and (i1 + i) % glen == 0:
                    fresh = compute_qparams(w1[:, i : i + glen], cfg.bits, symmetric=cfg.symmetric, clip=cfg.clip)
                    scales[:, g], zeros[:, g] = fresh
                s, z = scales[:, g], zeros[:, g]
                col = w1[:, i]
                c = quantize_codes(col, s, z, cfg.bits)
                codes[:, i1 + i] = c
                err = (col - (c - z) * s) / hinv1[i, i]
                w1[:, i:] -= err.unsqueeze(1) * hinv1[i, i:].unsqueeze(0)  # spread the error over later columns
                err1[:, i] = err
            w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
        codes = codes[:, torch.argsort(perm)]
        group_of = torch.arange(cols) // glen
        delta = self.weight.detach().float() - (codes - zeros[:, group_of]) * scales[:, group_of]
        hess = self.hessian
        self.output_error = float((delta @ hess * delta).sum() / 2)  # mean ||dW x||^2 per calibration row
        ref = float((self.weight.detach().float() @ hess * self.weight.detach().float()).sum() / 2)
        self.relative_output_error = math.sqrt(self.output_error / ref) if ref > 0 else 0.0
        pad = scales.shape[1] * glen - cols
        if pad:  # padded positions hold the code of 0.0, as in RTN
            codes = torch.cat([codes, zeros[:, -1:].expand(rows, pad)], dim=1)
        return QuantizedTensor(
            packed=pack(codes.to(torch.uint8), cfg.bits),
            scales=scales.to(torch.float16),
            zero_points=zeros.to(torch.uint8),
            bits=cfg.bits,
            group_size=cfg.group_size,
            shape=tuple(self.weight.shape),
            axis=1,
            symmetric=cfg.symmetric,
            name=self.name,
        )


class _StopForward(Exception):
    """Raised inside a hook to end a calibration pass once the layers of interest have seen their input."""


def _default_forward(model: nn.Module, batch: Any) -> Any:
    return model(**batch) if isinstance(batch, dict) else model(batch)


def gptq_quantize_model(
    model: nn.Module,
    batches: Sequence[Any],
    config: GPTQConfig | None = None,
    *,
    forward: Callable[[nn.Module, Any], Any] = _default_forward,
    layers: Iterable[str] | None = None,
    configs: dict[str, GPTQConfig] | None = None,
    inplace: bool = False,
    errors: dict[str, float] | None = None,
) -> dict[str, QuantizedTensor]:
    """Quantize the Linear layers of ``model`` with GPTQ in execution order.

    Returns ``{path: QuantizedTensor}``.

    ``batches`` are calibration inputs; ``forward(model, batch)`` runs one (default: ``model(**batch)`` for a
    dict, else ``model(batch)``). ``layers`` restricts the Linear paths (default: all); ``configs`` overrides
    ``config`` per path. During the run each quantized Linear's weight is replaced by its dequantized value;
    with ``inplace=False`` the original weights are put back at the end. Layers the calibration never reaches
    fall back to RTN with a warning. ``errors``, when given, receives each GPTQ layer's mean squared output
    error on its calibration inputs (:attr:`GPTQ.output_error`), a cheap sensitivity proxy.
    """
    config = config or GPTQConfig()
    if len(batches) == 0:
        raise CalibrationError("gptq_quantize_model: no calibration batches; pass at least one real input batch")
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    wanted = list(linears) if layers is None else list(layers)
    missing = [n for n in wanted if n not in linears]
    if missing:
        raise CalibrationError(f"gptq_quantize_model: no nn.Linear named {missing[0]!r} in the model")
    remaining = dict.fromkeys(wanted)
    originals: dict[str, torch.Tensor] = {}
    results: dict[str, QuantizedTensor] = {}
    try:
        while remaining:
            group = _calibrate_next_group(model, linears, remaining, batches, forward, config, configs or {})
            if not group:
                for path in remaining:
                    logger.warning("%s: not reached by the calibration forward; quantized with RTN", path)
                    cfg = (configs or {}).get(path, config)
                    results[path] = quantize(
                        linears[path].weight.detach(),
                        cfg.bits,
                        cfg.group_size,
                        symmetric=cfg.symmetric,
                        clip=cfg.clip,
                        name=path,
                    )
                break
            for path, solver in group.items():
                results[path] = qt = solver.quantize()
                lin = linears[path]
                originals[path] = lin.weight.data
                lin.weight.data = _dequantized_like(qt, lin.weight)
                del remaining[path]
                if errors is not None:
                    errors[path] = solver.output_error
                logger.info("GPTQ %s: int%d g%d from %d calibration rows, relative output error %.4f", path,
                            qt.bits, qt.group_size, solver.nsamples, solver.relative_output_error)
    finally:
        if not inplace:
            for path, data in originals.items():
                linears[path].weight.data = data
    return {path: results[path] for path in wanted}


def gptq_quantize_blocks(
    model: nn.Module,
    blocks: Sequence[nn.Module],
    batches: Sequence[Any],
    config: GPTQConfig | None = None,
    *,
    forward: Callable[[nn.Module, Any], Any] = _default_forward,
    layers: Iterable[str] | None = None,
    configs: dict[str, GPTQConfig] | None = None,
    inplace: bool = False,
    progress: Callable[[int, int], None] | None = None,
    errors: dict[str, float] | None = None,
) -> dict[str, QuantizedTensor]:
    """Quantize the Linear layers inside ``blocks`` (e.g. a transformer's layers) one block at a time.

    Returns ``{path: QuantizedTensor}`` for the wanted Linears inside the blocks (``layers``: model paths,
    default all of them), in execution order.

    One model forward per batch captures the inputs of ``blocks[0]`` (the forward stops there). Each block then
    runs on the cached inputs alone: its Linears are calibrated with :func:`gptq_quantize_model` (layers reading
    the same input share a pass, so within a block too later layers see the quantized earlier ones), and the
    block's outputs with its quantized weights become the next block's inputs. The blocks must run in the given
    order, each taking the previous one's output as its first argument (the other arguments, e.g. attention
    masks and rotary embeddings, are reused). Cost: about two block forwards per block instead of one model
    forward per group of layers. ``progress(done, total)`` is called after each block; ``errors`` is filled as
    in :func:`gptq_quantize_model` (keys are model paths).
    """
    config = config or GPTQConfig()
    if len(batches) == 0:
        raise CalibrationError("gptq_quantize_blocks: no calibration batches; pass at least one real input batch")
    if len(blocks) == 0:
        raise CalibrationError("gptq_quantize_blocks: no blocks given; pass the model's layer modules in order")
    names = {id(m): n for n, m in model.named_modules()}
    missing = [i for i, b in enumerate(blocks) if id(b) not in names]
    if missing:
        raise CalibrationError(f"gptq_quantize_blocks: block {missing[0]} is not a submodule of the model")
    wanted = None if layers is None else set(layers)
    cached: list[tuple[tuple, dict]] = []

    def capture(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        kwargs = dict(kwargs)
        if "past_key_values" in kwargs:  # a KV cache would grow with every calibration pass
            kwargs["past_key_values"] = None
        cached.append((args, kwargs))
        raise _StopForward

    handle = blocks[0].register_forward_pre_hook(capture, with_kwargs=True)
    try:
        with torch.no_grad():
            for batch in batches:
                try:
                    forward(model, batch)
                except _StopForward:
                    pass
    finally:
        handle.remove()
    if not cached:
        raise CalibrationError("gptq_quantize_blocks: the calibration forward never reached the first block")
    results: dict[str, QuantizedTensor] = {}
    originals: dict[nn.Linear, torch.Tensor] = {}
    try:
        for index, block in enumerate(blocks):
            prefix = names[id(block)]
            local = [n for n, m in block.named_modules() if isinstance(m, nn.Linear)
                     and (wanted is None or f"{prefix}.{n}" in wanted)]
            if local:
                for n in local:
                    lin = block.get_submodule(n)
                    originals.setdefault(lin, lin.weight.data)
                local_cfg = {n: (configs or {})[f"{prefix}.{n}"] for n in local if f"{prefix}.{n}" in (configs or {})}
                block_errors: dict[str, float] = {}
                out = gptq_quantize_model(block, cached, config, forward=_run_cached, layers=local,
                                          configs=local_cfg, inplace=True, errors=block_errors)
                results.update({f"{prefix}.{n}": qt for n, qt in out.items()})
                if errors is not None:
                    errors.update({f"{prefix}.{n}": e for n, e in block_errors.items()})
            if index + 1 < len(blocks):
                with torch.no_grad():
                    cached = [((_first_output(block(*args, **kwargs)), *args[1:]), kwargs) for args, kwargs in cached]
            if progress is not None:
                progress(index + 1, len(blocks))
    finally:
        if not inplace:
            for lin, data in originals.items():
                lin.weight.data = data
    if wanted is not None and set(results) != wanted:
        extra = sorted(wanted - set(results))
        raise CalibrationError(f"gptq_quantize_blocks: {extra[0]!r} is not a Linear inside the given blocks")
    return results


def _run_cached(block: nn.Module, item: tuple[tuple, dict]) -> Any:
    args, kwargs = item
    return block(*args, **kwargs)


def _first_output(out: Any) -> torch.Tensor:
    """A block's hidden-state output: the tensor itself or the first item of a tuple / model output."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return out[0]
    return out[0] if hasattr(out, "__getitem__") else out


def _dequantized_like(qt: QuantizedTensor, like: torch.Tensor) -> torch.Tensor:
    from quant.rtn import dequantize

    return dequantize(qt, like.dtype).to(like.device)


def _calibrate_next_group(
    model: nn.Module,
    linears: dict[str, nn.Linear],
    remaining: dict[str, None],
    batches: Sequence[Any],
    forward: Callable[[nn.Module, Any], Any],
    config: GPTQConfig,
    configs: dict[str, GPTQConfig],
) -> dict[str, GPTQ]:
    """One pass per batch: the first remaining Linear to run, and those reading the same input tensor, get
    their Hessians; the pass stops at the first other remaining Linear."""
    group: dict[str, GPTQ] = {}
    state: dict[str, Any] = {"key": None, "closed": False}

    def make_hook(path: str):
        def hook(_module: nn.Module, args: tuple, _kwargs: dict | None = None) -> None:
            x = args[0]
            key = (x.data_ptr(), tuple(x.shape))
            if state["key"] is None and not state["closed"]:
                state["key"] = key
            if path in group or (not state["closed"] and key == state["key"]):
                if path not in group:
                    group[path] = GPTQ(linears[path].weight, configs.get(path, config), name=path)
                group[path].add_batch(x)
                return
            raise _StopForward

        return hook

    handles = [linears[p].register_forward_pre_hook(make_hook(p)) for p in remaining]
    try:
        with torch.no_grad():
            for batch in batches:
                state["key"] = None
                try:
                    forward(model, batch)
                except _StopForward:
                    pass
                state["closed"] = bool(group)  # membership is fixed by the first batch that reached any layer
    finally:
        for h in handles:
            h.remove()
    return group
