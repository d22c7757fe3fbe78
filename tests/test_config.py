"""Settings from defaults, a TOML file and the environment, in that order of strength."""

from __future__ import annotations

import re
import tomllib

from decimal import Decimal
from pathlib import Path

import pytest

from ref2video.config import Settings


def test_defaults_are_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REF2VIDEO_CONFIG", raising=False)
    s = Settings()
    assert s.database_url == "sqlite:///ref2video-data/ref2video.db"
    assert s.results_dir == Path("ref2video-data/results")
    assert s.models == {"wan2.6-r2v": "preview", "wan2.6-r2v-flash": "preview", "wan2.7-r2v": "preview"}
    assert s.engine_target("wan2.6-r2v") == "ref2video.engines.preview.engine:PreviewEngine"
    assert s.retention_hours == 24 and s.url_ttl_seconds == 86400


def test_toml_file_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "ref2video.toml"
    toml.write_text(
        'data_dir = "/srv/r2v"\nworkers = 4\nport = 9000\n'
        '[models]\n"my-model" = "mine"\n[engines]\nmine = "pkg.mod:Engine"\n'
    )
    monkeypatch.setenv("REF2VIDEO_PORT", "9100")
    s = Settings.load(toml)
    assert s.workers == 4 and s.port == 9100  # the environment wins over the file
    assert s.database_url == "sqlite:////srv/r2v/ref2video.db"
    assert s.engine_target("my-model") == "pkg.mod:Engine"


def test_unknown_settings_are_refused(tmp_path: Path) -> None:
    toml = tmp_path / "bad.toml"
    toml.write_text("wokers = 2\n")
    with pytest.raises(ValueError, match="wokers"):
        Settings.load(toml)
    with pytest.raises(FileNotFoundError):
        Settings.load(tmp_path / "missing.toml")


def test_a_setting_written_below_the_models_table_is_refused(tmp_path: Path) -> None:
    toml = tmp_path / "ref2video.toml"
    toml.write_text('[models]\n"wan2.6-r2v" = "preview"\nwan_device = "cuda:0"\n')
    with pytest.raises(ValueError, match="models names wan_device, which are settings"):
        Settings.load(toml)


def test_the_engine_guides_settings_blocks_load_as_written() -> None:
    """Each TOML block of docs/engines.md loads (the wan block once put its settings in [models])."""
    guide = (Path(__file__).resolve().parents[1] / "docs" / "engines.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", guide, re.S)
    assert len(blocks) >= 2
    for block in blocks:
        table = tomllib.loads(block)
        assert not set(table.get("models", {})) & set(Settings.model_fields), block


def test_task_times_default_to_the_providers_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REF2VIDEO_TIMEZONE", raising=False)
    assert Settings().timezone == "Asia/Shanghai"
    with pytest.raises(ValueError, match="timezone"):
        Settings(timezone="Mars/Olympus")


def test_list_and_table_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """As people write them in a shell: comma-separated, or JSON."""
    monkeypatch.setenv("REF2VIDEO_FETCH_ALLOW", "127.0.0.0/8, 10.1.0.0/16")
    monkeypatch.setenv("REF2VIDEO_DASHSCOPE_API_KEYS", '["sk-a", "sk-b"]')
    monkeypatch.setenv("REF2VIDEO_MODELS", "wan2.6-r2v=dashscope,wan2.6-r2v-flash=preview")
    s = Settings()
    assert s.fetch_allow == ["127.0.0.0/8", "10.1.0.0/16"]
    assert s.dashscope_api_keys == ["sk-a", "sk-b"]
    assert s.models == {"wan2.6-r2v": "dashscope", "wan2.6-r2v-flash": "preview"}
    monkeypatch.setenv("REF2VIDEO_FETCH_ALLOW", '["::1/128"]')
    monkeypatch.setenv("REF2VIDEO_MODELS", '{"wan2.6-r2v": "preview"}')
    s = Settings()
    assert s.fetch_allow == ["::1/128"] and s.models == {"wan2.6-r2v": "preview"}
    monkeypatch.setenv("REF2VIDEO_FETCH_ALLOW", "localhost")
    with pytest.raises(ValueError, match="fetch_allow"):
        Settings()
    monkeypatch.delenv("REF2VIDEO_FETCH_ALLOW")
    monkeypatch.setenv("REF2VIDEO_MODELS", "wan2.6-r2v")
    with pytest.raises(ValueError, match="name=value"):
        Settings()


@pytest.mark.parametrize(("name", "written", "read"), [
    ("fetch_allow", "127.0.0.0/8, 10.1.0.0/16", ["127.0.0.0/8", "10.1.0.0/16"]),
    ("worker_models", "wan2.6-r2v,wan2.7-r2v", ["wan2.6-r2v", "wan2.7-r2v"]),
    ("dashscope_api_keys", "sk-a, sk-b", ["sk-a", "sk-b"]),
    ("models", "wan2.6-r2v=preview, studio=wan", {"wan2.6-r2v": "preview", "studio": "wan"}),
    ("engines", "mine=pkg.mod:Engine,other=pkg.other:Engine", {"mine": "pkg.mod:Engine", "other": "pkg.other:Engine"}),
    ("dashscope_models", "studio=wan2.7-r2v, fast=wan2.6-r2v-flash",
     {"studio": "wan2.7-r2v", "fast": "wan2.6-r2v-flash"}),
    ("engine_capacity", "preview=3, wan=1", {"preview": 3, "wan": 1}),
    ("prices", "wan2.6-r2v:720P=0.5,wan2.7-r2v:1080P=1.25",
     {"wan2.6-r2v:720P": Decimal("0.5"), "wan2.7-r2v:1080P": Decimal("1.25")}),
])
def test_every_list_and_table_setting_reads_the_comma_form(monkeypatch: pytest.MonkeyPatch, name: str, written: str,
                                                           read: object) -> None:
    monkeypatch.setenv(f"REF2VIDEO_{name.upper()}", written)
    assert getattr(Settings(), name) == read


def test_results_dir_must_be_a_folder_of_its_own(tmp_path: Path) -> None:
    """The orphan sweep removes files in it that no task names: the database's among them."""
    data = tmp_path / "data"
    for shared in (data, data / "uploads", data / "scratch", data / "cache", tmp_path / "db"):
        with pytest.raises(ValueError, match="results_dir"):
            Settings(data_dir=data, results_dir=shared, database_url=f"sqlite:///{tmp_path / 'db' / 'r.db'}")
    assert Settings(data_dir=data, results_dir=tmp_path / "videos").orphan_grace_seconds == 3600
