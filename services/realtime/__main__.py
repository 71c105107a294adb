"""``python -m services.realtime``."""

from services.realtime.server import main

if __name__ == "__main__":
    main()
