"""The networks of the SortedNet spaces, each written once against a :class:`~search_spaces.ops.nested.Layers`
kit: built from ``NESTED`` layers at full size it is the supernet (``Sorted*``, with ``set_active``),
built from ``PLAIN`` layers at a sub-model's sizes it is that sub-model, with the same parameter names.

* :class:`ResNet`: the CIFAR ResNet (He et al. 2016, §4.2): a 3x3 stem, stages of basic blocks
  (projection shortcut where the block changes shape), global average pooling, a linear classifier.
* :class:`TransformerClassifier`: token and learned position embeddings, pre-LN encoder layers,
  a final LayerNorm, mean pooling over positions, a linear classifier.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.ops.counting import register_mac_counter
from search_spaces.ops.nested import NESTED, PLAIN, Layers, SortedSupernet


@dataclass(frozen=True)
class BlockShape:
    """One basic block: ``in -> mid`` (first 3x3 conv, with the stride), ``mid -> out`` (second 3x3
    conv); ``projection``: a 1x1 conv + BN shortcut, else the identity."""

    in_channels: int
    mid_channels: int
    out_channels: int
    stride: int
    projection: bool


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""

    def __init__(self, shape: BlockShape, kit: Layers = PLAIN):
        super().__init__()
        self.conv1 = kit.conv(shape.in_channels, shape.mid_channels, 3, shape.stride)
        self.bn1 = kit.batchnorm(shape.mid_channels)
        self.conv2 = kit.conv(shape.mid_channels, shape.out_channels, 3)
        self.bn2 = kit.batchnorm(shape.out_channels)
        if shape.projection:
            self.shortcut_conv = kit.conv(shape.in_channels, shape.out_channels, 1, shape.stride)
            self.shortcut_bn = kit.batchnorm(shape.out_channels)
        else:
            self.shortcut_conv = self.shortcut_bn = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.shortcut_conv is None else self.shortcut_bn(self.shortcut_conv(x))
        return F.relu(out + shortcut)


class ResNet(nn.Module):
    """Stem (3x3 conv, BN, ReLU), ``stages`` of basic blocks, global average pooling, classifier.

    ``depths[s]`` is the number of leading blocks of stage ``s`` that run: all of them, unless a
    supernet's ``set_active`` says otherwise.
    """

    def __init__(self, in_channels: int, stages: list[list[BlockShape]], n_classes: int, kit: Layers = PLAIN):
        super().__init__()
        stem_width = stages[0][0].in_channels
        self.stem = kit.conv(in_channels, stem_width, 3)
        self.stem_bn = kit.batchnorm(stem_width)
        self.stages = nn.ModuleList(nn.ModuleList(BasicBlock(shape, kit) for shape in stage) for stage in stages)
        self.classifier = kit.linear(stages[-1][-1].out_channels, n_classes)
        self.depths = [len(stage) for stage in stages]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem_bn(self.stem(x)))
        for stage, depth in zip(self.stages, self.depths):
            for block in islice(stage, depth):
                x = block(x)
        return self.classifier(x.mean((2, 3)))


class SortedResNet(SortedSupernet, ResNet):
    """The weight-sharing ResNet: every sub-model runs the first blocks of each stage, with the first
    channels of every layer. The classifier is shared by all depths: every sub-model ends with the
    last stage, whose channels are a prefix of the classifier's inputs."""

    def __init__(self, in_channels: int, stages: list[list[BlockShape]], n_classes: int):
        super().__init__(in_channels, stages, n_classes, NESTED)

    def set_active(self, depths: list[int], widths: list[int], mids: list[list[int]]) -> None:
        """Run the first ``depths[s]`` blocks of stage ``s``, whose output (and, for stage 0, the stem's)
        has ``widths[s]`` channels, block ``i`` of it with ``mids[s][i]`` channels inside."""
        self.depths = list(depths)
        self.stem.active_out = widths[0]
        for stage, width, stage_mids in zip(self.stages, widths, mids):
            for block, mid in zip(stage, stage_mids):
                block.conv1.active_out = mid
                block.conv2.active_out = width
                if block.shortcut_conv is not None:
                    block.shortcut_conv.active_out = width


@dataclass(frozen=True)
class EncoderShape:
    """One encoder layer: attention ``heads`` (each ``head_dim`` wide) and ``ffn`` hidden units."""

    heads: int
    ffn: int


class SelfAttention(nn.Module):
    """Multi-head self-attention; head ``j`` owns rows ``j*head_dim:(j+1)*head_dim`` of the q/k/v
    projections, so the first ``h`` heads are a prefix of every projection."""

    def __init__(self, dim: int, heads: int, head_dim: int, kit: Layers = PLAIN):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.q, self.k, self.v = (kit.linear(dim, heads * head_dim) for _ in range(3))
        self.proj = kit.linear(heads * head_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (f(x).view(b, n, self.heads, self.head_dim).transpose(1, 2) for f in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(head_dim)) v
        return self.proj(out.transpose(1, 2).reshape(b, n, self.heads * self.head_dim))


@register_mac_counter(SelfAttention)
def _attention_macs(module: SelfAttention, inp: torch.Tensor, out: torch.Tensor) -> int:
    """The two activation matmuls, ``q k^T`` and ``softmax(.) v`` (the projections count themselves)."""
    n = inp.shape[1]
    return 2 * n * n * module.heads * module.head_dim


class EncoderLayer(nn.Module):
    """Pre-LN: ``x + attn(norm1(x))``, then ``x + fc2(gelu(fc1(norm2(x))))``."""

    def __init__(self, dim: int, head_dim: int, shape: EncoderShape, kit: Layers = PLAIN):
        super().__init__()
        self.norm1 = kit.layernorm(dim)
        self.attn = SelfAttention(dim, shape.heads, head_dim, kit)
        self.norm2 = kit.layernorm(dim)
        self.fc1 = kit.linear(dim, shape.ffn)
        self.fc2 = kit.linear(shape.ffn, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TransformerClassifier(nn.Module):
    """Token + learned position embeddings, encoder layers, LayerNorm, mean over positions, classifier.

    Takes integer token ids of shape ``(batch, length)``, ``length <= max_len``. ``depth`` leading
    layers run: all of them, unless a supernet's ``set_active`` says otherwise.
    """

    def __init__(self, vocab_size: int, max_len: int, dim: int, head_dim: int, layers: list[EncoderShape],
                 n_classes: int, kit: Layers = PLAIN):
        super().__init__()
        self.token_embedding = kit.embedding(vocab_size, dim)
        self.position_embedding = kit.embedding(max_len, dim)
        self.blocks = nn.ModuleList(EncoderLayer(dim, head_dim, shape, kit) for shape in layers)
        self.norm = kit.layernorm(dim)
        self.classifier = kit.linear(dim, n_classes)
        self.depth = len(layers)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.token_embedding(ids) + self.position_embedding(positions)
        for block in islice(self.blocks, self.depth):
            x = block(x)
        return self.classifier(self.norm(x).mean(1))


class SortedTransformer(SortedSupernet, TransformerClassifier):
    """The weight-sharing encoder: every sub-model runs the first layers, with the first embedding
    features, the first heads and the first FFN units of each."""

    def __init__(self, vocab_size: int, max_len: int, dim: int, head_dim: int, layers: list[EncoderShape],
                 n_classes: int):
        super().__init__(vocab_size, max_len, dim, head_dim, layers, n_classes, NESTED)

    def set_active(self, depth: int, dim: int, layers: list[EncoderShape]) -> None:
        """Run the first ``depth`` layers on ``dim`` embedding features, layer ``l`` shaped ``layers[l]``."""
        self.depth = depth
        self.token_embedding.active_out = self.position_embedding.active_out = dim
        for block, shape in zip(self.blocks, layers):
            attn = block.attn
            attn.heads = shape.heads
            attn.q.active_out = attn.k.active_out = attn.v.active_out = shape.heads * attn.head_dim
            attn.proj.active_out = dim
            block.fc1.active_out = shape.ffn
            block.fc2.active_out = dim
