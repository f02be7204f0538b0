"""The run folder (trainer.rundir.RunDir): what a complete run is, and how it is read back."""
import json

from trainer.rundir import RunDir


def _run(tmp_path, epochs_written: int, best=True, last=True, torn=False):
    folder = tmp_path / "r"
    run = RunDir(folder)
    run.start({"epochs": 3}, {"method": "expert", "arch": "a"}, "epochs: 3\n", keep_before=0)
    rows = []
    for e in range(epochs_written):
        rows.append({"epoch": e, "train_loss": 1.0 / (e + 1)})
        run.add_epoch(rows[-1], rows)
    if torn:
        with open(folder / "metrics.jsonl", "a") as f:
            f.write('{"epoch": 9, "train_lo')
    for name, present in (("best.pth", best), ("last.pth", last)):
        if present:
            (folder / name).write_bytes(b"x")
    return run


def test_a_complete_run_has_both_checkpoints_and_a_row_per_epoch(tmp_path):
    assert _run(tmp_path / "a", 3).complete(3)
    assert not _run(tmp_path / "b", 2).complete(3)
    assert not _run(tmp_path / "c", 3, best=False).complete(3)
    assert not _run(tmp_path / "d", 3, last=False).complete(3)


def test_a_torn_last_line_is_not_an_epoch(tmp_path):
    run = _run(tmp_path, 2, torn=True)
    assert [r["epoch"] for r in run.metrics()] == [0, 1]
    assert not run.complete(3)


def test_a_resumed_run_keeps_the_epochs_before_it(tmp_path):
    run = _run(tmp_path, 3)
    kept = run.start({"epochs": 3}, {"method": "expert"}, "epochs: 3\n", keep_before=2)
    assert [r["epoch"] for r in kept] == [0, 1] == [r["epoch"] for r in run.metrics()]
    assert (run.path / "summary.csv").read_text().splitlines()[0] == "epoch,train_loss"


def test_finish_gives_a_run_without_improvement_its_last_epoch_as_best(tmp_path):
    run = _run(tmp_path, 1, best=False)
    run.last.write_bytes(b"last epoch")
    run.finish()
    assert run.best.read_bytes() == b"last epoch"


def test_find_lists_only_folders_with_args_json(tmp_path):
    _run(tmp_path / "runs" / "x", 1)
    (tmp_path / "runs" / "not-a-run").mkdir()
    found = RunDir.find(tmp_path / "runs" / "x")
    assert [r.name for r in found] == ["r"]
    assert found[0].args() == {"arch": "a", "method": "expert"}
    assert json.loads((found[0].path / "args.json").read_text()) == {"arch": "a", "method": "expert"}
    assert RunDir.find(tmp_path / "nowhere") == []
