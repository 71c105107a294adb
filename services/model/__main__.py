"""Entry point: ``python -m services.model``."""

from services.model.server import main

if __name__ == "__main__":
    main()
