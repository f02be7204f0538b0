"""A results file records its command with paths relative to the checkout, and the bare name of
a path outside it, wherever the checkout is: a clone under /tmp shares /tmp with pytest's
temporary folders, and the command named ``../pytest-of-root/.../r.json``."""
from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_inside_path_only_keeps_paths_inside_the_checkout(tmp_path):
    from pipeline.provenance import inside_path
    checkout = tmp_path / "clone"
    (checkout / "benchmarks").mkdir(parents=True)
    assert inside_path(checkout / "bench-out" / "a.json", checkout) == "bench-out/a.json"
    assert inside_path(tmp_path / "pytest-of-root" / "r.json", checkout) == "r.json"   # shares tmp_path only
    assert inside_path(tmp_path / "clone-other" / "r.json", checkout) == "r.json"       # a name prefix is not inside
    assert inside_path(checkout, checkout) == "."


def test_the_recorded_command_of_a_checkout_under_tmp(tmp_path):
    """The readme block's ``command`` as run from a checkout whose folder shares tmp_path's parent."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import docsgen.readme_block as rb; "
            "rb.ROOT = __import__('pathlib').Path(sys.argv[2]); "
            "print(rb.command('benchmarks/b.py', ['--json', sys.argv[3], '--out=' + sys.argv[2] + '/o']))")
    checkout = tmp_path / "x"
    checkout.mkdir()
    out = subprocess.run([sys.executable, "-c", code, str(ROOT), str(checkout), str(tmp_path / "pytest" / "r.json")],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout.strip()
    assert out == "python benchmarks/b.py --json r.json --out=o"
