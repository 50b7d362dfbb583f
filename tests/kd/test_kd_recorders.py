"""Forward-hook recorders: capture at hook time, detach or keep graph, always remove handles, named errors."""
import pytest
import torch
import torch.nn as nn

from pcdet.kd.recorders import RecorderManager, StopForward, expand_taps, parse_tap


class Stage(nn.Module):
    """OpenPCDet-style stage: takes and returns the mutable batch dict."""

    def __init__(self, key, c):
        super().__init__()
        self.key = key
        self.lin = nn.Linear(c, c)

    def forward(self, batch):
        batch[self.key] = self.lin(batch["x"])
        batch["x"] = batch[self.key] * 0  # later stages overwrite the shared key
        return batch


class Heads(nn.Module):
    def __init__(self):
        super().__init__()
        self.heads_list = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])

    def forward(self, batch):
        batch["out"] = [h(batch["x"]) for h in self.heads_list]
        return batch


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = Stage("fa", 2)
        self.b = Stage("fb", 2)
        self.head = Heads()
        self.module_list = [self.a, self.b, self.head]

    def forward(self, batch):
        for m in self.module_list:
            batch = m(batch)
        return batch


def _hooks(net):
    return sum(len(m._forward_hooks) for m in net.modules())


def test_parse_and_expand_taps():
    net = Net()
    assert parse_tap("a@fa") == ("a", "fa") and parse_tap("head.heads_list.0") == ("head.heads_list.0", None)
    assert expand_taps(net, ["head.heads_list.*@k", "a"]) == ["head.heads_list.0@k", "head.heads_list.1@k", "a"]


def test_records_value_at_hook_time_with_or_without_graph_and_removes_hooks():
    net = Net()
    x = torch.randn(3, 2, requires_grad=True)
    with RecorderManager(net, ["a@fa", "a@x", "head.heads_list.1"], detach=False) as rec:
        batch = net({"x": x})
    assert _hooks(net) == 0
    got = rec.records
    assert torch.equal(got["a@fa"], batch["fa"]) and got["a@fa"].requires_grad
    assert got["a@x"].abs().sum() == 0  # the dict entry as it was when stage a returned
    assert torch.equal(got["head.heads_list.1"], batch["out"][1])
    with RecorderManager(net, ["b@fb"], detach=True) as rec:
        net({"x": x})
    assert not rec.records["b@fb"].requires_grad


def test_hooks_removed_on_error_and_errors_name_the_module():
    net = Net()
    with pytest.raises(KeyError, match="no submodule 'a.nope'"):
        with RecorderManager(net, ["a@fa", "a.nope"], detach=True):
            pass
    assert _hooks(net) == 0
    with pytest.raises(KeyError, match="'a' has no key 'zz'"):
        with RecorderManager(net, ["a@zz"], detach=True):
            net({"x": torch.randn(1, 2)})
    assert _hooks(net) == 0
    with pytest.raises(RuntimeError, match=r"taps \['head.heads_list.0'\] never fired"):
        with RecorderManager(net, ["head.heads_list.0"], detach=True) as rec:
            net.a({"x": torch.randn(1, 2)})
        rec.records


def test_stop_when_done_aborts_forward_after_last_tap():
    net = Net()
    calls = []
    net.head.heads_list[1].register_forward_hook(lambda *a: calls.append(1))
    with RecorderManager(net, ["head.heads_list.0"], detach=True, stop_when_done=True) as rec:
        net({"x": torch.randn(1, 2)})
    assert rec.stopped_early and calls == [] and rec.records["head.heads_list.0"].shape == (1, 2)
    assert _hooks(net) == 1  # only the test's own hook is left
    assert issubclass(StopForward, Exception)
