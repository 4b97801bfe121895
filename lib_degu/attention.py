"""Cross-attention capture: how much attention each image position pays to the subject's tokens.

Forward hooks on ``attn2.to_q`` / ``attn2.to_k`` (the naming of the LDM, SGM, Forge and diffusers
UNets) fire whatever attention kernel the host runs (sdp, xformers, sub-quadratic, split) and with
LoRA patched into the Linear layers. The ``to_k`` hook recomputes, for the identity-stream rows
only, ``softmax(q k^T / sqrt(d))`` over the text keys, which is (rows, heads, pixels, tokens): never
the (pixels x pixels) self-attention. Per-layer results are folded at once into one (images, H, W)
buffer at the latent size; nothing per layer outlives the hook.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from lib_degu.mask import resize

# Only the 1/2-resolution level (SD1.x at 512 px: 32x32): on the trained miniatures the 1/4 level
# ranks subject pixels at chance (AUROC 0.53) and averaging it in drags the map down (0.74 -> 0.70).
DEFAULT_DOWNSAMPLE_FACTORS = (2,)


def find_cross_attention(root: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules named ``attn2`` that have ``to_q``, ``to_k`` and an integer ``heads``."""
    found = []
    for name, module in root.named_modules():
        if name.rsplit(".", 1)[-1] != "attn2":
            continue
        if hasattr(module, "to_q") and hasattr(module, "to_k") and isinstance(getattr(module, "heads", None), int):
            found.append((name, module))
    return found


def token_indicator(
    positions: Sequence[Sequence[int]], length: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """(images, length) float tensor: 1 at each image's subject token positions, else 0."""
    weights = torch.zeros((len(positions), length), dtype=torch.float32)
    for image, image_positions in enumerate(positions):
        kept = [p for p in image_positions if 0 <= p < length]
        weights[image, kept] = 1.0
    return weights.to(device)


def attention_probs(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d))`` per head: queries (rows, pixels, heads * d) and keys
    (rows, tokens, heads * d) -> (rows, heads, pixels, tokens)."""
    rows, pixels, inner = q.shape
    head_dim = inner // heads
    q = q.view(rows, pixels, heads, head_dim).transpose(1, 2)
    k = k.view(rows, k.shape[1], heads, head_dim).transpose(1, 2)
    return torch.softmax(q @ k.transpose(-1, -2) * head_dim**-0.5, dim=-1)


def downsample_factor(latent_hw: tuple[int, int], tokens: int) -> int | None:
    """The power-of-two factor f with ceil(H/f) * ceil(W/f) == tokens (UNets pad odd sizes up)."""
    height, width = latent_hw
    for exponent in range(8):
        f = 2**exponent
        if math.ceil(height / f) * math.ceil(width / f) == tokens:
            return f
    return None


@dataclass
class _Call:
    """The subject rows inside one call of the root module (the batch may be split in several)."""

    local_rows: torch.Tensor  # row indices within this call
    images: torch.Tensor  # image index of each of those rows
    images_list: list[int]
    latent_hw: tuple[int, int]


class AttentionCapture:
    """Context manager: hooks while inside, every hook removed on exit (also on an exception).

    Per step the adapter calls ``begin_step`` with the global batch row of each image's identity
    stream and the token indicator, runs the model (in one call or several consecutive calls that
    walk the batch in order), then ``take()`` returns the (images, H, W) map averaged over layers.
    """

    def __init__(
        self,
        root: nn.Module,
        *,
        downsample_factors: Collection[int] | None = DEFAULT_DOWNSAMPLE_FACTORS,
    ) -> None:
        self.root = root
        self.downsample_factors = None if downsample_factors is None else frozenset(downsample_factors)
        self.layers = find_cross_attention(root)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._subject_rows: list[int] = []
        self._weights: torch.Tensor | None = None
        self._row_offset = 0
        self._call: _Call | None = None
        self._pending_q: dict[int, torch.Tensor] = {}
        self._sum: torch.Tensor | None = None
        self._counts: list[int] = []
        self._next_call: list[tuple[int, int]] | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> AttentionCapture:
        try:
            self._handles.append(self.root.register_forward_pre_hook(self._on_root_call, with_kwargs=True))
            for _, attn in self.layers:
                self._handles.append(attn.to_q.register_forward_hook(self._make_q_hook(attn)))
                self._handles.append(attn.to_k.register_forward_hook(self._make_k_hook(attn)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook. What this step accumulated so far stays until ``take``."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._pending_q.clear()
        self._call = None

    @property
    def active(self) -> bool:
        return bool(self._handles)

    # -- per step --------------------------------------------------------------------------------
    def begin_step(self, subject_rows: Sequence[int], weights: torch.Tensor) -> None:
        """Arm the capture for one step: ``subject_rows[i]`` is image i's identity row in the batch."""
        if len(subject_rows) != weights.shape[0]:
            raise ValueError("one subject row per image is needed")
        self._subject_rows = list(subject_rows)
        self._weights = weights
        self._row_offset = 0
        self._sum = None
        self._counts = [0] * len(subject_rows)
        self._pending_q.clear()
        self._next_call = None

    def arm_call(self, pairs: Sequence[tuple[int, int]]) -> None:
        """For hosts that batch rows in their own order (Forge): the next root call's subject rows,
        as ``(row within the call, image)`` pairs, instead of counting rows from ``begin_step``."""
        self._next_call = list(pairs)

    def disarm(self) -> None:
        self._weights = None
        self._call = None
        self._next_call = None
        self._pending_q.clear()

    def take(self) -> torch.Tensor | None:
        """(images, H, W): subject attention mass averaged over captured layers; None if none fired."""
        total, counts = self._sum, self._counts
        self.disarm()
        self._sum = None
        if total is None or not any(counts):
            return None
        divisor = torch.tensor([max(c, 1) for c in counts], dtype=total.dtype, device=total.device)
        return total / divisor[:, None, None]

    # -- hooks -----------------------------------------------------------------------------------
    def _on_root_call(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        x = args[0] if args and torch.is_tensor(args[0]) else kwargs.get("x", kwargs.get("sample"))
        if self._weights is None or not torch.is_tensor(x) or x.dim() < 4:
            self._call = None
            return
        if self._next_call is not None:
            pairs, self._next_call = self._next_call, None
        else:
            start, stop = self._row_offset, self._row_offset + x.shape[0]
            self._row_offset = stop
            pairs = [(row - start, image) for image, row in enumerate(self._subject_rows) if start <= row < stop]
        if not pairs:
            self._call = None
            return
        device = x.device
        self._call = _Call(
            local_rows=torch.tensor([p[0] for p in pairs], device=device),
            images=torch.tensor([p[1] for p in pairs], device=device),
            images_list=[p[1] for p in pairs],
            latent_hw=(int(x.shape[-2]), int(x.shape[-1])),
        )

    def _selected(self, tokens: int) -> bool:
        call = self._call
        if call is None:
            return False
        factor = downsample_factor(call.latent_hw, tokens)
        if factor is None:
            return False
        return self.downsample_factors is None or factor in self.downsample_factors

    def _make_q_hook(self, attn: nn.Module):  # noqa: ANN202 - torch hook signature
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
            if self._call is not None and output.dim() == 3 and self._selected(output.shape[1]):
                self._pending_q[id(attn)] = output.detach().index_select(0, self._call.local_rows)

        return hook

    def _make_k_hook(self, attn: nn.Module):  # noqa: ANN202 - torch hook signature
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
            q = self._pending_q.pop(id(attn), None)
            if q is None or self._call is None:
                return
            self._accumulate(q, output.detach().index_select(0, self._call.local_rows), attn.heads)

        return hook

    @torch.no_grad()
    def _accumulate(self, q: torch.Tensor, k: torch.Tensor, heads: int) -> None:
        call, weights = self._call, self._weights
        assert call is not None and weights is not None
        pixels, tokens = q.shape[1], k.shape[1]
        probs = attention_probs(q.float(), k.float(), heads)
        indicator = _fit_tokens(weights.index_select(0, call.images.to(weights.device)), tokens)
        mass = (probs @ indicator.to(probs.device)[:, None, :, None]).mean(dim=1)[..., 0]  # rows, px
        factor = downsample_factor(call.latent_hw, pixels)
        assert factor is not None
        self._fold(mass, factor)

    def _fold(self, mass: torch.Tensor, factor: int) -> None:
        """Add one layer's (rows, pixels) map, at 1/factor of the latent size, into the step's buffer."""
        call = self._call
        assert call is not None
        height, width = call.latent_hw
        layer_map = mass.view(mass.shape[0], math.ceil(height / factor), math.ceil(width / factor))
        layer_map = resize(layer_map, (height, width))
        if self._sum is None or self._sum.shape[-2:] != layer_map.shape[-2:]:
            self._sum = layer_map.new_zeros((len(self._subject_rows), height, width))
            self._counts = [0] * len(self._subject_rows)
        self._sum.index_add_(0, call.images, layer_map)
        for image in call.images_list:
            self._counts[image] += 1


def _fit_tokens(weights: torch.Tensor, tokens: int) -> torch.Tensor:
    """The indicator over the keys this layer sees: trimmed, tiled or zero-padded.

    Built as wide as the identity prompt's own conditioning, it is tiled when the layer sees a whole
    multiple of that: Forge batches conds of different lengths by repeating each to their least common
    multiple, so every copy of the subject's keys draws attention and the mass is their sum.
    """
    width = weights.shape[1]
    if width >= tokens:
        return weights[:, :tokens]
    if width and tokens % width == 0:
        return weights.repeat(1, tokens // width)
    return torch.nn.functional.pad(weights, (0, tokens - width))


@dataclass(frozen=True)
class JointLayout:
    """How a text-first joint-attention DiT calls its module-level attention kernel."""

    attribute: str = "attention"  # the kernel's name in the blocks' module
    heads_first: bool = True  # q/k/v (B, heads, L, D); False: (B, L, heads*D), ``heads`` passed first
    rope_in_kernel: bool = True  # the kernel rotates q/k itself (Flux's ``attention(q, k, v, pe)``)
    text_multiple: int = 1  # the network pads the text tokens to a multiple of this before the image's


# Flux and Chroma (backend/nn/flux.py): ``attention(q, k, v, pe)``, rope inside, all blocks joint.
FLUX_LAYOUT = JointLayout()
# Qwen-Image (Forge Neo backend/nn/qwen.py @ 2d0ed1fe): rope applied before the kernel, q/k/v flattened,
# ``attention_function(q, k, v, heads, mask)``; reference latents (-Edit) come after the image's tokens.
QWEN_IMAGE_LAYOUT = JointLayout("attention_function", heads_first=False, rope_in_kernel=False)
# NextDiT, Lumina 2 and Z-Image (Neo backend/nn/lumina.py @ e75b2422): ``attention_function(q, k, v, heads,
# mask, skip_reshape=True, ...)`` with q/k/v (B, heads, L, D); text and image padded to a multiple.
NEXT_DIT_LAYOUT = JointLayout("attention_function", rope_in_kernel=False)


def joint_blocks(root: nn.Module) -> list[nn.Module]:
    """The joint-attention blocks in order: Flux's double then single blocks, Qwen-Image's
    ``transformer_blocks``, NextDiT's ``layers`` (never its text-only / image-only refiners)."""
    names = ("double_blocks", "single_blocks", "transformer_blocks", "layers")
    return [block for name in names for block in getattr(root, name, None) or []]


def find_joint_dit(root: nn.Module | None) -> tuple[dict[str, Any], JointLayout] | None:
    """The namespace whose kernel a Qwen-Image or NextDiT (Lumina 2, Z-Image) network calls, and its
    layout; None for any other network. Recognised by structure, as ``find_mmdit``: the kernel is
    looked up in the attention module's globals at call time, so patching the name there reaches it.
    """
    blocks = getattr(root, "transformer_blocks", None)
    if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
        if all(hasattr(getattr(b, "attn", None), "add_k_proj") for b in blocks):
            namespace = getattr(type(blocks[0].attn).forward, "__globals__", None)
            if isinstance(namespace, dict) and callable(namespace.get("attention_function")):
                return namespace, QWEN_IMAGE_LAYOUT
    layers = getattr(root, "layers", None)
    if isinstance(layers, nn.ModuleList) and len(layers) > 0 and hasattr(root, "context_refiner"):
        if all(hasattr(getattr(b, "attention", None), "qkv") for b in layers):
            namespace = getattr(type(layers[0].attention).forward, "__globals__", None)
            if isinstance(namespace, dict) and callable(namespace.get("attention_function")):
                multiple = int(getattr(root, "pad_tokens_multiple", None) or 1)
                return namespace, replace(NEXT_DIT_LAYOUT, text_multiple=multiple)
    return None


class JointAttentionCapture(AttentionCapture):
    """The same map for text-first joint-attention DiTs (Flux, Chroma, Qwen-Image, Lumina 2, Z-Image)
    whose blocks call a module-level kernel on text tokens then the image's patches (row-major); what
    differs between them is in ``JointLayout``.

    Exact and cheap, without the attention matrix: the kernel runs once more on the subject rows
    with values that are 1 at the subject's text keys (channel 0 of every head) and 0 elsewhere; its
    output at each image token is that token's attention mass on the subject. Where the rope is
    applied before the kernel, only the image's queries run. Tokens after the image's (Kontext and
    Qwen-Image-Edit reference latents, NextDiT's padding) are keys like any other and are not folded.
    The kernel is patched only inside ``call(...)``, one model call, and restored in ``finally``.

    Given ``root`` (the DiT), only the chosen blocks of ``joint_blocks(root)`` are read, by default the
    middle quarter (``MMDIT_BLOCK_SPAN``; Flux's 19 + 38 blocks: single blocks 2-16): reading all 57
    would cost about 9 % of a Flux-dev step at 1024 px, a quarter about 2.4 % (lab/step_cost.py, DiT
    rows). Which blocks localise best was not measured on any of these families (no weights here).
    """

    def __init__(
        self,
        module: Any,
        *,
        attribute: str | None = None,
        patch_size: int = 2,
        root: nn.Module | None = None,
        blocks: Collection[int] | None = None,
        layout: JointLayout = FLUX_LAYOUT,
    ) -> None:
        super().__init__(nn.Module(), downsample_factors=None)
        if attribute is not None:
            layout = replace(layout, attribute=attribute)
        self.layout, self.patch_size = layout, patch_size
        self.namespace: dict[str, Any] = module if isinstance(module, dict) else vars(module)
        self._text_tokens = 0
        # With ``root`` (the DiT), only the chosen joint blocks are read; without it, every attention call.
        self.read_blocks: list[nn.Module] = []
        if root is not None:
            sequence = joint_blocks(root)
            chosen = sorted(blocks) if blocks is not None else mmdit_blocks(len(sequence))
            self.read_blocks = [sequence[i] for i in chosen if 0 <= i < len(sequence)]
        self._reading = root is None

    def __enter__(self) -> JointAttentionCapture:
        return self

    def call(self, pairs: Sequence[tuple[int, int]], text_tokens: int, latent_hw: tuple[int, int], run: Any) -> Any:
        """Run ``run()`` (one model call) with the kernel wrapped for the given (row, image) pairs;
        ``text_tokens`` is the length of this call's text conditioning."""
        if self._weights is None or not pairs:
            return run()
        device = self._weights.device
        self._call = _Call(
            local_rows=torch.tensor([row for row, _ in pairs], device=device),
            images=torch.tensor([image for _, image in pairs], device=device),
            images_list=[image for _, image in pairs],
            latent_hw=latent_hw,
        )
        self._text_tokens = text_tokens
        name = self.layout.attribute
        original = self.namespace[name]

        def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            out = original(q, k, v, *args, **kwargs)
            if self._reading:
                self._measure(original, q, k, v, args, kwargs)
            return out

        handles = []
        self.namespace[name] = attention
        try:
            for block in self.read_blocks:
                handles.append(block.register_forward_pre_hook(self._enter_block))
                handles.append(block.register_forward_hook(self._leave_block))
            return run()
        finally:
            self.namespace[name] = original
            for handle in handles:
                handle.remove()
            self._reading = not self.read_blocks
            self._call = None

    def _enter_block(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self._reading = True

    def _leave_block(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self._reading = False

    @torch.no_grad()
    def _measure(self, kernel: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, args: Any, kwargs: Any) -> None:
        call, weights, layout = self._call, self._weights, self.layout
        assert call is not None and weights is not None
        sequence_dim = 2 if layout.heads_first else 1
        length = q.shape[sequence_dim]
        mask = kwargs.get("mask", args[1] if len(args) > 1 else None)
        if torch.is_tensor(mask) or k.shape[sequence_dim] != length or v.shape[sequence_dim] != length:
            return  # a masked or cross attention: not the joint one this map is defined on
        heads = q.shape[1] if layout.heads_first else (args[0] if args else kwargs.get("heads"))
        if not isinstance(heads, int):
            return
        height, width = call.latent_hw
        image = math.ceil(height / self.patch_size) * math.ceil(width / self.patch_size)
        text_keys = self._text_tokens
        text = text_keys + (-text_keys) % layout.text_multiple
        if length < text + image:
            return  # not text + this image's tokens (a refiner over text or image alone)
        rows = call.local_rows.to(q.device)
        batch = q.shape[0]
        indicator = _fit_tokens(weights.index_select(0, call.images.to(weights.device)), text_keys)
        indicator = torch.nn.functional.pad(indicator, (0, text - text_keys)).to(v)  # pad keys: not the subject
        values = torch.zeros_like(v.index_select(0, rows))
        if layout.heads_first:
            values[:, :, :text, 0] = indicator[:, None, :]
        else:
            values.view(len(rows), length, heads, -1)[:, :text, :, 0] = indicator[:, :, None]
        queries = q.index_select(0, rows)
        first = text
        if not layout.rope_in_kernel:  # only the image's queries: the rope is already in them
            queries = queries[:, :, text : text + image] if layout.heads_first else queries[:, text : text + image]
            first = 0
        positional = [_rows_of(a, rows, batch) for a in args]
        sliced = {key: _rows_of(value, rows, batch) for key, value in kwargs.items()}
        out = kernel(queries, k.index_select(0, rows), values, *positional, **sliced)
        mass = out.float().reshape(len(rows), out.shape[1], heads, -1)[..., 0].mean(dim=2)
        self._fold(mass[:, first : first + image], self.patch_size)


def _rows_of(value: Any, rows: torch.Tensor, batch: int) -> Any:
    """Per-row tensors (rope ``pe`` with a batch dim) follow the selected rows; shared ones stay."""
    if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == batch and batch > 1:
        return value.index_select(0, rows.to(value.device))
    return value


# MM-DiT (SD3 in A1111, SD3.5 in Forge): the joint attention of the middle quarter of the joint blocks
# (SD3/SD3.5-medium, depth 24: blocks 9-14; SD3.5-large, depth 38: blocks 14-23). The first blocks
# still see mostly noise and position, the last ones refine texture and their text stream is
# ``pre_only``; mid-depth blocks are where training-free editing and segmentation work on MM-DiTs
# reads text-image attention. Not measured here (no trained MM-DiT can be downloaded). The span is also
# the cost lever: the capture re-runs the attention of the blocks it reads for one row in three, so
# its share of a step is about (attention's share of a block) x (blocks read) / 3; at 1024 px that is
# 2.6 % for SD3-medium with a quarter of the blocks, 3.4 % with a third (lab/step_cost.py, DiT rows).
MMDIT_BLOCK_SPAN = (3 / 8, 5 / 8)


def mmdit_blocks(depth: int, span: tuple[float, float] = MMDIT_BLOCK_SPAN) -> list[int]:
    """The joint blocks read at this depth: ``[depth*span[0], depth*span[1])`` rounded, at least one."""
    first, stop = int(depth * span[0] + 0.5), int(depth * span[1] + 0.5)
    if stop <= first:
        first, stop = depth // 2, depth // 2 + 1
    return list(range(first, min(stop, depth)))


def find_mmdit(root: nn.Module | None) -> dict[str, Any] | None:
    """The namespace whose global ``attention`` the MM-DiT's joint blocks call, or None.

    SD3/SD3.5 (A1111 ``modules/models/sd3/mmdit.py``, Forge ``backend/nn/mmditx.py``): ``joint_blocks``
    of blocks with a ``context_block`` and an ``x_block``, whose ``forward`` calls ``block_mixing``,
    which looks up ``attention`` in the module's globals at call time (so patching that name reaches
    every block, whatever module object the host loaded it as).
    """
    blocks = getattr(root, "joint_blocks", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        return None
    if not all(hasattr(block, "context_block") and hasattr(block, "x_block") for block in blocks):
        return None
    namespace = getattr(type(blocks[0]).forward, "__globals__", None)
    if not isinstance(namespace, dict):
        return None
    if not callable(namespace.get("attention")) or not callable(namespace.get("block_mixing")):
        return None
    return namespace


class MMDiTCapture(AttentionCapture):
    """The subject map of an MM-DiT (SD3/SD3.5): per image token, the joint attention's mass on the
    subject's text keys, averaged over heads and the chosen joint blocks.

    Exact and cheap, without the attention matrix (the indicator-value trick of
    ``JointAttentionCapture``): in each chosen block, the host's own ``attention(q, k, v, heads)`` runs
    once more on the identity rows only, with the image tokens' queries only and values that are 1 at
    the subject's text keys (channel 0 of every head) and 0 elsewhere; its output at each image token
    is that token's attention mass on the subject. Only a block's first ``attention`` call is the joint
    one (``block_mixing`` order); SD3.5-medium's MMDiT-X ``x_block.attn2`` self-attention (image keys
    only) comes second and is never read.

    Same protocol as ``AttentionCapture`` (``begin_step``/``arm_call``/``take``, a context manager):
    while inside, a pre-hook on the root and hooks on the chosen blocks exist and the namespace's
    ``attention`` is wrapped; every one of them is undone on exit, also after an exception.
    """

    def __init__(self, root: nn.Module, *, blocks: Collection[int] | None = None) -> None:
        super().__init__(nn.Module(), downsample_factors=None)
        namespace = find_mmdit(root)
        if namespace is None:
            raise ValueError(f"{type(root).__name__} is not an MM-DiT with joint blocks")
        self.root, self.namespace = root, namespace
        depth = len(root.joint_blocks)
        self.blocks = sorted(blocks) if blocks is not None else mmdit_blocks(depth)
        self.patch_size = int(getattr(root, "patch_size", 2))
        self.registers = int(getattr(root, "register_length", 0) or 0)
        self._live: list[bool] | None = None
        self._original: Any = None
        self._wrapper: Any = None
        self._block_calls = -1  # calls of ``attention`` in the current chosen block; -1: outside one

    def __enter__(self) -> MMDiTCapture:
        try:
            self._handles.append(self.root.register_forward_pre_hook(self._on_root_call, with_kwargs=True))
            for index in self.blocks:
                block = self.root.joint_blocks[index]
                self._handles.append(block.register_forward_pre_hook(self._enter_block))
                self._handles.append(block.register_forward_hook(self._leave_block))
            self._patch_kernel()
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        super().remove()
        self._unpatch_kernel()
        self._block_calls = -1

    def _on_root_call(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._block_calls = -1
        super()._on_root_call(module, args, kwargs)

    def _enter_block(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self._block_calls = 0

    def _leave_block(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self._block_calls = -1

    # -- the kernel -----------------------------------------------------------------------------------
    def _patch_kernel(self) -> None:
        original = self.namespace["attention"]
        live = [True]

        def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            out = original(q, k, v, *args, **kwargs)
            if live[0] and self._block_calls >= 0:
                self._block_calls += 1
                if self._block_calls == 1 and self._call is not None and self._weights is not None:
                    self._measure(original, q, k, v, args, kwargs)
            return out

        self._original, self._wrapper, self._live = original, attention, live
        self.namespace["attention"] = attention

    def _unpatch_kernel(self) -> None:
        if self._live is None:
            return
        self._live[0] = False  # if another patch wraps ours, ours now only passes calls through
        if self.namespace.get("attention") is self._wrapper:
            self.namespace["attention"] = self._original
        self._live = self._original = self._wrapper = None

    @torch.no_grad()
    def _measure(self, kernel: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, args: Any, kwargs: Any) -> None:
        call, weights = self._call, self._weights
        assert call is not None and weights is not None
        heads = args[0] if args else kwargs.get("heads")
        if not isinstance(heads, int) or len(args) > 1 or kwargs.get("mask") is not None:
            return
        height, width = call.latent_hw
        image = math.ceil(height / self.patch_size) * math.ceil(width / self.patch_size)
        length = q.shape[1]
        text = length - image
        if text <= self.registers or k.shape[1] != length or v.shape[1] != length:
            return  # not a joint attention over text + this image's tokens
        rows = call.local_rows.to(q.device)
        head_dim = q.shape[-1] // heads
        indicator = _fit_tokens(weights.index_select(0, call.images.to(weights.device)), text - self.registers)
        values = torch.zeros_like(v.index_select(0, rows))
        keys = values.view(len(rows), length, heads, head_dim)
        keys[:, self.registers : text, :, 0] = indicator[:, :, None].to(values)
        out = kernel(q.index_select(0, rows)[:, text:], k.index_select(0, rows), values, heads)
        mass = out.float().reshape(len(rows), image, heads, head_dim)[..., 0].mean(dim=2)
        self._fold(mass, self.patch_size)
