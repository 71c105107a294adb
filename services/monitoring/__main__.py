"""``python -m services.monitoring``."""

from services.monitoring.server import main

main()
