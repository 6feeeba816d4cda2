"""Callback address checks, the submission policy, and sealing per-job secrets."""

from __future__ import annotations

import base64
import ipaddress
from pathlib import Path

import pytest
from pydantic import SecretStr

from worker.callbacks import CallbackPolicy, InvalidCallbackError
from worker.secret_box import SecretBox, SecretUnreadableError
from worker.ssrf import (
    CallbackRefusedError,
    IPAddress,
    UnresolvableHostError,
    check_callback_url,
    forbidden_reason,
)

SECRET = "whsec_" + base64.b64encode(b"s" * 32).decode()


def resolver(answers: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    def resolve(host: str, port: int) -> list[IPAddress]:
        if host not in answers:
            raise UnresolvableHostError(f"host {host!r} does not resolve")
        return [ipaddress.ip_address(a) for a in answers[host]]

    return resolve


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("100.100.100.200", "metadata"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "non-public"),
        ("::ffff:127.0.0.1", "loopback"),
        ("64:ff9b::a9fe:a9fe", "metadata"),
    ],
)
def test_inward_addresses_are_forbidden(address: str, kind: str) -> None:
    reason = forbidden_reason(ipaddress.ip_address(address))
    assert reason is not None
    assert kind in reason


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert forbidden_reason(ipaddress.ip_address(address)) is None


def test_every_resolved_address_is_checked_and_the_first_is_the_one_to_connect_to() -> None:
    resolve = resolver({"mixed.test": ["93.184.216.34", "10.0.0.7"], "ok.test": ["93.184.216.34"]})
    with pytest.raises(CallbackRefusedError, match=r"resolves to 10\.0\.0\.7, a private"):
        check_callback_url("https://mixed.test/h", False, False, resolve)
    target = check_callback_url("https://ok.test:8443/h", False, False, resolve)
    assert (target.host, target.port, str(target.address)) == ("ok.test", 8443, "93.184.216.34")


def test_scheme_port_and_host_are_checked_before_resolving() -> None:
    resolve = resolver({})
    with pytest.raises(CallbackRefusedError, match="must be an https URL"):
        check_callback_url("http://ok.test/", False, False, resolve)
    with pytest.raises(CallbackRefusedError, match="https or http"):
        check_callback_url("ftp://ok.test/", True, False, resolve)
    with pytest.raises(CallbackRefusedError, match="invalid port"):
        check_callback_url("https://ok.test:99999/", False, False, resolve)
    with pytest.raises(CallbackRefusedError, match="no host"):
        check_callback_url("https:///path", False, False, resolve)
    with pytest.raises(UnresolvableHostError):
        check_callback_url("https://nowhere.test/", False, False, resolve)


def test_allow_private_skips_the_address_check() -> None:
    target = check_callback_url("http://localhost:9/h", True, True, resolver({}))
    assert (target.host, target.port, target.address) == ("localhost", 9, None)


def test_localhost_really_resolves_to_loopback_and_is_refused() -> None:
    with pytest.raises(CallbackRefusedError, match="loopback"):
        check_callback_url("https://localhost/hook", False, False)


def policy(tmp_path: Path, operator_secrets: bool = True) -> CallbackPolicy:
    return CallbackPolicy(
        allow_http=False,
        allow_private=False,
        has_operator_secrets=operator_secrets,
        box=SecretBox("unit-test-key", str(tmp_path)),
        resolve=resolver({"ok.test": ["93.184.216.34"], "in.test": ["10.1.2.3"]}),
    )


def test_policy_names_the_field_it_refuses(tmp_path: Path) -> None:
    with pytest.raises(InvalidCallbackError) as refused:
        policy(tmp_path).check("https://in.test/", None)
    assert refused.value.field == "callback_url"
    with pytest.raises(InvalidCallbackError) as lonely:
        policy(tmp_path).check(None, SecretStr(SECRET))
    assert lonely.value.field == "callback_secret"
    with pytest.raises(InvalidCallbackError) as unsigned:
        policy(tmp_path, operator_secrets=False).check("https://ok.test/", None)
    assert unsigned.value.field == "callback_secret"
    assert policy(tmp_path).check("https://ok.test/", None) is None
    assert policy(tmp_path).check(None, None) is None


def test_a_job_secret_is_sealed_and_opens_with_the_same_key(tmp_path: Path) -> None:
    sealed = policy(tmp_path).check("https://ok.test/", SecretStr(SECRET))
    assert sealed is not None
    assert SECRET not in sealed
    assert SecretBox("unit-test-key", str(tmp_path)).open(sealed) == SECRET
    with pytest.raises(SecretUnreadableError):
        SecretBox("another-key", str(tmp_path)).open(sealed)
    # Rotation: the new key seals, the old one still opens what it sealed.
    rotated = SecretBox("new-key,unit-test-key", str(tmp_path))
    assert rotated.open(sealed) == SECRET
    assert SecretBox("new-key", str(tmp_path)).open(rotated.seal("x")) == "x"


def test_without_a_configured_key_one_is_generated_once_in_var_dir(tmp_path: Path) -> None:
    first = SecretBox(None, str(tmp_path / "var"))
    sealed = first.seal(SECRET)
    key_file = tmp_path / "var" / "secret_key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert SecretBox(None, str(tmp_path / "var")).open(sealed) == SECRET
    assert [p.name for p in key_file.parent.iterdir()] == ["secret_key"]
