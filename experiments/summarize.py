"""Mean ± spread over seeds of top-1 per (setting, method), each model evaluated on the
setting it was trained on (pretrained: on each setting).

    python experiments/summarize.py runs/imagenette/results.json
"""
import json
import statistics
import sys
from collections import defaultdict

METHODS = ("pretrained", "stability", "finetune", "expert")


def summarize(rows: list[dict], metric: str = "top1") -> str:
    acc: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in rows:
        if (r["method"] == "pretrained" or r.get("trained_on") == r["setting"]) and r.get(metric) is not None:
            acc[(r["setting"], r["method"])].append(r[metric])
    settings = sorted({s for s, _ in acc})
    lines = [f"{metric}:", "", "| setting | " + " | ".join(f"{m}" for m in METHODS) + " | expert − fine-tune |",
             "|---|" + "---:|" * (len(METHODS) + 1)]
    for s in settings:
        cells = []
        for m in METHODS:
            v = acc.get((s, m), [])
            cells.append("—" if not v else f"{statistics.mean(v):.2f}" + (
                f" ± {statistics.stdev(v):.2f} (n={len(v)})" if len(v) > 1 else ""))
        e, f = acc.get((s, "expert"), []), acc.get((s, "finetune"), [])
        gain = f"{statistics.mean(e) - statistics.mean(f):+.2f}" if e and f else "—"
        lines.append(f"| {s} | " + " | ".join(cells) + f" | {gain} |")
    return "\n".join(lines) + "\n\n(± = sample standard deviation over seeds)"


if __name__ == "__main__":
    rows = json.load(open(sys.argv[1]))
    print(summarize(rows, "top1"))
    if any(r.get("top1_present") is not None for r in rows):
        print("\n" + summarize(rows, "top1_present")
              + "\n(top1_present: arg-max over the classes present in the data only, e.g. Imagenette's 10)")
