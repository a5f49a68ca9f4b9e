"""Configuration: defaults, YAML, environment overrides, invalid values, strict mode."""

from __future__ import annotations

import logging

import pytest

from arrowengine.config import EngineConfig, load_config
from arrowengine.errors import ConfigError


def test_defaults_without_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(environ={})
    assert config == EngineConfig(source="defaults")
    assert config.runtime.device == "auto" and config.models.dir == "models"


def test_yaml_then_environment(tmp_path):
    path = tmp_path / "arrowengine.yaml"
    path.write_text("runtime:\n  device: cpu\n  threads: 4\nlogging:\n  json: true\n")
    config = load_config(path, environ={"ARROWENGINE_RUNTIME_THREADS": "2", "ARROWENGINE_MODELS_DIR": "/srv/m"})
    assert config.runtime.device == "cpu"
    assert config.runtime.threads == 2  # the environment wins over the file
    assert config.models.dir == "/srv/m"
    assert config.logging.json is True
    assert config.source == str(path)


def test_config_path_from_environment(tmp_path):
    path = tmp_path / "custom.yaml"
    path.write_text("runtime:\n  dtype: bfloat16\n")
    assert load_config(environ={"ARROWENGINE_CONFIG": str(path)}).runtime.dtype == "bfloat16"


def test_invalid_values_are_logged_and_replaced_by_defaults(tmp_path, caplog):
    path = tmp_path / "arrowengine.yaml"
    path.write_text("runtime:\n  device: tpu\n  threads: -3\n")
    with caplog.at_level(logging.ERROR, logger="arrowengine.config"):
        config = load_config(path, environ={"ARROWENGINE_RUNTIME_BATCH_SIZE": "lots"})
    assert (config.runtime.device, config.runtime.threads, config.runtime.batch_size) == ("auto", 0, 32)
    messages = [r.getMessage() for r in caplog.records]
    assert ("config: invalid value 'tpu' for runtime.device (runtime.device); allowed: auto, cpu, cuda, rocm, mps, "
            "xpu, vulkan, arm; using the default 'auto'") in messages
    assert ("config: invalid value -3 for runtime.threads (runtime.threads); allowed range: 0..1024; using the "
            "default 0") in messages
    assert any(m.startswith("config: invalid value 'lots' for runtime.batch_size (environment variable "
                            "ARROWENGINE_RUNTIME_BATCH_SIZE); invalid literal") for m in messages)


def test_strict_mode_raises(tmp_path):
    path = tmp_path / "arrowengine.yaml"
    path.write_text("strict: true\nruntime:\n  dtype: float8\n")
    with pytest.raises(ConfigError, match=r"^config: invalid value 'float8' for runtime.dtype \(runtime.dtype\); "
                                          r"allowed: float32, float16, bfloat16$"):
        load_config(path, environ={})


def test_unknown_key_is_a_warning_or_strict_error(tmp_path, caplog):
    path = tmp_path / "arrowengine.yaml"
    path.write_text("runtime:\n  devise: cpu\n")
    with caplog.at_level(logging.WARNING, logger="arrowengine.config"):
        load_config(path, environ={})
    assert any("unknown key runtime.devise" in r.getMessage() for r in caplog.records)
    with pytest.raises(ConfigError, match=r"unknown key runtime\.devise"):
        load_config(path, environ={}, strict=True)


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match=r"configuration file .*missing.yaml does not exist"):
        load_config(tmp_path / "missing.yaml", environ={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("runtime: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(bad, environ={})
