"""Pick the codec setting and model for a bandwidth budget, from measured results only.

    python -m trainer.reports.recommend --budget 1000 --results reports/results.json [--manifests shards/]
    python -m trainer.reports.recommend --bpp 0.2 --results reports/results.json
    python -m trainer.reports.recommend --min-top1 65 --results reports/results.json

Every evaluated (setting, model) pair is an option: its rate is the mean bytes (or bpp) per
image that trainer.evaluation measured (else the manifest's), its value the top-1 measured on that
setting.  Models evaluated on a setting they were not trained on count too: a camera can
ship any setting, the server any model.  The Pareto front keeps the options that no other
option beats on both rate and top-1.

The choice under a budget is the highest top-1 among options within it (ties: fewer bytes);
with ``--min-top1`` alone, the cheapest option reaching it.  Nothing fits -> exit status 1
and a message giving the smallest measured rate (or the best measured top-1).

``--interpolate`` adds estimates between two measured settings of the same codec, method and
architecture (each model evaluated on the setting it was trained on): top-1 and q linear in
log(bytes).  They are printed apart and marked INTERPOLATED: no such model or measurement
exists; they tell which q to encode, train and evaluate next.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from pipeline.setting import Setting
from trainer.clitools import FiniteFloat, run_click
from trainer.vocab import title as method_name

from .results import (ALLOW_SELECTED, SELECTED_NOTE, Result, ResultsError, SettingStats,
                      check_selection, load_manifests, load_results, mark, quality_of, rate_of, single_split)

UNITS = {"bytes": "bytes/image", "bpp": "bpp"}


class NoChoice(click.ClickException):
    """Nothing measured satisfies the request (exit status 1)."""
    exit_code = 1


@dataclass
class Option:
    """A (setting, model) pair with its rate and accuracy."""
    arch: str
    method: str                  # method key (teacher labels folded in)
    trained_on: str | None
    setting: str
    codec: str
    q: float | int | None
    top1: float
    bytes: float | None
    bpp: float | None
    psnr: float | None = None
    ssim: float | None = None
    checkpoint: str | None = None
    interpolated: bool = False
    between: tuple[str, str] | None = None   # the measured settings an estimate lies between

    def rate(self, x: str) -> float | None:
        return self.bytes if x == "bytes" else self.bpp

    @property
    def model(self) -> str:
        name = method_name(self.method)
        return name if self.trained_on is None else f"{name} trained on {self.trained_on}"

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("arch", "setting", "codec", "q", "top1", "bytes", "bpp", "psnr",
                                            "ssim", "trained_on", "checkpoint", "interpolated")}
        d["method"] = method_name(self.method)
        if self.between:
            d["between"] = list(self.between)
        return d


def options_from(results: list[Result], stats: dict[str, SettingStats]) -> list[Option]:
    out = []
    for r in results:
        out.append(Option(arch=r.arch, method=r.mkey, trained_on=r.trained_on, setting=r.setting,
                          codec=r.codec, q=r.q, top1=r.top1, bytes=rate_of(r, stats, "bytes"),
                          bpp=rate_of(r, stats, "bpp"), psnr=quality_of(r, stats, "psnr"),
                          ssim=quality_of(r, stats, "ssim"), checkpoint=r.checkpoint or r.weights))
    return out


# --------------------------------------------------------------------------- Pareto front

def dominates(a: Option, b: Option, x: str = "bytes") -> bool:
    """a is at least as cheap and as accurate as b, and strictly better on one of them."""
    ra, rb = a.rate(x), b.rate(x)
    return ra <= rb and a.top1 >= b.top1 and (ra < rb or a.top1 > b.top1)


def pareto_front(options: list[Option], x: str = "bytes") -> list[Option]:
    """Non-dominated options by increasing rate.  Quadratic, which is fine for the few
    hundred (setting, model) pairs a project measures, and obviously right."""
    placed = [o for o in options if o.rate(x) is not None]
    front = [o for o in placed if not any(dominates(p, o, x) for p in placed)]
    return sorted(front, key=lambda o: (o.rate(x), -o.top1, o.setting))


# --------------------------------------------------------------------------- the choice

def choose(options: list[Option], x: str = "bytes", budget: float | None = None,
           min_top1: float | None = None) -> Option | None:
    """Best option within ``budget`` (max top-1), or the cheapest reaching ``min_top1``."""
    ok = [o for o in options if o.rate(x) is not None
          and (budget is None or o.rate(x) <= budget) and (min_top1 is None or o.top1 >= min_top1)]
    if not ok:
        return None
    if budget is not None:
        return max(ok, key=lambda o: (o.top1, -o.rate(x)))
    return min(ok, key=lambda o: (o.rate(x), -o.top1))


def refusal(options: list[Option], x: str, budget: float | None, min_top1: float | None) -> str:
    """Why nothing fits, with the numbers that tell the user what is achievable."""
    placed = [o for o in options if o.rate(x) is not None]
    if not placed:
        return "no option has a known rate: the results lack mean_bytes and no manifest matches (--manifests)"
    cheapest = min(placed, key=lambda o: (o.rate(x), -o.top1))
    best = max(placed, key=lambda o: (o.top1, -o.rate(x)))
    parts = []
    if budget is not None and cheapest.rate(x) > budget:
        parts.append(f"nothing measured fits {fmt_rate(budget, x)}: the smallest measured rate is "
                     f"{fmt_rate(cheapest.rate(x), x)} ({cheapest.setting}, top-1 {cheapest.top1:.2f} %)")
    elif min_top1 is not None and best.top1 < min_top1:
        parts.append(f"no measured option reaches top-1 {min_top1:g} %: the best measured is {best.top1:.2f} % "
                     f"({best.setting}, {best.arch} {best.model}, {fmt_rate(best.rate(x), x)})")
    else:
        within = [o for o in placed if budget is None or o.rate(x) <= budget]
        top = max(within, key=lambda o: o.top1)
        parts.append(f"no measured option reaches top-1 {min_top1:g} % within {fmt_rate(budget, x)}: "
                     f"the best within it is {top.top1:.2f} % ({top.setting}, {top.arch} {top.model})")
    return "; ".join(parts)


# --------------------------------------------------------------------------- interpolation

def curves(options: list[Option], x: str) -> dict[tuple, list[Option]]:
    """Measured points per (arch, codec, method), each model on its own training setting
    (pretrained: on every setting), by increasing rate.  Lossless has no q to interpolate."""
    out: dict[tuple, list[Option]] = {}
    for o in options:
        matched = o.method == "pretrained" or o.trained_on == o.setting
        if matched and o.q is not None and o.rate(x) and not o.interpolated:
            out.setdefault((o.arch, o.codec, o.method), []).append(o)
    for key, pts in out.items():
        best: dict[str, Option] = {}
        for o in pts:  # several runs of one setting: keep the best, as the report does
            if o.setting not in best or o.top1 > best[o.setting].top1:
                best[o.setting] = o
        out[key] = sorted(best.values(), key=lambda o: o.rate(x))
    return {k: v for k, v in out.items() if len(v) >= 2}


def interpolate(options: list[Option], x: str = "bytes", budget: float | None = None,
                min_top1: float | None = None) -> list[Option]:
    """Estimates at the budget (or at the rate reaching ``min_top1``) strictly between two
    measured settings of a curve; best estimate first."""
    out = []
    for pts in curves(options, x).values():
        for a, b in zip(pts, pts[1:]):
            est = _estimate(a, b, x, budget, min_top1)
            if est is not None:
                out.append(est)
    return sorted(out, key=lambda o: (-o.top1, o.rate(x)) if budget is not None else (o.rate(x), -o.top1))


def _estimate(a: Option, b: Option, x: str, budget: float | None, min_top1: float | None) -> Option | None:
    la, lb = math.log(a.rate(x)), math.log(b.rate(x))
    if lb <= la:
        return None
    if budget is not None:
        if not a.rate(x) < budget < b.rate(x):
            return None
        t = (math.log(budget) - la) / (lb - la)
        toward_low_rate = True       # round q so the real rate stays within the budget
    else:
        if not (a.top1 < min_top1 <= b.top1):
            return None
        t = (min_top1 - a.top1) / (b.top1 - a.top1)
        toward_low_rate = False      # round q so the accuracy is not undershot
    top1 = a.top1 + t * (b.top1 - a.top1)
    if min_top1 is not None and top1 < min_top1:
        return None
    q = _round_q(a, b, a.q + t * (b.q - a.q), toward_low_rate)
    if q in (a.q, b.q):
        return None                  # rounds onto a measured setting: nothing new to try
    rate = math.exp(la + t * (lb - la))
    other = "bpp" if x == "bytes" else "bytes"
    ra, rb = a.rate(other), b.rate(other)
    other_rate = math.exp(math.log(ra) + t * (math.log(rb) - math.log(ra))) if ra and rb else None
    rates = {x: rate, other: other_rate}
    setting = Setting(a.codec, q).name
    return Option(arch=a.arch, method=a.method, trained_on=None if a.method == "pretrained" else setting,
                  setting=setting, codec=a.codec, q=q, top1=top1, bytes=rates["bytes"], bpp=rates["bpp"],
                  interpolated=True, between=(a.setting, b.setting))


def _round_q(a: Option, b: Option, q: float, toward_low_rate: bool) -> float | int:
    """Integer q for integer codecs, rounded toward the low-rate end when asked to (q grows
    with rate for JPEG, shrinks for J2K's ratio and BPG's quantiser)."""
    if not _integer_q(a.codec):
        return round(q, 2)
    q_grows_with_rate = b.q > a.q
    down = q_grows_with_rate == toward_low_rate
    return int(math.floor(q) if down else math.ceil(q))


def _integer_q(codec: str) -> bool:
    try:
        from pipeline.codecs import get
        return bool(get(codec).q_integer)
    except Exception:  # codec package absent or codec unknown: JPEG/J2K/BPG all take integers
        return True


# --------------------------------------------------------------------------- output

def fmt_rate(value: float | None, x: str) -> str:
    if value is None:
        return "?"
    return f"{value:.0f} bytes/image" if x == "bytes" else f"{value:.3f} bpp"


def _num(v, digits: int) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def option_table(options: list[Option]) -> str:
    head = f"{'bytes':>8} {'bpp':>6} {'top-1':>6}  {'setting':<10} {'arch':<12} {'model':<36} {'PSNR':>6} {'SSIM':>6}  checkpoint"
    lines = [head]
    for o in options:
        lines.append(f"{_num(o.bytes, 0):>8} {_num(o.bpp, 3):>6} {o.top1:6.2f}  {o.setting:<10} {o.arch:<12} "
                     f"{o.model:<36} {_num(o.psnr, 2):>6} {_num(o.ssim, 3):>6}  {o.checkpoint or '—'}")
    return "\n".join(lines)


def describe(o: Option, x: str) -> str:
    quality = f", PSNR {o.psnr:.2f} dB" if o.psnr is not None else ""
    quality += f", SSIM {o.ssim:.3f}" if o.ssim is not None else ""
    return (f"  setting {o.setting} ({o.codec}, q={o.q if o.q is not None else '—'}) with {o.arch} {o.model}\n"
            f"  top-1 {o.top1:.2f} %, {fmt_rate(o.bytes, 'bytes')} ({_num(o.bpp, 3)} bpp){quality}\n"
            f"  checkpoint: {o.checkpoint or '— (pretrained weights)'}")


def describe_estimate(o: Option) -> str:
    todo = ("make its shards and evaluate" if o.method == "pretrained"
            else f"make its shards, train {method_name(o.method)} on it and evaluate")
    return (f"  INTERPOLATED (not measured, not a real setting yet): {o.codec} q≈{o.q:g} with {o.arch} "
            f"{method_name(o.method)}: est. top-1 {o.top1:.2f} % at ~{_num(o.bytes, 0)} bytes/image "
            f"({_num(o.bpp, 3)} bpp), between {o.between[0]} and {o.between[1]}; to use it: {todo}")


def stats_from(manifests: Path | None, split: str) -> dict[str, SettingStats]:
    """--manifests may be the shard root (uses <split>/) or a split folder itself."""
    if manifests is None:
        return {}
    stats = load_manifests(manifests, split)
    if not stats and any(Path(manifests).glob("*/manifest.json")):
        stats = load_manifests(Path(manifests).parent, Path(manifests).name)
    return stats


# --------------------------------------------------------------------------- CLI

@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--results", "results_paths", multiple=True, type=click.Path(path_type=Path),
              default=[Path("reports/results.json")], show_default=True,
              help="results.json of trainer.evaluation (repeatable).")
@click.option("--budget", type=FiniteFloat(min=0, min_open=True), default=None,
              help="Bytes per image the link allows.")
@click.option("--bpp", type=FiniteFloat(min=0, min_open=True), default=None,
              help="Budget in bits per pixel instead of bytes.")
@click.option("--min-top1", type=FiniteFloat(min=0, max=100), default=None,
              help="Top-1 (%) to reach: the cheapest option reaching it (or the best within the budget).")
@click.option("--manifests", type=click.Path(path_type=Path), default=None,
              help="Shard root (or one split folder): PSNR/SSIM, and rates missing from the results.")
@click.option("--split", default="val", show_default=True)
@click.option("--arch", "archs", multiple=True, help="Only these architectures (repeatable).")
@click.option("--method", "methods", multiple=True,
              help="Only these methods (repeatable; pretrained, stability, finetune, expert, expert+teacher).")
@click.option("--interpolate", is_flag=True, help="Also estimate untested q between measured settings.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(ALLOW_SELECTED, "allow_selected", is_flag=True,
              help="Also use rows whose checkpoint was chosen on the images it is scored on (refused without it).")
def cli(results_paths, budget, bpp, min_top1, manifests, split, archs, methods, interpolate, as_json,
        allow_selected):
    """Pareto front of (rate, top-1) and the best measured choice for a budget."""
    if budget is not None and bpp is not None:
        raise click.UsageError("give --budget (bytes/image) or --bpp, not both")
    x, limit = ("bpp", bpp) if bpp is not None else ("bytes", budget)
    try:
        results, dropped = single_split(load_results(results_paths), split)
        if dropped:
            click.echo(f"warning: results of split(s) {', '.join(dropped)} left out (--split {split})", err=True)
        check_selection(results, allow_selected)
        if mark(results):
            click.echo(f"warning: {SELECTED_NOTE}", err=True)
        options = options_from(results, stats_from(manifests, split))
    except ResultsError as exc:
        raise click.ClickException(str(exc)) from exc
    options = [o for o in options if (not archs or o.arch in archs) and (not methods or o.method in methods)]
    if not options:
        raise click.ClickException("no results to choose from (check --results, --arch, --method)")
    front = pareto_front(options, x)
    wants_choice = limit is not None or min_top1 is not None
    choice = choose(options, x, limit, min_top1) if wants_choice else None
    estimates = interpolate_for(options, x, limit, min_top1) if interpolate and wants_choice else []
    if as_json:
        click.echo(json.dumps({"x": x, "budget": limit, "min_top1": min_top1,
                               "front": [o.as_dict() for o in front],
                               "choice": choice.as_dict() if choice else None,
                               "interpolated": [o.as_dict() for o in estimates]}, indent=2))
    else:
        print_human(options, front, choice, estimates, x, limit, min_top1)
    if wants_choice and choice is None:
        raise NoChoice(refusal(options, x, limit, min_top1))
    return 0


def interpolate_for(options, x, limit, min_top1) -> list[Option]:
    if limit is not None:
        est = interpolate(options, x, budget=limit)
        return [o for o in est if min_top1 is None or o.top1 >= min_top1]
    return interpolate(options, x, min_top1=min_top1)


def print_human(options, front, choice, estimates, x, limit, min_top1) -> None:
    click.echo(f"Pareto front ({UNITS[x]} vs top-1; {len(front)} of {len(options)} measured options):")
    click.echo(option_table(front))
    if choice is not None:
        what = [f"within {fmt_rate(limit, x)}" if limit is not None else "",
                f"reaching top-1 {min_top1:g} %" if min_top1 is not None else ""]
        click.echo(f"\nBest measured choice {' and '.join(w for w in what if w)}:")
        click.echo(describe(choice, x))
    if estimates:
        click.echo("\nInterpolated between measured settings (log-linear in rate; estimates, not results):")
        for o in estimates[:5]:
            click.echo(describe_estimate(o))
        if choice is not None and estimates[0].top1 > choice.top1:
            click.echo(f"  -> the best estimate beats the measured choice by {estimates[0].top1 - choice.top1:.2f} "
                       f"points: worth measuring {estimates[0].setting}")


def main(argv: list[str] | None = None) -> int:
    """Entry point callable from tests: returns the exit status instead of exiting."""
    return run_click(cli, argv, "python -m trainer.reports.recommend")


if __name__ == "__main__":
    sys.exit(main())
