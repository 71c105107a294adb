"""The ``forge`` command line (:mod:`agentforge.cli.main`); docs/cli.md."""
