"""Mixed traffic: a receiver gets images of every setting, shuffled.  Top-1 on that stream,
per seed of the deployment experiment and as mean ± standard deviation over the seeds, of:

- the fixed rule (``receiver.route``: exact quality, nearest rate, generalist, default) over
  the seed's specialists, generalists and the pretrained model;
- the calibrated table (``receiver.calibrate``) over the same models, calibrated on the
  calibration split (train images outside the train subset; refused when it shares an image
  with the stream);
- the best single model, chosen on the calibration split (not on the stream);
- each generalist;
- the BN-statistics zoo (``trainer.adapt_bn`` experts under the fixed rule, with the pretrained
  model as default);
- the pretrained model;
- the oracle: per setting, the model that scores best *on the stream itself*: an upper bound
  that no receiver can reach, labelled as such.

    python experiments/mixed_traffic.py --runs runs/experiments/deployment/runs --seeds "0 1 2" --bn frozen \\
        --val runs/experiments/deployment/shards/imagenette-val30-seed0/val \\
        --calibration runs/experiments/deployment/shards/imagenette-select30-seed0-not-imagenette-train100-seed0/train \\
        --pretrained ../shared/weights/mobilenet_v2_imagenet.pth --arch mobilenet_v2 \\
        --json experiments/results/mixed-traffic-cpu-bn-frozen.json

The stream: every image of the val setting folders under ``--val`` (the paper's nine settings
and lossless by default; ``--per-setting`` caps each), in one seeded shuffle, each read as the
bitstream a receiver gets; each image is decoded once and shown to every model, and a route is
chosen from the bitstream's headers only.  Every row is scored twice: 1000-way top-1 and top-1
over the classes present in the stream (Imagenette's 10); the table routes alike for both, the
best single model and the oracle are chosen per metric.  A ranking between two rows is stated
only where it holds on every seed.
"""
from __future__ import annotations

import re
import statistics
import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from pipeline.atomic import atomic_write  # noqa: E402
from pipeline.markdown import table  # noqa: E402
from pipeline.setting import LOSSLESS, PAPER_SETTINGS  # noqa: E402
from receiver.calibrate import METRICS  # noqa: E402  what a row's top-1 counts (the names' one owner)
from trainer.clitools import UserError, run_click  # noqa: E402
from trainer.precision import click_option as precision_option  # noqa: E402

from experiments.deployment import GENERALIST, bn_stats_name  # noqa: E402

FIXED, TABLE, BEST, PRETRAINED, BN_ZOO, ORACLE = ("fixed rule", "calibrated table",
                                                  "best single model (chosen on calibration)", "pretrained",
                                                  "BN-statistics zoo (fixed rule)",
                                                  "oracle (best model per setting on the stream, an upper bound)")
#: rankings stated when they hold on every seed: (row, row it is compared with)
COMPARISONS = ((TABLE, BEST), (TABLE, FIXED), (TABLE, PRETRAINED), (FIXED, BEST), (BN_ZOO, PRETRAINED),
               (BN_ZOO, FIXED))


def seed_zoo(runs: Path, seed: int, bn: str, pretrained: str, arch: str | None, device: str, prec):
    """(zoo of the seed's specialists and generalists with the pretrained default, zoo of the
    BN-statistics experts or None); each run folder by the names experiments/deployment.py gives."""
    from receiver.zoo import Zoo, ZooError, load_zoo

    trained = load_zoo(runs, pretrained, arch, device, select=f"expert-*-bn-{bn}-s{seed}", precision=prec)
    try:
        bn_zoo = load_zoo(runs, pretrained, arch, device, select=bn_stats_name("*"), precision=prec)
    except ZooError:          # no BN-statistics experts in this folder
        bn_zoo = None
    return trained, (Zoo(bn_zoo.experts, trained.default) if bn_zoo is not None else None)


def rows_of_seed(trained, bn_zoo, scored_cal, scored_val, table: dict) -> tuple[dict[str, list[bool]], str]:
    """({row: per stream image, right or not}, the best single model's name) of one seed."""
    from receiver import routing_table as rt
    from receiver.route import DEFAULT, Router

    def routed(router) -> list[bool]:
        return [scored_val.right[router.route(p).expert][i] for i, p in enumerate(scored_val.probe)]

    fixed = Router([e.card for e in trained.experts.values()])
    rows = {FIXED: routed(fixed),
            TABLE: routed(rt.TableRouter(rt.parse(table, "calibrated table"), fixed, "calibrated table"))}
    pool = [DEFAULT, *trained.experts]
    cal = {m: sum(scored_cal.right[m]) for m in pool}
    best = max(pool, key=lambda m: (cal[m], m == DEFAULT, m))   # ties to the default
    rows[BEST] = list(scored_val.right[best])
    for name, e in trained.experts.items():
        if e.card.generalist:     # expert-generalist-exposure-bn-frozen-s1 -> generalist-exposure: one row a variant
            rows[re.sub(r"-bn-[a-z]+-s\d+$", "", Path(name).name).removeprefix("expert-")] = list(scored_val.right[name])
    if bn_zoo is not None:
        rows[BN_ZOO] = routed(Router([e.card for e in bn_zoo.experts.values()]))
    rows[PRETRAINED] = list(scored_val.right[DEFAULT])
    by_setting: dict[str, list[int]] = {}
    for i, s in enumerate(scored_val.setting):
        by_setting.setdefault(s, []).append(i)
    oracle = [False] * len(scored_val.setting)
    for s, idx in by_setting.items():
        m = max(pool, key=lambda m: (sum(scored_val.right[m][i] for i in idx), m == DEFAULT, m))
        for i in idx:
            oracle[i] = scored_val.right[m][i]
    rows[ORACLE] = oracle
    return rows, Path(best).name


def top1(right: list[bool], settings: list[str], setting: str | None = None) -> float:
    picked = [r for r, s in zip(right, settings) if setting is None or s == setting]
    return 100.0 * sum(picked) / len(picked)




def summarize(per_seed: dict[int, dict], settings: list[str], images: int,
              metric: str = "top1") -> tuple[list[dict], str]:
    """Rows with mean ± sd over seeds (overall and per setting), their table, and the rankings that
    hold on every seed."""
    seeds = sorted(per_seed)
    names = list(dict.fromkeys(n for s in seeds for n in per_seed[s]["rows"]))
    rows = []
    for name in names:
        vals = {}
        for s in seeds:
            right = per_seed[s]["rows"].get(name)
            if right is None:
                continue
            vals[s] = {"model": per_seed[s]["best"] if name == BEST else None,
                       "top1": top1(right, per_seed[s]["settings"]),
                       "per_setting": {st: top1(right, per_seed[s]["settings"], st) for st in settings}}
        if not vals:
            continue

        def agg(xs):
            return {"mean": statistics.fmean(xs), "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0}
        rows.append({"row": name, "seeds": vals, "top1": agg([v["top1"] for v in vals.values()]),
                     "per_setting": {st: agg([v["per_setting"][st] for v in vals.values()]) for st in settings}})
    head = ["", "mixed top-1", *settings]
    body = [[r["row"], f"{r['top1']['mean']:.1f} ± {r['top1']['sd']:.1f}",
             *(f"{r['per_setting'][s]['mean']:.1f}" for s in settings)] for r in rows]
    text = (f"**{metric}** ({METRICS[metric]}).  Mixed traffic: {images} val images per seed, shuffled; "
            f"top-1 (%, {METRICS[metric]}) as mean ± sd over "
            f"seeds {', '.join(map(str, seeds))} (per setting: means).  The oracle picks per setting the model "
            f"that scores best on this very stream: an upper bound, not a receiver.\n\n" + table(head, body))
    text += "\n\n" + rankings(rows, seeds)
    return rows, text


def rankings(rows: list[dict], seeds: list[int]) -> str:
    by = {r["row"]: r for r in rows}
    lines = []
    for a, b in COMPARISONS:
        if a not in by or b not in by or set(by[a]["seeds"]) != set(by[b]["seeds"]):
            continue
        diffs = [by[a]["seeds"][s]["top1"] - by[b]["seeds"][s]["top1"] for s in seeds]
        if all(d >= 0 for d in diffs):
            verdict = f"{a} ≥ {b} on every seed"
        elif all(d < 0 for d in diffs):
            verdict = f"{a} < {b} on every seed"
        else:
            verdict = f"no order between {a} and {b} holds on every seed"
        lines.append(f"- {verdict} (differences {', '.join(f'{d:+.2f}' for d in diffs)})")
    if TABLE in by and ORACLE in by:
        gaps = [by[ORACLE]["seeds"][s]["top1"] - by[TABLE]["seeds"][s]["top1"] for s in seeds]
        lines.append(f"- calibrated table within 1 point of the oracle: "
                     f"{'met' if all(g <= 1 for g in gaps) else 'missed'} (gaps {', '.join(f'{g:.2f}' for g in gaps)})")
    if TABLE in by and PRETRAINED in by:
        for s in (LOSSLESS, "jpeg-75"):
            if s in by[TABLE]["per_setting"]:
                gaps = [by[PRETRAINED]["seeds"][k]["per_setting"][s] - by[TABLE]["seeds"][k]["per_setting"][s]
                        for k in seeds]
                lines.append(f"- calibrated table on {s} within 0.5 of pretrained: "
                             f"{'met' if all(g <= 0.5 for g in gaps) else 'missed'} "
                             f"(pretrained minus table {', '.join(f'{g:+.2f}' for g in gaps)})")
    return "Rankings and targets:\n\n" + "\n".join(lines)


def run(a) -> tuple[list[dict], str, dict]:
    from receiver import calibrate as cal
    from receiver import routing_table as rt
    from trainer.distributed import resolve_device
    from trainer.precision import resolve

    device = resolve_device(a.device or "auto")
    prec = resolve(a.precision, device)
    val, info = cal.read_shard_stream(a.val_root, a.settings, a.per_setting, a.stream_seed)
    calib, cal_info = cal.read_shard_stream(a.calibration, a.settings, a.calibration_per_setting, a.stream_seed)
    present = frozenset(r.label for r in val)

    def score(zoo, stream):
        return cal.score(zoo, stream, device, present=present)
    from receiver.zoo import Zoo

    per_seed, tables, memory, shared = {}, {}, {}, None
    for seed in a.seeds:
        trained, bn_zoo = seed_zoo(a.runs, seed, a.bn, a.pretrained, a.arch, device, prec)
        cal.check_label_space(trained, cal_info, str(a.calibration))
        if shared is None:   # the pretrained model and the BN-statistics experts have no seed: scored once
            common = Zoo(bn_zoo.experts if bn_zoo else {}, trained.default)
            cal.check_label_space(common, cal_info, str(a.calibration))
            shared = [score(common, calib), None]
            memory.update(memory_of(Zoo({**trained.experts, **common.experts}, trained.default), bn_zoo))
        own = Zoo(trained.experts, None)
        scored_cal = shared[0].plus(score(own, calib))
        table = cal.table_of(trained, scored_cal, calib, cal_info, a.calibration.name)
        rt.check_disjoint(table, cal.stream_ids(val), "the calibrated table")     # the selection guard
        if shared[1] is None:
            shared[1] = score(common, val)
        scored_val = shared[1].plus(score(own, val))
        for metric in METRICS:   # the table routes alike; the best single model and the oracle are chosen per metric
            rows, best = rows_of_seed(trained, bn_zoo, scored_cal.metric(metric), scored_val.metric(metric), table)
            per_seed.setdefault(metric, {})[seed] = {"rows": rows, "best": best, "settings": scored_val.setting}
        tables[seed] = [{k: c[k] for k in ("cell", "model", "images")} for c in table["cells"]]
        click.echo(f"seed {seed}: scored {len(val)} stream and {len(calib)} calibration images", err=True)
    by_metric = {m: summarize(per_seed[m], a.settings, len(val), m) for m in METRICS}
    text = f"Zoo: `--bn {a.bn}` runs.\n\n" + "\n\n".join(t for _, t in by_metric.values())
    if memory:
        text += "\n\n" + memory_text(memory)
    return by_metric["top1"][0], text, {"rows_top1_present": by_metric["top1_present"][0], "tables": tables,
                                        "images": len(val), "calibration_images": len(calib), "memory": memory}


def memory_of(zoo, bn_zoo) -> dict:
    """The receiver's memory per expert (bytes of parameters and buffers, each storage counted once):
    a trained expert is a full copy; a BN-statistics expert owns its statistics and shares the
    pretrained model's weights."""
    from receiver.calibrate import own_bytes
    mem = own_bytes(zoo)
    bn = set(bn_zoo.experts) if bn_zoo is not None else set()
    trained = [m for n, m in mem.items() if n not in bn and n != "default"]
    stats = [m for n, m in mem.items() if n in bn]
    out = {"default_bytes": mem.get("default", {}).get("own", 0) + mem.get("default", {}).get("shared", 0)}
    if trained:
        out["trained_expert_bytes"] = statistics.fmean(m["own"] for m in trained)
    if stats:
        out["bn_stats_expert_own_bytes"] = statistics.fmean(m["own"] for m in stats)
        out["bn_stats_expert_shared_bytes"] = statistics.fmean(m["shared"] for m in stats)
    return out


def memory_text(mem: dict) -> str:
    mb = 2 ** 20
    lines = [f"Receiver memory (parameters and buffers): the pretrained model {mem['default_bytes'] / mb:.2f} MiB"]
    if "trained_expert_bytes" in mem:
        lines.append(f"a trained expert (a full copy) {mem['trained_expert_bytes'] / mb:.2f} MiB each")
    if "bn_stats_expert_own_bytes" in mem:
        lines.append(f"a BN-statistics expert {mem['bn_stats_expert_own_bytes'] / 1024:.1f} KiB of its own each, "
                     f"sharing {mem['bn_stats_expert_shared_bytes'] / mb:.2f} MiB of weights with the pretrained model")
    return "; ".join(lines) + "."


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--runs", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The run folders of experiments/deployment.py (OUT/runs).")
@click.option("--seeds", default="0 1 2", help="The seeds whose models make a row each.")
@click.option("--bn", default="frozen", type=click.Choice(["train", "frozen"]), help="The --bn mode of the zoo.")
@click.option("--val", "val_root", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The val split folder holding one folder per setting (the stream).")
@click.option("--calibration", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The calibration split folder (setting folders of shards, disjoint from --val).")
@click.option("--settings", default=",".join(PAPER_SETTINGS))
@click.option("--pretrained", required=True, help="The pretrained model (weights file with --arch, or 'pretrained').")
@click.option("--arch", default=None)
@click.option("--per-setting", type=click.IntRange(min=1), default=None, help="At most this many stream images "
                                                                             "per setting.")
@click.option("--calibration-per-setting", type=click.IntRange(min=1), default=None)
@click.option("--stream-seed", type=int, default=0)
@click.option("--device", default=None)
@precision_option()
@click.option("--json", "json_out", default=None, type=click.Path(path_type=Path),
              help="The results file docs/receiver.md's block is rendered from.")
@click.option("--markdown", default=None, type=click.Path(path_type=Path))
def cli(**params):
    """Top-1 on shuffled traffic of every setting, over seeds: fixed rule, calibrated table, best
    single model, generalists, BN-statistics zoo, pretrained, oracle."""
    from types import SimpleNamespace

    from experiments import common
    from pipeline.setting import Setting
    a = SimpleNamespace(**params)
    a.settings = [s.name for s in Setting.parse_list(a.settings)]
    a.seeds = common.parse_seeds(a.seeds)
    rows, text, extra = run(a)
    click.echo(text)
    if a.markdown:
        atomic_write(a.markdown, text + "\n")
    if a.json_out:
        from docsgen.readme_block import save
        save(a.json_out, text, "experiments/mixed_traffic.py", _ARGV,
             results={"rows": rows, "seeds": a.seeds, "bn": a.bn, "precision": a.precision, **extra})
    return 0


_ARGV: list[str] = []     # the command line the results file records


def main(argv: list[str] | None = None) -> int:
    _ARGV[:] = sys.argv[1:] if argv is None else list(argv)
    return run_click(cli, _ARGV, "experiments/mixed_traffic.py")


if __name__ == "__main__":
    sys.exit(main())
