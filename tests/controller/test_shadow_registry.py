"""The device shadow's model_version fetches a model id it does not hold from the [models] registry:
verified, copied atomically into models_dir, refused in one line otherwise (nothing left behind)."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller import registry
from controller.config import load_config
from controller.config.errors import ConfigError
from controller.errors import NotFound
from controller.shadow.fields import ModelVersion
from hil_tests.rig.demo_config import DEMO_CONFIG


@pytest.fixture
def reg(tmp_path: Path, model: Path) -> tuple[Path, str]:
    root = tmp_path / "registry"
    record, _ = registry.push(root, model, name="demo")
    return root, record["id"]


def test_fetch_by_full_id_and_prefix(tmp_path: Path, reg: tuple[Path, str]) -> None:
    root, model_id = reg
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    field = ModelVersion(models_dir, root)
    path = field.find(model_id[:12])
    assert path == models_dir / f"{model_id}.npz" and path.is_file()
    assert path.read_bytes() == registry.artifact_path(root, model_id).read_bytes()
    assert field.find(model_id) == path  # now held locally
    assert sorted(p.name for p in models_dir.iterdir()) == [f"{model_id}.npz"]  # no temp file


def test_damaged_artifact_refused_and_nothing_copied(tmp_path: Path, reg: tuple[Path, str]) -> None:
    root, model_id = reg
    art = registry.artifacts_dir(root) / f"{model_id}.npz"
    data = bytearray(art.read_bytes())
    data[len(data) // 2] ^= 0xFF
    art.write_bytes(bytes(data))
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    with pytest.raises(NotFound) as exc:
        ModelVersion(models_dir, root).find(model_id)
    assert "damaged" in str(exc.value) or "not the one" in str(exc.value), exc.value
    assert "\n" not in str(exc.value)
    assert list(models_dir.iterdir()) == []


def test_unknown_id_refused_with_reason(tmp_path: Path, reg: tuple[Path, str]) -> None:
    root, _ = reg
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    with pytest.raises(NotFound) as exc:
        ModelVersion(models_dir, root).find("0123456789ab")
    msg = str(exc.value)
    assert "cannot fetch model '0123456789ab'" in msg and "not in registry" in msg and "\n" not in msg, msg
    assert list(models_dir.iterdir()) == []


def test_unwritable_models_dir_refused(tmp_path: Path, reg: tuple[Path, str]) -> None:
    root, model_id = reg
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(NotFound) as exc:
        ModelVersion(blocker / "models", root).find(model_id)
    assert "cannot copy model" in str(exc.value), exc.value


def test_no_registry_keeps_todays_message(tmp_path: Path, reg: tuple[Path, str]) -> None:
    _, model_id = reg
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    with pytest.raises(NotFound) as exc:
        ModelVersion(models_dir).find(model_id)
    assert f"no model {model_id!r} in {models_dir}: copy" in str(exc.value)
    assert list(models_dir.iterdir()) == []


def _config(tmp_path: Path, section: str) -> Path:
    path = tmp_path / "line.toml"
    path.write_text(Path(DEMO_CONFIG).read_text() + "\n" + section)
    return path


def test_models_registry_config_relative_to_toml(tmp_path: Path) -> None:
    assert load_config(_config(tmp_path, "")).models.registry is None
    assert load_config(_config(tmp_path, '[models]\nregistry = ""\n')).models.registry is None
    cfg = load_config(_config(tmp_path, '[models]\nregistry = "reg"\n'))
    assert cfg.models.registry == tmp_path / "reg"


def test_models_registry_bad_type_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(_config(tmp_path, "[models]\nregistry = 3\n"))
    msg = str(exc.value)
    assert "registry" in msg and "\n" not in msg.strip(), msg
