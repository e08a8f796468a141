"""``python -m tokenwire.store``: Alembic's command line for the store's migrations."""

from tokenwire.store.migrate import main

main()
