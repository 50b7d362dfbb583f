"""Teacher-guided initialisation: a narrower student's weights chosen channel by channel from the teacher's.

SparseKD (Yang et al., NeurIPS 2022) starts a narrowed student from its teacher's weights instead of a random
initialisation. Here the choice is made per *channel space*: the output channels of one conv / linear layer, which
the BatchNorm after it and every layer that reads it share. The student keeps the ``S`` channels of each space
with the largest filter L1 norm (sum of |w| over the producing layer's filter; ties by lower index), in their
original order, and every tensor is cut consistently:

- a conv / linear / sparse conv weight along its output dim by its own space, along its input dim by whatever it
  reads (a concatenation of spaces, e.g. BaseBEVBackbone's upsampled levels or a PFN layer's [features, max]);
- a BatchNorm's affine and running statistics by the space it normalises;
- HeightCompression's flattening (C, D) -> C * D channels by repeating each kept channel's D slots.

A space whose student size equals the teacher's is kept whole (identity), so per-module widths (e.g. only
``BACKBONE_2D.WIDTH`` narrowed) and layers of fixed size (the input features, the heads' outputs) need no
special case. A student at the teacher's widths inherits the teacher exactly.

The wiring is declared per module class (``_WIRING``); a module the wiring does not know, a layer that reads a
tensor the wiring cannot follow (residual sums, grouped convs) or a student wider than its teacher is an
``InheritError`` that names the module or tensor.
"""
from collections import OrderedDict

import torch
from torch import nn

__all__ = ["InheritError", "inherit_from_teacher", "channel_plan"]


class InheritError(ValueError):
    """The student's weights cannot be chosen from the teacher's (names the module or tensor)."""


try:  # spconv is optional for the pillar detectors
    from spconv.pytorch.conv import SparseConvolution as _SparseConv
    from spconv.pytorch import SparseSequential as _SparseSequential
except Exception:  # pragma: no cover - spconv absent
    _SparseConv = ()
    _SparseSequential = ()

_CONTAINERS = (nn.Sequential, nn.ModuleList) + ((_SparseSequential,) if _SparseSequential else ())
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class _Graph:
    """Channel spaces of the teacher and, for each tensor, which spaces index which of its dims.

    A *part list* describes one dim: ``[(space, repeat), ...]`` concatenated in order, where a space of size T
    with repeat r occupies T * r slots, channel c at slots c * r .. c * r + r - 1.
    """

    def __init__(self, teacher_state):
        self.state = teacher_state
        self.sizes = OrderedDict()      # space -> teacher size
        self.scores = {}                # space -> (T,) float64 filter L1 norms of its producer
        self.dims = OrderedDict()       # tensor name -> {dim: part list}

    def new_space(self, name, weight, out_dim):
        size = int(weight.shape[out_dim])
        self.sizes[name] = size
        w = weight.detach().double().abs()
        self.scores[name] = w.movedim(out_dim, 0).reshape(size, -1).sum(1)
        return [(name, 1)]

    def input_space(self, name, size):
        self.sizes[name] = int(size)
        self.scores[name] = None        # never narrowed: sizes must match
        return [(name, 1)]

    def width(self, parts):
        return sum(self.sizes[s] * r for s, r in parts)

    def bind(self, tensor, dim, parts, module_name):
        if tensor not in self.state:
            raise InheritError(f"teacher-guided init: the teacher's state has no '{tensor}' (module {module_name})")
        size = self.state[tensor].shape[dim]
        if size != self.width(parts):
            raise InheritError(f"teacher-guided init: '{tensor}' has {size} channels along dim {dim}, the wiring of "
                               f"module {module_name} expects {self.width(parts)} (from {[s for s, _ in parts]})")
        self.dims.setdefault(tensor, {})[dim] = list(parts)


def _leaf(graph, name, m, parts):
    """Wire one parameterised leaf module reading ``parts``; return the parts of its output."""
    p = name + "."
    if isinstance(m, nn.Linear):
        out = graph.new_space(name, m.weight, 0)
        graph.bind(p + "weight", 0, out, name)
        graph.bind(p + "weight", 1, parts, name)
    elif isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        if m.groups != 1:
            raise InheritError(f"teacher-guided init: {name} is a grouped conv (groups={m.groups}), not supported")
        out = graph.new_space(name, m.weight, 0)
        graph.bind(p + "weight", 0, out, name)
        graph.bind(p + "weight", 1, parts, name)
    elif isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        if m.groups != 1:
            raise InheritError(f"teacher-guided init: {name} is a grouped conv (groups={m.groups}), not supported")
        out = graph.new_space(name, m.weight, 1)          # weight (C_in, C_out, k...)
        graph.bind(p + "weight", 0, parts, name)
        graph.bind(p + "weight", 1, out, name)
    elif _SparseConv and isinstance(m, _SparseConv):
        w = m.weight                                      # spconv 2.x: (C_out, k..., C_in)
        if w.shape[0] != m.out_channels or w.shape[-1] != m.in_channels:
            raise InheritError(f"teacher-guided init: sparse conv {name} has weight {tuple(w.shape)}, expected "
                               f"(C_out={m.out_channels}, k..., C_in={m.in_channels})")
        out = graph.new_space(name, w, 0)
        graph.bind(p + "weight", 0, out, name)
        graph.bind(p + "weight", w.dim() - 1, parts, name)
    elif isinstance(m, _NORMS):
        for key in ("weight", "bias", "running_mean", "running_var"):
            if getattr(m, key, None) is not None:
                graph.bind(p + key, 0, parts, name)
        return parts
    else:
        raise InheritError(f"teacher-guided init: cannot map module {name} ({type(m).__name__}); supported layers: "
                           "Linear, Conv, ConvTranspose, spconv convs, BatchNorm, inside the modules of "
                           f"{sorted(_WIRING)}")
    if getattr(m, "bias", None) is not None:
        graph.bind(p + "bias", 0, out, name)
    return out


def _chain(graph, name, m, parts):
    """A module whose children run one after another in registration order (Sequential and the like)."""
    if isinstance(m, _CONTAINERS):
        for child_name, child in m.named_children():
            parts = _chain(graph, f"{name}.{child_name}" if name else child_name, child, parts)
        return parts
    if not any(True for _ in m.parameters(recurse=False)) and not any(True for _ in m.children()):
        return parts                                      # ReLU, ZeroPad2d, Dropout, Identity ...
    if any(True for _ in m.children()):
        raise InheritError(f"teacher-guided init: cannot follow module {name} ({type(m).__name__}) inside a chain")
    return _leaf(graph, name, m, parts)


def _pillar_vfe(graph, name, m, parts):
    for i, layer in enumerate(m.pfn_layers):
        out = _leaf(graph, f"{name}.pfn_layers.{i}.linear", layer.linear, parts)
        if getattr(layer, "use_norm", False):
            _leaf(graph, f"{name}.pfn_layers.{i}.norm", layer.norm, out)
        parts = out if layer.last_vfe else out + out      # non-last layers output [features, pillar max]
    return parts


def _passthrough(graph, name, m, parts):
    return parts


def _voxel_backbone(graph, name, m, parts):
    return _chain(graph, name, nn.Sequential(OrderedDict(m.named_children())), parts)


def _height_compression(graph, name, m, parts):
    if len(parts) != 1:
        raise InheritError(f"teacher-guided init: {name} expects one channel space from the 3D backbone")
    (space, rep), = parts
    depth, rest = divmod(int(m.num_bev_features), graph.sizes[space] * rep)
    if rest:
        raise InheritError(f"teacher-guided init: {name} has {m.num_bev_features} BEV channels, not a multiple of "
                           f"the 3D backbone's {graph.sizes[space]}")
    return [(space, rep * depth)]                         # view(N, C * D, H, W): channel c at slots c*D .. c*D+D-1


def _bev_backbone(graph, name, m, parts):
    ups = []
    for i, block in enumerate(m.blocks):
        parts = _chain(graph, f"{name}.blocks.{i}", block, parts)
        ups.append(_chain(graph, f"{name}.deblocks.{i}", m.deblocks[i], parts) if len(m.deblocks) else parts)
    x = [p for up in ups for p in up] if ups else parts
    if len(m.deblocks) > len(m.blocks):
        x = _chain(graph, f"{name}.deblocks.{len(m.deblocks) - 1}", m.deblocks[-1], x)
    return x


def _fan_out(graph, name, m, parts):
    """Every parameterised child reads the same input (AnchorHeadSingle's conv_cls / conv_box / conv_dir_cls)."""
    for child_name, child in m.named_children():
        if any(True for _ in child.parameters()):
            _chain(graph, f"{name}.{child_name}", child, parts)
    return None


def _center_head(graph, name, m, parts):
    shared = _chain(graph, f"{name}.shared_conv", m.shared_conv, parts)
    for k, head in enumerate(m.heads_list):
        for branch in head.sep_head_dict:
            _chain(graph, f"{name}.heads_list.{k}.{branch}", getattr(head, branch), shared)
    return None


_WIRING = {
    "PillarVFE": _pillar_vfe, "MeanVFE": _passthrough,
    "VoxelBackBone8x": _voxel_backbone,
    "PointPillarScatter": _passthrough, "HeightCompression": _height_compression,
    "BaseBEVBackbone": _bev_backbone,
    "AnchorHeadSingle": _fan_out, "CenterHead": _center_head,
}


def _wire(teacher, teacher_state):
    graph = _Graph(teacher_state)
    parts = None
    for attr in ("vfe", "backbone_3d", "map_to_bev_module", "pfe", "backbone_2d", "dense_head", "point_head",
                 "roi_head"):
        module = getattr(teacher, attr, None)
        if module is None:
            continue
        kind = type(module).__name__
        if kind not in _WIRING:
            raise InheritError(f"teacher-guided init: no channel wiring for {attr} ({kind}); supported: "
                               f"{sorted(_WIRING)}")
        first = _first_leaf(module)
        if parts is None and first is not None:   # the point / voxel features at the input: never narrowed
            width = getattr(first, "in_features", getattr(first, "in_channels", None))
            if width is None:
                raise InheritError(f"teacher-guided init: cannot tell the input width of {attr} ({kind})")
            parts = graph.input_space("input_features", width)
        parts = _WIRING[kind](graph, attr, module, parts)
    if parts is None and not graph.dims and isinstance(teacher, _CONTAINERS):   # a plain chain of layers
        first = _first_leaf(teacher)
        width = getattr(first, "in_features", getattr(first, "in_channels", None))
        _chain(graph, "", teacher, graph.input_space("input_features", width))
    return graph


def _first_leaf(module):
    for m in module.modules():
        if any(True for _ in m.parameters(recurse=False)):
            return m
    return None


def _student_sizes(graph, student_state):
    """Solve each space's student size from the tensors whose dim holds that space alone."""
    sizes = {s: (t if graph.scores[s] is None else None) for s, t in graph.sizes.items()}
    for _ in range(len(sizes) + 1):
        changed = False
        for tensor, dims in graph.dims.items():
            for dim, parts in dims.items():
                unknown = [(s, r) for s, r in parts if sizes[s] is None]
                if len({s for s, _ in unknown}) != 1:
                    continue
                s = unknown[0][0]
                reps = sum(r for u, r in unknown)
                known = sum(sizes[u] * r for u, r in parts if sizes[u] is not None)
                size, rest = divmod(student_state[tensor].shape[dim] - known, reps)
                if rest or size <= 0:
                    raise InheritError(f"teacher-guided init: the student's '{tensor}' {tuple(student_state[tensor].shape)}"
                                       f" does not split along dim {dim} into the spaces {[u for u, _ in parts]}")
                sizes[s] = size
                changed = True
        if not changed:
            break
    missing = [s for s, v in sizes.items() if v is None]
    if missing:
        raise InheritError(f"teacher-guided init: cannot tell the student's width of {missing[:3]}")
    for s, size in sizes.items():
        if size > graph.sizes[s]:
            raise InheritError(f"teacher-guided init: the student's {s} has {size} channels, its teacher {graph.sizes[s]}:"
                               " a student cannot be wider than its teacher")
        if graph.scores[s] is None and size != graph.sizes[s]:
            raise InheritError(f"teacher-guided init: the student's {s} has {size} channels, the teacher's "
                               f"{graph.sizes[s]}; it cannot be narrowed")
    return sizes


def _select(graph, sizes):
    """Kept teacher channels per space: the top-S filter L1 norms (ties by lower index), ascending."""
    keep = {}
    for s, t in graph.sizes.items():
        n = sizes[s]
        if n == t:
            keep[s] = torch.arange(t)
        else:
            order = torch.sort(-graph.scores[s], stable=True).indices[:n]
            keep[s] = torch.sort(order).values
    return keep


def _dim_index(graph, keep, parts):
    index, offset = [], 0
    for s, r in parts:
        k = keep[s]
        index.append((offset + k[:, None] * r + torch.arange(r)[None, :]).reshape(-1))
        offset += graph.sizes[s] * r
    return torch.cat(index)


def channel_plan(student, teacher):
    """The channels the student keeps: {space name: LongTensor of teacher channel indices}, plus the graph."""
    graph = _wire(teacher, teacher.state_dict())
    sizes = _student_sizes(graph, student.state_dict())
    return _select(graph, sizes), graph


def inherit_from_teacher(student, teacher, logger=None):
    """Load into ``student`` the teacher's weights narrowed to the student's widths.

    Args:
        student: detector built from the student config (same module names as the teacher, narrower or equal).
        teacher: the teacher detector with its trained weights loaded.
    Returns:
        dict with ``copied`` (tensors taken whole), ``narrowed`` ({name: (teacher shape, student shape)}) and
        ``kept`` ({space: number of kept channels / teacher channels}).
    Raises:
        InheritError naming the module or tensor that cannot be mapped.
    """
    teacher_state = teacher.state_dict()
    student_state = student.state_dict()
    keep, graph = channel_plan(student, teacher)
    extra = sorted(set(student_state) - set(teacher_state))
    if extra:
        raise InheritError(f"teacher-guided init: the student has tensors its teacher lacks: {extra[:5]}")
    new_state, copied, narrowed = OrderedDict(), [], {}
    for name, target in student_state.items():
        if name == "global_step":                       # a new run counts its own steps
            new_state[name] = target.clone()
            continue
        value = teacher_state[name]
        for dim, parts in graph.dims.get(name, {}).items():
            value = value.index_select(dim, _dim_index(graph, keep, parts).to(value.device))
        if tuple(value.shape) != tuple(target.shape):
            raise InheritError(f"teacher-guided init: '{name}' is {tuple(teacher_state[name].shape)} in the teacher "
                               f"and {tuple(target.shape)} in the student, and no channel wiring maps one to the other")
        if tuple(value.shape) == tuple(teacher_state[name].shape):
            copied.append(name)
        else:
            narrowed[name] = (tuple(teacher_state[name].shape), tuple(target.shape))
        new_state[name] = value.detach().to(device=target.device, dtype=target.dtype).clone()
    student.load_state_dict(new_state, strict=True)
    kept = {s: f"{len(k)}/{graph.sizes[s]}" for s, k in keep.items() if len(k) != graph.sizes[s]}
    if logger is not None:
        logger.info(f"teacher-guided init: {len(copied)} tensors taken whole, {len(narrowed)} narrowed by filter L1 "
                    f"norm over {len(kept)} channel spaces (kept/teacher: "
                    + ", ".join(f"{s} {v}" for s, v in list(kept.items())[:6]) + (" ..." if len(kept) > 6 else "")
                    + ")")
    return {"copied": copied, "narrowed": narrowed, "kept": kept}
