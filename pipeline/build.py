"""Build the shards and manifests of one split for one or more codec settings: plan, run, finish.

One pass: every source image is loaded and cropped once per run and compressed with every
setting of the run; each setting's shard i is written by the same job.  The output is
byte-identical to separate runs of each setting (a test checks it).

Restart: a shard whose record carries the current plan hash and whose tar matches the
record is kept; missing, partial, outdated or mismatched shards are redone.

Many machines: ``backend="dask"`` runs the shard jobs on a Dask cluster; ``num_nodes`` /
``node_rank`` build only the shards a rank owns (shard i belongs to rank i mod N), and the
last rank to find every shard present writes the manifests (or run
``python -m pipeline manifest FOLDER``, :func:`write_manifest`).

Locks: a build holds ``.lock`` in every setting folder it writes; rank R holds
``.lock-rank-R`` instead, so the ranks of one build never block each other, while a
second build of the same folder is refused with the holder's name.
"""
from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path
from typing import Iterable

from tqdm import tqdm

from . import manifest as manifest_mod
from .atomic import FolderLock, LockedError, atomic_write_json
from .bounded import read_json
from .classes import label_space_id
from .backends import check_backend, run_jobs
from .codecs import Codec, CodecError, create, get
from .limits import DEFAULT_BUDGET, DecodeBudget
from .manifest import Manifest
from .plan import DEFAULT_ORDER, DEFAULT_SEED, ORDERS, SplitPlan, make_plan, owner, shard_plan
from .setting import LOSSLESS, Setting
from .shards import (FORMAT_VERSION, LAYOUTS, PAIR, REFERENCE, SPLIT, ShardJob, Target, load_record,
                     record_path, sample_fields, shard_index, shard_name)
from .sources import display, list_source

log = logging.getLogger("pipeline")

PLAN_FILE = "plan.json"


#: a split is one plain folder name: it is joined to --src and to --out, and recorded
SPLIT_NAME = re.compile(r"(?!\.\.?$)[A-Za-z0-9._-]{1,64}")


#: worker processes of one build (each is a Python process with its codecs loaded)
MAX_JOBS = 1024


class BuildError(ValueError):
    """Bad input for a build (one line naming the input and the reason); nothing was written."""


class IncompleteError(BuildError):
    """Shards of a setting are missing (the message lists them and the ranks that own them)."""


# --------------------------------------------------------------------------- settings

def make_codecs(settings: Iterable, options: dict | None = None) -> list[Codec]:
    """Settings (names, Setting objects or (codec, q) pairs) -> codec objects, validated.

    Codec options (``-o key=value``) go to every codec of the run that has that option; an
    option that none has is an error."""
    options = dict(options or {})
    specs = []
    for s in settings:
        if isinstance(s, str):
            s = Setting.parse(s)
        codec, q = (s.codec, s.q) if isinstance(s, Setting) else s
        specs.append((codec, q))
    if not specs:
        raise BuildError("no setting to build")
    classes = [get(c) for c, _ in specs]
    if len(specs) == 1:
        return [create(specs[0][0], specs[0][1], **options)]
    unknown = sorted(k for k in options if not any(k in cls.options_spec for cls in classes))
    if unknown:
        raise CodecError(f"no codec of this run ({', '.join(sorted({c for c, _ in specs}))}) has option "
                         f"{', '.join(unknown)}")
    codecs = [cls(q, **{k: v for k, v in options.items() if k in cls.options_spec})
              for cls, (_, q) in zip(classes, specs)]
    names = [c.setting for c in codecs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise BuildError(f"setting(s) listed twice: {', '.join(dup)}")
    return codecs


def _targets(codecs: list[Codec], out_split: Path, layout: str, options: dict | None) -> list[tuple[Target, Codec]]:
    codecs = list(codecs)
    if layout == SPLIT and not any(c.name == LOSSLESS for c in codecs):
        lossless_opts = {k: v for k, v in (options or {}).items() if k in get(LOSSLESS).options_spec}
        codecs.insert(0, create(LOSSLESS, None, **lossless_opts))   # the reference, built with them
    # the reference first: its shards and manifest are committed before those that point to it
    codecs.sort(key=lambda c: c.name != LOSSLESS)
    return [(Target(c.setting, c.name, c.q, dict(c.options), (out_split / c.setting).absolute(),
                    PAIR if c.name == LOSSLESS else layout), c) for c in codecs]


# --------------------------------------------------------------------------- checks

def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _split_users(ref_dir: Path) -> list[str]:
    """Split-layout settings beside ``ref_dir`` that pair with it."""
    users = []
    for p in sorted(ref_dir.parent.glob("*/manifest.json")):
        try:
            if read_json(p, "manifest").get("layout") == SPLIT:
                users.append(p.parent.name)
        except (OSError, ValueError, AttributeError):
            continue
    return users


def _check_reference(ref_dir: Path, plan: SplitPlan, splitting: bool) -> None:
    """A build must not silently re-cut a reference that split-layout settings pair with."""
    try:
        m = Manifest.load(ref_dir)
    except manifest_mod.ManifestError:
        return          # no reference yet (or an unreadable one): this run builds it
    users = _split_users(ref_dir)
    if not splitting and not users:
        return
    if m.get("split") != plan.split:
        raise BuildError(f"reference folder {ref_dir} holds split {m.get('split')!r}, not {plan.split!r}; "
                         "move it away")
    want = plan.identity
    for key, label in (("shard_size", "shard size"), ("order", "order"), ("seed", "seed"), ("limit", "limit")):
        if m.get(key) != want[key]:
            who = f" (split-layout settings {', '.join(users)} pair with it)" if users else ""
            raise BuildError(
                f"reference folder {ref_dir} was built with {label} {m.get(key)!r}{who}, this build asks for "
                f"{want[key]!r}; build with the same {label}, or remove {ref_dir} and the split-layout settings "
                "beside it to rebuild them")
    if m.get("source_digest") != want["source_digest"] and users:
        log.warning("the source of %s changed: its changed shards are rebuilt; split-layout setting(s) %s "
                    "must be rebuilt too", ref_dir, ", ".join(users))


# --------------------------------------------------------------------------- locks

@contextlib.contextmanager
def _locks(folders: list[Path], num_nodes: int, node_rank: int):
    """``.lock`` for a whole build, ``.lock-rank-R`` for a rank; a whole build and a rank
    build of the same folder exclude each other."""
    own = ".lock" if num_nodes == 1 else f".lock-rank-{node_rank}"
    what = "shard build" if num_nodes == 1 else f"shard build of rank {node_rank}"
    with contextlib.ExitStack() as stack:
        for d in sorted(folders):
            stack.enter_context(FolderLock(d, what, name=own))
            others = [d / ".lock"] if own != ".lock" else sorted(d.glob(".lock-rank-*"))
            for other in others:
                probe = FolderLock(d, "shard build", name=other.name)
                probe.acquire()       # raises LockedError naming the holder
                probe.release()
        yield


# --------------------------------------------------------------------------- plan.json

def _plan_doc(target: Target, codec: Codec, plan: SplitPlan, source, shard_plans: list[str], num_nodes: int) -> dict:
    return {
        "format": FORMAT_VERSION,
        "setting": target.setting, "codec": codec.name, "q": codec.q, "options": dict(codec.options),
        "layout": target.layout,
        "reference": {"setting": REFERENCE, "plan_id": plan.plan_id} if target.layout == SPLIT else None,
        "sample_fields": sample_fields(codec.name, codec.ext, target.layout),
        **plan.identity,
        "plan_id": plan.plan_id,
        "source": {"root": display(source.root), "folders": source.folders,
                   "classes": [source.class_names[source.index[f]] for f in source.folders],
                   "class_index": source.index, "num_classes": source.num_classes,
                   "label_space": label_space_id(source.class_names), "rejected": source.rejected},
        "num_nodes": num_nodes,
        "shards": [{"name": shard_name(i), "plan": p, "items": len(items)}
                   for i, (p, items) in enumerate(zip(shard_plans, plan.shards))],
    }


def read_plan(folder: str | Path) -> dict:
    p = Path(folder) / PLAN_FILE
    try:
        doc = read_json(p, "plan")
    except FileNotFoundError:
        raise BuildError(f"{folder}: no {PLAN_FILE}; not a shard folder of this pipeline (or one built by an older "
                         "version): rebuild it") from None
    except (OSError, ValueError) as exc:
        raise BuildError(f"{p} is not readable ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_VERSION:
        raise BuildError(f"{p}: format {doc.get('format') if isinstance(doc, dict) else '?'} is not "
                         f"{FORMAT_VERSION}; rebuild the folder")
    Setting.parse(doc.get("setting", ""))   # validates the name read from the file
    return doc


# --------------------------------------------------------------------------- manifest step

def _missing_message(folder: Path, doc: dict, missing: list[int]) -> str:
    n_nodes = int(doc.get("num_nodes") or 1)
    by_rank: dict[int, list[str]] = {}
    for i in missing:
        by_rank.setdefault(owner(i, n_nodes), []).append(shard_name(i))
    parts = []
    for rank, names in sorted(by_rank.items()):
        shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
        parts.append(f"rank {rank} of {n_nodes}: {shown}" if n_nodes > 1 else shown)
    return (f"{folder}: {len(missing)} of {len(doc['shards'])} shard(s) missing or outdated ({'; '.join(parts)}); "
            f"build them (again), then run `python -m pipeline manifest {folder}`")


def _records(folder: Path, doc: dict, verify: bool) -> tuple[list[dict], list[int]]:
    records, missing = [], []
    for i, sh in enumerate(doc["shards"]):
        rec = load_record(folder, i, sh["plan"], verify=verify)
        (missing.append(i) if rec is None else records.append(rec))
    return records, missing


def write_manifest(folder: str | Path, verify: bool = False) -> Manifest:
    """Write ``manifest.json``/``.csv`` of a setting folder from ``plan.json`` and the shard
    records.  Raises :class:`IncompleteError` listing missing shards and their ranks."""
    folder = Path(folder)
    doc = read_plan(folder)
    records, missing = _records(folder, doc, verify)
    if missing:
        raise IncompleteError(_missing_message(folder, doc, missing))
    codec = create(doc["codec"], doc["q"], **doc["options"])
    m = manifest_mod.build(codec, doc, records)
    manifest_mod.write(folder, m, records)
    return Manifest.from_dict(m, folder)


# --------------------------------------------------------------------------- the build

def _clean(folder: Path, n_shards: int, owned: set[int]) -> None:
    """Remove shards beyond the plan (an earlier run with a smaller shard size: a glob over
    the folder would read them) and temporary files of the shards this run owns."""
    for tar in folder.glob("shard-*.tar"):
        i = shard_index(tar.name)
        if i is not None and i >= n_shards:
            tar.unlink(missing_ok=True)
            record_path(folder, i).unlink(missing_ok=True)
    for tmp in list(folder.glob(".shard-*")) + list((folder / "records").glob(".shard-*")):
        i = shard_index(tmp.name)
        if i is not None and (i in owned or i >= n_shards):
            tmp.unlink(missing_ok=True)


def build(src, split: str | None, settings: Iterable, out="shards", *, shard_size: int = 1000, jobs: int = 1,
          codec_options: dict | None = None, classes_file=None, limit: int | None = None, progress: bool = True,
          layout: str = PAIR, order: str = DEFAULT_ORDER, seed: int = DEFAULT_SEED, backend: str = "local",
          scheduler: str | None = None, num_nodes: int = 1, node_rank: int = 0, budget: DecodeBudget | None = None,
          verify: bool = False) -> dict[str, Manifest | None]:
    """Build ``out/<split>/<setting>/`` for every setting in one pass; return the manifests
    by setting name (None for a setting whose other ranks have not finished yet)."""
    if split is not None and not (isinstance(split, str) and SPLIT_NAME.fullmatch(split)):
        raise BuildError(f"--split {str(split)[:40]!r}: a split is one folder name (letters, digits, '.', '_', '-'; "
                         "not '.' or '..', no '/'): it names the output folder OUT/<split>")
    if layout not in LAYOUTS:
        raise BuildError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if order not in ORDERS:
        raise BuildError(f"unknown order {order!r}; choose one of {', '.join(ORDERS)}")
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 1:
        raise BuildError(f"--num-nodes must be a whole number >= 1, got {num_nodes!r}")
    if isinstance(node_rank, bool) or not isinstance(node_rank, int) or not 0 <= node_rank < num_nodes:
        raise BuildError(f"--node-rank must be in 0..{num_nodes - 1} for --num-nodes {num_nodes}, got {node_rank!r}")
    if num_nodes > 1 and backend != "local":
        raise BuildError("--num-nodes/--node-rank and --backend dask are two ways to use many machines: pick one")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or not 1 <= jobs <= MAX_JOBS:
        raise BuildError(f"--jobs must be a whole number from 1 to {MAX_JOBS}, got {jobs!r}")
    check_backend(backend, scheduler)
    for flag, path in (("--src", src), ("--out", out), ("--classes", classes_file)):
        if path is not None and "\0" in str(path):
            raise BuildError(f"{flag} {str(path)!r}: holds a NUL byte, which no path can")
    if budget is not None and not isinstance(budget, DecodeBudget):
        raise BuildError(f"the decode budget must be a DecodeBudget, got {budget!r}")
    budget = budget or DEFAULT_BUDGET
    codecs = make_codecs(settings, codec_options)           # validates names, q and options up front
    source = list_source(src, split, classes_file)
    split_name = split or "all"
    out_split = Path(out) / split_name
    if _inside(out_split, source.root):
        raise BuildError(f"output folder {display(Path(out))} is inside the source folder {display(source.root)}: "
                         "a second run would read the shards as images; choose --out outside it")
    try:
        plan = make_plan(source, split_name, order, seed, shard_size, limit)
    except ValueError as exc:
        raise BuildError(str(exc)) from None
    targets = _targets(codecs, out_split, layout, codec_options)
    if any(t.codec == LOSSLESS for t, _ in targets):
        _check_reference(out_split / REFERENCE, plan, splitting=layout == SPLIT)

    sources = plan.shard_sources()
    plans = {t.setting: [shard_plan(FORMAT_VERSION, c.name, c.params(), t.layout, h) for h in sources]
             for t, c in targets}
    n_shards = len(plan.shards)
    owned = [i for i in range(n_shards) if owner(i, num_nodes) == node_rank]
    manifests: dict[str, Manifest | None] = {}
    with _locks([t.out_dir for t, _ in targets], num_nodes, node_rank):
        for t, c in targets:
            atomic_write_json(t.out_dir / PLAN_FILE, _plan_doc(t, c, plan, source, plans[t.setting], num_nodes))
            _clean(t.out_dir, n_shards, set(owned))
        pending: list[ShardJob] = []
        for i in owned:
            todo = [t for t, _ in targets if load_record(t.out_dir, i, plans[t.setting][i], verify=verify) is None]
            if todo:
                pending.append(ShardJob(i, plan.shards[i], todo, {t.setting: plans[t.setting][i] for t in todo},
                                        budget))
        _run(pending, targets, split_name, n_shards, backend, jobs, scheduler, progress, num_nodes, node_rank)
        for t, _ in targets:
            _clean(t.out_dir, n_shards, set(owned))   # leftovers of workers killed during this run
            manifests[t.setting] = _finish(t.out_dir, num_nodes)
    return manifests


def _run(pending, targets, split_name, n_shards, backend, jobs, scheduler, progress, num_nodes, node_rank) -> None:
    names = ",".join(t.setting for t, _ in targets) if len(targets) <= 3 else f"{len(targets)} settings"
    desc = f"{split_name}/{names}" + (f" rank {node_rank}/{num_nodes}" if num_nodes > 1 else "")
    # without a progress bar (batch jobs, logs), one line per finished shard is the progress
    shard_level = logging.DEBUG if progress else logging.INFO
    todo = sum(len(j.items) for j in pending)
    if pending:
        log.info("%s: %d shard job(s) of %d to make (%d images), backend %s", desc, len(pending), n_shards, todo,
                 backend if backend != "local" else f"local, {jobs} job(s)")
    sizes = {j.index: len(j.items) for j in pending}
    per_item = backend == "local" and (jobs == 1 or len(pending) <= 1)
    with tqdm(total=todo, unit="img", desc=desc, disable=not progress or not todo, smoothing=0.1) as bar:
        done = 0
        for index, _records in run_jobs(pending, backend, jobs, scheduler,
                                        on_item=(lambda: bar.update(1)) if per_item else None):
            done += 1
            if not per_item:
                bar.update(sizes[index])
            bar.set_postfix_str(f"{done}/{len(pending)} shards", refresh=False)
            log.log(shard_level, "%s: %s done (%d/%d)", desc, shard_name(index), done, len(pending))


def _finish(folder: Path, num_nodes: int) -> Manifest | None:
    """Write the manifest when every shard is present; a rank that finds shards of other
    ranks missing leaves it to the last one."""
    if num_nodes == 1:
        return write_manifest(folder)
    try:
        with FolderLock(folder, "manifest step", name=".lock-manifest"):
            return write_manifest(folder)
    except IncompleteError as exc:
        log.info("%s", exc)
        return None
    except LockedError:
        log.info("%s: another rank is writing the manifest", folder)
        return None


def build_setting(src, split: str | None, codec: str, q=None, out="shards", shard_size: int = 1000,
                  jobs: int = 1, codec_options: dict | None = None, classes_file=None,
                  limit: int | None = None, progress: bool = True, **kwargs) -> dict:
    """Make ``out/<split>/<setting>/shard-*.tar`` and ``manifest.json`` of one setting; return
    its manifest.  Keyword arguments of :func:`build` (``layout``, ``order``, ``seed``, …) pass through."""
    c = create(codec, None if q in (None, "") else q, **(codec_options or {}))
    result = build(src, split, [(c.name, c.q)], out, shard_size=shard_size, jobs=jobs, codec_options=codec_options,
                   classes_file=classes_file, limit=limit, progress=progress, **kwargs)
    return result[c.setting]
