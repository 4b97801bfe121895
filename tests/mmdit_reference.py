"""An explicit joint-attention reference for MM-DiT tests: record every call of the model's
``attention`` with the joint block it ran in, then compute ``softmax(q k^T / sqrt(d))`` over all keys,
head by head, in float64, and take the image queries' mass on the subject's text keys."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from lib_degu.attention import find_mmdit
from lib_degu.mask import resize

__all__ = ["explicit_joint_map", "recorded_joint_attention", "resize", "sharpen_joint_attention"]


@dataclass
class JointCall:
    block: int
    order: int  # how many same-length (q and k) calls ran before it in this block's call
    q: torch.Tensor
    k: torch.Tensor
    heads: int


@contextlib.contextmanager
def recorded_joint_attention(model: torch.nn.Module):
    """``with recorded_joint_attention(mmdit) as calls:`` - every ``attention`` call whose q and k have
    the same length (the model's own calls; a capture's extra calls use the image queries only)."""
    namespace = find_mmdit(model)
    assert namespace is not None
    original = namespace["attention"]
    calls: list[JointCall] = []
    current = {"block": -1, "order": 0}

    def enter(index):
        def hook(module, args):
            current["block"], current["order"] = index, 0

        return hook

    def attention(q, k, v, heads, *args, **kwargs):
        if q.shape[1] == k.shape[1] and current["block"] >= 0:
            calls.append(JointCall(current["block"], current["order"], q.detach().clone(), k.detach().clone(), heads))
            current["order"] += 1
        return original(q, k, v, heads, *args, **kwargs)

    handles = [block.register_forward_pre_hook(enter(i)) for i, block in enumerate(model.joint_blocks)]
    namespace["attention"] = attention
    try:
        yield calls
    finally:
        namespace["attention"] = original
        for handle in handles:
            handle.remove()


@torch.no_grad()
def explicit_joint_map(
    calls: list[JointCall], row: int, positions: list[int], latent_hw: tuple[int, int], blocks: list[int],
    patch: int = 2, call_rows: int | None = None, model_call: int = 0,
) -> torch.Tensor:
    """(H, W) float64: batch row ``row``'s image tokens' attention mass on the text keys ``positions``
    in the joint attention (each block's first call) of ``blocks``, per block resized to the latent and
    averaged. ``model_call``: which model call's records to use when several ran (batch ``call_rows``)."""
    height, width = latent_hw
    image = math.ceil(height / patch) * math.ceil(width / patch)
    joint = [c for c in calls if c.order == 0 and (call_rows is None or c.q.shape[0] == call_rows)]
    per_call = len({c.block for c in joint})
    joint = joint[model_call * per_call : (model_call + 1) * per_call]
    total, used = torch.zeros(height, width, dtype=torch.float64), 0
    for call in joint:
        if call.block not in blocks:
            continue
        q, k = call.q[row].double(), call.k[row].double()
        length, d = q.shape[0], q.shape[1] // call.heads
        text = length - image
        heads = []
        for head in range(call.heads):
            qh, kh = q[text:, head * d : (head + 1) * d], k[:, head * d : (head + 1) * d]
            probs = torch.softmax(qh @ kh.T / math.sqrt(d), dim=-1)
            heads.append(probs[:, positions].sum(dim=-1))
        small = torch.stack(heads).mean(dim=0).view(math.ceil(height / patch), math.ceil(width / patch))
        total += resize(small[None].float(), latent_hw)[0].double()
        used += 1
    assert used == len(blocks), f"{used} of the blocks {blocks} ran"
    return total / used


def sharpen_joint_attention(model: torch.nn.Module, factor: float = 6.0) -> None:
    """Scale every q/k projection so the joint softmax is peaked (random weights attend almost
    uniformly): rows whose subject token differs then attend visibly differently."""
    with torch.no_grad():
        for block in model.joint_blocks:
            for stream in (block.context_block, block.x_block):
                attn = stream.attn
                if getattr(attn.ln_q, "weight", None) is not None:  # q/k RMSNorm (SD3.5) undoes a scaled qkv
                    attn.ln_q.weight.mul_(factor**0.5)
                    attn.ln_k.weight.mul_(factor**0.5)
                else:
                    dim = attn.qkv.weight.shape[0] // 3
                    attn.qkv.weight[: 2 * dim].mul_(factor**0.5)
