"""experiments/mixed_traffic.py on a tiny synthetic zoo: every model sees the whole shuffled
stream, and the routed zoo's score is its experts' scores on the settings routed to them."""
from __future__ import annotations

import json

import pytest

from fixtures.synthetic import make_image_folder
from tests.zoo_helpers import ARCH, trained_on_entry, write_expert

SETTINGS = ["jpeg-10", "j2k-200", "lossless"]


@pytest.mark.slow
def test_mixed_traffic_on_a_tiny_zoo(tmp_path, capsys):
    import torch

    from experiments import mixed_traffic
    from pipeline.build import build
    from trainer.models import build_model

    make_image_folder(tmp_path / "src", classes=("n01440764", "n02102040", "n02979186"), per_class=4, split="val")
    manifests = build(tmp_path / "src", "val", SETTINGS, tmp_path / "shards", shard_size=5, jobs=1,
                      progress=False, layout="split")
    runs = tmp_path / "runs"
    # answers that tell the models apart: the jpeg expert always says class 0 (a third of the
    # images), the j2k one never a class present, the generalist always class 217 (a third)
    write_expert(runs / "expert-jpeg-10", [trained_on_entry(manifests["jpeg-10"])], seed=0, num_classes=1000,
                 favour=0)
    write_expert(runs / "expert-j2k-200", [trained_on_entry(manifests["j2k-200"])], seed=1, num_classes=1000,
                 favour=999)
    write_expert(runs / "expert-generalist", [trained_on_entry(manifests[s]) for s in SETTINGS], seed=7,
                 num_classes=1000, favour=217)
    write_expert(runs / "ignored-run", [trained_on_entry(manifests["jpeg-10"])], seed=8, num_classes=1000)
    torch.manual_seed(3)
    pre = build_model(ARCH, None, 1000)
    # a head of some spread: a fresh one is near uniform, and near ties would decide top-1
    # (its features are near zero: the bias makes the spread)
    head = [m for m in pre.modules() if isinstance(m, torch.nn.Linear)][-1]
    torch.nn.init.normal_(head.weight, std=0.5)
    torch.nn.init.normal_(head.bias, std=0.5)
    torch.save(pre.net.state_dict(), tmp_path / "pre.pth")

    rc = mixed_traffic.main(["--zoo", str(runs), "--select", "expert-*", "--val", str(tmp_path / "shards" / "val"),
                             "--settings", ",".join(SETTINGS), "--pretrained", str(tmp_path / "pre.pth"),
                             "--arch", ARCH, "--device", "cpu", "--markdown", str(tmp_path / "t.md")])
    assert rc == 0, capsys.readouterr().err
    text = (tmp_path / "t.md").read_text()
    assert text.startswith("Zoo: the run folders matching `expert-*`.  Mixed traffic: 36 val images, 12 per setting")
    assert "sent 66.7% of the images to the specialist of their own setting" in text   # lossless has none
    top1_table, present_table = text.split("top1 (")[1].split("top1_present (")
    assert "| routed zoo (3 experts) | 22.2 | 33.3 | 0.0 | 33.3 |" in top1_table
    assert "| best specialist (expert-jpeg-10) | 33.3 | 33.3 | 33.3 | 33.3 |" in top1_table
    assert "| generalist (expert-generalist) | 33.3 |" in top1_table
    # the generalist's favourite (217) is a present class: the same answers among the present ones
    assert "| generalist (expert-generalist) | 33.3 |" in present_table

    # the same numbers computed here: each model alone, and the zoo as its routes say
    from receiver.zoo import load_zoo
    zoo = load_zoo(runs, str(tmp_path / "pre.pth"), ARCH, select="expert-*")
    assert sorted(e.rsplit("/", 1)[-1] for e in zoo.experts) == ["expert-generalist", "expert-j2k-200",
                                                                  "expert-jpeg-10"]
    traffic = mixed_traffic.read_traffic(tmp_path / "shards" / "val", SETTINGS, None, 0)
    assert sorted(r.setting for r in traffic) == sorted(SETTINGS * 12)
    assert [r.setting for r in traffic[:12]] != [r.setting for r in sorted(traffic, key=lambda r: r.setting)][:12]
    scores, routed = mixed_traffic.evaluate(zoo, traffic, "cpu", batch=5)
    by_setting_expert = {"jpeg-10": "expert-jpeg-10", "j2k-200": "expert-j2k-200", "lossless": "expert-generalist"}
    for metric in mixed_traffic.METRICS:
        for s, e in by_setting_expert.items():
            name = next(n for n in zoo.experts if n.endswith(e))
            assert scores[metric][mixed_traffic.ZOO][s] == scores[metric][name][s]
    assert routed == {"jpeg-10": [12, 12], "j2k-200": [12, 12], "lossless": [0, 12]}
    rows, _ = mixed_traffic.summarize(zoo, scores, routed, SETTINGS)
    for metric_rows in rows.values():
        assert [r["model"] for r in metric_rows] == ["routed zoo", "best specialist", "generalist", "pretrained"]
        assert all(sum(c[1] for c in r["scores"].values()) == 36 for r in metric_rows)
    # top1_present by hand for the pretrained model: its first-ranked class among the present ones
    present = sorted({r.label for r in traffic})
    zoo.default.model.eval()
    with torch.inference_mode():
        import numpy as np
        xs = [mixed_traffic_input(zoo, r) for r in traffic]
        # in the batches of evaluate()
        logits = torch.cat([zoo.default.model(torch.from_numpy(np.stack(xs[i:i + 5])).permute(0, 3, 1, 2)
                                              .float().div(255)) for i in range(0, len(xs), 5)])
    want = (logits[:, present].argmax(1).numpy() == np.searchsorted(present, [r.label for r in traffic])).sum()
    got = sum(c[0] for c in scores["top1_present"][mixed_traffic.PRETRAINED].values())
    assert got == want


def mixed_traffic_input(zoo, r):
    from receiver.core import Receiver
    return Receiver(zoo).receive(r.data, r.setting)[1]
