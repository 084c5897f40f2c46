"""Tests for txsocks5 (run with: python -m twisted.trial tests)."""
