"""The report of a run: ``loadertop report RUN`` (an HTML page, a PNG); matplotlib, from ``loadertop[report]``."""
