"""Fixtures shared with platform_tests: Playwright driving Debian's Chromium (`browser`)."""

from platform_tests.test_browser import browser  # noqa: F401 - a fixture, found by pytest under this name
