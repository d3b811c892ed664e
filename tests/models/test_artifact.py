"""Model artifacts: exact round trip, and every way a file can be unusable gives a one-line ModelError."""

import json
import zipfile

import numpy as np
import pytest

from models import ModelError, StreamingDetector, load_model, save_model
from models.synthetic import TAGS, UNITS, generate


@pytest.fixture(scope="module")
def saved(fitted, tmp_path_factory):
    path = tmp_path_factory.mktemp("artifact") / "line.npz"
    fitted.save(path)
    return path


@pytest.fixture(scope="module")
def probe():
    line = generate(600, seed=12, faults=[("leak", 300, 400), ("dropout", 450, 470)])
    return line.values, line.times, line.good


def outputs(det, probe):
    x, times, good = probe
    det.reset()
    r = det.run_batch(x, times, None, good)
    return [r.score, r.alarm, r.components, r.tag_flags, r.tag_scores]


def assert_one_line_model_error(excinfo, path):
    msg = str(excinfo.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    assert str(path) in msg
    assert excinfo.value.__cause__ is None


def test_round_trip_gives_identical_outputs(fitted, saved, probe):
    loaded = StreamingDetector.load(saved, expected_tags=TAGS)
    assert loaded.tags == TAGS and loaded.units == UNITS
    assert loaded.spec == fitted.spec
    assert loaded.threshold == fitted.threshold
    for a, b in zip(outputs(fitted, probe), outputs(loaded, probe), strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    # Saved again, the artifact loads to the same detector once more.
    again = saved.with_name("again.npz")
    save_model(loaded, again)
    for a, b in zip(outputs(fitted, probe), outputs(load_model(again), probe), strict=True):
        assert np.array_equal(a, b)


def test_save_is_atomic_and_leaves_no_temp_files(fitted, tmp_path):
    path = tmp_path / "sub" / "m.npz"
    fitted.save(path)
    fitted.save(path)  # overwrite
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.npz"]


@pytest.mark.parametrize("expected,missing,extra", [
    (TAGS[:-1], [], [TAGS[-1]]),
    (TAGS + ["line_speed"], ["line_speed"], []),
    (["x1"] + TAGS[1:], ["x1"], [TAGS[0]]),
])
def test_tag_mismatch_names_missing_and_extra_tags(saved, expected, missing, extra):
    with pytest.raises(ModelError) as err:
        load_model(saved, expected_tags=expected)
    assert_one_line_model_error(err, saved)
    msg = str(err.value)
    for t in missing + extra:
        assert t in msg
    if missing:
        assert "not in the model" in msg
    if extra:
        assert "not in the config" in msg


def test_same_tags_in_another_order_is_refused(saved):
    with pytest.raises(ModelError, match="order") as err:
        load_model(saved, expected_tags=TAGS[::-1])
    assert_one_line_model_error(err, saved)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.npz"
    with pytest.raises(ModelError) as err:
        load_model(path)
    assert_one_line_model_error(err, path)
    with pytest.raises(ModelError):
        load_model(tmp_path)  # a directory is not a model file either


@pytest.mark.parametrize("keep", [0, 3, 10, 100, 0.5, -22, -1])
def test_truncated_file(saved, tmp_path, keep):
    data = saved.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else (keep if keep >= 0 else len(data) + keep)
    path = tmp_path / "truncated.npz"
    path.write_bytes(data[:n])
    with pytest.raises(ModelError) as err:
        load_model(path)
    assert_one_line_model_error(err, path)


def member_spans(path):
    """(name, payload start, payload end) of each member of the npz (uncompressed zip)."""
    spans = []
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            spans.append((info.filename, info.header_offset, info.compress_size))
    data = path.read_bytes()
    out = []
    for name, offset, size in spans:
        name_len = int.from_bytes(data[offset + 26: offset + 28], "little")
        extra_len = int.from_bytes(data[offset + 28: offset + 30], "little")
        start = offset + 30 + name_len + extra_len
        out.append((name, start, start + size))
    return out


def test_flipped_bytes_in_array_and_metadata_payloads(saved, tmp_path):
    data = saved.read_bytes()
    rng = np.random.default_rng(0)
    path = tmp_path / "flipped.npz"
    for _name, start, end in member_spans(saved):
        # Past the .npy header: the raw array bytes (or the JSON metadata).
        for pos in rng.integers(start + 128, end, size=3) if end - start > 160 else [end - 1]:
            corrupt = bytearray(data)
            corrupt[pos] ^= 0x10
            path.write_bytes(bytes(corrupt))
            with pytest.raises(ModelError) as err:
                load_model(path)
            assert_one_line_model_error(err, path)


def test_flipped_bytes_in_zip_structure_and_npy_headers(fitted, saved, tmp_path, probe):
    """Every single-byte corruption of the file's structure either raises ModelError or is
    harmless (a field the reader ignores) -- never another exception, never a different model."""
    data = saved.read_bytes()
    spans = member_spans(saved)
    central_dir = max(end for _, _, end in spans)  # the central directory follows the last member
    positions = list(range(central_dir, len(data)))
    for _, start, _ in spans:
        positions += range(start - 30 - 20, start + 128)  # local header + .npy header
    reference = outputs(fitted, probe)
    path = tmp_path / "flipped.npz"
    escaped = []
    for pos in positions:
        corrupt = bytearray(data)
        corrupt[pos] ^= 0xFF
        path.write_bytes(bytes(corrupt))
        try:
            det = load_model(path)
        except ModelError as exc:
            assert "\n" not in str(exc)
            continue
        except Exception as exc:  # noqa: BLE001 - that is the finding
            escaped.append((pos, type(exc).__name__, str(exc)[:60]))
            continue
        for a, b in zip(reference, outputs(det, probe), strict=True):
            assert np.array_equal(a, b), pos
    kinds = sorted({(kind, msg) for _, kind, msg in escaped})
    assert not escaped, f"{len(escaped)} corruptions escaped as other exceptions: {kinds}"


def test_non_npz_files(tmp_path):
    cases = {
        "text.npz": lambda p: p.write_text("this is not a model\n"),
        "empty.npz": lambda p: p.write_bytes(b""),
        "array.npz": lambda p: p.write_bytes(_npy_bytes(np.arange(5.0))),
        "other.zip": lambda p: _zip_with(p, {"readme.txt": b"hello"}),
        "no_meta.npz": lambda p: np.savez(p, a=np.zeros(3)),
        "meta_not_json.npz": lambda p: np.savez(p, __meta__=np.frombuffer(b"{oops", np.uint8)),
        "meta_a_list.npz": lambda p: np.savez(p, __meta__=np.frombuffer(b"[1, 2]", np.uint8)),
        "meta_other_format.npz": lambda p: np.savez(
            p, __meta__=np.frombuffer(json.dumps({"format": "x"}).encode(), np.uint8)),
    }
    failures = []
    for name, make in cases.items():
        path = tmp_path / name
        make(path)
        try:
            load_model(path)
            failures.append((name, "loaded"))
        except ModelError as exc:
            msg = str(exc)
            if "\n" in msg or str(path) not in msg:
                failures.append((name, f"message {msg!r}"))
        except Exception as exc:  # noqa: BLE001 - that is the finding
            failures.append((name, f"{type(exc).__name__}: {exc}"))
    assert not failures, failures


def test_edited_array_fails_the_checksum(saved, tmp_path):
    with np.load(saved) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["decision_params"] = arrays["decision_params"].copy()
    arrays["decision_params"][1] *= 0.5  # e.g. somebody lowering the threshold by hand
    path = tmp_path / "edited.npz"
    np.savez(path, **arrays)
    with pytest.raises(ModelError, match="checksum") as err:
        load_model(path)
    assert_one_line_model_error(err, path)


@pytest.mark.parametrize("version", [2, 999])  # 2: before the usable range was added
def test_other_format_version_is_refused(saved, tmp_path, version):
    with np.load(saved) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(arrays["__meta__"].tobytes())
    meta["format_version"] = version
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    path = tmp_path / "future.npz"
    np.savez(path, **arrays)
    with pytest.raises(ModelError, match=f"version {version}.*refit with `linesentry fit`") as err:
        load_model(path)
    assert_one_line_model_error(err, path)


def _npy_bytes(a):
    import io

    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _zip_with(path, members):
    with zipfile.ZipFile(path, "w") as z:
        for name, content in members.items():
            z.writestr(name, content)
