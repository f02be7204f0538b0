"""Loss terms, scheduler semantics, models (CPU, no shards)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainer.losses import CrossEntropyLoss, ExpertLoss, LabelError, StabilityLoss, kl_from_logits, masked_ce
from trainer.models import (Classifier, build_model, classifier_head, freeze_all_but_head, load_model,
                            state_dict_hash)

torch.set_num_threads(1)


def _hand_kl(p_logits, q_logits):
    """sum_i KL(softmax p_i || softmax q_i) per sample, by hand in float64."""
    out = []
    for p_l, q_l in zip(p_logits.double().tolist(), q_logits.double().tolist()):
        mp, mq = max(p_l), max(q_l)
        zp = sum(math.exp(v - mp) for v in p_l)
        zq = sum(math.exp(v - mq) for v in q_l)
        p = [math.exp(v - mp) / zp for v in p_l]
        logq = [v - mq - math.log(zq) for v in q_l]
        out.append(sum(pi * (math.log(pi) - lq) for pi, lq in zip(p, logq)))
    return out


def _hand_ce(logits, y):
    vals = []
    for row, t in zip(logits.double().tolist(), y.tolist()):
        m = max(row)
        vals.append(-(row[t] - m - math.log(sum(math.exp(v - m) for v in row))))
    return sum(vals) / len(vals)


@pytest.mark.parametrize("reduction", ["sum", "batchmean"])
def test_expert_loss_terms_match_hand_computation(reduction):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g) * 2
    y = torch.tensor([0, 3, 6, 2, 2])
    alpha = 0.3
    terms = ExpertLoss(alpha, reduction)(s, t, y)
    kl = _hand_kl(t, s)  # teacher is the target distribution: KL(g || f)
    kl = sum(kl) if reduction == "sum" else sum(kl) / 5
    ce = _hand_ce(s, y)
    assert terms["kl"].item() == pytest.approx(kl, rel=1e-5)
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert terms["loss"].item() == pytest.approx(ce + alpha * kl, rel=1e-5)
    # direction: KL(g||f) differs from KL(f||g)
    assert sum(_hand_kl(s, t)) != pytest.approx(sum(_hand_kl(t, s)), rel=1e-3)


def test_sum_equals_batchmean_times_batch():
    s, t, y = torch.randn(8, 4), torch.randn(8, 4), torch.randint(0, 4, (8,))
    a = ExpertLoss(1.0, "sum")(s, t, y)["kl"]
    b = ExpertLoss(1.0, "batchmean")(s, t, y)["kl"]
    assert a.item() == pytest.approx(8 * b.item(), rel=1e-6)


def test_kl_zero_for_identical_and_gradient_only_to_student():
    s = torch.randn(3, 5, requires_grad=True)
    t = s.detach().clone().requires_grad_(True)
    out = ExpertLoss(1.0)(s, t, torch.tensor([0, 1, 2]))
    assert out["kl"].item() == pytest.approx(0.0, abs=1e-6)
    out["loss"].backward()
    assert s.grad is not None and t.grad is None


def test_alpha_weights_the_kl_term_and_zero_leaves_cross_entropy():
    """The gradient of the expert loss is CE's plus alpha times KL's, computed here from
    torch's own cross_entropy and kl_div (not from the loss classes)."""
    t, y = torch.randn(4, 6), torch.randint(0, 6, (4,))
    base = torch.randn(4, 6)

    def grad(fn):
        s = base.clone().requires_grad_(True)
        fn(s).backward()
        return s.grad

    ce = lambda s: F.cross_entropy(s, y)  # noqa: E731
    kl = lambda s: F.kl_div(F.log_softmax(s, 1), F.log_softmax(t, 1), reduction="sum", log_target=True)  # noqa: E731
    for alpha in (0.0, 0.3):
        got = grad(lambda s: ExpertLoss(alpha)(s, t, y)["loss"])
        assert torch.allclose(got, grad(ce) + alpha * grad(kl), atol=1e-6), alpha
    assert not torch.allclose(grad(ce), grad(ce) + 0.3 * grad(kl), atol=1e-4)  # the KL term matters
    out = CrossEntropyLoss()(base, y)
    assert out["loss"].item() == pytest.approx(F.cross_entropy(base, y).item()) and out["kl"].item() == 0.0


def test_masked_ce_ignores_unlabelled():
    s = torch.randn(4, 3)
    y = torch.tensor([1, -1, 2, -1])
    assert masked_ce(s, y).item() == pytest.approx(F.cross_entropy(s[[0, 2]], y[[0, 2]]).item(), rel=1e-6)
    assert masked_ce(s, torch.full((4,), -1)).item() == 0.0
    with pytest.raises(LabelError, match="label 3 but the model has 3 outputs"):
        masked_ce(s, torch.tensor([1, 3, 2, -1]))


@pytest.mark.parametrize("detach", [False, True])
def test_stability_loss(detach):
    clean = torch.randn(4, 5, requires_grad=True)
    noisy = torch.randn(4, 5, requires_grad=True)
    y = torch.randint(0, 5, (4,))
    terms = StabilityLoss(0.5, "sum", detach_clean=detach)(clean, noisy, y)
    kl = sum(_hand_kl(clean.detach(), noisy.detach()))  # clean output is the target
    assert terms["kl"].item() == pytest.approx(kl, rel=1e-5)
    assert terms["loss"].item() == pytest.approx(_hand_ce(clean.detach(), y) + 0.5 * kl, rel=1e-5)
    # with detach, d(loss)/d(clean) only comes from the CE term
    terms["loss"].backward()
    ce_grad = torch.autograd.grad(F.cross_entropy(clean, y), clean)[0]
    assert torch.allclose(clean.grad, ce_grad, atol=1e-6) == detach


def test_kl_reduction_validated():
    with pytest.raises(ValueError):
        kl_from_logits(torch.zeros(1, 2), torch.zeros(1, 2), "mean")


def test_plateau_decays_after_three_bad_epochs():
    """'divide the lr by 5 when the val loss has not improved for 3 consecutive epochs'."""
    from types import SimpleNamespace
    from trainer.optim import make_scheduler
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=1.0)
    sch = make_scheduler(opt, SimpleNamespace(lr_factor=0.2, lr_patience=3, min_lr=0.0))
    lrs = []
    for loss in [1.0, 0.9, 0.95, 0.95, 0.95, 0.95]:
        sch.step(loss)
        lrs.append(opt.param_groups[0]["lr"])
    # epochs 2, 3, 4 are the three bad ones: the decay is applied after the third
    assert lrs == pytest.approx([1.0, 1.0, 1.0, 1.0, 0.2, 0.2])


# -- models -----------------------------------------------------------------------------------
def test_model_normalises_inside():
    m = build_model("resnet18", None, num_classes=10).eval()
    x = torch.rand(2, 3, 64, 64)
    ref = m.net((x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
    assert torch.allclose(m(x), ref, atol=1e-5)
    assert torch.allclose(m((x * 255).round().to(torch.uint8)), m((x * 255).round() / 255), atol=1e-5)
    # the state_dict of the inner net is a plain torchvision state_dict
    import torchvision
    assert set(m.net.state_dict()) == set(torchvision.models.resnet18(num_classes=10).state_dict())
    assert set(m.state_dict()) == {"net." + k for k in m.net.state_dict()}


def test_head_rule_and_freeze():
    for arch, attr in [("resnet18", "fc"), ("mobilenet_v3_small", "classifier"), ("mnasnet0_5", "classifier")]:
        m = build_model(arch, None, 10)
        assert classifier_head(m) is getattr(m.net, attr)
        trainable = freeze_all_but_head(m)
        n_head = sum(p.numel() for p in getattr(m.net, attr).parameters())
        assert sum(p.numel() for p in m.parameters() if p.requires_grad) == n_head == sum(p.numel() for p in trainable)


def test_load_model_plain_and_checkpoint(tmp_path):
    m = build_model("mobilenet_v3_small", None, 5)
    sd = {k: v.half() if v.is_floating_point() else v for k, v in m.net.state_dict().items()}
    torch.save(sd, tmp_path / "w.pth")
    m2, meta = load_model(tmp_path / "w.pth", arch="mobilenet_v3_small")
    assert meta["method"] == "pretrained" and meta["num_classes"] == 5
    assert next(m2.parameters()).dtype == torch.float32
    torch.save({"model": m.net.state_dict(), "arch": "mobilenet_v3_small", "num_classes": 5, "epoch": 3,
                "args": {"method": "expert", "trained_on": "jpeg-10", "labels": "teacher"}}, tmp_path / "c.pth")
    m3, meta3 = load_model(tmp_path / "c.pth")
    assert (meta3["method"], meta3["trained_on"], meta3["labels"], meta3["arch"]) == ("expert", "jpeg-10", "teacher", "mobilenet_v3_small")
    assert state_dict_hash(m3) == state_dict_hash(m)
    with pytest.raises(ValueError):
        load_model(tmp_path / "w.pth")  # plain weights need an arch


def _chelsea():
    skimage = pytest.importorskip("skimage.data")
    x = torch.from_numpy(skimage.chelsea()).permute(2, 0, 1)[None].float() / 255
    return F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)


def test_efficientnet_lite0_default_weights_see_a_cat():
    m = build_model("efficientnet_lite0", "DEFAULT").eval()
    assert isinstance(m, Classifier) and torch.allclose(m.mean, torch.full_like(m.mean, 0.5))
    with torch.no_grad():
        top5 = m(_chelsea()).topk(5).indices[0].tolist()
    assert set(top5) & {281, 282, 283, 284, 285, 286, 287}, top5  # some cat


@pytest.mark.shared
def test_shared_mobilenet_v2_weights_see_a_cat():
    from tests.conftest import shared_path
    p = shared_path("weights", "mobilenet_v2_imagenet.pth")
    m, meta = load_model(p, arch="mobilenet_v2")
    with torch.no_grad():
        top5 = m.eval()(_chelsea()).topk(5).indices[0].tolist()
    assert set(top5) & {281, 282, 285}, top5
