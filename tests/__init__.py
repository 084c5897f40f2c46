"""
Tests for txsocks5 (run with: python -m twisted.trial tests).

Shared helpers for real-socket tests live in L{tests.support}; socket-free
fakes in L{tests.fakes}.  Test modules say C{contextlib.suppress}, never a
bare C{suppress}: trial reads a module's C{suppress} attribute as its list
of warnings to suppress.
"""
