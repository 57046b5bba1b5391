from __future__ import annotations

from pathlib import Path

import pytest

from smtpguard.config import load_config, split_hostport
from smtpguard.errors import ConfigError
from smtpguard.units import parse_duration, parse_size

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "smtpguard.example.yaml"


def test_embedded_defaults() -> None:
    config = load_config(None, environ={})
    assert config.listeners[0].address == "127.0.0.1:2525"
    assert config.upstream.url == "maildir:./smtpguard-mail"


def test_flags_override_env_override_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("upstream: {url: 'smtp://127.0.0.1:25'}\nlisteners: [{name: mx, address: '0.0.0.0:25'}]\n")
    config = load_config(path, {"listen": ["127.0.0.1:2600"]}, environ={"SMTPGUARD_UPSTREAM": "smtp://10.0.0.1:25"})
    assert config.listeners[0].address == "127.0.0.1:2600" and config.listeners[0].name == "mx"
    assert config.upstream.url == "smtp://10.0.0.1:25"


def test_errors_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("listeners:\n  - name: mx\n    address: nowhere\n    limits:\n      max_message_size: lots\n"
                    "upstream: {url: 'ftp://x', tipo: 1}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    text = str(info.value)
    assert f"{path}:3: listeners.0.address" in text
    assert f"{path}:5: listeners.0.limits.max_message_size" in text
    assert f"{path}:6: unknown setting 'upstream.tipo'" in text


def test_yaml_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("a: [1,\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:2: YAML syntax error"):
        load_config(path, environ={})


def test_the_commented_example_is_valid(tmp_path: Path) -> None:
    # its TLS files must exist to be valid: point them at readable files here
    (tmp_path / "tls.crt").write_text("x")
    (tmp_path / "tls.key").write_text("x")
    example = tmp_path / "example.yaml"
    example.write_text(EXAMPLE.read_text().replace("/etc/smtpguard/tls/", f"{tmp_path}/"))
    config = load_config(example, environ={})
    assert config.listeners[0].tls.mode == "starttls"


def test_more_validation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("hostname: 'mx\\nevil'\nlisteners:\n  - tls: {mode: starttls, cert: /nonexistent.pem, key: /x}\n"
                   "    limits: {idle_timeout: 0, greeting_delay_skip: [not-a-net]}\n"
                   "  - name: two\n    address: 127.0.0.1:2600\n    tls: {mode: implicit, cert: " + str(bad)
                   + ", key: " + str(bad) + "}\n    proxy_protocol: {enabled: true}\n"
                   "metrics: {listen: 'off'}\ndata_memory_budget: 10KB\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad, environ={})
    text = str(info.value)
    for expected in ("hostname", "idle_timeout", "greeting_delay_skip",
                     "PROXY protocol cannot be combined with implicit TLS", "data_memory_budget"):
        assert expected in text, (expected, text)
    assert "metrics" not in text  # 'off' disables the metrics listener


def test_missing_tls_files_are_named(tmp_path: Path) -> None:
    from smtpguard.config import environment_problems

    path = tmp_path / "c.yaml"
    path.write_text("listeners:\n  - tls: {mode: starttls, cert: /nonexistent.pem, key: /nonexistent.key}\n")
    problems = environment_problems(load_config(path, environ={}))
    assert [p.severity for p in problems] == ["warning", "warning"]
    assert "cannot read /nonexistent.pem" in problems[0].render()


def test_units() -> None:
    assert parse_duration("250ms") == 0.25 and parse_duration("5m") == 300 and parse_duration(3) == 3
    assert parse_size("25MB") == 25_000_000 and parse_size("64KiB") == 65536
    with pytest.raises(ValueError):
        parse_size("lots")
    assert split_hostport("[::1]:25") == ("::1", 25)
