"""The headless half of loadertop, in layers; an import only ever goes down a layer (or within one):

``protocol`` < ``measure`` < ``policy`` < ``probe`` < ``train`` < ``drive`` < ``sessions``.
Never imports textual or rich (the ``tui`` and ``cli`` packages beside it are the front-ends).
docs/architecture.md draws the layers and says where a change goes; tests/unit/test_import_contract.py
keeps them.
"""
