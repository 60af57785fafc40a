"""Dataset setup: download the official archives (or take them from ``--archives DIR``) and convert
them to scene folders (:mod:`transpose.data.layout`).

One module per dataset, each with ``main(argv=None)`` (the CLI, used by ``datasets/setup_*.py``),
``run(argv)`` (the same, raising instead of exiting) and the conversion functions it is made of:
:mod:`.sevenscenes`, :mod:`.twelvescenes`, :mod:`.cambridge`, :mod:`.crossloc` (EPFL and comballaz).
"""
