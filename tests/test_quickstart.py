"""The README's first Quick-start command: `telemed demo` seeds a county, prints logins and serves."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port


@dataclass
class Demo:
    url: str
    output: Path
    username: str
    password: str


def _start_demo(data_dir: Path, output: Path, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMED_")}
    with open(output, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "telemed", "demo", "--data-dir", str(data_dir), "--port", str(port),
             "--patients", "300"],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    port, output = free_port(), tmp_path / "demo.out"
    process = _start_demo(tmp_path / "data", output, port)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert process.poll() is None, output.read_text(errors="replace")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            pytest.fail("telemed demo did not serve /healthz within 90 s")
        text = output.read_text()
        login = re.search(r"村医\s+Village doctor\s+(\S+)", text)
        password = re.search(r"password for every demo account: (\S+)", text)
        assert login, text
        assert password, text
        yield Demo(url, output, login.group(1), password.group(1))
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.mark.slow
def test_demo_serves_and_the_printed_village_doctor_signs_in(demo: Demo) -> None:
    assert httpx.get(f"{demo.url}/healthz").json() == {"status": "ok"}
    token = httpx.post(f"{demo.url}/api/v1/auth/token", data={"username": demo.username, "password": demo.password})
    assert token.status_code == 200, token.text
    headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
    me = httpx.get(f"{demo.url}/api/v1/me", headers=headers).json()
    assert me["role"] == "village_doctor"
    assert me["facility_name"].endswith("卫生室")
    patients = httpx.get(f"{demo.url}/api/v1/patients", headers=headers).json()
    assert patients["total"] > 0  # the demo county has residents registered at this clinic
    assert all(re.fullmatch(r"\d{6}\*{8}\d{3}[\dX]", p["id_number_masked"]) for p in patients["items"])


@pytest.mark.slow
def test_demo_is_idempotent_and_deterministic(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMED_")}
    command = [sys.executable, "-m", "telemed", "demo", "--data-dir", str(tmp_path), "--patients", "50", "--no-serve"]
    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, check=True).stdout
    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, check=True).stdout
    assert "50 名患者 patients" in first
    assert "50 名患者 patients" in second
    assert first.splitlines()[2:] == second.splitlines()[2:]  # same logins


@pytest.mark.slow
@pytest.mark.browser
async def test_the_printed_village_doctor_signs_in_in_the_browser(demo: Demo, browser: Any) -> None:
    from playwright.async_api import expect

    page = await (await browser.new_context(base_url=demo.url)).new_page()
    await page.goto("/login")
    await page.get_by_label("用户名", exact=True).fill(demo.username)
    await page.get_by_label("密码", exact=True).fill(demo.password)
    await page.get_by_role("button", name="登录").click()
    await page.wait_for_url("**/home")
    await expect(page.locator("#me-role")).to_have_text("村医")
    await expect(page.locator("#me-facility")).to_contain_text("卫生室")
