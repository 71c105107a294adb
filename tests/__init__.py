"""The test suite. Importing it (pytest, or a child process running test code) installs
the test credentials of :mod:`tests.auth`: auth is on everywhere, tests carry tokens."""

from tests import auth as _auth

_auth.install()
