"""trainer.data.tarstream reads what webdataset reads (its tarfile-based reader is the reference),
for the tar dialects Python writes, and refuses broken tars."""
from __future__ import annotations

import io
import tarfile

import pytest
import webdataset as wds

from trainer.data.tarstream import TarError, tar_samples


def _write(path, members, fmt):
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "link":
                info.type, info.linkname = tarfile.SYMTYPE, "target"
                tar.addfile(info)
            else:
                info.size, info.mtime = len(data), 0
                tar.addfile(info, io.BytesIO(data))


def _stock(path):
    return list(wds.tarfile_samples(iter([{"url": str(path)}])))


LONG = "a" * 90 + "/" + "b" * 90    # > 100 characters: GNU long name, pax path, or the ustar prefix


def _members():
    out = [("k0.cls", b"3", "file"), ("k0.COMP.JPG", b"\xff\xd8" + bytes(700), "file"),
           ("dir", b"", "dir"), ("k1.cls", b"4", "file"), ("noextension", b"zz", "file"),
           ("__meta__", b"m", "file"), ("__meta__/x.cls", b"m", "file"), ("sub/k2.clean.webp", bytes(513), "file"),
           ("sub/k2.cls", b"5", "file"), ("sub/link.cls", b"", "link"), (LONG + ".cls", b"6", "file"),
           (LONG + ".comp.bpg", bytes(1024), "file"), ("k.3.x.cls", b"", "file")]
    return out


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_same_samples_as_webdataset(tmp_path, fmt):
    path = tmp_path / "t.tar"
    _write(path, _members(), fmt)
    ours = list(tar_samples(str(path)))
    assert ours == _stock(path)
    assert [s["__key__"] for s in ours] == ["k0", "k1", "sub/k2", LONG, "k"]
    assert ours[0]["comp.jpg"][:2] == b"\xff\xd8" and ours[-1]["3.x.cls"] == b""


def test_base256_sizes_and_a_tar_without_end_blocks(tmp_path):
    path = tmp_path / "t.tar"
    _write(path, [("k.comp.jpg", bytes(range(200)) * 3 + bytes(100), "file")], tarfile.GNU_FORMAT)
    raw = bytearray(path.read_bytes())
    raw[124:136] = b"\x80" + (700).to_bytes(11, "big")          # GNU base-256 size
    raw[148:156] = b" " * 8
    raw[148:156] = f"{sum(raw[:512]):06o}\0 ".encode()
    (tmp_path / "cut.tar").write_bytes(bytes(raw[:512 + 1024]))    # no end-of-archive blocks
    (s,) = tar_samples(str(tmp_path / "cut.tar"))
    assert s["comp.jpg"] == bytes(range(200)) * 3 + bytes(100)
    assert _stock(tmp_path / "cut.tar") == [s]


@pytest.mark.parametrize("damage, words, stock_raises", [
    (lambda b: b[: 512 * 3 + 100], "ends inside a member", True),
    (lambda b: b[: 512 * 5 + 100], "ends inside a header", False),   # tarfile's stream mode stops there quietly
    (lambda b: b[:148] + b"0000000\0" + b[156:], "bad header checksum", True),
    (lambda b: b"x" * 512 + b, "checksum", True),
])
def test_broken_tars_raise(tmp_path, damage, words, stock_raises):
    path = tmp_path / "t.tar"
    _write(path, _members()[:2] + [("k9.cls", b"1", "file")], tarfile.GNU_FORMAT)
    bad = tmp_path / "bad.tar"
    bad.write_bytes(damage(path.read_bytes()))
    with pytest.raises(TarError, match=words):
        list(tar_samples(str(bad)))
    if stock_raises:
        with pytest.raises(Exception):
            _stock(bad)


def test_a_field_twice_in_a_sample_is_an_error(tmp_path):
    path = tmp_path / "t.tar"
    _write(path, [("k.cls", b"1", "file"), ("k.CLS", b"2", "file")], tarfile.GNU_FORMAT)
    with pytest.raises(TarError, match="twice"):
        list(tar_samples(str(path)))
    with pytest.raises(ValueError, match="duplicate"):
        _stock(path)


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_fields_not_kept_are_skipped_unread(tmp_path, fmt):
    path = tmp_path / "t.tar"
    _write(path, _members(), fmt)
    full = _stock(path)
    for fields in ({"cls"}, {"comp", "cls"}, {"clean"}):
        ours = list(tar_samples(str(path), fields=fields))
        assert ours == [{k: v for k, v in s.items() if k.startswith("__") or k.split(".")[0] in fields}
                        for s in full], fields
    # a tar cut inside a member nobody reads is still a cut tar
    _write(path, [("k.clean.webp", bytes(5000), "file"), ("k.cls", b"1", "file")], fmt)
    (tmp_path / "cut.tar").write_bytes(path.read_bytes()[:3000])
    with pytest.raises(TarError, match="ends inside a member"):
        list(tar_samples(str(tmp_path / "cut.tar"), fields={"cls"}))
