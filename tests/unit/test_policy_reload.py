"""Hot reload: a broken file keeps the old version, every problem is logged, watch triggers reload."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from policy_fakes import reset_script, runner_for, session, write_policy

from smtpguard import metrics
from smtpguard.errors import ConfigError
from smtpguard.stage import Stage

GOOD = "rules:\n  - {name: a, stage: connect, action: reject, reply: '554 5.7.1 v1'}\n"


@pytest.fixture(autouse=True)
def _script() -> None:
    reset_script()


def reloads(result: str) -> float:
    return metrics.registry.get_sample_value("smtpguard_policy_reloads_total", {"result": result}) or 0.0


async def test_broken_file_keeps_old_version(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    r = runner_for(tmp_path, GOOD)
    version, count = r.version, r.rule_count
    errors = reloads("error")
    write_policy(tmp_path, "rules:\n  - {name: a, stage: connect, action: reject, reply: '554 4.7.1 bad'}\n"
                           "  - {name: b, stage: nowhere, action: continue}\n")
    with caplog.at_level(logging.WARNING, logger="smtpguard.policy"):
        assert await r.reload() is False
    assert (r.version, r.rule_count) == (version, count)
    assert reloads("error") == errors + 1
    assert f"{tmp_path / '10-main.yaml'}:2: bad reply" in caplog.text
    assert f"{tmp_path / '10-main.yaml'}:3: unknown stage 'nowhere'" in caplog.text
    assert "Traceback" not in caplog.text
    assert str((await r.evaluate(Stage.CONNECT, session(), None)).reply) == "554 5.7.1 v1"


async def test_yaml_error_keeps_old_version(tmp_path: Path) -> None:
    r = runner_for(tmp_path, GOOD)
    version = r.version
    write_policy(tmp_path, "rules: [\n")
    assert await r.reload() is False
    assert r.version == version


async def test_missing_list_file_keeps_old_version(tmp_path: Path) -> None:
    (tmp_path / "trusted.txt").write_text("192.0.2.0/24\n")
    r = runner_for(tmp_path, "rules:\n  - {name: a, stage: connect, if: {client_ip: '@trusted.txt'}, action: accept}\n")
    version = r.version
    (tmp_path / "trusted.txt").unlink()
    assert await r.reload() is False
    assert r.version == version


async def test_good_reload_swaps_and_counts(tmp_path: Path) -> None:
    r = runner_for(tmp_path, GOOD)
    ok = reloads("ok")
    write_policy(tmp_path, GOOD.replace("v1", "v2"))
    assert await r.reload() is True
    assert reloads("ok") == ok + 1
    assert metrics.registry.get_sample_value("smtpguard_policy_rules") == 1
    assert metrics.registry.get_sample_value("smtpguard_policy_info", {"version": r.version}) == 1
    assert str((await r.evaluate(Stage.CONNECT, session(), None)).reply) == "554 5.7.1 v2"


async def test_unchanged_reload_is_a_no_op(tmp_path: Path) -> None:
    r = runner_for(tmp_path, GOOD)
    version = r.version
    assert await r.reload() is True
    assert r.version == version


def test_load_raises_config_error(tmp_path: Path) -> None:
    write_policy(tmp_path, "rules: 5\n")
    from policy_fakes import env, fake_registry

    from smtpguard.policy.runner import PolicyRunner

    with pytest.raises(ConfigError) as info:
        PolicyRunner(tmp_path, env(), registry=fake_registry()).load()
    assert "10-main.yaml:1: `rules:` is a list of rules" in str(info.value)


async def test_watch_reloads_on_change(tmp_path: Path) -> None:
    r = runner_for(tmp_path, GOOD)
    stop = asyncio.Event()
    batches: asyncio.Queue[set[Any]] = asyncio.Queue()
    seen: list[tuple[Any, ...]] = []

    async def fake_awatch(*paths: Path, stop_event: asyncio.Event, debounce: int) -> AsyncIterator[set[Any]]:
        seen.append(paths)
        while not stop_event.is_set():
            yield await batches.get()

    r.awatch = fake_awatch
    reloaded = asyncio.Event()
    real_reload = r.reload

    async def reload() -> bool:
        ok = await real_reload()
        reloaded.set()
        return ok

    r.reload = reload  # type: ignore[method-assign]
    task = asyncio.create_task(r.watch(stop))
    write_policy(tmp_path, GOOD.replace("v1", "v3"))
    old = r.version
    await batches.put({("modified", str(tmp_path / "10-main.yaml"))})
    await reloaded.wait()
    assert r.version != old
    stop.set()
    await batches.put(set())
    await task
    assert seen == [(tmp_path,)]


async def test_watch_without_directory_waits_for_stop() -> None:
    from policy_fakes import env, fake_registry

    from smtpguard.policy.runner import PolicyRunner

    r = PolicyRunner(None, env(), registry=fake_registry())
    stop = asyncio.Event()
    task = asyncio.create_task(r.watch(stop))
    await asyncio.sleep(0)
    stop.set()
    await task


async def test_a_changed_file_read_by_a_check_gives_a_new_version(tmp_path: Path) -> None:
    """Files named in check options (not `@lists` of rules) are part of the version too."""
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "domains.txt").write_text("example.net\n")
    r = runner_for(tmp_path, "checks:\n  relay: {local_domains: '@lists/domains.txt'}\n")
    version = r.version
    (tmp_path / "lists" / "domains.txt").write_text("example.org\n")
    assert await r.reload() is True
    assert r.version != version
