"""Settings are declared once (issue 24 item 4): per-model options in ModelOptions, from which
Settings, ModelEntry and ModelSpec take their fields; the Ray settings grouped as settings.ray,
read from their flat RERANKER_RAY_* variables; config.py a leaf that checks syntax only."""

from __future__ import annotations

import dataclasses
import sys

import pytest

from reranker_serve.config import ConfigError, ModelEntry, ModelOptions, ModelSpec, RaySettings, Settings, load_settings

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from test_imports import _graph  # noqa: E402


def test_every_per_model_option_is_a_setting_an_entry_option_and_a_spec_field():
    options = set(ModelOptions.model_fields)
    assert options <= set(Settings.model_fields)
    assert set(ModelEntry.model_fields) == options | {"model", "name"}
    spec_fields = {f.name: f for f in dataclasses.fields(ModelSpec)}
    assert set(spec_fields) == options | {"names", "source", "local", "cache_dir", "offline"}
    settings = Settings(_env_file=None)
    [spec] = settings.model_specs
    for name in options:  # unset in the entry: the global value, in the spec
        assert ModelEntry.model_fields[name].default is None
        got = getattr(spec, name)
        assert (list(got) if isinstance(got, tuple) else got) == getattr(settings, name), name


def test_an_entry_option_wins_over_the_global_one_and_is_validated_like_it():
    settings = load_settings(_env_file=None, max_length=256, dtype="fp32",
                             models='[{"model": "org/a", "max_length": 128, "dtype": "BF16"}, "org/b"]')
    a, b = settings.model_specs
    assert (a.max_length, a.dtype, b.max_length, b.dtype) == (128, "bfloat16", 256, "float32")
    with pytest.raises(ConfigError, match=r"RERANKER_MODELS\[0\]\.max_length: Input should be greater than or equal"):
        load_settings(_env_file=None, models='[{"model": "org/a", "max_length": 4}]')
    with pytest.raises(ConfigError, match=r"RERANKER_MODELS\[0\]\.batch_size"):  # 0 ("per device") is global only
        load_settings(_env_file=None, models='[{"model": "org/a", "batch_size": 0}]')


def test_ray_settings_are_a_group_read_from_their_flat_variables(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("RERANKER_RAY_REPLICAS=4\nRERANKER_RAY_NUM_CPUS=0.5\nRERANKER_RAY_ADDRESS=\n")
    monkeypatch.setenv("RERANKER_RAY_REPLICAS", "6")
    settings = Settings()
    assert isinstance(settings.ray, RaySettings)
    # The environment over .env, as for every variable; an empty address is none.
    assert (settings.ray.replicas, settings.ray.num_cpus, settings.ray.address) == (6, 0.5, None)
    assert Settings(ray_replicas=7).ray.replicas == 7  # keywords keep the flat names
    assert Settings(_env_file=None).ray.num_cpus == 1.0
    monkeypatch.setenv("RERANKER_RAY_MAX_ONGOING_REQUESTS", "0")
    with pytest.raises(ConfigError, match="RERANKER_RAY_MAX_ONGOING_REQUESTS: Input should be greater"):
        load_settings()


def test_config_is_a_leaf():
    edges, lazy = _graph()
    assert edges["config"] <= {"families", "permissions"}, edges["config"]
    assert not [what for module, _, what in lazy if module == "config" and what.startswith(".")]


def test_the_key_file_is_not_read_by_config(tmp_path):
    # A key file that does not parse is the key ring's to refuse (bootstrap.start_up_settings).
    keys = tmp_path / "keys.json"
    keys.write_text("not json")
    assert load_settings(_env_file=None, api_keys=str(keys)).api_keys == str(keys)
