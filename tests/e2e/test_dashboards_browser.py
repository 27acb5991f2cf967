"""The dashboards in a real browser: Playwright driving Debian's Chromium (headless) against the stack as
`make run` starts it, every page reached through the gateway's port. Screenshots of each page go to
tests/artifacts/ (not committed)."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.support.cluster import NO_LIMITS, start_cluster

CHROMIUM = "/usr/bin/chromium"  # Debian's package (.ci/prepare installs it); no downloaded browser
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
SLOW_MODEL = "llama3.2"  # on the Ollama node, one slot, 1.5 s to the first token: requests queue behind it


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("dashboards")
    running = start_cluster(work_dir, f"sqlite:///{work_dir / 'mindrouter.db'}", gateway_options=NO_LIMITS,
                            sim_args=("--ttft-ms", "1500"), max_concurrent=1)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser():
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def new_page(browser: Browser, stack):
    """A page in a browser context of its own (its own cookies): one per person in the test."""
    contexts = []

    def make() -> Page:
        context = browser.new_context(base_url=stack.gateway_url, viewport={"width": 1280, "height": 900})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(15_000)
        return page

    yield make
    for context in contexts:
        context.close()


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def log_in(page: Page, username: str, password: str) -> None:
    page.goto("/login")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(re.compile(r"/dashboard$"))


def chat(stack, key: str, text: str, model: str = "Qwen/Qwen2.5-0.5B-Instruct") -> httpx.Response:
    return httpx.post(f"{stack.gateway_url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                      json={"model": model, "messages": [{"role": "user", "content": text}]}, timeout=60)


def eventually(check, timeout: float = 15, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def test_a_visitor_asks_for_access_an_admin_approves_and_the_new_user_logs_in(stack, new_page):
    visitor = new_page()
    visitor.goto("/")
    expect(visitor.get_by_role("heading", name="Cluster status")).to_be_visible()
    expect(visitor.get_by_text("sim-ollama")).to_be_visible()
    shot(visitor, "public-status")
    visitor.get_by_role("link", name="Ask for API access").click()
    visitor.get_by_label("Username").fill("newcomer")
    visitor.get_by_label("Email").fill("newcomer@example.edu")
    visitor.get_by_label("Role asked for").select_option("staff")
    visitor.get_by_label("Password for the dashboard").fill("newcomer-pw-1")
    visitor.get_by_label("What it is for").fill("grading assistant")
    shot(visitor, "public-request-access")
    visitor.get_by_role("button", name="Send the request").click()
    expect(visitor.get_by_text("an admin will look at your request")).to_be_visible()

    admin = new_page()
    log_in(admin, "admin", "admin123")
    admin.goto("/admin")
    expect(admin.locator(".pending-badge")).to_have_text("1")
    admin.get_by_role("link", name=re.compile("^Approvals")).first.click()
    expect(admin.get_by_text("newcomer@example.edu")).to_be_visible()
    shot(admin, "admin-approvals")
    admin.get_by_role("button", name="Approve newcomer").click()
    expect(admin.get_by_text("Request of newcomer approved")).to_be_visible()

    newcomer = new_page()
    log_in(newcomer, "newcomer", "newcomer-pw-1")
    expect(newcomer.get_by_text("role staff")).to_be_visible()


def test_a_user_creates_a_key_chats_with_it_sees_the_request_and_revokes_the_key(stack, new_page):
    student = new_page()
    log_in(student, "student1", "student123")
    student.get_by_label("Label").fill("browser test")
    student.get_by_label("Expires after (days)").fill("30")
    student.get_by_role("button", name="Create a key").click()
    key = student.locator("#new-key").inner_text().strip()
    assert key.startswith("mr_")
    expect(student.get_by_role("button", name="Copy")).to_be_visible()
    shot(student, "dashboard-new-key")

    answer = chat(stack, key, "Where is the Palouse?")
    assert answer.status_code == 200, answer.text
    request_id = answer.headers.get("x-request-id")

    def shown() -> bool:
        student.goto("/dashboard")
        return student.locator("table.recent-requests").count() > 0
    eventually(shown, what="the request on the dashboard (the writer flushes within a second)")
    expect(student.locator("table.recent-requests")).to_contain_text("Qwen/Qwen2.5-0.5B-Instruct")
    expect(student.locator("table.recent-requests")).to_contain_text("200")
    shot(student, "dashboard")

    admin = new_page()
    log_in(admin, "admin", "admin123")
    admin.goto("/admin/console/audit")
    admin.get_by_label("User").fill("student1")
    admin.get_by_label("Text in prompt or answer").fill("Palouse")
    admin.get_by_role("button", name="Search").click()
    expect(admin.locator(".audit-total")).to_contain_text("1 matching request")
    shot(admin, "admin-audit")
    admin.locator("table.audit-results a").first.click()
    expect(admin.locator("#prompt")).to_contain_text("Where is the Palouse?")
    if request_id:
        expect(admin.get_by_role("heading", name=re.compile(request_id))).to_be_visible()
    shot(admin, "admin-audit-detail")
    export = admin.request.get("/admin/console/audit/export.csv?user=student1")  # the admin's session
    assert export.status == 200 and "content-length" not in export.headers  # streamed through the gateway
    rows = export.text().strip().splitlines()
    assert rows[0].startswith("request_id,") and any("Qwen/Qwen2.5-0.5B-Instruct" in row for row in rows[1:])

    student.goto("/dashboard")
    student.get_by_role("button", name=re.compile("^Revoke key")).first.click()
    expect(student.get_by_text("is revoked")).to_be_visible()
    eventually(lambda: chat(stack, key, "again?").status_code == 401, timeout=20, what="the revoked key refused")


def test_a_quota_increase_is_requested_and_approved_with_another_amount(stack, new_page):
    student = new_page()
    log_in(student, "staff1", "staff123")
    student.get_by_label("Extra tokens").fill("50000")
    student.get_by_label("Reason").fill("end of term projects")
    student.get_by_role("button", name="Send the request").click()
    expect(student.locator("table.quota-requests")).to_contain_text("pending")

    admin = new_page()
    log_in(admin, "admin", "admin123")
    admin.goto("/admin/console/approvals")
    admin.get_by_label("Tokens to grant staff1").fill("30000")
    admin.get_by_label("Note to staff1").fill("30k for now")
    admin.get_by_role("button", name="Approve quota of staff1").click()
    expect(admin.get_by_text("Quota request of staff1 approved (30,000 tokens)")).to_be_visible()

    student.reload()
    expect(student.locator("table.quota-requests")).to_contain_text("approved")
    expect(student.locator("table.quota-requests")).to_contain_text("30k for now")


def test_an_admin_registers_drains_and_reenables_a_backend(stack, new_page):
    admin = new_page()
    log_in(admin, "admin", "admin123")
    admin.goto("/admin/console/backends")
    admin.get_by_label("Name", exact=True).fill("extra-vllm")
    admin.get_by_label("URL", exact=True).fill(stack.vllm_url)
    admin.get_by_label("Engine").select_option("vllm")
    admin.get_by_role("button", name="Register").click()
    expect(admin.get_by_text("Backend extra-vllm registered")).to_be_visible()
    card = admin.locator("section.backend", has_text="extra-vllm")
    card.get_by_role("button", name="Drain extra-vllm").click()
    card = admin.locator("section.backend", has_text="extra-vllm")
    expect(card.locator(".badge-draining")).to_be_visible()
    card.get_by_role("button", name="Enable extra-vllm").click()
    expect(admin.locator("section.backend", has_text="extra-vllm").locator(".badge-draining")).to_have_count(0)
    eventually(lambda: (admin.reload() or True) and admin.locator("section.backend", has_text="extra-vllm")
               .locator(".health-healthy").count() == 1, timeout=30, what="the gateways to poll the new backend")
    shot(admin, "admin-backends")
    admin.goto("/admin/console/actions")
    expect(admin.locator("table.admin-actions")).to_contain_text("backend.drain")
    expect(admin.locator("table.admin-actions")).to_contain_text("backend.enable")
    shot(admin, "admin-actions")


def test_the_live_queue_fills_while_requests_wait(stack, new_page):
    key = stack.keys["faculty1"]
    threads = [threading.Thread(target=chat, args=(stack, key, f"queued question {i}", SLOW_MODEL))
               for i in range(8)]
    for thread in threads:
        thread.start()
    try:
        admin = new_page()
        log_in(admin, "admin", "admin123")
        waiting = 0

        def queue_filled() -> bool:
            nonlocal waiting
            admin.goto("/admin/console/queue")
            cells = admin.locator("table.queue-models td.queue-waiting").all_inner_texts()
            waiting = sum(int(text) for text in cells if text.isdigit())
            return waiting >= 3
        eventually(queue_filled, timeout=20, what="requests waiting in the live queue")
        expect(admin.locator("table.queue-users")).to_contain_text("faculty1")
        shot(admin, "admin-queue")
        admin.goto("/")
        expect(admin.locator('[aria-labelledby="stat-waiting-label"]')).not_to_have_text("0")
    finally:
        for thread in threads:
            thread.join(60)


def test_every_admin_page_renders_for_an_admin_and_refuses_a_student(stack, new_page):
    admin = new_page()
    log_in(admin, "admin", "admin123")
    pages = {"admin-overview": "/admin", "admin-users": "/admin/console/users", "admin-keys": "/admin/console/keys",
             "admin-approvals-after": "/admin/console/approvals", "admin-queue-after": "/admin/console/queue",
             "admin-audit-last-day": "/admin/console/audit", "admin-actions-all": "/admin/console/actions"}
    for name, path in pages.items():
        response = admin.goto(path)
        assert response.status == 200, path
        shot(admin, name)
    admin.emulate_media(color_scheme="dark")
    admin.goto("/admin")
    expect(admin.locator("html")).to_have_attribute("data-bs-theme", "dark")  # follows the system's choice
    shot(admin, "admin-overview-dark")
    admin.get_by_role("button", name="Switch between light and dark").click()
    expect(admin.locator("html")).to_have_attribute("data-bs-theme", "light")

    phone = new_page()
    phone.set_viewport_size({"width": 390, "height": 844})
    log_in(phone, "student1", "student123")
    shot(phone, "dashboard-phone")
    for path in pages.values():
        response = phone.goto(path)
        assert response.status == 403, path
    expect(phone.get_by_text("This page is for admins")).to_be_visible()
    shot(phone, "student-403")
