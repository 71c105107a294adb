"""The Agent Forge services. Importing the package (every ``python -m services.<name>``
does) completes ``REDIS_URL`` with the password from ``AF_REDIS_PASSWORD_FILE`` when a
deployment keeps it in a secrets file (:func:`services.shared.valkey.apply_password_file`)."""

from services.shared.valkey import apply_password_file as _apply_password_file

_apply_password_file()
