"""Parameter and FLOP counts of a detector, measured by running one forward pass.

Dense layers (conv, linear, matmul) are counted by ``torch.utils.flop_counter.FlopCounterMode``. A sparse
convolution costs ``2 * pairs * C_in * C_out`` FLOPs, with ``pairs`` the number of (input site, output site)
pairs of its rulebook; forward hooks on every spconv layer read the pairs from the layer's indice data and
replace whatever the dense counter saw inside the layer (on CPU spconv runs gather-mm-scatter, on CUDA its own
kernels, so the dense count there is meaningless or zero).
"""
import copy

import torch
from torch.utils.flop_counter import FlopCounterMode

from ...utils.spconv_utils import spconv

_SPARSE_CONV_TYPES = (spconv.SubMConv3d, spconv.SparseConv3d, spconv.SparseInverseConv3d)


def sparse_conv_pairs(layer, out):
    """Number of rulebook pairs used by ``layer`` to produce the SparseConvTensor ``out``.

    SubM layers keep one half of the symmetric offsets in their rulebook and apply the centre tap to every
    site, so pairs = N_sites + 2 * sum(pairs of the offsets before the centre).
    """
    key = layer.indice_key
    data = out.indice_dict.get(key, None) if key is not None else None
    if data is None or not hasattr(data, "indice_pair_num"):
        return None
    nums = data.indice_pair_num.detach().cpu().long()
    if getattr(layer, "subm", False):
        center = nums.numel() // 2
        return int(out.features.shape[0]) + 2 * int(nums[:center].sum())
    return int(nums.sum())


def module_param_counts(model):
    """{top-level module name: parameter count} of a detector, in ``module_list`` order, plus 'total'."""
    counts = {name: sum(p.numel() for p in mod.parameters()) for name, mod in model.named_children()
              if name != "module_list"}
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


def format_param_table(columns):
    """Text table of ``{column: module_param_counts(...)}``: one row per module, one column per model."""
    names = []
    for counts in columns.values():
        names += [n for n in counts if n not in names and n != "total"]
    names.append("total")
    head = f"{'module':24s}" + "".join(f"{c:>14s}" for c in columns)
    rows = [head]
    for n in names:
        rows.append(f"{n:24s}" + "".join(f"{counts.get(n, 0):>14,d}" for counts in columns.values()))
    return "\n".join(rows)


def summarize(model, batch_dict, print_table=True, logger=None):
    """Count parameters and forward FLOPs of ``model`` on ``batch_dict`` (run once, eval mode, no grad).

    Args:
        model: a Detector3DTemplate (or any module whose top-level children run in ``module_list`` order).
        batch_dict: an input batch already on the model's device; it is shallow-copied, not modified.
        print_table: print (or log with ``logger``) a per-module table.
    Returns:
        dict ``params`` (int), ``flops`` (int, whole forward), ``per_module`` {name: {'params', 'flops'}} for the
        top-level modules, ``sparse_layers`` {qualified name: {'pairs', 'flops'}}.
    """
    children = [(name, mod) for name, mod in model.named_children() if mod is not None]
    per_module = {name: {"params": sum(p.numel() for p in mod.parameters()), "flops": 0} for name, mod in children}
    sparse_layers = {}
    owner = {}
    for top, mod in children:
        for sub_name, sub in mod.named_modules():
            if isinstance(sub, _SPARSE_CONV_TYPES):
                owner[sub] = (top, f"{top}.{sub_name}" if sub_name else top)

    counter = FlopCounterMode(display=False)
    handles, dense_inside = [], {}
    top_starts, sparse_starts = {}, {}

    def top_pre_hook(mod, args):
        top_starts[id(mod)] = counter.get_total_flops()

    def sparse_pre_hook(mod, args):
        sparse_starts[id(mod)] = counter.get_total_flops()

    def top_hook(name):
        def hook(mod, args, output):
            per_module[name]["flops"] += counter.get_total_flops() - top_starts.pop(id(mod))
        return hook

    def sparse_hook(mod, args, output):
        dense_inside[id(mod)] = dense_inside.get(id(mod), 0) + counter.get_total_flops() - sparse_starts.pop(id(mod))
        pairs = sparse_conv_pairs(mod, output)
        if pairs is None:
            raise RuntimeError(f"model_summary: cannot read the rulebook of sparse layer {owner[mod][1]} "
                               f"(indice_key {mod.indice_key!r}); give every spconv layer an indice_key")
        top, qual = owner[mod]
        entry = sparse_layers.setdefault(qual, {"pairs": 0, "flops": 0, "top": top, "dense_seen": 0})
        entry["pairs"] += pairs
        entry["flops"] += 2 * pairs * mod.in_channels * mod.out_channels

    for name, mod in children:
        handles.append(mod.register_forward_pre_hook(top_pre_hook))
        handles.append(mod.register_forward_hook(top_hook(name)))
    for sub in owner:
        handles.append(sub.register_forward_pre_hook(sparse_pre_hook))
        handles.append(sub.register_forward_hook(sparse_hook))

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), counter:
            model(copy.copy(batch_dict))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()

    total = counter.get_total_flops()
    for sub, (top, qual) in owner.items():
        if qual in sparse_layers:
            seen = dense_inside.get(id(sub), 0)
            per_module[top]["flops"] += sparse_layers[qual]["flops"] - seen
            total += sparse_layers[qual]["flops"] - seen
    params = sum(p.numel() for p in model.parameters())
    result = {
        "params": int(params),
        "flops": int(total),
        "per_module": per_module,
        "sparse_layers": {k: {"pairs": v["pairs"], "flops": v["flops"]} for k, v in sparse_layers.items()},
    }
    if print_table:
        lines = [f"{'module':<20}{'params':>14}{'GFLOPs':>12}"]
        for name, row in per_module.items():
            lines.append(f"{name:<20}{row['params']:>14,}{row['flops'] / 1e9:>12.3f}")
        lines.append(f"{'total':<20}{params:>14,}{total / 1e9:>12.3f}")
        text = "\n".join(lines)
        if logger is not None:
            logger.info("\n" + text)
        else:
            print(text)
    return result
