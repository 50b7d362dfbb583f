"""Teacher-guided initialisation (pcdet/kd/inherit.py): channel choice, consistency through the network, errors."""
import copy
import logging

import pytest
import torch
from easydict import EasyDict
from torch import nn

import kd_tiny_setup as T
from pcdet.kd.inherit import InheritError, channel_plan, inherit_from_teacher
from pcdet.models import build_network


def test_conv_bn_pair_keeps_the_largest_filters_and_their_outputs():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=True), nn.BatchNorm2d(4), nn.ReLU())
    with torch.no_grad():
        teacher[0].weight.copy_(torch.sign(torch.randn(4, 2, 3, 3)) * torch.tensor([1.0, 5.0, 2.0, 4.0])[:, None, None, None])
        teacher[0].bias.normal_()
        for t in (teacher[1].weight, teacher[1].bias, teacher[1].running_mean):
            t.normal_()
        teacher[1].running_var.uniform_(0.5, 2.0)
    student = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, bias=True), nn.BatchNorm2d(2), nn.ReLU())
    report = inherit_from_teacher(student, teacher)
    keep, _ = channel_plan(student, teacher)
    assert keep["0"].tolist() == [1, 3]           # L1 norms 90, 36, 72 ... filter 1 (5) and 3 (4) are the largest
    assert report["kept"] == {"0": "2/4"}
    teacher.eval(), student.eval()
    x = torch.randn(3, 2, 5, 5)
    torch.testing.assert_close(student(x), teacher(x)[:, [1, 3]], rtol=0, atol=0)


def _tiny(width):
    cfg = EasyDict(copy.deepcopy({"CLASS_NAMES": T.CLASSES, "DATA_CONFIG": T.DATA_CONFIG, "MODEL": T.MODEL}))
    cfg.MODEL.WIDTH = width
    return cfg


def _kill_unkept_channels(teacher, student):
    """Zero, in the teacher, every output channel at index >= the student's width (conv / linear filters, their
    bias, and the BatchNorm shift and mean after them): those channels are then dead, so a correct channel plan
    drops exactly them and the narrowed student computes what the teacher computes."""
    smods = dict(student.named_modules())
    with torch.no_grad():
        for name, m in teacher.named_modules():
            s = smods[name]
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                n = s.weight.shape[0]
                m.weight[n:] = 0
                if m.bias is not None:
                    m.bias[n:] = 0
            elif isinstance(m, nn.ConvTranspose2d):
                n = s.weight.shape[1]
                m.weight[:, n:] = 0
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = s.num_features
                m.bias[n:] = 0
                m.running_mean[n:] = 0


def test_narrowed_centerpoint_student_computes_the_teachers_outputs(tmp_path):
    cfg_t, cfg_s = _tiny(1.0), _tiny(0.5)
    dataset = T.make_dataset(cfg_t, tmp_path)
    torch.manual_seed(0)
    teacher = build_network(cfg_t.MODEL, 3, dataset)
    with torch.no_grad():   # non-trivial BatchNorm statistics
        for m in teacher.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.normal_(0, 0.1), m.running_var.uniform_(0.5, 1.5), m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    student = build_network(cfg_s.MODEL, 3, dataset)
    _kill_unkept_channels(teacher, student)
    report = inherit_from_teacher(student, teacher, logging.getLogger("inherit_test"))
    keep, _ = channel_plan(student, teacher)
    for space, idx in keep.items():     # the dead channels are the lowest-norm ones: the first n are kept
        assert idx.tolist() == list(range(len(idx))), space
    assert len(report["narrowed"]) > 50
    # the head's shared conv reads the concatenated upsampled levels: its input is cut level by level
    assert report["narrowed"]["dense_head.shared_conv.0.weight"] == ((16, 32, 3, 3), (8, 16, 3, 3))
    teacher.eval(), student.eval()
    batch = T.make_batch(dataset, 2)
    _assert_same_head_outputs(teacher, student, batch)


def _assert_same_head_outputs(teacher, student, batch):
    outs = {}
    for who, model in (("t", teacher), ("s", student)):
        got = []
        handles = [h.register_forward_hook(lambda mod, i, o: got.append(o)) for h in model.dense_head.heads_list]
        with torch.no_grad():
            model(copy.deepcopy(batch))
        for h in handles:
            h.remove()
        outs[who] = got
    assert len(outs["t"]) == len(outs["s"]) > 0
    # Float32 through ~20 layers: the narrower GEMMs sum the same products in another order, so single elements
    # drift by ~1e-4 of the output's scale (seen on an AMD EPYC); a wrong channel or slot moves them by O(scale).
    for dt, ds in zip(outs["t"], outs["s"]):
        for key in dt:
            scale = float(dt[key].abs().max())
            torch.testing.assert_close(ds[key], dt[key], rtol=0, atol=1e-3 * max(scale, 1e-3),
                                       msg=lambda m, key=key: f"{key}: {m}")


def test_same_width_student_inherits_the_teacher_exactly(tmp_path):
    cfg = _tiny(1.0)
    dataset = T.make_dataset(cfg, tmp_path)
    torch.manual_seed(0)
    teacher = build_network(cfg.MODEL, 3, dataset)
    teacher.global_step.fill_(123)
    torch.manual_seed(1)
    student = build_network(cfg.MODEL, 3, dataset)
    report = inherit_from_teacher(student, teacher)
    assert report["narrowed"] == {} and report["kept"] == {}
    for name, value in teacher.state_dict().items():
        if name != "global_step":
            assert torch.equal(student.state_dict()[name], value), name
    assert int(student.global_step) == 0


def test_per_module_width_narrows_only_that_module(tmp_path):
    cfg_t, cfg_s = _tiny(1.0), _tiny(1.0)
    cfg_s.MODEL.BACKBONE_2D.WIDTH = 0.5
    dataset = T.make_dataset(cfg_t, tmp_path)
    teacher = build_network(cfg_t.MODEL, 3, dataset)
    student = build_network(cfg_s.MODEL, 3, dataset)
    report = inherit_from_teacher(student, teacher)
    assert all(name.startswith(("backbone_2d.", "dense_head.shared_conv.0.")) for name in report["narrowed"])
    assert "vfe.pfn_layers.0.linear.weight" in report["copied"]


def test_errors_name_the_tensor_or_module(tmp_path):
    cfg_t, cfg_s = _tiny(0.5), _tiny(1.0)
    dataset = T.make_dataset(cfg_t, tmp_path)
    teacher = build_network(cfg_t.MODEL, 3, dataset)
    student = build_network(cfg_s.MODEL, 3, dataset)
    with pytest.raises(InheritError, match=r"vfe\.pfn_layers\.0\.linear has 16 channels, its teacher 8"):
        inherit_from_teacher(student, teacher)
    grouped_t = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2))
    grouped_s = nn.Sequential(nn.Conv2d(4, 2, 3, groups=2))
    with pytest.raises(InheritError, match=r"0 is a grouped conv"):
        inherit_from_teacher(grouped_s, grouped_t)
    odd_t = nn.Sequential(nn.Conv2d(2, 4, 1), nn.LayerNorm(4))
    odd_s = nn.Sequential(nn.Conv2d(2, 2, 1), nn.LayerNorm(2))
    with pytest.raises(InheritError, match=r"cannot map module 1 \(LayerNorm\)"):
        inherit_from_teacher(odd_s, odd_t)


def test_kd_config_key_initialises_the_student_from_the_teacher(tmp_path, caplog):
    from pcdet.config import cfg_from_yaml_file
    from pcdet.kd import build_distiller
    teacher_path, kd_path = T.write_configs(tmp_path)
    _, teacher = T.save_teacher_ckpt(teacher_path, tmp_path)
    cfg = cfg_from_yaml_file(kd_path)
    cfg.KD.INIT_FROM_TEACHER = True
    dataset = T.make_dataset(cfg, tmp_path)
    student = build_network(cfg.MODEL, len(cfg.CLASS_NAMES), dataset)
    with caplog.at_level(logging.INFO):
        build_distiller(cfg, student, dataset, logging.getLogger("kd_test"), cfg_file=kd_path)
    assert "teacher-guided init:" in caplog.text
    keep, _ = channel_plan(student, teacher)
    rows = keep["vfe.pfn_layers.0.linear"]
    torch.testing.assert_close(student.vfe.pfn_layers[0].linear.weight,
                               teacher.vfe.pfn_layers[0].linear.weight[rows], rtol=0, atol=0)


def test_sparse_backbone_and_height_compression_are_cut_consistently(tmp_path):
    pytest.importorskip("spconv", reason="spconv (sparse convolution) is not installed")
    data = copy.deepcopy(T.DATA_CONFIG)
    data["DATA_PROCESSOR"][2].update({"VOXEL_SIZE": [0.5, 0.5, 0.1], "MAX_POINTS_PER_VOXEL": 5})
    model = copy.deepcopy(T.MODEL)
    model.update({"VFE": {"NAME": "MeanVFE"}, "BACKBONE_3D": {"NAME": "VoxelBackBone8x"},
                  "MAP_TO_BEV": {"NAME": "HeightCompression", "NUM_BEV_FEATURES": 256}})
    model["DENSE_HEAD"] = copy.deepcopy(model["DENSE_HEAD"])
    model["DENSE_HEAD"]["TARGET_ASSIGNER_CONFIG"]["FEATURE_MAP_STRIDE"] = 8
    models = []
    for width in (1.0, 0.5):
        cfg = EasyDict(copy.deepcopy({"CLASS_NAMES": T.CLASSES, "DATA_CONFIG": data, "MODEL": model}))
        cfg.MODEL.WIDTH = width
        dataset = T.make_dataset(cfg, tmp_path)
        torch.manual_seed(0)
        models.append(build_network(cfg.MODEL, 3, dataset))
    teacher, student = models
    with torch.no_grad():   # BatchNorm statistics that keep the activations far from zero through 20 layers
        for m in teacher.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_var.uniform_(0.02, 0.05), m.bias.uniform_(0.05, 0.1)
    _kill_unkept_channels(teacher, student)
    with torch.no_grad():   # the sparse convs and their BatchNorm1d
        for name, m in teacher.backbone_3d.named_modules():
            if hasattr(m, "weight") and m.weight is not None and m.weight.dim() == 5:
                n = dict(student.backbone_3d.named_modules())[name].weight.shape[0]
                m.weight[n:] = 0
    report = inherit_from_teacher(student, teacher)
    # conv_out keeps 64 of 128 channels, each with its D = 2 height slots: the 2D backbone's input is cut to 128
    assert report["kept"]["backbone_3d.conv_out.0"] == "64/128"
    assert report["narrowed"]["backbone_2d.blocks.0.1.weight"][0][1] == 256
    assert report["narrowed"]["backbone_2d.blocks.0.1.weight"][1][1] == 128
    teacher.eval(), student.eval()
    batch = T.make_batch(dataset, 2)
    feats = {}
    for who, net in (("t", teacher), ("s", student)):
        d = copy.deepcopy(batch)
        with torch.no_grad():
            for stage in net.module_list[:3]:
                d = stage(d)
        feats[who] = d["spatial_features"]
    kept = torch.arange(128).view(64, 2)[: 64].reshape(-1)   # channels c*2, c*2+1 of the first 64 kept spaces
    assert feats["t"][:, 1::2].abs().mean() > 1e-2 and feats["t"][:, 0::2].abs().mean() > 1e-2
    torch.testing.assert_close(feats["s"], feats["t"][:, kept], rtol=1e-4, atol=1e-5)
    _assert_same_head_outputs(teacher, student, batch)      # through the flattening, the 2D backbone and the head


def test_init_only_kd_block_returns_the_inherited_plain_student(tmp_path):
    from pcdet.config import cfg_from_yaml_file
    from pcdet.kd import build_distiller
    from pcdet.kd.distiller import Distiller
    teacher_path, kd_path = T.write_configs(tmp_path)
    _, teacher = T.save_teacher_ckpt(teacher_path, tmp_path)
    cfg = cfg_from_yaml_file(kd_path)
    cfg.KD.HEADS = []
    dataset = T.make_dataset(cfg, tmp_path)
    student = build_network(cfg.MODEL, len(cfg.CLASS_NAMES), dataset)
    with pytest.raises(ValueError, match="KD.HEADS is empty.*INIT_FROM_TEACHER"):
        build_distiller(cfg, student, dataset, cfg_file=kd_path)
    cfg.KD.INIT_FROM_TEACHER = True
    got = build_distiller(cfg, student, dataset, cfg_file=kd_path)
    assert got is student and not isinstance(got, Distiller)
    keep, _ = channel_plan(student, teacher)
    rows = keep["vfe.pfn_layers.0.linear"]
    torch.testing.assert_close(student.vfe.pfn_layers[0].linear.weight,
                               teacher.vfe.pfn_layers[0].linear.weight[rows], rtol=0, atol=0)
    assert not getattr(dataset, "side_processors", {})      # the teacher's inputs are no longer computed
