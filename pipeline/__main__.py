"""Command line: ``python -m pipeline shards --codec j2k --q 200 --src DIR --split val``."""
from __future__ import annotations

import logging
import os
import sys

import click

from . import manifest as manifest_mod
from .codecs import CodecError, available, get


def _parse_options(pairs: tuple[str, ...]) -> dict:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--option")
        options[key.strip().replace("-", "_")] = value
    return options


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for tracebacks of skipped files).")
def cli(verbose: int) -> None:
    """Pre-compression pipeline: image folder -> 224² crops -> codec -> metrics -> WebDataset shards."""
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose + 1, 2)],
                        format="%(levelname)s %(name)s: %(message)s")


@cli.command()
@click.option("--codec", required=True, help=f"Codec name ({', '.join(available())}).")
@click.option("--q", default=None, help="Quality value (JPEG quality, J2K compression ratio, BPG -q); none for lossless.")
@click.option("--src", required=True, type=click.Path(exists=True, file_okay=False), help="Image root: SRC/<split>/<class>/<image>.")
@click.option("--split", default=None, help="Sub-folder of SRC to process (train, val, ...); omit to use SRC itself.")
@click.option("--out", default="shards", show_default=True, type=click.Path(file_okay=False), help="Output root.")
@click.option("--jobs", default=os.cpu_count() or 1, show_default=True, type=click.IntRange(1), help="Parallel worker processes.")
@click.option("--shard-size", default=1000, show_default=True, type=click.IntRange(1), help="Samples per shard.")
@click.option("--classes", "classes_file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Class table overriding the folder rule: one folder name per line, or 'index<TAB>name'.")
@click.option("--limit", default=None, type=click.IntRange(1), help="Only the first N images (quick runs).")
@click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Codec option, e.g. -o mct=1 (j2k), -o effort=5 (bpg). See `python -m pipeline codecs`.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def shards(codec, q, src, split, out, jobs, shard_size, classes_file, limit, options, progress):
    """Build the shards and manifest of one codec setting."""
    from .build import build_setting

    try:
        m = build_setting(src, split, codec, None if q in (None, "") else q, out, shard_size, jobs,
                          _parse_options(options), classes_file, limit, progress)
    except (CodecError, FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    manifest_mod.print_summary(m)
    if m["failed"]:
        click.echo(f"{len(m['failed'])} input(s) skipped; see 'failed' in the manifest, e.g. "
                   f"{m['failed'][0]['path']}: {m['failed'][0]['reason']}", err=True)


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
        manifest_mod.print_summary(manifest_mod.read(folder))


def main(argv=None):
    return cli.main(args=argv, prog_name="python -m pipeline", standalone_mode=True)


if __name__ == "__main__":
    sys.exit(main())
