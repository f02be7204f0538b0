"""BN-statistics experts (AdaBN): statistics re-estimated with no weight change, stored as a
stats-only checkpoint over a base, loaded with the base's weights shared."""
from __future__ import annotations

import pytest
import torch

from fixtures.synthetic import make_image_folder
from tests.zoo_helpers import ARCH


def test_statistics_are_the_crops_mean_and_variance_and_weights_stay():
    """The first BN layer's input is the first conv's output, which the estimation cannot change:
    its running stats must be that output's per-channel mean and unbiased variance."""
    from trainer.adapt_bn import adapt
    from trainer.models import build_model

    torch.manual_seed(0)
    model = build_model(ARCH, None, 10).eval()
    before = {k: v.clone() for k, v in model.named_parameters()}
    x = torch.randint(0, 256, (6, 3, 64, 64), dtype=torch.uint8)
    seen = adapt(model, [x[:3], x[3:]], torch.device("cpu"))
    assert seen == 6
    net = model.net
    conv, bn = net.features[0][0], net.features[0][1]
    with torch.no_grad():
        y = conv((x.float() / 255 - model.mean) / model.std)
    mean = y.mean(dim=(0, 2, 3))
    assert torch.allclose(bn.running_mean, mean, atol=1e-5)
    # momentum None: the average of the two batches' unbiased variances
    v = torch.stack([y[:3].var(dim=(0, 2, 3), unbiased=True), y[3:].var(dim=(0, 2, 3), unbiased=True)]).mean(0)
    assert torch.allclose(bn.running_var, v, rtol=1e-4, atol=1e-6)
    assert all(torch.equal(before[k], p) for k, p in model.named_parameters())
    assert bn.momentum is not None      # restored after the cumulative average
    assert not bn.training


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    from pipeline.build import build
    from trainer import adapt_bn
    from trainer.models import build_model

    root = tmp_path_factory.mktemp("adabn")
    make_image_folder(root / "src", classes=("n01440764", "n02102040"), per_class=3, split="train")
    build(root / "src", "train", ["jpeg-10", "j2k-200", "lossless"], root / "shards", shard_size=4, jobs=1,
          progress=False, layout="split")
    torch.manual_seed(1)
    base = build_model(ARCH, None, 1000)
    (root / "weights").mkdir()
    torch.save(base.net.state_dict(), root / "weights" / "base.pth")
    runs = {}
    for s in ("jpeg-10", "j2k-200"):
        rc = adapt_bn.main(["--base", str(root / "weights" / "base.pth"), "--arch", ARCH,
                            "--shards", str(root / "shards" / "train" / s / "shard-*.tar"),
                            "--out", str(root / "runs" / f"bn-{s}"), "--batch-size", "3", "--device", "auto"])
        assert rc == 0
        runs[s] = root / "runs" / f"bn-{s}"
    return root, runs


def test_a_stats_only_checkpoint_is_small_and_says_what_it_was_estimated_on(adapted):
    from trainer import checkpoint
    root, runs = adapted
    ck = checkpoint.load(runs["jpeg-10"] / "last.pth")
    assert [e["setting"] for e in checkpoint.training_settings(ck)] == ["jpeg-10"]
    assert ck["trained_on"][0]["bpp"] > 0 and ck["args"]["images"] == 6
    assert not ck["base"]["path"].startswith("/")
    size, full = (runs["jpeg-10"] / "last.pth").stat().st_size, (root / "weights" / "base.pth").stat().st_size
    assert size < full / 5


def test_loaded_expert_equals_the_adapted_model(adapted):
    from trainer.adapt_bn import adapt
    from trainer.data import group_shards, make_eval_loader
    from trainer.adapt_bn import load_any
    from trainer.models import load_model
    root, runs = adapted
    model, meta = load_any(runs["j2k-200"] / "best.pth")
    assert meta["method"] == "bn-stats" and meta["arch"] == ARCH
    ref, _ = load_model(root / "weights" / "base.pth", arch=ARCH)
    s = group_shards(str(root / "shards" / "train" / "j2k-200" / "shard-*.tar"))
    adapt(ref, (b["comp"] for b in make_eval_loader(s, 3)), torch.device("cpu"))
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(model(x), ref(x), atol=1e-5)
        base, _ = load_model(root / "weights" / "base.pth", arch=ARCH)
        assert not torch.allclose(base.eval()(x), ref(x), atol=1e-3)      # the statistics did change


def test_a_zoo_of_bn_experts_shares_the_base_weights(adapted):
    from receiver.calibrate import own_bytes
    from receiver.zoo import load_zoo
    root, runs = adapted
    zoo = load_zoo(root / "runs", str(root / "weights" / "base.pth"), ARCH, precision="fp32")
    mem = own_bytes(zoo)
    params = sum(p.numel() * 4 for p in zoo.default.model.parameters())
    for name, e in zoo.experts.items():
        assert mem[name]["shared"] >= params and mem[name]["own"] < params / 20
    a, b = (e.model for e in zoo.experts.values())
    assert all(p.data_ptr() == q.data_ptr() for p, q in zip(a.parameters(), zoo.default.model.parameters()))
    assert a.net.features[0][1].running_mean.data_ptr() != b.net.features[0][1].running_mean.data_ptr()


def test_a_changed_base_is_refused(adapted, tmp_path, capsys):
    import shutil

    from receiver import predict
    from tests.adversarial.conftest import one_error
    root, runs = adapted
    shutil.copytree(root / "runs" / "bn-jpeg-10", tmp_path / "runs" / "bn-jpeg-10")
    (tmp_path / "weights").mkdir()
    torch.manual_seed(2)
    from trainer.models import build_model
    torch.save(build_model(ARCH, None, 1000).net.state_dict(), tmp_path / "weights" / "base.pth")
    rc = predict.main(["--experts", str(tmp_path / "runs"), "--device", "cpu", str(tmp_path / "x.jpg")])
    assert rc == 1
    assert "has changed since the statistics were estimated" in one_error(capsys.readouterr().err)


def test_lossless_and_several_settings_are_refused(adapted, tmp_path, capsys):
    from tests.adversarial.conftest import one_error
    from trainer import adapt_bn
    root, _ = adapted
    for shards in (["lossless"], ["jpeg-10", "j2k-200"]):
        args = ["--base", str(root / "weights" / "base.pth"), "--arch", ARCH, "--out", str(tmp_path / "r")]
        for s in shards:
            args += ["--shards", str(root / "shards" / "train" / s / "shard-*.tar")]
        assert adapt_bn.main(args) == 1
        one_error(capsys.readouterr().err)


def test_a_stats_expert_was_chosen_on_no_images(adapted, tmp_path):
    """Nothing chose a BN-statistics checkpoint: its rows say selected_on_scored_data false, so
    the results' selection guard takes them (an unknown row would be refused)."""
    from trainer import EvalConfig, evaluate
    root, runs = adapted
    rows = evaluate(EvalConfig(shards=[str(root / "shards" / "train" / "jpeg-10" / "shard-*.tar")],
                               checkpoints=[str(runs["jpeg-10"] / "last.pth")], device="cpu", batch_size=3,
                               workers=0, progress=False, cache=False, out=str(tmp_path / "r.json")))
    assert rows and [r["selected_on_scored_data"] for r in rows] == [False] * len(rows)
