"""``audit report``: one self-contained HTML file and a Markdown section for a model card.

``build.build_report`` loads run directories (``run_data``), turns them into sections of plain
data (``sections``, ``blocks``, figures) and renders ``templates/`` with Jinja2; model text stays
plain ``str`` so the templates escape it. The dashboard reuses the loading and formatting.
"""
