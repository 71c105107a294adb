"""``python -m services.training``: the training service process."""

from services.training.server import main

if __name__ == "__main__":
    main()
