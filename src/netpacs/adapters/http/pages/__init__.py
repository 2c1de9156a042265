"""Server-rendered HTML pages (no scripts, no external assets): the study list."""
