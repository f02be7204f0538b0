"""Command line: ``python -m pipeline shards --codec j2k --q 200 --src DIR --split val``.

Every user error (bad value, missing folder, locked folder, full disk, ...) ends with one
line ``error: <input>: <reason>`` (:mod:`pipeline.cli`) and a non-zero status, never a traceback (``-vv`` shows
tracebacks of skipped images in the log).
"""
from __future__ import annotations

import logging
import math
import os
import sys

import click

from . import manifest as manifest_mod
from .atomic import AtomicWriteError, LockedError
from .backends import BACKENDS, BackendError
from .cli import CommandError, Group, one_line
from .codecs import CodecError, available, get
from .limits import FileKindError, PixelBudgetError, max_pixels_option
from .plan import DEFAULT_ORDER, DEFAULT_SEED, ORDERS
from .setting import EXTENDED_SETTINGS, Setting, SettingError
from .shards import LAYOUTS, PAIR
from .signals import terminate_as_interrupt

#: errors that are the user's input or environment, not a bug: one line, exit 1
USER_ERRORS = (CodecError, SettingError, FileNotFoundError, NotADirectoryError, ValueError, LockedError,
               AtomicWriteError, BackendError, PixelBudgetError, manifest_mod.ManifestError, OSError)


def _parse_options(pairs: tuple[str, ...]) -> dict:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--option")
        options[key.strip().replace("-", "_")] = value
    return options


def _parse_q(q: str | None):
    if q in (None, ""):
        return None
    try:
        value = float(q)
    except ValueError:
        raise click.BadParameter(f"{q!r} is not a number", param_hint="--q") from None
    if not math.isfinite(value):
        raise click.BadParameter(f"{q!r} is not a finite number", param_hint="--q")
    return q


def _titles(settings) -> str:
    """"WebP, AVIF and JPEG XL": the codecs of these settings, as the codec registry names them."""
    titles = [get(name).title for name in dict.fromkeys(Setting.parse(s).codec for s in settings)]
    return " and ".join([", ".join(titles[:-1]), titles[-1]]) if len(titles) > 1 else "".join(titles)


def _settings(codec: str | None, q: str | None, settings: str | None) -> list:
    if settings and (codec or q):
        raise click.UsageError("give either --settings or --codec/--q, not both")
    if settings:
        try:
            return Setting.parse_list(settings)
        except SettingError as exc:
            raise click.BadParameter(str(exc), param_hint="--settings") from None
    if not codec:
        raise click.UsageError("give --codec (and --q), or --settings jpeg-10,j2k-200,...")
    get(codec)  # unknown codec: one line naming the codecs
    return [(codec, _parse_q(q))]


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for tracebacks of skipped files).")
def cli(verbose: int) -> None:
    """Pre-compression pipeline: image folder -> 224² crops -> codecs -> metrics -> WebDataset shards."""
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose + 1, 2)],
                        format="%(levelname)s %(name)s: %(message)s")


@cli.command()
@click.option("--codec", default=None, help=f"Codec name ({', '.join(available())}).")
@click.option("--q", default=None, help="Quality value of --codec (its meaning and range: `python -m pipeline codecs`); "
                                         "none for lossless.")
@click.option("--settings", default=None, metavar="NAMES",
              help="Several settings in one pass, e.g. lossless,jpeg-10,j2k-200,bpg-41, or paper (lossless and "
                   f"the paper's nine), or extended ({_titles(EXTENDED_SETTINGS)} at the paper's J2K rates).")
@click.option("--src", required=True, type=click.Path(exists=True, file_okay=False), help="Image root: SRC/<split>/<class>/<image>.")
@click.option("--split", default=None, help="Sub-folder of SRC to process (train, val, ...); omit to use SRC itself.")
@click.option("--out", default="shards", show_default=True, type=click.Path(file_okay=False), help="Output root.")
@click.option("--layout", type=click.Choice(LAYOUTS), default=PAIR, show_default=True,
              help="pair: each sample holds x and x̃; split: x once per split in OUT/<split>/lossless.")
@click.option("--order", type=click.Choice(ORDERS), default=DEFAULT_ORDER, show_default=True,
              help="mixed: a seeded permutation (batches mix classes); sorted: class by class.")
@click.option("--seed", default=DEFAULT_SEED, show_default=True, type=int, help="Seed of the mixed order.")
@click.option("--jobs", default=os.cpu_count() or 1, show_default="the CPU count", type=click.IntRange(1),
              help="Parallel worker processes.")
@click.option("--shard-size", default=1000, show_default=True, type=click.IntRange(1), help="Samples per shard.")
@click.option("--classes", "classes_file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Class table overriding the folder rule: one folder name per line, or 'index<TAB>name'.")
@click.option("--limit", default=None, type=click.IntRange(1), help="Only the first N images of the order (quick runs).")
@max_pixels_option
@click.option("--max-failed", default=0.01, show_default=True, type=click.FloatRange(0, 1),
              help="Exit with an error when more than this fraction of the inputs failed (the manifest is still written).")
@click.option("--backend", type=click.Choice(BACKENDS), default="local", show_default=True,
              help="local worker processes, or a Dask cluster (--scheduler).")
@click.option("--scheduler", default=None, metavar="ADDRESS", help="Dask scheduler, e.g. tcp://HOST:8786.")
@click.option("--num-nodes", default=1, show_default=True, type=click.IntRange(1),
              help="Split the shards over N independent runs (e.g. a Slurm array) ...")
@click.option("--node-rank", default=0, show_default=True, type=click.IntRange(0),
              help="... of which this is run R (0..N-1): it builds shards R, R+N, R+2N, ...")
@click.option("--verify/--no-verify", default=False, show_default=True,
              help="Re-hash every existing tar against its record before trusting it.")
@click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Codec option, e.g. -o mct=1 (j2k), -o effort=5 (bpg). See `python -m pipeline codecs`.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def shards(codec, q, settings, src, split, out, layout, order, seed, jobs, shard_size, classes_file, limit, budget,
           max_failed, backend, scheduler, num_nodes, node_rank, verify, options, progress):
    """Build the shards and manifests of one split for one or several codec settings."""
    from .build import build

    wanted = _settings(codec, q, settings)
    if node_rank >= num_nodes:
        raise click.BadParameter(f"{node_rank} is not below --num-nodes {num_nodes}", param_hint="--node-rank")
    try:
        manifests = build(src, split, wanted, out, shard_size=shard_size, jobs=jobs, codec_options=_parse_options(options),
                          classes_file=classes_file, limit=limit, progress=progress, layout=layout, order=order,
                          seed=seed, backend=backend, scheduler=scheduler, num_nodes=num_nodes, node_rank=node_rank,
                          budget=budget, verify=verify)
    except USER_ERRORS as exc:
        raise CommandError(one_line(exc)) from None
    worst = None
    for name, m in manifests.items():
        if m is None:
            click.echo(f"{split or 'all'}/{name}: rank {node_rank} of {num_nodes} done; the manifest is written by "
                       f"the last rank to finish (or: python -m pipeline manifest {os.path.join(out, split or 'all', name)})")
            continue
        manifest_mod.print_summary(m)
        total = m["count"] + len(m["failed"])
        frac = len(m["failed"]) / total if total else 0.0
        if m["failed"] and (worst is None or frac > worst[0]):
            worst = (frac, name, m)
    if worst is not None:
        frac, name, m = worst
        click.echo(f"{len(m['failed'])} input(s) skipped in {name}; see 'failed' in its manifest, e.g. "
                   f"{m['failed'][0]['path']}: {m['failed'][0]['reason']}", err=True)
        if frac > max_failed:
            raise CommandError(f"{name}: {len(m['failed'])} of {m['count'] + len(m['failed'])} inputs failed "
                                       f"({100 * frac:.1f}%), more than --max-failed {max_failed:g}; the manifest "
                                       "lists them")


@cli.command()
@click.argument("folders", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--verify/--no-verify", default=False, show_default=True, help="Re-hash every tar against its record.")
def manifest(folders, verify):
    """Write the manifest of setting folders from their shard records (after --node-rank runs)."""
    from .build import write_manifest

    for folder in folders:
        try:
            m = write_manifest(folder, verify=verify)
        except USER_ERRORS as exc:
            raise CommandError(one_line(exc)) from None
        manifest_mod.print_summary(m)


@cli.command()
@click.argument("folders", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--deep/--no-deep", default=False, show_default=True,
              help="Also compare the keys of every shard from the records.")
def check(folders, deep):
    """Check that split-layout setting folders pair with their reference folder."""
    from .layout import check_reference

    for folder in folders:
        try:
            pairing = check_reference(folder, deep=deep)
        except USER_ERRORS as exc:
            raise CommandError(one_line(exc)) from None
        if pairing is None:
            click.echo(f"{folder}: self-contained (pair layout or lossless)")
        else:
            click.echo(f"{folder}: pairs with {pairing.reference}, {len(pairing.shards)} shard(s)"
                       + ("" if pairing.exact else f", {pairing.unpaired} reference sample(s) without a bitstream"))


@cli.command()
def codecs():
    """List the codecs, their quality ranges and options."""
    for name in available():
        for line in get(name).describe():
            click.echo(line)


@cli.command()
@click.argument("folders", nargs=-1, required=True, type=click.Path(exists=True))
def summary(folders):
    """One line per manifest: images, bytes, bpp, PSNR, SSIM."""
    for folder in folders:
        try:
            m = manifest_mod.read(folder)
        except USER_ERRORS as exc:
            raise CommandError(one_line(exc)) from None
        manifest_mod.print_summary(m)


cli.user_errors = (CodecError, SettingError, PixelBudgetError, BackendError, AtomicWriteError, LockedError,
                   FileKindError)


def main(argv=None):
    with terminate_as_interrupt():
        return cli.main(args=argv, prog_name="python -m pipeline", standalone_mode=True)


if __name__ == "__main__":
    sys.exit(main())
