"""``python -m agentforge.cli`` = ``forge``."""

from agentforge.cli.main import main

main()
