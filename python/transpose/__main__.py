"""``python -m transpose <command>``: the same commands as the ``transpose`` console script."""
from .cli import main

main()
