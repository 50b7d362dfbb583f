"""Forward-hook recorders (mmrazor's "recorder" role) addressed by module name.

A tap is written ``"module.path"`` or ``"module.path@key"``: the output of the named submodule, or the entry
``key`` of its output when the module returns a dict (OpenPCDet modules return the whole ``batch_dict``; the
CenterPoint ``SeparateHead`` returns ``{hm, center, ...}``). ``"dense_head.heads_list.*"`` expands to one tap per
child of ``dense_head.heads_list``. The value is captured at hook time (the batch_dict is mutated later):
detached for the teacher, with its autograd graph for the student.
"""
import torch


class StopForward(Exception):
    """Raised from a hook once every tap of a ``stop_when_done`` manager has recorded (truncated teacher run)."""


def parse_tap(tap):
    """``"a.b@key"`` -> ``("a.b", "key")``; ``"a.b"`` -> ``("a.b", None)``."""
    if not isinstance(tap, str) or not tap:
        raise ValueError(f"tap must be a non-empty string 'module.path[@key]', got {tap!r}")
    path, _, key = tap.partition("@")
    return path, (key or None)


def get_submodule(model, path, who="model"):
    """The submodule at dotted ``path``; KeyError naming the path and the available children when absent."""
    module = model
    walked = []
    for part in path.split("."):
        child = getattr(module, part, None) if part else None
        if child is None and part.isdigit() and isinstance(module, (torch.nn.ModuleList, torch.nn.Sequential)):
            child = module[int(part)] if int(part) < len(module) else None
        if not isinstance(child, torch.nn.Module):
            names = [n for n, _ in module.named_children()]
            raise KeyError(f"{who}: no submodule '{path}' (at '{'.'.join(walked) or '<root>'}' found children "
                           f"{names}, not '{part}')")
        module = child
        walked.append(part)
    return module


def expand_taps(model, taps, who="model"):
    """Expand ``*`` wildcards (one trailing ``.*`` in the module path) into concrete taps, in child order."""
    out = []
    for tap in taps:
        path, key = parse_tap(tap)
        if path.endswith(".*"):
            parent_path = path[:-2]
            parent = get_submodule(model, parent_path, who)
            children = [n for n, _ in parent.named_children()]
            if not children:
                raise KeyError(f"{who}: '{parent_path}' has no children to expand for tap '{tap}'")
            out.extend(f"{parent_path}.{n}" + (f"@{key}" if key else "") for n in children)
        else:
            out.append(tap)
    return out


def _capture(value, detach, clone):
    if torch.is_tensor(value):
        value = value.detach() if detach else value
        return value.clone() if clone else value
    if isinstance(value, dict):
        return {k: _capture(v, detach, clone) for k, v in value.items() if torch.is_tensor(v)}
    if hasattr(value, "features") and hasattr(value, "indices"):
        # spconv SparseConvTensor: keep the object; it is immutable for our purposes (features are re-assigned,
        # not written in place, by downstream spconv modules)
        return value
    raise TypeError(f"recorder: cannot capture a value of type {type(value).__name__}")


class ModuleOutputRecorder:
    """Records the output (or output[key]) of one named submodule at each forward call (last call wins)."""

    def __init__(self, tap, detach, clone=False, on_record=None):
        self.tap = tap
        self.module_path, self.key = parse_tap(tap)
        self.detach = detach
        self.clone = clone
        self.on_record = on_record
        self.data = None
        self.calls = 0
        self.handle = None

    def _hook(self, module, inputs, output):
        value = output
        if self.key is not None:
            if not isinstance(output, dict) or self.key not in output:
                have = sorted(output) if isinstance(output, dict) else type(output).__name__
                raise KeyError(f"recorder '{self.tap}': output of '{self.module_path}' has no key '{self.key}' "
                               f"(has {have})")
            value = output[self.key]
        self.data = _capture(value, self.detach, self.clone)
        self.calls += 1
        if self.on_record is not None:
            self.on_record(self)

    def register(self, model, who="model"):
        module = get_submodule(model, self.module_path, who)
        self.handle = module.register_forward_hook(self._hook)
        return self.handle

    def remove(self):
        if self.handle is not None:
            self.handle.remove()
            self.handle = None


class RecorderManager:
    """Context manager registering one recorder per tap on ``model`` and always removing the hooks on exit.

    ``with RecorderManager(model, taps, detach=True) as rec: model(batch)``; then ``rec.records[tap]``.
    With ``stop_when_done`` the forward is aborted by ``StopForward`` once every tap has recorded, and the
    exception is swallowed on exit (so the caller runs the model only as far as needed).
    """

    def __init__(self, model, taps, detach, who="model", clone=False, stop_when_done=False):
        self.model = model
        self.who = who
        self.stop_when_done = stop_when_done
        self.recorders = {t: ModuleOutputRecorder(t, detach, clone, self._on_record if stop_when_done else None)
                          for t in taps}
        self.stopped_early = False

    def _on_record(self, _rec):
        if all(r.calls > 0 for r in self.recorders.values()):
            raise StopForward()

    def __enter__(self):
        try:
            for rec in self.recorders.values():
                rec.register(self.model, self.who)
        except Exception:
            self.remove()
            raise
        return self

    def remove(self):
        for rec in self.recorders.values():
            rec.remove()

    def __exit__(self, exc_type, exc, tb):
        self.remove()
        if exc_type is StopForward:
            self.stopped_early = True
            return True
        return False

    @property
    def records(self):
        missing = [t for t, r in self.recorders.items() if r.calls == 0]
        if missing:
            raise RuntimeError(f"{self.who}: taps {missing} never fired during the forward (the module did not "
                               f"run, or ran after the stage where the forward stopped)")
        return {t: r.data for t, r in self.recorders.items()}
