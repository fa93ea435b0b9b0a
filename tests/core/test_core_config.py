"""Config loading: typed, frozen, and every error names the file and the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from edge_agent.config import ServerConfig, load_config
from edge_agent.errors import ConfigError


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, ""))
    assert cfg.server.listen == ServerConfig().listen
    assert cfg.engine.providers[-1] == "cpu"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.server.grace_s = 1  # type: ignore[misc]


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, '[paths]\nstate_dir = "state"\n[engine]\nmodel_dir = "m"\n'))
    assert cfg.paths.state_dir == tmp_path.resolve() / "state"
    assert cfg.engine.model_dir == tmp_path.resolve() / "m"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[server]\ngrace_s = -1\n", "server.grace_s"),
        ('[server]\ngrace_s = "soon"\n', "server.grace_s"),
        ('[server]\nlisten = ["nohost"]\n', "server.listen"),
        ("[server]\nlisten = []\n", "server.listen"),
        ("[server]\nmalloc_arena_max = -1\n", "server.malloc_arena_max"),
        ('[engine]\nproviders = ["tpu"]\n', "engine.providers"),
        ("[engine]\nlanes = 0\n", "engine.lanes"),
        ("[engine]\nlanes = true\n", "engine.lanes"),
        ("[engine]\nlanse = 2\n", "engine.lanse"),
        ("[engine]\nprefill_stall_target = -0.5\n", "engine.prefill_stall_target"),
        ('[engine]\nprefill_stall_target = "2x"\n', "engine.prefill_stall_target"),
        ('[engine]\nthread_spinning = "yes"\n', "engine.thread_spinning"),
        ("[engine.provider_options.cuda]\ndevice_id = 1\n", "engine.provider_options.cuda"),
        ('[logging]\nlevel = "LOUD"\n', "logging.level"),
        ("[nonsense]\n", "nonsense"),
    ],
)
def test_bad_values_name_the_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in info.value.message
    assert key in info.value.message


def test_engine_thread_spinning_is_on_unless_turned_off(tmp_path: Path) -> None:
    # On by default, as in onnxruntime: the faster decode (docs/CONFIG.md has the figures).
    assert load_config(_write(tmp_path, "")).engine.thread_spinning is True
    cfg = load_config(_write(tmp_path, "[engine]\nthread_spinning = false\n"))
    assert cfg.engine.thread_spinning is False


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(_write(tmp_path, "[server\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")


def test_malloc_arena_max_defaults_to_two_and_zero_leaves_glibc_alone(tmp_path: Path) -> None:
    assert load_config(_write(tmp_path, "")).server.malloc_arena_max == 2
    assert (
        load_config(_write(tmp_path, "[server]\nmalloc_arena_max = 0\n")).server.malloc_arena_max
        == 0
    )


def test_prefill_stall_target_defaults_to_the_measured_choice_and_takes_a_number(
    tmp_path: Path,
) -> None:
    assert load_config(_write(tmp_path, "")).engine.prefill_stall_target == 1.5
    cfg = load_config(_write(tmp_path, "[engine]\nprefill_stall_target = 0\n"))
    assert cfg.engine.prefill_stall_target == 0.0
    cfg = load_config(_write(tmp_path, "[engine]\nprefill_stall_target = 3\n"))
    assert cfg.engine.prefill_stall_target == 3.0
