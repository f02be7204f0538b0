"""top1_present: the arg-max over the classes that occur in the data only."""
import math

import torch

from trainer import loop


class Fixed(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits[: x.shape[0]]


def test_top1_present_ignores_classes_absent_from_the_data():
    # 3 samples of classes 1 and 3 in a 5-way model; the model's favourite is class 0 (absent)
    logits = torch.tensor([[9.0, 5.0, 0.0, 1.0, 0.0],
                           [9.0, 1.0, 0.0, 5.0, 0.0],
                           [9.0, 5.0, 0.0, 1.0, 0.0]])
    batch = {"comp": torch.zeros(3, 3, 4, 4, dtype=torch.uint8), "label": torch.tensor([1, 3, 3])}
    cfg = loop.Step(device=torch.device("cpu"))
    r = loop.evaluate(Fixed(logits), [batch], cfg, present=[1, 3])
    assert r["top1"] == 0.0
    assert math.isclose(r["top1_present"], 200 / 3)
    assert loop.evaluate(Fixed(logits), [batch], cfg)["top1_present"] is None
