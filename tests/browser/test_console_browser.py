"""The staff console in a real browser (headless Chromium driven by Playwright) against the
real hub and gateways: staff do with it what the console is for.

Playwright drives the distribution's Chromium (its own browser download is not used),
found at ``CHUKAN_CHROMIUM`` or as ``chromium`` / ``chromium-browser`` on the PATH;
``scripts/test`` installs Debian's ``chromium`` when it can.  Without one, these tests
are skipped with the reason, never silently passed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import re
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest
from console_support import make_account

from chukan.codecs import catalog
from chukan.codecs.items import encode_item
from chukan.codecs.sample_items import care_certification
from chukan.simulators.devnet.synthetic import SyntheticPerson, synthetic_person

pytestmark = [pytest.mark.browser, pytest.mark.integration]

CODE = catalog.CERTIFICATION.code

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str | None:
    configured = os.environ.get("CHUKAN_CHROMIUM")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
async def chromium() -> AsyncIterator[Any]:
    """One headless Chromium for a module's tests."""
    path = chromium_path()
    if path is None:
        pytest.skip(
            "no Chromium found: install the distribution's package (apt-get install chromium) "
            "or set CHUKAN_CHROMIUM to a Chromium binary"
        )
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=path,
            headless=True,
            # Root in a container has no user namespaces for Chromium's sandbox.
            args=["--no-sandbox", "--disable-dev-shm-usage"],
        )
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def page(chromium: Any) -> AsyncIterator[Any]:
    """A fresh browser context (its own cookies) and page; fails the test on any CSP
    violation, so that nothing of the console relies on inline script or style."""
    context = await chromium.new_context(ignore_https_errors=True, locale="ja-JP")
    page = await context.new_page()
    violations: list[str] = []
    page.on(
        "console",
        lambda message: (
            violations.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    yield page
    await context.close()
    assert not violations, violations


async def moved_person(rng: random.Random, chiba: Any, funabashi: Any) -> tuple[str, str]:
    """One person registered in 千葉市 and 船橋市 (different 宛名番号): (千葉市's, 船橋市's)."""
    here = synthetic_person(rng, "5")
    there = SyntheticPerson(
        synthetic_person(rng, "6").atena_id, here.individual_number, here.kana_name, 1950
    )
    assert (await chiba.register(here.atena_id, here.individual_number))[0] == 201
    assert (await funabashi.register(there.atena_id, there.individual_number))[0] == 201
    return here.atena_id, there.atena_id


async def ask(chiba: Any, funabashi: Any, rng: random.Random, *, manual_review: bool) -> Any:
    """船橋市 asks 千葉市 for a person's 認定情報: (query id, 千葉市's 宛名番号, item)."""
    here, there = await moved_person(rng, chiba, funabashi)
    item = care_certification(rng, dt.date(2025, 4, 1))
    status, body = await chiba.store(here, CODE, encode_item(item), manual_review=manual_review)
    assert status == 201, body
    status, body = await funabashi.query(
        there, catalog.LTC_CERTIFICATION_PROCEDURE, CODE, catalog.CHIBA_CITY
    )
    assert status == 202, body
    return body["query_id"], here, item


async def log_in(page: Any, gateway: Any, username: str, password: str) -> Any:
    """Fill and send the login form; the answer to the form's POST."""
    await page.goto(gateway.url + "/staff/login")
    await page.get_by_label("ユーザー名").fill(username)
    await page.get_by_label("パスワード").fill(password)
    async with page.expect_response(
        lambda r: r.url.endswith("/staff/login") and r.request.method == "POST"
    ) as answer:
        await page.get_by_role("button", name="ログイン").click()
    await page.wait_for_load_state()
    return await answer.value


async def test_an_approver_decides_a_held_provision_and_the_requester_gets_it(
    page: Any, chiba: Any, funabashi: Any, rng: random.Random
) -> None:
    query_id, _, item = await ask(chiba, funabashi, rng, manual_review=True)
    for _ in range(500):  # held once 千葉市 has taken the request (202 to the hub)
        _, body = await chiba.call("GET", "/internal/v1/review")
        if any(r["query_id"] == query_id for r in body["reviews"]):
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the provision was never held")
    assert (await funabashi.result(query_id, wait=0.1))["status"] == "pending"
    approver, password = await make_account(chiba.gateway, ["approver"])
    answer = await log_in(page, chiba.gateway, approver, password)
    assert answer.status == 303
    await page.get_by_role("link", name="自動応答不可").first.click()
    await page.get_by_role("link", name=query_id).click()
    # The held item, decoded into a table of fields (never XML).
    fields = page.locator("table.fields")
    await fields.wait_for()
    text = await fields.inner_text()
    assert item.insured_number in text and "InsuredNumber" in text
    assert "<" not in await page.locator("main").inner_text()
    assert await page.locator("#review-status").inner_text() == "審査待ち"
    await page.get_by_role("button", name="承認して提供する").click()
    await page.wait_for_load_state()
    assert await page.locator("#review-status").inner_text() == "承認済み"
    assert "提供" in await page.locator("#review-outcome").inner_text()
    # The requester receives the item.
    result = await funabashi.result(query_id)
    assert result["status"] == "answered", result
    assert result["result"].encode() == encode_item(item)
    decided_by = await chiba.gateway.state.pool.fetchval(
        "SELECT decided_by FROM review_queue WHERE query_id = $1", query_id
    )
    assert decided_by == f"staff:{approver}"
    assert await chiba.gateway.state.pool.fetchval(
        "SELECT count(*) FROM audit_trail WHERE actor = $1 AND action = 'review.approve' "
        "AND target = $2",
        approver,
        query_id,
    )


async def test_an_auditor_opens_a_persons_disclosure(
    page: Any, chiba: Any, funabashi: Any, rng: random.Random
) -> None:
    query_id, here, _ = await ask(chiba, funabashi, rng, manual_review=False)
    assert (await funabashi.result(query_id))["status"] == "answered"
    auditor, password = await make_account(chiba.gateway, ["auditor"])
    assert (await log_in(page, chiba.gateway, auditor, password)).status == 303
    await page.get_by_role("link", name="開示").first.click()
    await page.get_by_label("宛名番号").fill(here)
    await page.get_by_role("button", name="表示").click()
    await page.wait_for_load_state()
    assert page.url.endswith(f"/staff/disclosure/{here}")
    assert await page.locator("#disclosure-atena").inner_text() == here
    rows = page.locator("table#disclosure tbody tr")
    assert await rows.count() == 1
    row = await rows.first.inner_text()
    assert catalog.FUNABASHI_CITY in row and "一致" in row
    # Printable: on paper the menu and the links go, the report stays.
    await page.emulate_media(media="print")
    assert await page.locator("header.site").is_hidden()
    assert await page.locator("table#disclosure").is_visible()


async def test_a_locked_account_sees_what_a_wrong_password_sees(page: Any, chiba: Any) -> None:
    user, password = await make_account(chiba.gateway, ["operator"])

    async def answer(username: str, secret: str) -> tuple[int, str]:
        response = await log_in(page, chiba.gateway, username, secret)
        return response.status, await page.locator("main").inner_text()

    wrong = await answer(user, "Wrong-passw0rd-1")
    unknown = await answer(f"no{user}", "Wrong-passw0rd-1")
    for _ in range(4):  # five failures in all: locked (the default policy)
        await answer(user, "Wrong-passw0rd-1")
    assert await chiba.gateway.state.pool.fetchval(
        "SELECT locked_until > now() FROM staff_accounts WHERE username = $1", user
    )
    locked = await answer(user, password)
    assert wrong[0] == 401 and "正しくないか" in wrong[1]
    assert locked == wrong and unknown == wrong


async def test_a_form_without_its_csrf_token_is_refused(page: Any, chiba: Any) -> None:
    admin, password = await make_account(chiba.gateway, ["admin"])
    assert (await log_in(page, chiba.gateway, admin, password)).status == 303
    await page.goto(chiba.gateway.url + "/staff/accounts")
    made = f"x{admin}"
    form = page.locator("form.create")
    await form.get_by_label("ユーザー名").fill(made)
    await form.get_by_label("初期パスワード").fill("Long-enough-passw0rd")
    await form.get_by_label("運用担当").check()
    # A forged form: the same fields without the hidden token.
    await form.locator("input[name=csrf_token]").evaluate("input => input.remove()")
    async with page.expect_response(re.compile(r"/staff/accounts$")) as answer:
        await form.get_by_role("button", name="作成").click()
    await page.wait_for_load_state()
    assert (await answer.value).status == 403
    assert await page.locator("#error-code").inner_text() == "csrf_token_invalid"
    assert not await chiba.gateway.state.pool.fetchval(
        "SELECT count(*) FROM staff_accounts WHERE username = $1", made
    )
    # The real form, with its token, works.
    await page.goto(chiba.gateway.url + "/staff/accounts")
    form = page.locator("form.create")
    await form.get_by_label("ユーザー名").fill(made)
    await form.get_by_label("初期パスワード").fill("Long-enough-passw0rd")
    await form.get_by_label("運用担当").check()
    await form.get_by_role("button", name="作成").click()
    await page.wait_for_load_state()
    assert made in await page.locator("table#accounts").inner_text()
