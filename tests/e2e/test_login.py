"""The login page: pages need a session, a wrong password is refused, the right one works."""

from __future__ import annotations

from typing import Any

from tests.e2e.conftest import PAGE_DEADLINE_MS


def test_pages_redirect_to_login_and_wrong_password_is_refused(browser: Any, server: Any) -> None:
    context = browser.new_context()
    context.set_default_timeout(PAGE_DEADLINE_MS)
    page = context.new_page()
    page.goto(f"{server.url}/editor")
    assert page.url.startswith(f"{server.url}/login?next=/editor")
    page.fill("#login-name", "admin")
    page.fill("#login-password", "wrong password")
    page.click("button[type=submit]")
    page.wait_for_selector("#login-error:has-text('wrong')")
    assert page.url.startswith(f"{server.url}/login")
    page.fill("#login-password", server.admin_password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server.url}/editor")
    context.close()


def test_login_shows_user_and_live_badge(login_as: Any, screenshots: Any) -> None:
    page = login_as("viewer")
    page.wait_for_selector("#whoami:has-text('viewer')")
    page.wait_for_selector("#live-state.on")
    page.screenshot(path=str(screenshots / "login-landing.png"))
    page.click("#logout")
    page.wait_for_url("**/login")
    assert not page.errors
